"""Hostile and awkward image files, made here from the shared images (nothing is downloaded).

Every builder returns the file's bytes; ``write_corpus`` writes a small set of them into a folder
(seeds for the fuzzer). Each file is built so that a test can check it is what it claims to be
(for example ``frame_count`` on the animated GIF), so a corpus bug cannot pass unnoticed.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


# --- garbage -------------------------------------------------------------------------------


def random_bytes(size: int = 4096, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def truncated(data: bytes) -> bytes:
    """The first half of a valid file: the header parses, the pixel data ends early."""
    return data[: len(data) // 2]


# --- headers that lie about the size -------------------------------------------------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_with_dimensions(png: bytes, width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with a correct CRC so decoders believe it."""
    assert png[12:16] == b"IHDR", "IHDR must be the first chunk"
    ihdr = bytearray(png[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    return png[:8] + _png_chunk(b"IHDR", bytes(ihdr)) + png[33:]


def jpeg_with_dimensions(jpeg: bytes, width: int, height: int) -> bytes:
    """A baseline JPEG whose SOF0 segment claims width x height (16 bits each, at most 65535)."""
    at = jpeg.find(b"\xff\xc0")
    assert at > 0, "not a baseline (SOF0) JPEG"
    patched = bytearray(jpeg)
    # SOF0: marker(2) length(2) precision(1) height(2) width(2) ...
    patched[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(patched)


def gif_with_oversized_frame(frame_width: int, frame_height: int, screen: int = 32) -> bytes:
    """A GIF whose screen is `screen` x `screen` pixels but whose one frame claims a far larger extent.

    The frame is disposed to the background (disposal method 2), so a decoder builds a canvas of
    the frame's size while opening the file, before anything can look at the screen size. (Found
    by the fuzzer: 918 bytes that made Pillow allocate 4 GB in Image.open.)
    """
    header = b"GIF89a" + struct.pack("<HHBBB", screen, screen, 0, 0, 0)  # no global colour table
    control = b"\x21\xf9\x04" + bytes([2 << 2, 0, 0, 0]) + b"\x00"  # disposal 2, no transparency
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, frame_width, frame_height, 0x80)  # local table, 2 colours
    palette = b"\x00\x00\x00\xff\xff\xff"
    pixels = b"\x02\x02\x44\x01\x00"  # LZW minimum code size 2, one tiny sub-block, end of data
    return header + control + descriptor + palette + pixels + b"\x3b"


def gif_frame_extent(data: bytes) -> tuple[int, int]:
    """(width, height) of the first image descriptor, read from the bytes (not through Pillow)."""
    at = data.index(b"\x2c", 13)
    width, height = struct.unpack("<HH", data[at + 5 : at + 9])
    return width, height


def webp_with_canvas(webp: bytes, width: int, height: int) -> bytes:
    """An extended (VP8X) WebP whose canvas claims width x height (at most 16384 a side).

    In an animated WebP a canvas larger than the frames is valid, and the decoder allocates the
    whole canvas (4 bytes a pixel, twice) when it is created, inside Image.open.
    """
    assert webp[12:16] == b"VP8X", "not an extended WebP (save an animated one to get one)"
    return webp[:24] + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little") + webp[30:]


# --- many frames ---------------------------------------------------------------------------


def animated_gif(first: Image.Image, frames: int) -> tuple[bytes, bytes]:
    """(a GIF of `frames` frames whose first frame is `first`, that first frame alone as a GIF).

    The later frames are flat colours that change every frame (so Pillow does not merge them),
    and look nothing like the first: a server that classified any frame but the first would
    answer differently.
    """
    base = first.convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
    palette = base.getpalette()
    assert palette is not None
    rest = []
    for i in range(1, frames):
        frame = Image.new("P", base.size, color=i % 255)
        frame.putpalette(palette)
        rest.append(frame)
    animated = encode(base, "GIF", save_all=True, append_images=rest, duration=10, loop=0, optimize=False)
    return animated, encode(base, "GIF")


def multipage_tiff(first: Image.Image, pages: int) -> tuple[bytes, bytes]:
    """(a TIFF of `pages` pages whose first page is `first`, that first page alone as a TIFF)."""
    rest = [Image.new("RGB", first.size, ((37 * i) % 256, (91 * i) % 256, (173 * i) % 256)) for i in range(1, pages)]
    many = encode(first, "TIFF", save_all=True, append_images=rest, compression="tiff_deflate")
    return many, encode(first, "TIFF", compression="tiff_deflate")


def frame_count(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as image:
        return int(getattr(image, "n_frames", 1))


# --- colour spaces and bit depths ----------------------------------------------------------


def cmyk_jpeg(image: Image.Image) -> bytes:
    return encode(image.convert("CMYK"), "JPEG", quality=95)


def ycck_jpeg(image: Image.Image) -> bytes:
    """A YCCK JPEG (Adobe APP14 transform 2) of the image.

    Pillow cannot write YCCK, so: compute the YCCK components libjpeg would store for the image's
    CMYK, save them as a CMYK JPEG (Pillow inverts CMYK on save, so pre-invert), then set the Adobe
    transform flag to 2. Decoders then read the components as YCCK and convert them back to CMYK.
    """
    cmyk = np.asarray(image.convert("CMYK"), dtype=np.float64)
    # libjpeg stores Adobe-inverted CMYK: stored = 255 - value; YCCK takes R = 255 - stored = value.
    r, g, b, k = cmyk[..., 0], cmyk[..., 1], cmyk[..., 2], cmyk[..., 3]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168735892 * r - 0.331264108 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418687589 * g - 0.081312411 * b + 128
    stored = np.stack([y, cb, cr, 255 - k], axis=-1)
    fake = Image.fromarray(np.clip(np.rint(255 - stored), 0, 255).astype(np.uint8), "CMYK")
    data = bytearray(encode(fake, "JPEG", quality=95))
    at = data.find(b"\xff\xee")
    assert data[at + 4 : at + 9] == b"Adobe", "Pillow wrote no Adobe marker"
    data[at + 15] = 2  # transform: 0 = CMYK, 1 = YCbCr, 2 = YCCK
    return bytes(data)


def jpeg_adobe_transform(data: bytes) -> int | None:
    with Image.open(io.BytesIO(data)) as image:
        value = image.info.get("adobe_transform")
        return None if value is None else int(value)


def png16_gray(image: Image.Image) -> tuple[bytes, bytes]:
    """(a 16-bit grayscale PNG, the same picture as an 8-bit grayscale PNG): v16 = v8 * 257."""
    gray8 = np.asarray(image.convert("L"), dtype=np.uint16)
    png16 = encode(Image.fromarray(gray8 * 257), "PNG")
    return png16, encode(image.convert("L"), "PNG")


def png16_rgb(image: Image.Image) -> tuple[bytes, bytes]:
    """(a 16-bit-per-channel RGB PNG, the same picture as an 8-bit RGB PNG).

    Pillow cannot write 48-bit PNGs, so this writes the chunks by hand.
    """
    rgb8 = np.asarray(image.convert("RGB"), dtype=np.uint16)
    height, width = rgb8.shape[:2]
    rows = (rgb8 * 257).astype(">u2").reshape(height, width * 3).tobytes()
    stride = width * 6
    raw = b"".join(b"\x00" + rows[i * stride : (i + 1) * stride] for i in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )
    return png, encode(image.convert("RGB"), "PNG")


def palette_png_with_transparency(image: Image.Image) -> tuple[bytes, bytes]:
    """(a palette PNG with a transparent colour, the same palette PNG without transparency)."""
    paletted = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return encode(paletted, "PNG", transparency=0), encode(paletted, "PNG")


def exif_rotated_jpeg(image: Image.Image) -> bytes:
    """The image stored turned 90 degrees anticlockwise, with EXIF orientation 6 (turn 90 clockwise
    to display): a viewer that honours EXIF shows the original."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())


def solid(width: int, height: int, fmt: str = "PNG") -> bytes:
    return encode(Image.new("RGB", (width, height), (200, 120, 40)), fmt)


# --- fuzzer seeds --------------------------------------------------------------------------


def seed_files(source: Image.Image) -> dict[str, bytes]:
    """Small, valid files of every supported format, plus a few broken ones."""
    small = source.resize((32, 24))
    files: dict[str, bytes] = {
        "small.jpg": encode(small, "JPEG"),
        "small.png": encode(small, "PNG"),
        "small.webp": encode(small, "WEBP"),
        "small.gif": encode(small, "GIF"),
        "small.bmp": encode(small, "BMP"),
        "small.tif": encode(small, "TIFF"),
        "cmyk.jpg": cmyk_jpeg(small),
        "palette.png": palette_png_with_transparency(small)[0],
        "gray16.png": png16_gray(small)[0],
        "exif.jpg": exif_rotated_jpeg(small),
        "frames.gif": animated_gif(small, 3)[0],
    }
    files["truncated.jpg"] = truncated(files["small.jpg"])
    files["truncated.png"] = truncated(files["small.png"])
    # Headers whose sizes Pillow allocates for while opening (see test_hostile_images).
    files["oversized-frame.gif"] = gif_with_oversized_frame(65535, 65535)
    animated = encode(small, "WEBP", save_all=True, append_images=[Image.new("RGB", small.size)])
    files["big-canvas.webp"] = webp_with_canvas(animated, 16384, 16384)
    return files


def write_corpus(folder: Path, source: Image.Image) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in seed_files(source).items():
        path = folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths
