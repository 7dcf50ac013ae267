"""Hostile and awkward encoded images through the real server, each sent while good callers run.

Broken files must be refused with INVALID_ARGUMENT naming the input and the cause (never INTERNAL,
never a crash), odd-but-valid files must be answered as their plain equivalent, and the good
callers beside them must always get their (correct) answers.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import grpc
import numpy as np
import pytest
from imgcls.server.domain.errors import InvalidInputError
from imgcls.server.images.decoding import open_image
from imgcls.server.images.preprocessing import compile_preprocessor
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from PIL import Image
from reliability import corpus
from reliability.helpers import (
    answered,
    assert_same_ranking,
    beside_good_callers,
    refused,
    request_of,
)
from support.inputs import COFFEE, ESPRESSO
from support.paths import EFFICIENTNET, IMAGES

pytestmark = pytest.mark.asyncio(loop_scope="module")

COFFEE_RGB = corpus.load_rgb(IMAGES / "coffee.jpg")
COFFEE_PNG = corpus.encode(COFFEE_RGB, "PNG")
COFFEE_WEBP = corpus.encode(COFFEE_RGB, "WEBP")
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def second(data: bytes) -> pb.ClassifyRequest:
    """A good image first and the hostile one second, so the error must name inputs[1]."""
    return request_of(pb.Input(image=COFFEE), pb.Input(image=data))


def single(data: bytes, **fields: Any) -> pb.ClassifyRequest:
    return request_of(pb.Input(image=data), **fields)


# --- broken files: refused --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        pytest.param(b"", "empty image", id="zero-bytes"),
        pytest.param(corpus.random_bytes(), "not a decodable image", id="random-bytes"),
        pytest.param(corpus.truncated(COFFEE), "truncated", id="truncated-jpeg"),
        pytest.param(corpus.truncated(COFFEE_PNG), "truncated", id="truncated-png"),
        pytest.param(corpus.truncated(COFFEE_WEBP), "not a decodable image", id="truncated-webp"),
        pytest.param(
            corpus.png_with_dimensions(COFFEE_PNG, 100_000, 100_000),
            "100000x100000 = 10000000000 pixels, over the limit of 40000000",
            id="png-claims-100000x100000",
        ),
        pytest.param(
            corpus.png_with_dimensions(COFFEE_PNG, 2**31 - 1, 2**31 - 1),
            "over the limit of 40000000",
            id="png-claims-2^31x2^31",
        ),
        pytest.param(
            corpus.jpeg_with_dimensions(COFFEE, 65_535, 65_535),
            "65535x65535 = 4294836225 pixels, over the limit of 40000000",
            id="jpeg-claims-65535x65535",
        ),
    ],
)
async def test_broken_image_is_refused_naming_input_and_cause(
    module_stub: pb_grpc.ImageClassifierServiceStub, data: bytes, cause: str
) -> None:
    await refused(module_stub, second(data), INVALID, "inputs[1]", cause)


# TIFFs found by the fuzz target: a strip offset stored as a RATIONAL (or FLOAT) makes Pillow's loader
# raise TypeError, which must be refused as the input's fault, not answered INTERNAL.
FUZZ_FOUND_TIFFS = [
    "SUkqAAgAAAAKAAABBAABAAAAIAAAAAEBBAABAAAAGAAAAAIBAwADAAAAhgAAAAMBAwABAAAAAQAAAAYBAwABAAAAAgAAABEBBQABAAAAjAAAABUB"
    "AwABAAAAAwAAABYBBAABAAAAGAAAABcBBAABAAAAAAkAABwBAwABAAAAAQAAAAAAAAAIAAgACAAXEAkgFQwiAAAmGQ8nGg9JSSo=",
    "SUkqAAgAAAAKAAABBAABAAAAIAAAAAEBBAABAAAAGAAAAAYBAwADAAAAhgAAAAMBAwABAAAAAQAAAAYBAwABAAAAAgAAABEBCwAJAAAAjAAAABUB"
    "AwEAAAAAAwEAGAAAABcBAAEEAAAAAAkAABwBAwABAAAAAgAAAAAAAAABhgAAAAMBAwABAAAAAQAAAAYBAwABAAAAAgAAAAEBBAABAAAAGAAAAAAR"
    "AQQAAQAAAAABAAAAAAkAtgA=",
]


@pytest.mark.parametrize("encoded", FUZZ_FOUND_TIFFS, ids=["rational-offset", "float-offset"])
async def test_tiff_whose_parser_raises_type_error_is_refused(
    module_stub: pb_grpc.ImageClassifierServiceStub, encoded: str
) -> None:
    data = base64.b64decode(encoded)
    with pytest.raises(TypeError):  # what Pillow itself does with this file
        Image.open(io.BytesIO(data)).load()
    await refused(module_stub, second(data), INVALID, "inputs[1]", "image data is corrupt (TypeError")


async def test_broken_base64_is_refused(module_stub: pb_grpc.ImageClassifierServiceStub) -> None:
    request = request_of(pb.Input(image=COFFEE), pb.Input(image_base64="data:image/png;base64,@@@not base64@@@"))
    await refused(module_stub, request, INVALID, "inputs[1]", "not valid base64")


async def test_input_with_no_kind_is_refused(module_stub: pb_grpc.ImageClassifierServiceStub) -> None:
    await refused(module_stub, request_of(pb.Input(image=COFFEE), pb.Input()), INVALID, "inputs[1]", "set one of image")


async def test_png_whose_pixel_data_does_not_match_its_header_is_refused(
    module_stub: pb_grpc.ImageClassifierServiceStub,
) -> None:
    # Under the pixel limit, so only decoding can tell: Pillow's own load() raises for this file.
    lying = corpus.png_with_dimensions(COFFEE_PNG, 1200, 800)
    with pytest.raises(OSError, match="unrecognized data stream"):
        Image.open(io.BytesIO(lying)).load()
    await refused(module_stub, second(lying), INVALID, "inputs[1]", "corrupt")


# --- many frames: the first frame only --------------------------------------------------------


async def test_animated_gif_with_2000_frames_is_classified_from_its_first_frame(
    module_stub: pb_grpc.ImageClassifierServiceStub,
) -> None:
    animated, first_alone = corpus.animated_gif(COFFEE_RGB.resize((64, 64)), 2000)
    assert corpus.frame_count(animated) == 2000 and corpus.frame_count(first_alone) == 1
    got = await answered(module_stub, single(animated))
    want = await answered(module_stub, single(first_alone))
    assert_same_ranking(got, want, atol=1e-6)


async def test_tiff_with_1000_pages_is_classified_from_its_first_page(
    module_stub: pb_grpc.ImageClassifierServiceStub,
) -> None:
    many, first_alone = corpus.multipage_tiff(COFFEE_RGB.resize((64, 64)), 1000)
    assert corpus.frame_count(many) == 1000 and corpus.frame_count(first_alone) == 1
    got = await answered(module_stub, single(many))
    want = await answered(module_stub, single(first_alone))
    assert_same_ranking(got, want, atol=1e-6)


# --- unusual colour spaces and bit depths: answered like their plain equivalent ----------------


async def test_cmyk_jpeg_is_classified(module_stub: pb_grpc.ImageClassifierServiceStub) -> None:
    data = corpus.cmyk_jpeg(COFFEE_RGB)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    response = await answered(module_stub, single(data))
    assert response.results[0].labels[0].index == ESPRESSO


async def test_ycck_jpeg_is_classified(module_stub: pb_grpc.ImageClassifierServiceStub) -> None:
    data = corpus.ycck_jpeg(COFFEE_RGB)
    assert corpus.jpeg_adobe_transform(data) == 2  # really YCCK, not plain CMYK
    response = await answered(module_stub, single(data))
    assert response.results[0].labels[0].index == ESPRESSO


def _png_bit_depth(data: bytes) -> int:
    return data[24]  # IHDR body starts at byte 16: width(4) height(4) bit depth(1)


@pytest.mark.parametrize(
    ("pair", "is_unusual"),
    [
        pytest.param(corpus.png16_gray, lambda d: _png_bit_depth(d) == 16, id="16-bit-gray-png"),
        pytest.param(corpus.png16_rgb, lambda d: _png_bit_depth(d) == 16, id="16-bit-rgb-png"),
        pytest.param(
            corpus.palette_png_with_transparency,
            lambda d: "transparency" in Image.open(io.BytesIO(d)).info,
            id="palette-png-with-transparency",
        ),
    ],
)
async def test_unusual_png_is_classified_like_its_plain_equivalent(
    module_stub: pb_grpc.ImageClassifierServiceStub, pair: Any, is_unusual: Any
) -> None:
    unusual, plain = pair(COFFEE_RGB)
    assert is_unusual(unusual) and not is_unusual(plain)
    got = await answered(module_stub, single(unusual))
    want = await answered(module_stub, single(plain))
    assert_same_ranking(got, want, atol=1e-5)


async def test_exif_rotated_photo_is_classified_like_the_original(
    module_stub: pb_grpc.ImageClassifierServiceStub,
) -> None:
    rotated = corpus.exif_rotated_jpeg(COFFEE_RGB)
    assert Image.open(io.BytesIO(rotated)).size == (COFFEE_RGB.height, COFFEE_RGB.width)
    original = await answered(module_stub, single(corpus.encode(COFFEE_RGB, "JPEG", quality=95)))
    got = await answered(module_stub, single(rotated))
    assert got.results[0].labels[0].index == ESPRESSO
    # Upright, the scores are the original's (up to JPEG re-encoding of turned blocks); turned, they
    # are far off (espresso drops from ~0.95 to ~0.6), so this tells whether EXIF was honoured.
    assert_same_ranking(got, original, atol=0.02)


# --- extreme sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(1, 1), (1, 4000), (4000, 1)])
async def test_tiny_and_extreme_aspect_images_are_answered_or_refused_never_internal(
    module_stub: pb_grpc.ImageClassifierServiceStub, width: int, height: int
) -> None:
    outcome = await answered_or_invalid(module_stub, single(corpus.solid(width, height)))
    if isinstance(outcome, grpc.aio.AioRpcError):
        assert outcome.code() == INVALID and "inputs[0]" in (outcome.details() or "")
    else:
        assert len(outcome.results) == 1 and len(outcome.results[0].labels) == 5


async def answered_or_invalid(
    module_stub: pb_grpc.ImageClassifierServiceStub, request: pb.ClassifyRequest
) -> pb.ClassifyResponse | grpc.aio.AioRpcError:
    outcome = await beside_good_callers(module_stub, request)
    if isinstance(outcome, grpc.aio.AioRpcError):
        assert outcome.code() == INVALID, f"{outcome.code().name}: {outcome.details()}"
    return outcome


class _TooLarge(Exception):
    pass


async def test_extreme_aspect_ratio_does_not_build_a_huge_intermediate_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Cheap and safe: the oversized resize is refused by the guard instead of allocating ~1 GB.
    config = json.loads((EFFICIENTNET / "preprocessor_config.json").read_text())
    preprocessor = compile_preprocessor(config, dtype=np.dtype(np.float32), jpeg_draft=True)
    limit = 40_000_000  # the server's default max_image_pixels: inputs larger than this are refused
    requested: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def guarded_resize(self: Image.Image, size: tuple[int, int], *args: Any, **kwargs: Any) -> Image.Image:
        requested.append(tuple(size))  # type: ignore[arg-type]
        if size[0] * size[1] > limit:
            raise _TooLarge(f"asked Pillow for a {size[0]}x{size[1]} image")  # refuse to allocate it
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", guarded_resize)
    image = open_image(corpus.solid(4000, 1), max_pixels=limit)
    preprocessor(image)
    assert all(w * h <= limit for w, h in requested), requested


def _box_path_cases() -> list[Any]:
    efficientnet = json.loads((EFFICIENTNET / "preprocessor_config.json").read_text())
    # crop > resized: padding
    padded = {
        "image_processor_type": "BitImageProcessor",
        "size": {"shortest_edge": 100},
        "do_center_crop": True,
        "crop_size": 224,
    }
    return [
        pytest.param(efficientnet, "coffee.jpg", id="efficientnet-coffee"),
        pytest.param(efficientnet, "camera.png", id="efficientnet-camera"),
        pytest.param({**efficientnet, "resample": 3}, "cat.jpg", id="bicubic-cat"),
        pytest.param(padded, "coffee.jpg", id="crop-larger-than-resized"),
    ]


@pytest.mark.parametrize(("config", "name"), _box_path_cases())
async def test_crop_box_resize_matches_the_full_resize_within_one_level(
    monkeypatch: pytest.MonkeyPatch, config: dict[str, Any], name: str
) -> None:
    # The path for huge intermediates, forced on an ordinary image so the full resize can be
    # compared: same size, same picture, pixels at most one level apart (float rounding of the
    # kernel positions), and Pillow is never asked for more than the crop.
    from imgcls.server.images import preprocessing

    preprocessor = compile_preprocessor(config, dtype=np.dtype(np.float32), jpeg_draft=False)
    data = (IMAGES / name).read_bytes()
    full = np.asarray(preprocessor.prepare_image(open_image(data, max_pixels=10**8)), dtype=np.int16)

    requested: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def recording_resize(self: Image.Image, size: tuple[int, int], *args: Any, **kwargs: Any) -> Image.Image:
        requested.append(tuple(size))  # type: ignore[arg-type]
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(preprocessing, "MAX_RESIZED_PIXELS", 0)
    monkeypatch.setattr(Image.Image, "resize", recording_resize)
    boxed = np.asarray(preprocessor.prepare_image(open_image(data, max_pixels=10**8)), dtype=np.int16)

    assert requested and all(w <= 224 and h <= 224 for w, h in requested), requested
    assert boxed.shape == full.shape == (224, 224, 3)
    assert int(np.abs(boxed - full).max()) <= 1
    assert float(np.mean(boxed != full)) < 0.05


async def test_long_thin_image_through_the_box_path_keeps_its_colour() -> None:
    # 4000x1 of one colour: the crop is that colour everywhere (nothing padded, nothing black).
    config = json.loads((EFFICIENTNET / "preprocessor_config.json").read_text())
    preprocessor = compile_preprocessor(config, dtype=np.dtype(np.float32), jpeg_draft=True)
    prepared = preprocessor.prepare_image(open_image(corpus.solid(4000, 1), max_pixels=40_000_000))
    assert prepared.size == (224, 224)
    assert np.array_equal(np.unique(np.asarray(prepared).reshape(-1, 3), axis=0), [[200, 120, 40]])


async def test_long_thin_image_with_no_crop_after_the_resize_is_refused() -> None:
    # Without a crop the resized image is the model input itself: refused, not built.
    config = {"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 256}, "do_center_crop": False}
    preprocessor = compile_preprocessor(config, dtype=np.dtype(np.float32), jpeg_draft=True)
    image = open_image(corpus.solid(4000, 1), max_pixels=40_000_000)
    with pytest.raises(InvalidInputError) as raised:
        preprocessor.prepare_image(image)
    assert raised.value.message == (
        "resizing the 4000x1 image would make it 1024000x256 = 262144000 pixels, over the limit of 16777216"
    )


async def test_preprocessing_refuses_a_png_whose_pixels_do_not_decode() -> None:
    # The same fault below the server: prepare_image itself refuses, whatever asks it.
    config = json.loads((EFFICIENTNET / "preprocessor_config.json").read_text())
    preprocessor = compile_preprocessor(config, dtype=np.dtype(np.float32), jpeg_draft=True)
    image = open_image(corpus.png_with_dimensions(COFFEE_PNG, 1200, 800), max_pixels=40_000_000)
    with pytest.raises(InvalidInputError, match=r"^image data is truncated or corrupt \(.*unrecognized data stream"):
        preprocessor.prepare_image(image)


async def test_gif_frame_larger_than_its_screen_is_refused_before_anything_is_allocated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A 43-byte GIF: 32x32 screen, one frame claiming 65535x65535 with disposal to background.
    # Pillow builds the frame-sized disposal canvas while opening the file (4 GB), before
    # open_image sees a size; its own bomb guard must stop it there. (Found by test_fuzz.)
    data = corpus.gif_with_oversized_frame(65535, 65535)
    assert corpus.gif_frame_extent(data) == (65535, 65535)
    fill = Image.core.fill
    requested: list[tuple[int, int]] = []

    def guarded_fill(mode: str, size: tuple[int, int], *args: Any) -> Any:
        requested.append(size)
        if size[0] * size[1] > 40_000_000:
            raise _TooLarge(f"asked Pillow for a {size[0]}x{size[1]} canvas")  # refuse to allocate it
        return fill(mode, size, *args)

    monkeypatch.setattr(Image.core, "fill", guarded_fill)
    with pytest.raises(InvalidInputError) as raised:
        open_image(data, max_pixels=40_000_000)
    assert raised.value.message == "image is 65535x65535 = 4294836225 pixels, over the limit of 40000000"
    assert all(w * h <= 40_000_000 for w, h in requested), requested


async def test_gif_frame_larger_than_its_screen_is_refused_by_the_server(
    module_stub: pb_grpc.ImageClassifierServiceStub,
) -> None:
    data = corpus.gif_with_oversized_frame(65535, 65535)
    await refused(
        module_stub, second(data), INVALID, "inputs[1]: image is 65535x65535 = 4294836225 pixels, over the limit"
    )


async def test_gif_frame_a_little_larger_than_its_screen_is_refused_by_the_imgcls_limit() -> None:
    # Under Pillow's limit the file opens, and imgcls's own check answers with the same message.
    data = corpus.gif_with_oversized_frame(300, 200)
    with pytest.raises(InvalidInputError) as raised:
        open_image(data, max_pixels=40_000)
    assert raised.value.message == "image is 300x200 = 60000 pixels, over the limit of 40000"


@pytest.mark.parametrize("fmt", ["PPM", "TGA", "ICO", "PCX", "SGI"])
async def test_format_the_readme_does_not_document_is_refused(
    module_stub: pb_grpc.ImageClassifierServiceStub, fmt: str
) -> None:
    # Pillow reads these, but each is a parser callers need not reach: only documented formats open.
    data = corpus.encode(COFFEE_RGB.resize((64, 64)), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # a real file of that format
    await refused(
        module_stub,
        second(data),
        INVALID,
        "inputs[1]: not a decodable image (unknown or corrupt format; accepted: JPEG, PNG, WebP, GIF, BMP, TIFF)",
    )


async def test_jpeg_holding_several_pictures_is_classified_from_the_first(
    module_stub: pb_grpc.ImageClassifierServiceStub,
) -> None:
    # Phone cameras write MPO: a JPEG with more pictures after the first. Pillow opens it as MPO.
    other = Image.new("RGB", COFFEE_RGB.size, (20, 200, 90))
    data = corpus.encode(COFFEE_RGB, "MPO", save_all=True, append_images=[other], quality=95)
    assert Image.open(io.BytesIO(data)).format == "MPO" and corpus.frame_count(data) == 2
    got = await answered(module_stub, single(data))
    want = await answered(module_stub, single(corpus.encode(COFFEE_RGB, "JPEG", quality=95)))
    assert got.results[0].labels[0].index == ESPRESSO
    assert_same_ranking(got, want, atol=1e-3)


async def test_webp_canvas_over_the_limit_is_refused_before_the_decoder_allocates_it(
    monkeypatch: pytest.MonkeyPatch, module_stub: pb_grpc.ImageClassifierServiceStub
) -> None:
    from PIL import WebPImagePlugin

    # Animated, so the frames may be smaller than the canvas (a still WebP's may not).
    frames = [COFFEE_RGB.resize((64, 48)), Image.new("RGB", (64, 48), (20, 200, 90))]
    small = corpus.encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    data = corpus.webp_with_canvas(small, 16384, 16384)  # 1 GiB of canvas, from a 1.4 KB file
    canvas = [int.from_bytes(data[at : at + 3], "little") + 1 for at in (24, 27)]
    assert data[12:16] == b"VP8X" and canvas == [16384, 16384]

    created: list[int] = []
    decoder = WebPImagePlugin._webp.WebPAnimDecoder

    def recording_decoder(data: bytes) -> Any:
        created.append(len(data))
        return decoder(data)

    monkeypatch.setattr(WebPImagePlugin._webp, "WebPAnimDecoder", recording_decoder)
    with pytest.raises(InvalidInputError) as raised:
        open_image(data, max_pixels=40_000_000)
    assert raised.value.message == "image is 16384x16384 = 268435456 pixels, over the limit of 40000000"
    assert created == []  # refused before the canvas was allocated
    await refused(
        module_stub, second(data), INVALID, "inputs[1]: image is 16384x16384 = 268435456 pixels, over the limit"
    )
