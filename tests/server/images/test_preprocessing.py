"""compile_preprocessor against straightforward reimplementations of the transformers image processors."""

from __future__ import annotations

import io
import math
import time
from typing import Any

import numpy as np
import pytest
from imgcls.server.domain.errors import InvalidInputError
from imgcls.server.images.preprocessing import (
    DEFAULT_JPEG_DRAFT,
    DRAFT_MARGINS,
    check_override_values,
    compile_preprocessor,
    merge_overrides,
)
from PIL import Image, ImageOps
from support.paths import IMAGES

F32 = np.dtype(np.float32)


def synthetic(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: resampling differences show, and nothing is symmetric."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=2)
    noisy = base + rng.normal(0, 20, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def compile_(config: dict[str, Any], dtype: np.dtype[Any] = F32) -> Any:
    """ViT's steps unless the config names another processor (these tests are of the shared steps)."""
    return compile_preprocessor({"image_processor_type": "ViTImageProcessor", **config}, dtype=dtype, jpeg_draft=False)


def normalize_chw(pixels: np.ndarray, mean: list[float], std: list[float], scale: float = 1 / 255) -> np.ndarray:
    """transformers: rescale, normalize, channels first (float64 here, as exact as it gets)."""
    values = pixels.astype(np.float64) * scale
    values = (values - np.asarray(mean)) / np.asarray(std)
    return values.transpose(2, 0, 1)


def transformers_center_crop(pixels: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    """transformers.image_transforms.center_crop on an HWC array, zero padding included."""
    height, width = pixels.shape[:2]
    top = (height - crop_height) // 2
    bottom = top + crop_height
    left = (width - crop_width) // 2
    right = left + crop_width
    if top >= 0 and bottom <= height and left >= 0 and right <= width:
        return pixels[top:bottom, left:right]
    new_height, new_width = max(crop_height, height), max(crop_width, width)
    padded = np.zeros((new_height, new_width, *pixels.shape[2:]), dtype=pixels.dtype)
    top_pad = math.ceil((new_height - height) / 2)
    left_pad = math.ceil((new_width - width) / 2)
    padded[top_pad : top_pad + height, left_pad : left_pad + width] = pixels
    top, bottom, left, right = top + top_pad, bottom + top_pad, left + left_pad, right + left_pad
    return padded[max(0, top) : min(new_height, bottom), max(0, left) : min(new_width, right)]


EFFICIENTNET_CONFIG: dict[str, Any] = {
    "image_processor_type": "ConvNextImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 224},
    "crop_pct": 0.875,
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.4980392156862745] * 3,
    "image_std": [0.5019607843137255] * 3,
}


# --- ConvNext (crop_pct) -----------------------------------------------------------------


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (257, 256), (1000, 640)])
def test_convnext_crop_pct_matches_transformers(size: tuple[int, int]) -> None:
    image = synthetic(*size)
    width, height = size
    # transformers ConvNext: resize the shortest edge to int(224 / 0.875) = 256 (long side truncated),
    # then center-crop 224x224.
    short, long = min(width, height), max(width, height)
    resized_long = int(256 * long / short)
    target = (256, resized_long) if width <= height else (resized_long, 256)
    resized = np.asarray(image.resize(target, resample=Image.Resampling.BILINEAR, reducing_gap=None))
    cropped = transformers_center_crop(resized, 224, 224)
    expected = normalize_chw(cropped, EFFICIENTNET_CONFIG["image_mean"], EFFICIENTNET_CONFIG["image_std"])

    out = compile_(EFFICIENTNET_CONFIG)(image)
    assert out.shape == (3, 224, 224)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_convnext_large_shortest_edge_warps_without_crop() -> None:
    # transformers: from 384 up, ConvNext resizes straight to (size, size) and does not crop.
    image = synthetic(500, 300)
    config = {**EFFICIENTNET_CONFIG, "size": {"shortest_edge": 384}}
    resized = np.asarray(image.resize((384, 384), resample=Image.Resampling.BILINEAR, reducing_gap=None))
    expected = normalize_chw(resized, config["image_mean"], config["image_std"])
    out = compile_(config)(image)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_convnext_crop_pct_one_resizes_to_the_crop() -> None:
    image = synthetic(300, 200)
    preprocessor = compile_({**EFFICIENTNET_CONFIG, "crop_pct": 1.0})
    assert preprocessor.prepare_image(image).size == (224, 224)
    resized = image.resize((336, 224), resample=Image.Resampling.BILINEAR, reducing_gap=None)
    assert np.array_equal(
        np.asarray(preprocessor.prepare_image(image)), transformers_center_crop(np.asarray(resized), 224, 224)
    )


# --- ViT (exact size) ----------------------------------------------------------------------


def test_vit_exact_size() -> None:
    image = synthetic(333, 211)
    config = {"image_processor_type": "ViTImageProcessor", "size": {"height": 224, "width": 224}}
    resized = np.asarray(image.resize((224, 224), resample=Image.Resampling.BILINEAR, reducing_gap=None))
    expected = normalize_chw(resized, [0.5] * 3, [0.5] * 3)
    out = compile_(config)(image)
    assert out.shape == (3, 224, 224)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_vit_int_size_is_square_and_defaults_apply() -> None:
    # An int size means (size, size) for ViT; ViT's defaults are bilinear and mean/std 0.5.
    image = synthetic(100, 60)
    out = compile_({"image_processor_type": "ViTImageProcessor", "size": 32})(image)
    resized = np.asarray(image.resize((32, 32), resample=Image.Resampling.BILINEAR, reducing_gap=None))
    np.testing.assert_allclose(out, normalize_chw(resized, [0.5] * 3, [0.5] * 3), atol=1e-5)


def test_do_rescale_and_do_normalize_off() -> None:
    image = synthetic(16, 16)
    out = compile_({"do_resize": False, "do_rescale": False, "do_normalize": False})(image)
    np.testing.assert_array_equal(out, np.asarray(image).transpose(2, 0, 1).astype(np.float32))


# --- center crop ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "crop"),
    [((5, 3), (8, 8)), ((10, 5), (8, 8)), ((4, 9), (6, 3)), ((7, 7), (7, 7)), ((12, 10), (4, 6))],
    ids=["smaller", "wider", "taller-odd", "same", "larger"],
)
def test_center_crop_pads_with_zeros_like_transformers(size: tuple[int, int], crop: tuple[int, int]) -> None:
    image = synthetic(*size)
    config = {
        "do_resize": False,
        "do_center_crop": True,
        "crop_size": {"height": crop[0], "width": crop[1]},
    }
    prepared = compile_(config).prepare_image(image)
    expected = transformers_center_crop(np.asarray(image), *crop)
    assert prepared.size == (crop[1], crop[0])
    np.testing.assert_array_equal(np.asarray(prepared), expected)


def test_padding_is_black_pixels_before_normalization() -> None:
    # transformers pads the uint8 image, so padding comes out as the normalized value of 0.
    image = Image.new("RGB", (2, 2), (255, 255, 255))
    config = {
        "do_resize": False,
        "do_center_crop": True,
        "crop_size": {"height": 4, "width": 4},
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
    }
    out = compile_(config)(image)
    assert out[0, 0, 0] == pytest.approx(-1.0)
    assert out[0, 1, 1] == pytest.approx(1.0)


# --- resample ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", range(6))
def test_resample_codes_0_to_5_accepted(code: int) -> None:
    preprocessor = compile_({"image_processor_type": "ViTImageProcessor", "size": 20, "resample": code})
    image = synthetic(50, 40)
    expected = image.resize((20, 20), resample=Image.Resampling(code), reducing_gap=None)
    np.testing.assert_array_equal(np.asarray(preprocessor.prepare_image(image)), np.asarray(expected))


@pytest.mark.parametrize("code", [6, -1, True, "bilinear"])  # (null: the family default, as in transformers)
def test_resample_other_values_refused(code: Any) -> None:
    with pytest.raises(InvalidInputError, match="resample must be a Pillow filter code 0-5"):
        compile_({"resample": code})


def test_resample_whole_float_accepted() -> None:
    # Overrides arrive as google.protobuf.Struct numbers, which are doubles: 3.0 is bicubic.
    assert compile_({"resample": 3.0}).resample == 3


def test_resample_fractional_refused() -> None:
    with pytest.raises(InvalidInputError, match="resample must be a Pillow filter code 0-5"):
        compile_({"resample": 2.5})


# --- orientation and colour ----------------------------------------------------------------


def exif_jpeg(orientation: int, width: int = 40, height: int = 20) -> bytes:
    """width x height as stored: left half red, right half blue."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", exif=exif, quality=95)
    return out.getvalue()


def assert_red_on_top(prepared: Image.Image) -> None:
    # Orientation 6: displayed rotated 90 degrees clockwise, so the stored left (red) is on top.
    pixels = np.asarray(prepared).astype(int)
    top, bottom = pixels[2, prepared.width // 2], pixels[-3, prepared.width // 2]
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_exif_orientation_is_applied() -> None:
    image = Image.open(io.BytesIO(exif_jpeg(6)))
    assert image.size == (40, 20)
    prepared = compile_({"do_resize": False}).prepare_image(image)
    assert prepared.size == (20, 40)
    assert_red_on_top(prepared)


def test_exif_orientation_with_jpeg_draft() -> None:
    # A large rotated JPEG decoded at reduced scale: still rotated, and still the requested size.
    image = Image.open(io.BytesIO(exif_jpeg(6, 1600, 800)))
    config = {"image_processor_type": "ViTImageProcessor", "size": {"height": 40, "width": 20}}
    prepared = compile_preprocessor(config, dtype=F32, jpeg_draft=True).prepare_image(image)
    assert image.width < 1600  # the draft really decoded at a reduced scale
    assert prepared.size == (20, 40)
    assert_red_on_top(prepared)


def test_exif_orientation_equals_pillow_transpose() -> None:
    for orientation in range(1, 9):
        data = exif_jpeg(orientation)
        prepared = compile_({"do_resize": False}).prepare_image(Image.open(io.BytesIO(data)))
        expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
        np.testing.assert_array_equal(np.asarray(prepared), np.asarray(expected), err_msg=str(orientation))


def png(image: Image.Image, **params: Any) -> Image.Image:
    out = io.BytesIO()
    image.save(out, "PNG", **params)
    return Image.open(io.BytesIO(out.getvalue()))


def prepared_pixels(image: Image.Image) -> np.ndarray:
    prepared = compile_({"do_resize": False}).prepare_image(image)
    assert prepared.mode == "RGB"
    return np.asarray(prepared)


def test_grayscale_png_becomes_rgb() -> None:
    gray = png(Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16, "L"))
    assert gray.mode == "L"
    pixels = prepared_pixels(gray)
    assert pixels.shape == (4, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[:, :, channel], np.asarray(gray))


def test_palette_png_with_transparency_becomes_rgb() -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    image = png(palette, transparency=0)
    assert image.mode == "P" and "transparency" in image.info
    pixels = prepared_pixels(image)
    assert pixels.shape == (1, 2, 3)
    assert pixels[0, 1].tolist() == [0, 255, 0]
    assert pixels[0, 0].tolist() == [255, 0, 0]  # the transparent pixel keeps its colour


def test_rgba_png_becomes_rgb_dropping_alpha() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 128
    pixels = prepared_pixels(png(Image.fromarray(rgba, "RGBA")))
    assert pixels.shape == (2, 2, 3)
    assert (pixels == [10, 20, 30]).all()


def test_16_bit_png_keeps_the_top_8_bits() -> None:
    values = np.array([[0x0000, 0x4000], [0x80FF, 0xFFFF]], dtype=np.uint16)
    image = png(Image.fromarray(values))
    assert image.mode.startswith("I")
    pixels = prepared_pixels(image)
    # Not clipped to 255 (which would make everything above 255 white).
    assert pixels[:, :, 0].tolist() == [[0x00, 0x40], [0x80, 0xFF]]
    assert (pixels[:, :, 0] == pixels[:, :, 2]).all()


# --- model channel order, layout and dtype ---------------------------------------------------


def test_bgr_nhwc_layout() -> None:
    image = synthetic(8, 6)
    mean, std = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]  # in the model's (BGR) order
    config = {
        "do_resize": False,
        "image_mean": mean,
        "image_std": std,
        "channel_order": "BGR",
        "input_layout": "NHWC",
    }
    out = compile_(config)(image)
    assert out.shape == (6, 8, 3)
    bgr = np.asarray(image)[:, :, ::-1].astype(np.float64) / 255
    np.testing.assert_allclose(out, (bgr - mean) / std, atol=1e-5)


def test_nchw_rgb_is_the_default() -> None:
    image = synthetic(8, 6)
    out = compile_({"do_resize": False, "do_normalize": False})(image)
    assert out.shape == (3, 6, 8)
    np.testing.assert_allclose(out[0], np.asarray(image)[:, :, 0] / 255, atol=1e-6)


def test_float16_dtype() -> None:
    image = synthetic(300, 200)
    half = compile_(EFFICIENTNET_CONFIG, np.dtype(np.float16))(image)
    full = compile_(EFFICIENTNET_CONFIG)(image)
    assert half.dtype == np.float16
    assert half.shape == full.shape
    np.testing.assert_allclose(half.astype(np.float32), full, atol=2e-3)


def test_channel_order_and_layout_must_be_known() -> None:
    with pytest.raises(InvalidInputError, match="channel_order must be RGB or BGR"):
        compile_({"channel_order": "GBR"})
    with pytest.raises(InvalidInputError, match="input_layout NCHW or NHWC"):
        compile_({"input_layout": "CHW"})


# --- overrides -------------------------------------------------------------------------------


def test_merge_overrides_replaces_keys_and_refuses_unknown_ones() -> None:
    merged = merge_overrides(EFFICIENTNET_CONFIG, {"size": {"shortest_edge": 256}, "crop_pct": 1.0})
    assert merged["size"] == {"shortest_edge": 256}
    assert merged["crop_pct"] == 1.0
    assert merged["image_mean"] == EFFICIENTNET_CONFIG["image_mean"]
    assert EFFICIENTNET_CONFIG["size"] == {"shortest_edge": 224}  # the model's config is untouched
    with pytest.raises(InvalidInputError, match="unknown key 'channel_order'"):
        merge_overrides(EFFICIENTNET_CONFIG, {"channel_order": "BGR"})
    with pytest.raises(InvalidInputError, match="do_normalize must be bool, got int"):
        merge_overrides(EFFICIENTNET_CONFIG, {"do_normalize": 1})
    with pytest.raises(InvalidInputError, match="crop_pct must be int/float, got bool"):
        merge_overrides(EFFICIENTNET_CONFIG, {"crop_pct": True})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"size": {"height": 0, "width": 10}}, "between 1 and 2048"),
        ({"size": {"height": 2049, "width": 10}}, "between 1 and 2048"),
        ({"size": {"height": 10.5, "width": 10}}, "whole numbers"),
        ({"size": {"depth": 3}}, "size must be a number"),
        ({**EFFICIENTNET_CONFIG, "crop_pct": 0}, r"crop_pct must be in \(0, 1\]"),
        # 224 / 0.1 = 2240: the resize itself would be over the cap.
        ({**EFFICIENTNET_CONFIG, "crop_pct": 0.1}, "crop_pct 0.1 would resize .* to 2240 pixels, over the limit"),
        ({"do_center_crop": True, "crop_size": {"shortest_edge": 5}}, "crop_size must be"),
        ({"rescale_factor": float("inf")}, "rescale_factor must be a finite number"),
        ({"image_std": [1, 0, 1]}, "image_std must not contain 0"),
        ({"image_mean": [float("nan")] * 3}, "image_mean must be finite"),
    ],
)
def test_bad_configs_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        compile_(config)


def test_sizes_at_the_cap_are_accepted() -> None:
    preprocessor = compile_({"size": {"height": 2048, "width": 1}})
    assert preprocessor.fixed_output_hw == (2048, 1)


@pytest.mark.parametrize(
    ("mode", "decoded"),
    [
        # The resize target is 384x256. faithful keeps 2x of it: 1/2 scale (960x640); 1/4 (480x320) would not.
        ("faithful", (960, 640)),
        (True, (960, 640)),  # the on/off boolean of earlier versions: on is the default mode
        # fast keeps 1.25x: 1/4 scale (480x320); 1/8 (240x160) would not.
        ("fast", (480, 320)),
        ("off", (1920, 1280)),
        (False, (1920, 1280)),
    ],
)
def test_jpeg_draft_decodes_at_the_smallest_scale_keeping_the_mode_s_margin_over_the_target(
    mode: Any, decoded: tuple[int, int]
) -> None:
    config = {**EFFICIENTNET_CONFIG, "input_layout": "NCHW"}
    image = Image.open(IMAGES / "coffee_1920x1280.jpg")
    prepared = compile_preprocessor(config, dtype=F32, jpeg_draft=mode).prepare_image(image)
    assert image.size == decoded
    assert prepared.size == (224, 224)


def test_the_default_jpeg_draft_is_the_faithful_one() -> None:
    config = {**EFFICIENTNET_CONFIG, "input_layout": "NCHW"}
    assert compile_preprocessor(config, dtype=F32).jpeg_draft == DEFAULT_JPEG_DRAFT == "faithful"
    assert DRAFT_MARGINS["faithful"] >= 2.0 > DRAFT_MARGINS["fast"]


def test_unknown_jpeg_draft_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="jpeg_draft must be one of faithful, fast, off"):
        compile_preprocessor(EFFICIENTNET_CONFIG, dtype=F32, jpeg_draft="exact")  # type: ignore[arg-type]


def jpeg_of(image: Image.Image) -> Image.Image:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return Image.open(io.BytesIO(out.getvalue()))


@pytest.mark.parametrize(
    ("mode", "size"),
    # Sizes that decode at a reduced scale in that mode (faithful keeps 2x the 384x256 target, fast 1.25x).
    [("faithful", (1920, 1280)), ("faithful", (3000, 2002)), ("faithful", (1600, 3000))]
    + [("fast", size) for size in ((1920, 1280), (1353, 900), (3000, 2002), (1001, 1700))],
)
def test_a_drafted_jpeg_resizes_only_what_the_crop_keeps(
    monkeypatch: pytest.MonkeyPatch, size: tuple[int, int], mode: str
) -> None:
    # ConvNext below 384: the shortest edge to 256, then a 224 crop. Resizing only the crop's box of the draft
    # is about half the work; it must give the pixels of resize-then-crop on that same draft, to a level or two.
    config = {**EFFICIENTNET_CONFIG, "input_layout": "NCHW"}
    preprocessor = compile_preprocessor(config, dtype=F32, jpeg_draft=mode)  # type: ignore[arg-type]
    source = synthetic(*size)
    resizes: list[tuple[tuple[int, int], Any]] = []
    original = Image.Image.resize

    def recording(self: Image.Image, out: tuple[int, int], *args: Any, **kwargs: Any) -> Image.Image:
        resizes.append((out, kwargs.get("box")))
        return original(self, out, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording)
    got = np.asarray(preprocessor.prepare_image(jpeg_of(source)))
    assert len(resizes) == 1 and resizes[0][0] == (224, 224) and resizes[0][1] is not None, resizes

    # The reference: the same draft decode, then the whole resize and the crop.
    drafted = jpeg_of(source)
    target = preprocessor.resize.output_size(*drafted.size)
    margin = DRAFT_MARGINS[mode]  # type: ignore[index]
    drafted.draft("RGB", (math.ceil(target[0] * margin), math.ceil(target[1] * margin)))
    assert drafted.width < size[0]  # a reduced-scale decode indeed
    drafted = drafted.convert("RGB")
    resized = original(drafted, preprocessor.resize.output_size(*drafted.size), resample=2, reducing_gap=None)
    left, top = (resized.width - 224) // 2, (resized.height - 224) // 2
    want = np.asarray(resized.crop((left, top, left + 224, top + 224)))
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2


def test_an_undrafted_image_is_resized_then_cropped_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    # A JPEG too small for a reduced-scale decode stays on the exact path: the whole resize, then the crop.
    config = {**EFFICIENTNET_CONFIG, "input_layout": "NCHW"}
    preprocessor = compile_preprocessor(config, dtype=F32)
    boxes: list[Any] = []
    original = Image.Image.resize

    def recording(self: Image.Image, out: tuple[int, int], *args: Any, **kwargs: Any) -> Image.Image:
        boxes.append(kwargs.get("box"))
        return original(self, out, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording)
    preprocessor.prepare_image(jpeg_of(synthetic(600, 400)))
    assert boxes == [None]


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_the_crop_box_of_a_drafted_jpeg_is_taken_after_its_exif_turn(orientation: int) -> None:
    # The box is computed on the turned image: the result is the turned draft resized in full, then cropped.
    source = synthetic(1920, 1280, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    source.save(out, "JPEG", exif=exif, quality=90)
    data = out.getvalue()
    config = {**EFFICIENTNET_CONFIG, "input_layout": "NCHW"}
    got = np.asarray(compile_preprocessor(config, dtype=F32).prepare_image(Image.open(io.BytesIO(data))))

    drafted = Image.open(io.BytesIO(data))
    drafted.draft("RGB", (drafted.width // 2, drafted.height // 2))  # what faithful picks here: 1/2 scale
    turned = ImageOps.exif_transpose(drafted.convert("RGB"))
    resized = turned.resize((256, 384) if turned.height > turned.width else (384, 256), resample=2, reducing_gap=None)
    left, top = (resized.width - 224) // 2, (resized.height - 224) // 2
    want = np.asarray(resized.crop((left, top, left + 224, top + 224)))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2


def test_override_values_are_counted_without_walking_past_the_limit() -> None:
    many = {"image_mean": list(range(10_000_000))}  # walked whole, it would take seconds
    started = time.perf_counter()
    with pytest.raises(InvalidInputError, match="holds more than 256 values"):
        check_override_values(many)
    assert time.perf_counter() - started < 1
    check_override_values({"image_mean": [0.5] * 3, "size": {"shortest_edge": 256}, "crop_pct": 0.875})


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"crop_pct": 10**400}, "crop_pct must be a finite number within a float's range"),
        ({"size": {"height": float("nan"), "width": 1}}, "size.height must be a finite number"),
        ({"image_std": [1.0, float("inf"), 1.0]}, "image_std[1] must be a finite number"),
    ],
)
def test_override_numbers_no_float_holds_are_refused(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        check_override_values(overrides)
    assert words in raised.value.message
