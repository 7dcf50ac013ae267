"""Preprocessing that reproduces the Hugging Face image processors.

A model's preprocessing is kept as a preprocessor_config.json-style dict (the
model's own, or one built from a custom model spec), with two imgcls keys for
models outside Hugging Face layout: ``channel_order`` (RGB/BGR) and
``input_layout`` (NCHW/NHWC). Per-request overrides are merged over that dict
and the result is compiled once into a ``Preprocessor``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from imgcls.server.domain.errors import InvalidInputError
from imgcls.server.images import families
from imgcls.server.images.decoding import brief, load_pixels
from PIL import Image, ImageOps

# The largest side a request may ask preprocessing to produce; larger overrides
# would let one caller allocate gigabytes.
MAX_OVERRIDE_SIDE = 2048
# Values (numbers, strings, lists, objects) a request's preprocessor_overrides may hold in all: the largest
# processor has a few dozen settings, image_mean and image_std three numbers each.
MAX_OVERRIDE_VALUES = 256

# The largest image a resize may build (16.7M pixels, 50 MB of RGB). A shortest-edge resize of a
# long, thin image is far larger than the image itself (4000x1 at shortest edge 256 is 1024000x256,
# 262M pixels): past this, a resize followed by a crop computes only the pixels the crop keeps, and
# a resize with no crop after it is refused. Below it the whole image is resized and then cropped,
# as transformers does, so ordinary images keep exact parity with it.
MAX_RESIZED_PIXELS = 4 * MAX_OVERRIDE_SIDE * MAX_OVERRIDE_SIDE

# Keys a request may override (those its model's family reads: families.overridable_for), with the JSON
# types they take.
OVERRIDABLE_KEYS: dict[str, tuple[type, ...]] = {
    "do_resize": (bool,),
    "size": (dict, int, float),
    "resample": (int, float),
    "do_center_crop": (bool,),
    "crop_size": (dict, int, float),
    "crop_pct": (int, float),
    "do_rescale": (bool,),
    "rescale_factor": (int, float),
    "do_normalize": (bool,),
    "image_mean": (list, int, float),
    "image_std": (list, int, float),
    "do_flip_channel_order": (bool,),
    "rescale_offset": (bool,),
    "include_top": (bool,),
}


@dataclass(frozen=True, slots=True)
class ResizeSpec:
    """exact (height, width), or shortest_edge (aspect kept; long side truncated as transformers)."""

    height: int = 0
    width: int = 0
    shortest_edge: int = 0

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after resizing an image of (width, height)."""
        if not self.shortest_edge:
            return self.width, self.height
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)


# EXIF orientations that turn the image a quarter (width and height swap).
_QUARTER_TURNS = (5, 6, 7, 8)

# JPEG draft decoding (see prepare_image): "faithful" (the default) decodes large JPEGs at a reduced
# scale that keeps scores within about 0.01 of a full decode, "fast" at a smaller one that moves them more,
# "off" always decodes in full (bit-exact with the transformers pipeline).
JpegDraft = Literal["faithful", "fast", "off"]
JPEG_DRAFT_MODES: tuple[JpegDraft, ...] = get_args(JpegDraft)
DEFAULT_JPEG_DRAFT: JpegDraft = "faithful"
# How much larger than the resize target a draft decode must stay, per mode. Measured with
# EfficientNet-Lite0 against the full decode, on the shared images and on camera-sized JPEGs made from
# them (1353x900 to 4032x3024, quality 75 and 90; README, "JPEG draft decoding"): the largest change of
# any score was 0.0054 at 2x and 0.028 at 1.25x (1.5x is no better than 1.25x: both land on the same
# DCT scale for most sizes); over a wider set (15 camera-sized JPEGs, 2026-12-07) 0.012 and 0.070, both on
# astronaut.jpg at 1353x1353. Below 1x the resize would no longer filter (astronaut.jpg at 1.0x: a
# different top-1).
DRAFT_MARGINS: dict[JpegDraft, float] = {"faithful": 2.0, "fast": 1.25}
# "faithful" per resampling filter, measured per family against transformers (tests/server/images/
# test_families.py, coffee_1920x1280.jpg, tiny classifiers that weigh every pixel independently, the most
# sensitive kind): bicubic and Lanczos keep the detail a draft decode blurs (ConvNext at 2x: 0.013), so they
# need 3x; nearest samples single pixels where a draft decode averages blocks (EfficientNet at 2x: 0.034),
# so it never drafts.
_FAITHFUL_MARGINS: dict[int, float | None] = {
    int(Image.Resampling.NEAREST): None,
    int(Image.Resampling.BICUBIC): 3.0,
    int(Image.Resampling.LANCZOS): 3.0,
}


def draft_margin(mode: JpegDraft, resample: int) -> float | None:
    """How much larger than the resize target a JPEG is decoded in this mode; None: in full."""
    if mode == "faithful":
        return _FAITHFUL_MARGINS.get(resample, DRAFT_MARGINS["faithful"])
    return DRAFT_MARGINS.get(mode)


def jpeg_draft_mode(value: bool | str) -> JpegDraft:
    """A draft mode from a mode name, or from the on/off boolean of earlier versions (on: the default mode)."""
    if value is True:
        return DEFAULT_JPEG_DRAFT
    if value is False:
        return "off"
    for mode in JPEG_DRAFT_MODES:
        if value == mode:
            return mode
    raise ValueError(f"jpeg_draft must be one of {', '.join(JPEG_DRAFT_MODES)}, got {value!r}")


@dataclass(frozen=True, slots=True)
class Preprocessor:
    """Compiled preprocessing: PIL image -> one model input (no batch dimension)."""

    resize: ResizeSpec | None
    resample: int
    crops: tuple[tuple[int, int], ...]  # (height, width) center crops after the resize, in order
    scale: np.ndarray  # per channel, RGB order: x * scale + bias
    bias: np.ndarray
    bgr: bool
    nhwc: bool
    dtype: np.dtype[Any]
    jpeg_draft: JpegDraft
    # Perceiver: before resizing, a center crop of (height, width) = (num/den * shorter side) per axis,
    # as (num_h, den_h, num_w, den_w) (kept as integers to round exactly as transformers does).
    crop_first: tuple[int, int, int, int] | None = None

    @property
    def crop(self) -> tuple[int, int] | None:
        """The last center crop: the output size when there is one."""
        return self.crops[-1] if self.crops else None

    @property
    def fixed_output_hw(self) -> tuple[int, int] | None:
        """The (height, width) every image comes out at, when it does not depend on the input."""
        if self.crop is not None:
            return self.crop
        if self.resize is not None and not self.resize.shortest_edge:
            return self.resize.height, self.resize.width
        return None

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self.to_array(self.prepare_image(image))

    def prepare_image(self, image: Image.Image) -> Image.Image:
        """Orientation, colour, resize and crop, all in Pillow (uint8).

        Every image becomes RGB whatever do_convert_rgb says: the models take three channels.
        """
        margin = draft_margin(self.jpeg_draft, self.resample)
        drafted = False
        # (A crop before the resize makes the draft's target depend on the crop: decoded in full.)
        if margin is not None and image.format == "JPEG" and self.resize is not None and self.crop_first is None:
            # Decode at a reduced scale (DCT scaling: 1/2, 1/4 or 1/8) when the target is far
            # smaller: most of the cost of a large JPEG is the full-size decode. The decoded image
            # stays at least `margin` x the target, so the resize still filters (DRAFT_MARGINS).
            # (A JPEG's EXIF comes from its header: reading it here decodes no pixels.)
            orientation: int | None = _orientation(image)
            turned = orientation in _QUARTER_TURNS
            width, height = (image.height, image.width) if turned else image.size
            target = self.resize.output_size(width, height)
            if turned:
                target = (target[1], target[0])
            full_size = image.size
            image.draft("RGB", (math.ceil(target[0] * margin), math.ceil(target[1] * margin)))
            drafted = image.size != full_size
        else:
            orientation = None
        # Decode now, before anything reads the image: a decoder failure must refuse the input.
        # (Pillow's getexif() loads a PNG's pixels itself, and after a failed load Pillow hands
        # back a blank canvas, so a broken file would otherwise be classified as a black image.)
        image = load_pixels(image)
        if orientation is None:
            orientation = _orientation(image)
        if orientation > 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # it parses the EXIF again: the same "Corrupt EXIF" warnings
                image = ImageOps.exif_transpose(image)
        if image.mode != "RGB":
            image = _to_rgb(image)
        if self.crop_first is not None:
            num_h, den_h, num_w, den_w = self.crop_first
            shorter = min(image.width, image.height)
            image = _center_crop(image, int((num_h / den_h) * shorter), int((num_w / den_w) * shorter))
        crops = self.crops
        if self.resize is not None:
            size = self.resize.output_size(image.width, image.height)
            if size[0] * size[1] > MAX_RESIZED_PIXELS:
                image, crops = self._resize_huge(image, size), crops[1:]
            elif drafted and crops and (box := _crop_box(image.size, size, crops[0])) is not None:
                # Already approximate (decoded at a reduced scale): resize only the part the first crop keeps,
                # about half the resize's work for a crop_pct family. The kernels sit where the full resize puts
                # them up to float rounding (a pixel may move by a level or two); exact paths never come here.
                crop_height, crop_width = crops[0]
                image = image.resize(
                    (crop_width, crop_height), resample=Image.Resampling(self.resample), box=box, reducing_gap=None
                )
                crops = crops[1:]
            elif size != image.size:
                image = image.resize(size, resample=Image.Resampling(self.resample), reducing_gap=None)
        for crop in crops:
            image = _center_crop(image, *crop)
        return image

    def _resize_huge(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        """Resize to `size` and crop, computing only the part of the resized image the crop keeps.

        Pillow resizes a box of the source straight to the crop's size, so the huge intermediate is
        never built. The kernel positions differ from the full resize by float rounding, so a pixel
        may differ by one level: this path is for images whose full resize would be huge.
        """
        width, height = size
        if not self.crops:
            raise InvalidInputError(
                f"resizing the {image.width}x{image.height} image would make it {width}x{height} = "
                f"{width * height} pixels, over the limit of {MAX_RESIZED_PIXELS}"
            )
        crop_height, crop_width = self.crops[0]
        # The crop window in resized coordinates (may stick out of the image: then it is padded),
        # as in _center_crop.
        top, left = (height - crop_height) // 2, (width - crop_width) // 2
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + crop_width, width), min(top + crop_height, height)
        scale_x, scale_y = image.width / width, image.height / height
        kept = image.resize(
            (x1 - x0, y1 - y0),
            resample=Image.Resampling(self.resample),
            box=(x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y),
            reducing_gap=None,
        )
        if kept.size == (crop_width, crop_height):
            return kept
        canvas = Image.new(kept.mode, (crop_width, crop_height))  # zero padding, as transformers pads
        canvas.paste(kept, (x0 - left, y0 - top))
        return canvas

    def to_array(self, image: Image.Image) -> np.ndarray:
        """uint8 HWC -> normalized float in the model's channel order, layout and dtype, in one pass."""
        pixels = np.asarray(image)
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[:, :, None], 3, axis=2)
        if self.bgr:
            pixels = pixels[:, :, ::-1]
        scale, bias = (self.scale[::-1], self.bias[::-1]) if self.bgr else (self.scale, self.bias)
        if self.nhwc:
            out = np.empty(pixels.shape, dtype=np.float32)
            np.multiply(pixels, scale, out=out)
            out += bias
        else:
            out = np.empty((pixels.shape[2], pixels.shape[0], pixels.shape[1]), dtype=np.float32)
            np.multiply(pixels.transpose(2, 0, 1), scale[:, None, None], out=out)
            out += bias[:, None, None]
        return out if self.dtype == np.float32 else out.astype(self.dtype)


def _crop_box(
    source: tuple[int, int], resized: tuple[int, int], crop: tuple[int, int]
) -> tuple[float, float, float, float] | None:
    """The box of the source image that the center crop (height, width) of its resize to `resized` covers;
    None when the crop is not inside the resized image (then it pads: the full path)."""
    width, height = resized
    crop_height, crop_width = crop
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    if top < 0 or left < 0:
        return None
    scale_x, scale_y = source[0] / width, source[1] / height
    return (left * scale_x, top * scale_y, (left + crop_width) * scale_x, (top + crop_height) * scale_y)


def _orientation(image: Image.Image) -> int:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns "Corrupt EXIF data" on stderr for each call
            return int(image.getexif().get(0x0112, 1))
    except Exception:
        # A broken EXIF block should not refuse an otherwise good image. This never hides a broken
        # image: prepare_image has loaded the pixels before, and the JPEG draft path, which asks
        # first, reads JPEG EXIF from the header without decoding.
        return 1


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: keep the top 8 bits rather than letting PIL clip to 255.
        return Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def _center_crop(image: Image.Image, crop_height: int, crop_width: int) -> Image.Image:
    """transformers' center_crop, including its zero padding when the image is smaller."""
    width, height = image.size
    top = (height - crop_height) // 2
    left = (width - crop_width) // 2
    if top >= 0 and left >= 0:
        return image.crop((left, top, left + crop_width, top + crop_height))
    new_height, new_width = max(crop_height, height), max(crop_width, width)
    top_pad = math.ceil((new_height - height) / 2)
    left_pad = math.ceil((new_width - width) / 2)
    canvas = Image.new(image.mode, (new_width, new_height))
    canvas.paste(image, (left_pad, top_pad))
    top, left = top + top_pad, left + left_pad
    return canvas.crop(
        (max(0, left), max(0, top), min(new_width, left + crop_width), min(new_height, top + crop_height))
    )


def merge_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The model's config with a request's overrides merged over it (nested dicts replaced whole).

    Only keys the model's family reads may be overridden (crop_pct means nothing to ViT, and a key that
    is silently ignored would be a confident wrong answer to whoever sent it).
    """
    check_override_values(overrides)
    family = families.family_for(families.processor_name(config))
    allowed_keys = families.overridable_for(family)
    for key, value in overrides.items():
        allowed = OVERRIDABLE_KEYS.get(key)
        if allowed is None or key not in allowed_keys:
            known = ", ".join(sorted(allowed_keys & OVERRIDABLE_KEYS.keys()))
            reason = "unknown key" if allowed is None else f"{family.processor} does not read"
            raise InvalidInputError(f"preprocessor_overrides: {reason} {brief(key)}; allowed: {known}")
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            names = "/".join(t.__name__ for t in allowed)
            raise InvalidInputError(f"preprocessor_overrides: {key} must be {names}, got {type(value).__name__}")
    return {**config, **overrides}


def check_override_values(overrides: Mapping[str, Any]) -> None:
    """Refuse what no image processor setting is, before any is read: more values than a processor has
    settings (MAX_OVERRIDE_VALUES, counted without walking past it), numbers that are not finite or not
    representable as floats (JSON has integers of any size, and Infinity/NaN as Python's json writes them)."""
    seen = len(overrides)  # every container's items are counted before any of them is looked at
    stack: list[tuple[str, Any]] = []
    if seen <= MAX_OVERRIDE_VALUES:
        stack = [(str(key), value) for key, value in overrides.items()]
    while seen <= MAX_OVERRIDE_VALUES and stack:
        path, value = stack.pop()
        if isinstance(value, dict | list | tuple):
            seen += len(value)
            if seen > MAX_OVERRIDE_VALUES:
                break
        if isinstance(value, dict):
            stack.extend((f"{path}.{key}", item) for key, item in value.items())
        elif isinstance(value, list | tuple):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, int | float) and not isinstance(value, bool) and not _finite(value):
            raise InvalidInputError(
                f"preprocessor_overrides: {path} must be a finite number within a float's range, got {brief(value)}"
            )
    if seen > MAX_OVERRIDE_VALUES:
        raise InvalidInputError(
            f"preprocessor_overrides holds more than {MAX_OVERRIDE_VALUES} values; an image processor has a few "
            "settings"
        )


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float
        return False


def _size_dict(value: Any, default_to_square: bool, key: str) -> dict[str, int]:
    """A size as transformers' get_size_dict reads it: a number (square, or the shortest edge when the
    family does not default to square), a [height, width] list, or a dict."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        side = _side(value, key)
        return {"height": side, "width": side} if default_to_square else {"shortest_edge": side}
    if isinstance(value, list | tuple) and len(value) == 2:
        return {"height": _side(value[0], key), "width": _side(value[1], key)}
    if isinstance(value, Mapping):
        if set(value) == {"height", "width"}:
            return {"height": _side(value["height"], key), "width": _side(value["width"], key)}
        if set(value) == {"shortest_edge"}:
            return {"shortest_edge": _side(value["shortest_edge"], key)}
        if value.keys() & {"longest_edge", "max_height", "max_width"}:
            raise InvalidInputError(
                f"{key} {brief(value)}: a longest_edge or max_height/max_width size is not implemented; "
                "use {height, width} or {shortest_edge}"
            )
    raise InvalidInputError(f"{key} must be a number, {{height, width}} or {{shortest_edge}}; got {brief(value)}")


def _number(value: Any, key: str, *, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise InvalidInputError(f"{key} must be a finite number, got {brief(value)}")
    if not low < value <= high:
        raise InvalidInputError(f"{key} must be in ({low:g}, {high:g}], got {brief(value)}")
    return float(value)


def _side(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value) or value != int(value):
        raise InvalidInputError(f"{key}: sides must be whole numbers, got {brief(value)}")
    side = int(value)
    if not 1 <= side <= MAX_OVERRIDE_SIDE:
        raise InvalidInputError(f"{key}: sides must be between 1 and {MAX_OVERRIDE_SIDE}, got {side}")
    return side


def _channels(value: Any, key: str) -> np.ndarray:
    values = value if isinstance(value, list | tuple) else [value] * 3
    if len(values) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise InvalidInputError(f"{key} must be a number or a list of 3 numbers, got {brief(value)}")
    if not all(_finite(v) for v in values):
        raise InvalidInputError(f"{key} must be finite, got {brief(value)}")
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise InvalidInputError(f"{key} must be finite, got {brief(value)}")
    return array


def compile_preprocessor(
    config: Mapping[str, Any],
    *,
    dtype: np.dtype[Any],
    jpeg_draft: bool | JpegDraft = DEFAULT_JPEG_DRAFT,
) -> Preprocessor:
    """Turn a preprocessor_config.json-style dict into a Preprocessor that runs its family's steps
    (images.families), in transformers' order; InvalidInputError when it is wrong or not reproduced.

    jpeg_draft: a JpegDraft mode; True is the default mode and False is "off".
    """
    family, settings = families.resolve(config)
    resample = settings["resample"]
    if (
        isinstance(resample, bool)
        or not isinstance(resample, int | float)
        or not _finite(resample)
        or resample != int(resample)
        or int(resample) not in range(6)
    ):
        raise InvalidInputError(f"resample must be a Pillow filter code 0-5, got {brief(resample)}")
    to_square = bool(settings["default_to_square"])
    resize: ResizeSpec | None = None
    crops: list[tuple[int, int]] = []
    crop_first: tuple[int, int, int, int] | None = None
    size = _size_dict(settings["size"], to_square, "size") if settings["size"] is not None else None
    if settings["do_resize"]:
        if size is None:
            raise InvalidInputError(f"{family.processor}: do_resize needs a size")
        resize, crops = _resize_steps(family, size, settings)
    if settings["do_center_crop"]:
        if settings["crop_size"] is None:
            raise InvalidInputError(f"{family.processor}: do_center_crop needs a crop_size")
        crop_size = _size_dict(settings["crop_size"], True, "crop_size")
        if "shortest_edge" in crop_size:
            raise InvalidInputError("crop_size must be {height, width} or a number")
        if family.crop_first:
            # Perceiver: the crop keeps size/crop_size of the shorter side, before the resize.
            if size is None or "shortest_edge" in size:
                raise InvalidInputError(f"{family.processor}: size must be {{height, width}}")
            crop_first = (size["height"], crop_size["height"], size["width"], crop_size["width"])
        else:
            crops.append((crop_size["height"], crop_size["width"]))

    rescale, offset = 1.0, 0.0
    if settings["do_rescale"]:
        rescale = _number(settings["rescale_factor"], "rescale_factor")
        offset = 1.0 if settings.get("rescale_offset") else 0.0  # EfficientNet: x * factor - 1
    mean, std = np.zeros(3), np.ones(3)
    if family.normalizes and settings["do_normalize"]:
        mean = _channels(settings["image_mean"], "image_mean")
        std = _channels(settings["image_std"], "image_std")
        if np.any(std == 0):
            raise InvalidInputError("image_std must not contain 0")
    # EfficientNet's include_top divides by image_std once more, normalizing or not.
    top = _channels(settings["image_std"], "image_std") if settings.get("include_top") else np.ones(3)
    if np.any(top == 0):
        raise InvalidInputError("image_std must not contain 0")
    channel_order = str(settings.get("channel_order", "RGB")).upper()
    layout = str(settings.get("input_layout", "NCHW")).upper()
    if channel_order not in ("RGB", "BGR") or layout not in ("NCHW", "NHWC"):
        raise InvalidInputError(
            "channel_order must be RGB or BGR and input_layout NCHW or NHWC, "
            f"got {brief(settings.get('channel_order'))} and {brief(settings.get('input_layout'))}"
        )
    # mean and std are given in the model's channel order; keep them in RGB order here.
    if channel_order == "BGR":
        mean, std, top = mean[::-1], std[::-1], top[::-1]
    flip = bool(settings.get("do_flip_channel_order"))  # MobileViT: RGB -> BGR after everything else
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        scale = (rescale / std / top).astype(np.float32)
        bias = ((-offset - mean) / std / top).astype(np.float32)
    # Finite settings can still make a pixel's value overflow a float32 (image_std 1e-320, image_mean 1e308),
    # or make every pixel the same value: the model would rank NaNs, or one image for any input.
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(bias))) or not np.all(scale):
        raise InvalidInputError(
            "rescale_factor, image_mean and image_std make pixel values that are not finite, or the same for every "
            f"pixel (scale {brief(scale.tolist())}, offset {brief(bias.tolist())})"
        )
    return Preprocessor(
        resize=resize,
        resample=int(resample),
        crops=tuple(crops),
        scale=scale,
        bias=bias,
        bgr=(channel_order == "BGR") != flip,
        nhwc=layout == "NHWC",
        dtype=np.dtype(dtype),
        jpeg_draft=jpeg_draft_mode(jpeg_draft),
        crop_first=crop_first,
    )


def _resize_steps(
    family: families.Family, size: dict[str, int], settings: Mapping[str, Any]
) -> tuple[ResizeSpec, list[tuple[int, int]]]:
    """The resize a family runs for a size, and the crop its resize itself makes (ConvNext)."""
    rule = family.resize_rule
    if rule == "levit" and "shortest_edge" in size:
        return ResizeSpec(shortest_edge=_resized_side(256 / 224 * size["shortest_edge"])), []
    if rule == "convnext":
        if "shortest_edge" not in size:
            raise InvalidInputError(f"{family.processor}: size must be {{shortest_edge}}, got {brief(size)}")
        shortest = size["shortest_edge"]
        if shortest >= 384:
            return ResizeSpec(height=shortest, width=shortest), []  # warped, not cropped
        crop_pct = _number(settings["crop_pct"], "crop_pct", low=0, high=1)
        # Resize the shortest edge to shortest/crop_pct, then crop a square of shortest.
        return ResizeSpec(shortest_edge=_resized_side(shortest / crop_pct, crop_pct)), [(shortest, shortest)]
    if rule == "poolformer":
        crop_pct = _number(settings["crop_pct"], "crop_pct", low=0, high=1)
        if "shortest_edge" in size:
            return ResizeSpec(shortest_edge=_resized_side(size["shortest_edge"] / crop_pct, crop_pct)), []
        height, width = size["height"], size["width"]
        if height == width:
            return ResizeSpec(shortest_edge=_resized_side(height / crop_pct, crop_pct)), []
        return ResizeSpec(
            height=_resized_side(height / crop_pct, crop_pct), width=_resized_side(width / crop_pct, crop_pct)
        ), []
    return ResizeSpec(**size), []


def _resized_side(side: float, crop_pct: float | None = None) -> int:
    """int(side), as transformers truncates it, within the limit (a tiny crop_pct would overflow int())."""
    if side > MAX_OVERRIDE_SIDE:
        cause = f"crop_pct {brief(crop_pct)} would resize" if crop_pct is not None else "the resize would make"
        raise InvalidInputError(
            f"{cause} the shortest edge to {side:.4g} pixels, over the limit of {MAX_OVERRIDE_SIDE}"
        )
    return _side(int(side), "size")
