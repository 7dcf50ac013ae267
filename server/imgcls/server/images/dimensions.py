"""An encoded image's width and height from its first bytes, without Pillow and without decoding.

The engine charges what decoding an image will hold to the request's memory budget when the request is
admitted, so a request that would not fit is refused before it waits for anything (see
engine/model.py). That runs on the event loop for every image, so it reads only the few header bytes
each format puts its size in. It is an estimate, not a check: decoding still grows the request's lease
when Pillow finds a larger image than the header read here said (a GIF frame larger than its screen), and
an image whose size is not read here (TIFF, a JPEG frame header past PEEK_BYTES) is charged when it is
decoded.
"""

from __future__ import annotations

import re
import struct

from imgcls.server.domain.errors import InvalidInputError
from imgcls.server.images.decoding import decode_base64

# JPEG markers that start a frame and carry its size (SOF0-SOF15 less DHT, JPG and DAC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone (no length follows): TEM, RST0-7, SOI.
_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8), 0xD8))
# Segments walked at most before giving up (a header of thousands of empty segments is not worth reading).
_MAX_JPEG_SEGMENTS = 256
# The bytes read at most: JPEG's frame header follows its metadata segments (EXIF, ICC profiles), which
# rarely pass 64 KiB; past that the image is charged when it is decoded.
PEEK_BYTES = 64 * 1024
# Of a base64 image, the bytes decoded first; how far a data: URL's header is looked at.
_FIRST_BASE64_BYTES = 3 * 1024
_MAX_DATA_URL_HEADER = 1024
# Between two JPEG segments only fill bytes (0xFF) belong: a marker not found this soon is not looked for.
_MAX_JPEG_GAP = 64
_MARKER = re.compile(rb"\xff([^\xff])")  # the last of a run of 0xFF (fill bytes) and the marker after it

Buffer = bytes | bytearray | memoryview


def peek_size(data: Buffer) -> tuple[int, int] | None:
    """(width, height) as the header says, or None when the format is not one read here or the header
    is cut short or malformed (then decoding tells)."""
    head = bytes(data[:PEEK_BYTES])
    try:
        if head[:2] == b"\xff\xd8":
            return _jpeg(head)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return _positive(*struct.unpack_from(">II", head, 16))
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return _positive(*struct.unpack_from("<HH", head, 6))
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp(head)
        if head[:2] == b"BM":
            return _bmp(head)
    except struct.error:  # cut short
        return None
    return None


def peek_base64_size(text: str) -> tuple[int, int] | None:
    """peek_size of a base64 image (plain, URL-safe or a data: URL), decoding only its first bytes: a few KiB
    first (most headers are there), PEEK_BYTES only when those do not say (decoding 64 KiB of base64 takes
    ~0.25 ms, a cost per image on the event loop). Decoded as the request's image will be (decode_base64)."""
    # A data: URL's header is looked for only near the start (the image after it may be the message limit).
    header = text.find(",", 0, _MAX_DATA_URL_HEADER) + 1 if text.startswith("data:") else 0
    size = None
    for nbytes in (_FIRST_BASE64_BYTES, PEEK_BYTES):
        chars = nbytes // 3 * 4
        try:
            size = peek_size(decode_base64(text[: header + chars]))
        except InvalidInputError:
            return None  # decoding the whole image says what is wrong with it
        if size is not None or len(text) - header <= chars:
            break
    return size


def _positive(width: int, height: int) -> tuple[int, int] | None:
    return (width, height) if width > 0 and height > 0 else None


def _jpeg(head: bytes) -> tuple[int, int] | None:
    """The last frame header's size before the scan data, as Pillow reads it (a file may carry several)."""
    pos, size = 2, None
    for _ in range(_MAX_JPEG_SEGMENTS):
        # The next marker, past fill bytes (and a few stray bytes, as decoders skip them): a bounded search.
        found = _MARKER.search(head, pos, pos + _MAX_JPEG_GAP + 2)
        if found is None:
            break
        marker, pos = found[1][0], found.end()
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image, or the scan data: the frame is known by now
            break
        if pos + 7 > len(head):
            break  # cut short
        (length,) = struct.unpack_from(">H", head, pos)
        if marker in _SOF_MARKERS:
            height, width = struct.unpack_from(">HH", head, pos + 3)
            size = _positive(width, height)
        if length < 2:
            break
        pos += length
    return size


def _webp(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack_from("<HH", data, 26)
        return _positive(width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":
        b0, b1, b2, b3 = struct.unpack_from("<BBBB", data, 21)
        return 1 + (b0 | (b1 & 0x3F) << 8), 1 + (b1 >> 6 | b2 << 2 | (b3 & 0x0F) << 10)
    if chunk == b"VP8X":
        w0, w1, w2, h0, h1, h2 = struct.unpack_from("<6B", data, 24)
        return 1 + (w0 | w1 << 8 | w2 << 16), 1 + (h0 | h1 << 8 | h2 << 16)
    return None


def _bmp(data: bytes) -> tuple[int, int] | None:
    (header,) = struct.unpack_from("<I", data, 14)
    if header == 12:  # OS/2 BITMAPCOREHEADER
        return _positive(*struct.unpack_from("<HH", data, 18))
    if header >= 40:
        width, height = struct.unpack_from("<ii", data, 18)
        return _positive(width, abs(height))  # a negative height is a top-down bitmap
    return None
