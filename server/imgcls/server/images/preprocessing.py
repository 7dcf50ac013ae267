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
from imgcls.server.images.decoding import brief, load_pixels
from PIL import Image, ImageOps

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The largest side a request may ask preprocessing to produce; larger overrides
# would let one caller allocate gigabytes.
MAX_OVERRIDE_SIDE = 2048

# The largest image a resize may build (16.7M pixels, 50 MB of RGB). A shortest-edge resize of a
# long, thin image is far larger than the image itself (4000x1 at shortest edge 256 is 1024000x256,
# 262M pixels): past this, a resize followed by a crop computes only the pixels the crop keeps, and
# a resize with no crop after it is refused. Below it the whole image is resized and then cropped,
# as transformers does, so ordinary images keep exact parity with it.
MAX_RESIZED_PIXELS = 4 * MAX_OVERRIDE_SIDE * MAX_OVERRIDE_SIDE

# Per processor type: (default_to_square for an int "size", default resample,
# default mean, default std), as in transformers.
_PROCESSOR_DEFAULTS: dict[str, tuple[bool, int, tuple[float, ...], tuple[float, ...]]] = {
    "ViTImageProcessor": (True, 2, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD),
    "ConvNextImageProcessor": (False, 2, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    "DeiTImageProcessor": (True, 3, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    "BeitImageProcessor": (True, 3, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD),
    "CLIPImageProcessor": (False, 3, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    "BitImageProcessor": (False, 3, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    "MobileNetV1ImageProcessor": (False, 2, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD),
    "MobileNetV2ImageProcessor": (False, 2, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD),
    "EfficientNetImageProcessor": (True, 0, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD),
}
_FALLBACK_DEFAULTS = (True, 2, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD)

# Keys a request may override, with the JSON types they take.
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
    "do_convert_rgb": (bool,),
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
# scale that keeps scores within 0.01 of a full decode, "fast" at a smaller one that moves them more,
# "off" always decodes in full (bit-exact with the transformers pipeline).
JpegDraft = Literal["faithful", "fast", "off"]
JPEG_DRAFT_MODES: tuple[JpegDraft, ...] = get_args(JpegDraft)
DEFAULT_JPEG_DRAFT: JpegDraft = "faithful"
# How much larger than the resize target a draft decode must stay, per mode. Measured with
# EfficientNet-Lite0 against the full decode, on the shared images and on camera-sized JPEGs made from
# them (1353x900 to 4032x3024, quality 75 and 90; README, "JPEG draft decoding"): the largest change of
# any score was 0.0054 at 2x and 0.028 at 1.25x (1.5x is no better than 1.25x: both land on the same
# DCT scale for most sizes). Below 1x the resize would no longer filter (astronaut.jpg at 1.0x: a
# different top-1).
DRAFT_MARGINS: dict[JpegDraft, float] = {"faithful": 2.0, "fast": 1.25}


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
    crop: tuple[int, int] | None  # (height, width)
    scale: np.ndarray  # per channel, RGB order: x * scale + bias
    bias: np.ndarray
    bgr: bool
    nhwc: bool
    dtype: np.dtype[Any]
    jpeg_draft: JpegDraft

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
        margin = DRAFT_MARGINS.get(self.jpeg_draft)
        if margin is not None and image.format == "JPEG" and self.resize is not None:
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
            image.draft("RGB", (math.ceil(target[0] * margin), math.ceil(target[1] * margin)))
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
        if self.resize is not None:
            size = self.resize.output_size(image.width, image.height)
            if size[0] * size[1] > MAX_RESIZED_PIXELS:
                return self._resize_huge(image, size)
            if size != image.size:
                image = image.resize(size, resample=Image.Resampling(self.resample), reducing_gap=None)
        if self.crop is not None:
            image = _center_crop(image, *self.crop)
        return image

    def _resize_huge(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        """Resize to `size` and crop, computing only the part of the resized image the crop keeps.

        Pillow resizes a box of the source straight to the crop's size, so the huge intermediate is
        never built. The kernel positions differ from the full resize by float rounding, so a pixel
        may differ by one level: this path is for images whose full resize would be huge.
        """
        width, height = size
        if self.crop is None:
            raise InvalidInputError(
                f"resizing the {image.width}x{image.height} image would make it {width}x{height} = "
                f"{width * height} pixels, over the limit of {MAX_RESIZED_PIXELS}"
            )
        crop_height, crop_width = self.crop
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
    """The model's config with a request's overrides merged over it (nested dicts replaced whole)."""
    for key, value in overrides.items():
        allowed = OVERRIDABLE_KEYS.get(key)
        if allowed is None:
            raise InvalidInputError(
                f"preprocessor_overrides: unknown key {brief(key)}; allowed: {', '.join(sorted(OVERRIDABLE_KEYS))}"
            )
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            names = "/".join(t.__name__ for t in allowed)
            raise InvalidInputError(f"preprocessor_overrides: {key} must be {names}, got {type(value).__name__}")
    return {**config, **overrides}


def _size_dict(value: Any, default_to_square: bool, key: str) -> dict[str, int]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        side = _side(value, key)
        return {"height": side, "width": side} if default_to_square else {"shortest_edge": side}
    if isinstance(value, Mapping):
        if "height" in value and "width" in value:
            return {"height": _side(value["height"], key), "width": _side(value["width"], key)}
        if "shortest_edge" in value:
            return {"shortest_edge": _side(value["shortest_edge"], key)}
    raise InvalidInputError(f"{key} must be a number, {{height, width}} or {{shortest_edge}}; got {brief(value)}")


def _side(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value != int(value):
        raise InvalidInputError(f"{key}: sides must be whole numbers, got {brief(value)}")
    side = int(value)
    if not 1 <= side <= MAX_OVERRIDE_SIDE:
        raise InvalidInputError(f"{key}: sides must be between 1 and {MAX_OVERRIDE_SIDE}, got {side}")
    return side


def _channels(value: Any, key: str) -> np.ndarray:
    values = value if isinstance(value, list | tuple) else [value] * 3
    if len(values) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise InvalidInputError(f"{key} must be a number or a list of 3 numbers, got {brief(value)}")
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise InvalidInputError(f"{key} must be finite, got {brief(value)}")
    return array


def compile_preprocessor(
    config: Mapping[str, Any], *, dtype: np.dtype[Any], jpeg_draft: bool | JpegDraft = DEFAULT_JPEG_DRAFT
) -> Preprocessor:
    """Turn a preprocessor_config.json-style dict into a Preprocessor; InvalidInputError when it is wrong.

    jpeg_draft: a JpegDraft mode; True is the default mode and False is "off".
    """
    processor_type = str(config.get("image_processor_type") or config.get("feature_extractor_type") or "")
    processor_type = processor_type.replace("FeatureExtractor", "ImageProcessor")
    to_square, default_resample, default_mean, default_std = _PROCESSOR_DEFAULTS.get(processor_type, _FALLBACK_DEFAULTS)
    resample = config.get("resample", default_resample)
    if (
        isinstance(resample, bool)
        or not isinstance(resample, int | float)
        or resample != int(resample)
        or int(resample) not in range(6)
    ):
        raise InvalidInputError(f"resample must be a Pillow filter code 0-5, got {brief(resample)}")

    resize: ResizeSpec | None = None
    crop: tuple[int, int] | None = None
    if config.get("do_resize", True):
        size = _size_dict(config.get("size", 224), to_square, "size")
        if processor_type == "ConvNextImageProcessor" and "shortest_edge" in size:
            shortest = size["shortest_edge"]
            crop_pct = config.get("crop_pct", 224 / 256)
            if isinstance(crop_pct, bool) or not isinstance(crop_pct, int | float) or not 0 < crop_pct <= 1:
                raise InvalidInputError(f"crop_pct must be in (0, 1], got {brief(crop_pct)}")
            if shortest < 384:
                # transformers: resize the shortest edge to shortest/crop_pct, then crop a square.
                # (A tiny crop_pct would overflow int(): check the side as a float first.)
                resized = shortest / crop_pct
                if resized > MAX_OVERRIDE_SIDE:
                    raise InvalidInputError(
                        f"crop_pct {brief(crop_pct)} would resize the shortest edge to {resized:.4g} pixels, "
                        f"over the limit of {MAX_OVERRIDE_SIDE}"
                    )
                resize = ResizeSpec(shortest_edge=_side(int(resized), "size"))
                crop = (shortest, shortest)
            else:
                resize = ResizeSpec(height=shortest, width=shortest)
        else:
            resize = ResizeSpec(**size)
    if config.get("do_center_crop", False) and crop is None:
        crop_size = _size_dict(config.get("crop_size", 224), True, "crop_size")
        if "shortest_edge" in crop_size:
            raise InvalidInputError("crop_size must be {height, width} or a number")
        crop = (crop_size["height"], crop_size["width"])

    rescale = config.get("rescale_factor", 1 / 255) if config.get("do_rescale", True) else 1.0
    if isinstance(rescale, bool) or not isinstance(rescale, int | float) or not math.isfinite(rescale):
        raise InvalidInputError(f"rescale_factor must be a finite number, got {brief(rescale)}")
    if config.get("do_normalize", True):
        mean = _channels(config.get("image_mean", default_mean), "image_mean")
        std = _channels(config.get("image_std", default_std), "image_std")
        if np.any(std == 0):
            raise InvalidInputError("image_std must not contain 0")
    else:
        mean, std = np.zeros(3), np.ones(3)
    channel_order = str(config.get("channel_order", "RGB")).upper()
    layout = str(config.get("input_layout", "NCHW")).upper()
    if channel_order not in ("RGB", "BGR") or layout not in ("NCHW", "NHWC"):
        raise InvalidInputError(
            "channel_order must be RGB or BGR and input_layout NCHW or NHWC, "
            f"got {brief(config.get('channel_order'))} and {brief(config.get('input_layout'))}"
        )
    # mean and std are given in the model's channel order; keep them in RGB order here.
    if channel_order == "BGR":
        mean, std = mean[::-1], std[::-1]
    return Preprocessor(
        resize=resize,
        resample=int(resample),
        crop=crop,
        scale=(rescale / std).astype(np.float32),
        bias=(-mean / std).astype(np.float32),
        bgr=channel_order == "BGR",
        nhwc=layout == "NHWC",
        dtype=np.dtype(dtype),
        jpeg_draft=jpeg_draft_mode(jpeg_draft),
    )
