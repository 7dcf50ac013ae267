"""Inputs -> PIL images or model-ready arrays, with every way they can be wrong refused clearly."""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
import reprlib
import struct
import threading
import warnings
from typing import Any

import numpy as np
from imgcls.server.domain.errors import InvalidInputError
from imgcls.server.domain.types import Base64Image, EncodedImage, PixelFormat, RawImage, TensorDType, TensorInput
from PIL import Image, UnidentifiedImageError

# Pillow's global bomb check warns or raises at its own fixed limit; imgcls enforces each server's
# max_image_pixels instead (below, and in open_image), so the global one is off.
Image.MAX_IMAGE_PIXELS = None

# Pillow logs what it parses at DEBUG, EXIF tag values included (descriptions, GPS positions, serial
# numbers): callers' image contents must not reach the server's logs, whoever turns logging up.
# Left alone when someone has set Pillow's level on purpose.
if logging.getLogger("PIL").level == logging.NOTSET:
    logging.getLogger("PIL").setLevel(logging.INFO)

# The formats the README documents, and only those: Pillow knows dozens more (EPS runs
# Ghostscript, ICNS, SPIDER, ...), each a parser exposed to callers for no use. (A JPEG holding
# several pictures, as phone cameras write them, still opens: Pillow's JPEG opener makes it MPO.)
DOCUMENTED_FORMATS = ("JPEG", "PNG", "WebP", "GIF", "BMP", "TIFF")
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

_PIL_MODES = {
    PixelFormat.RGB8: "RGB",
    PixelFormat.RGBA8: "RGBA",
    PixelFormat.BGR8: "RGB",
    PixelFormat.GRAY8: "L",
}
_NUMPY_DTYPES: dict[TensorDType, np.dtype[Any]] = {
    TensorDType.FLOAT32: np.dtype("<f4"),
    TensorDType.FLOAT16: np.dtype("<f2"),
}

# Error messages quote what the caller sent, but never more than this: a message must not echo a
# large input back (stream frame errors are sent as they are), nor cost much to build.
_BRIEF = reprlib.Repr()  # (keyword arguments need Python 3.12)
_BRIEF.maxlevel, _BRIEF.maxdict, _BRIEF.maxlist, _BRIEF.maxtuple, _BRIEF.maxset = 3, 4, 8, 8, 4
_BRIEF.maxstring = 130  # a model name (at most 128 characters) is shown whole
_BRIEF.maxother = _BRIEF.maxlong = 64
_BRIEF_CHARS = 160


def brief(value: object) -> str:
    """repr(value) for an error message, shortened (with ...) when long."""
    text = _BRIEF.repr(value)
    return text if len(text) <= _BRIEF_CHARS else text[: _BRIEF_CHARS - 3] + "..."


def short_cause(exc: BaseException) -> str:
    """A decoder's own message, shortened: some quote bytes of the file (e.g. a TIFF header)."""
    text = str(exc)
    return text if len(text) <= _BRIEF_CHARS else text[: _BRIEF_CHARS - 3] + "..."


class _OverLimit(Image.DecompressionBombError):
    """Raised inside Image.open by _bomb_check; open_image turns it into InvalidInputError."""

    def __init__(self, width: int, height: int) -> None:
        super().__init__(f"{width}x{height}")
        self.width, self.height = width, height


_opening = threading.local()  # .max_pixels: the limit of the open_image running on this thread
_pillow_bomb_check = Image._decompression_bomb_check


def _bomb_check(size: tuple[int, int], *args: Any, **kwargs: Any) -> None:
    """Pillow's hook before it allocates for a size read from a file, with open_image's limit.

    Some decoders allocate inside Image.open for sizes that image.size does not show yet, before
    open_image can look: a GIF frame larger than its screen gets a frame-sized canvas (4 GB from
    a 43-byte file), a WebP its full canvas. Pillow asks this hook first at each such place, so
    the limit holds there too. Outside open_image (another thread, other Pillow users in the
    process) Pillow's own check runs, unchanged.
    """
    limit: int | None = getattr(_opening, "max_pixels", None)
    if limit is None:
        _pillow_bomb_check(size, *args, **kwargs)
    elif max(1, size[0]) * max(1, size[1]) > limit:
        raise _OverLimit(size[0], size[1])


# Module attribute, looked up at each call by Image.open and the plugins (a private name: the
# GIF test in tests/reliability/test_hostile_images.py fails if Pillow ever stops calling it).
Image._decompression_bomb_check = _bomb_check


# What Pillow's format parsers raise on malformed headers besides OSError/ValueError (found by the
# fuzz target, tests/reliability/fuzz_decoding.py): the input's fault, so INVALID_ARGUMENT.
PILLOW_PARSER_ERRORS: tuple[type[Exception], ...] = (
    TypeError,
    IndexError,
    KeyError,
    ZeroDivisionError,
    AttributeError,
    struct.error,
    OverflowError,
)


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Open an encoded image (header only: pixels are decoded later, possibly at reduced size)."""
    if not data:
        raise InvalidInputError("empty image")
    _opening.max_pixels = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except _OverLimit as exc:
        raise InvalidInputError(_over_limit(exc.width, exc.height, max_pixels)) from None
    except UnidentifiedImageError:
        raise InvalidInputError(
            f"not a decodable image (unknown or corrupt format; accepted: {', '.join(DOCUMENTED_FORMATS)})"
        ) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidInputError(f"not a decodable image ({short_cause(exc)})") from None
    except PILLOW_PARSER_ERRORS as exc:
        # Pillow's parsers trust header fields they have not validated (a TIFF offset that is a
        # rational, an index past a table): on hostile bytes they raise what Python raises.
        raise InvalidInputError(f"not a decodable image ({type(exc).__name__}: {short_cause(exc)})") from None
    finally:
        _opening.max_pixels = None
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidInputError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidInputError(_over_limit(width, height, max_pixels))
    return image


def _over_limit(width: int, height: int, max_pixels: int) -> str:
    return f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"


def load_pixels(image: Image.Image) -> Image.Image:
    """Decode the (first frame's) pixels, turning decoder failures into InvalidInputError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidInputError(f"image data is truncated or corrupt ({short_cause(exc)})") from None
    except Image.DecompressionBombError as exc:
        raise InvalidInputError(short_cause(exc)) from None
    except PILLOW_PARSER_ERRORS as exc:  # as in open_image
        raise InvalidInputError(f"image data is corrupt ({type(exc).__name__}: {short_cause(exc)})") from None
    return image


def decode_base64(text: str) -> bytes:
    """Plain base64 (standard or URL-safe) or a data: URL."""
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise InvalidInputError("image_base64: a data: URL must be base64-encoded (data:<type>;base64,...)")
    text = "".join(text.split())
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError("image_base64 is not valid base64") from None


def raw_to_image(raw: RawImage, *, max_pixels: int) -> Image.Image:
    if raw.format not in _PIL_MODES:
        raise InvalidInputError(f"raw: unknown pixel format {raw.format!r}")
    if raw.width < 1 or raw.height < 1:
        raise InvalidInputError(f"raw: width and height must be positive, got {raw.width}x{raw.height}")
    if raw.width * raw.height > max_pixels:
        raise InvalidInputError(
            f"raw: {raw.width}x{raw.height} = {raw.width * raw.height} pixels, over the limit of {max_pixels}"
        )
    channels = raw.format.channels
    expected = raw.width * raw.height * channels
    if len(raw.data) != expected:
        raise InvalidInputError(
            f"raw: data has {len(raw.data)} bytes but {raw.width}x{raw.height} {raw.format.value} needs {expected}"
        )
    if raw.format is PixelFormat.BGR8:
        pixels = np.frombuffer(raw.data, dtype=np.uint8).reshape(raw.height, raw.width, 3)[:, :, ::-1]
        return Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    return Image.frombuffer(_PIL_MODES[raw.format], (raw.width, raw.height), raw.data, "raw")


def to_pil(item: EncodedImage | Base64Image | RawImage, *, max_pixels: int) -> Image.Image:
    """Any image input as a (lazily decoded) PIL image."""
    if isinstance(item, RawImage):
        return raw_to_image(item, max_pixels=max_pixels)
    data = decode_base64(item.text) if isinstance(item, Base64Image) else item.data
    return open_image(data, max_pixels=max_pixels)


def tensor_to_array(
    tensor: TensorInput,
    *,
    sample_shape: tuple[int | None, ...],
    dtype: np.dtype,  # type: ignore[type-arg]
    max_elements: int,
) -> np.ndarray:
    """A pre-processed tensor as an array of samples (N, *sample_shape) in the model's dtype.

    Values are taken as they are; NaN and Inf are passed to the model and answered with
    whatever scores it gives.
    """
    dims = tuple(tensor.dims)

    def shown() -> str:  # the dims as the caller sent them, shortened (there may be a million); errors only
        return brief(list(tensor.dims))

    if any(d <= 0 for d in dims):
        raise InvalidInputError(f"tensor: dims must be positive, got {shown()}")
    rank = len(sample_shape)
    if len(dims) == rank:
        dims = (1, *dims)
    if len(dims) != rank + 1:
        raise InvalidInputError(
            f"tensor: dims {shown()} have rank {len(tensor.dims)}; the model takes "
            f"{rank} dims per sample ({_shape_text(sample_shape)}), with or without a batch dimension"
        )
    for got, want in zip(dims[1:], sample_shape, strict=True):
        if want is not None and got != want:
            raise InvalidInputError(f"tensor: dims {shown()} do not match the model input {_shape_text(sample_shape)}")
    count = math.prod(dims)
    if count > max_elements:
        raise InvalidInputError(f"tensor: {count} elements, over the limit of {max_elements}")
    if tensor.dtype not in _NUMPY_DTYPES:
        raise InvalidInputError(f"tensor: unknown dtype {tensor.dtype!r}; use FLOAT32 or FLOAT16")
    if tensor.raw_data and len(tensor.float_data):
        raise InvalidInputError("tensor: set raw_data or float_data, not both")
    if tensor.raw_data:
        source_dtype = _NUMPY_DTYPES[tensor.dtype]
        if len(tensor.raw_data) != count * source_dtype.itemsize:
            raise InvalidInputError(
                f"tensor: raw_data has {len(tensor.raw_data)} bytes but dims {shown()} of "
                f"{tensor.dtype.value} need {count * source_dtype.itemsize}"
            )
        array = np.frombuffer(tensor.raw_data, dtype=source_dtype)
    else:
        if len(tensor.float_data) != count:
            raise InvalidInputError(
                f"tensor: float_data has {len(tensor.float_data)} values but dims {shown()} need {count}"
            )
        array = np.asarray(tensor.float_data, dtype=np.float32)
    return array.reshape(dims).astype(dtype, copy=False)


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)
