"""Image sizes read from headers (images/dimensions.py) agree with what Pillow opens, and never cost much."""

from __future__ import annotations

import base64
import io
import struct

import numpy as np
import pytest
from imgcls.server.images.dimensions import PEEK_BYTES, peek_base64_size, peek_size
from PIL import Image
from support.paths import ROOT

PIXELS = (np.random.default_rng(7).random((37, 53, 3)) * 255).astype(np.uint8)


def encoded(fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(PIXELS).save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("JPEG", {"exif": b"Exif\x00\x00" + b"\x00" * 30_000}),  # metadata before the frame header
        ("PNG", {}),
        ("GIF", {}),
        ("WEBP", {}),
        ("WEBP", {"lossless": True}),
        ("WEBP", {"exif": b"Exif\x00\x00abc"}),  # extended (VP8X)
        ("BMP", {}),
    ],
)
def test_each_format_read_here_gives_the_size_pillow_opens(fmt: str, options: dict[str, object]) -> None:
    data = encoded(fmt, **options)
    assert Image.open(io.BytesIO(data)).size == (53, 37)
    assert peek_size(data) == (53, 37)
    assert peek_size(memoryview(data)) == (53, 37)


def test_the_example_photos_give_the_size_pillow_opens() -> None:
    photos = sorted((ROOT / "examples" / "images").glob("*.jpg"))
    assert photos
    for photo in photos:
        data = photo.read_bytes()
        assert peek_size(data) == Image.open(io.BytesIO(data)).size, photo.name


def test_a_jpeg_with_two_frame_headers_gives_the_last_as_pillow_does() -> None:
    # A small first frame header would make the request look cheap; Pillow decodes the last one.
    data = encoded("JPEG")
    at = data.index(b"\xff\xc0")
    (length,) = struct.unpack_from(">H", data, at + 2)
    small = bytearray(data[at : at + 2 + length])
    small[5:9] = struct.pack(">HH", 2, 3)
    crafted = data[:at] + bytes(small) + data[at:]
    assert Image.open(io.BytesIO(crafted)).size == (53, 37)
    assert peek_size(crafted) == (53, 37)


def test_base64_images_plain_url_safe_wrapped_and_data_urls() -> None:
    data = encoded("JPEG", exif=b"Exif\x00\x00" + bytes(range(256)) * 40)
    text = base64.b64encode(data).decode()
    assert peek_base64_size(text) == (53, 37)
    assert peek_base64_size(base64.urlsafe_b64encode(data).decode().rstrip("=")) == (53, 37)
    assert peek_base64_size("\n".join(text[i : i + 76] for i in range(0, len(text), 76))) == (53, 37)
    assert peek_base64_size("data:image/jpeg;base64," + text) == (53, 37)
    assert peek_base64_size("not base64 at all!") is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8",  # a JPEG cut short before its frame header
        b"\xff\xd8\xff\xe0\x00",
        b"\xff\xd8\xff\xda\x00\x08",  # scan data before any frame header
        b"\xff\xd8\xff\xe0\x00\x01rest",  # a segment length under 2
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00",  # PNG cut inside IHDR
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", 0, 5),  # no width
        b"GIF89a\x00\x00\x05\x00",
        b"RIFF\x00\x00\x00\x00WEBPVP8Z",  # an unknown WebP chunk
        b"BM" + b"\x00" * 12 + struct.pack("<I", 20),  # an unknown BMP header size
        encoded("TIFF"),  # a format not read here: charged when decoded
    ],
)
def test_what_is_not_read_here_is_unknown(data: bytes) -> None:
    assert peek_size(data) is None


def test_a_jpeg_whose_frame_header_is_past_the_bytes_read_is_unknown() -> None:
    padding = b"".join(b"\xff\xe1" + struct.pack(">H", 65_000) + b"\x00" * 64_998 for _ in range(2))
    data = encoded("JPEG")
    crafted = data[:2] + padding + data[2:]
    assert Image.open(io.BytesIO(crafted)).size == (53, 37)
    assert len(padding) > PEEK_BYTES
    assert peek_size(crafted) is None


def test_only_the_first_bytes_are_ever_read() -> None:
    # It runs on the event loop for every image: past PEEK_BYTES nothing is looked at, even a valid header.
    frame_header = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 37, 53, 1) + b"\x01\x11\x00"
    assert peek_size(b"\xff\xd8" + frame_header) == (53, 37)
    for filler in (b"\x00", b"\xff", b"\xff\x01"):  # stray bytes, fill bytes, standalone markers
        data = b"\xff\xd8" + filler * (PEEK_BYTES // len(filler)) + frame_header
        assert peek_size(data) is None


def test_a_marker_is_looked_for_only_a_few_bytes_past_the_last_segment() -> None:
    frame_header = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 37, 53, 1) + b"\x01\x11\x00"
    assert peek_size(b"\xff\xd8" + b"\x00" * 10 + frame_header) == (53, 37)
    assert peek_size(b"\xff\xd8" + b"\xff" * 60 + frame_header) == (53, 37)  # fill bytes
    assert peek_size(b"\xff\xd8" + b"\x00" * 100 + frame_header) is None  # charged when decoded instead


def test_a_data_url_without_base64_is_not_read() -> None:
    data = base64.b64encode(encoded("PNG")).decode()
    assert peek_base64_size("data:image/png;base64," + data) == (53, 37)
    assert peek_base64_size("data:image/png," + data) is None  # decoding refuses it
    assert peek_base64_size("data:" + "x" * 5000 + ";base64," + data) is None  # a header too long to look at
