"""Python values -> imgcls.v1.Input messages."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from imgcls.v1 import classifier_pb2 as pb

try:  # Pillow is optional for the client
    from PIL import Image as _PILImage
except ImportError:  # pragma: no cover
    _PILImage = None  # type: ignore[assignment]

ImageLike = str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray | Any

# A URL scheme (http://, https://, s3://, ...): never read as a path, and never fetched.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

_RAW_FORMATS = {1: pb.PIXEL_FORMAT_GRAY8, 3: pb.PIXEL_FORMAT_RGB8, 4: pb.PIXEL_FORMAT_RGBA8}


def to_input(value: ImageLike) -> pb.Input:
    """A path, encoded bytes, a PIL image, a uint8 HxW[xC] array (raw pixels) or a float array (a tensor).

    A missing or unreadable path raises the OSError naming it; a URL raises ValueError (it is not fetched).
    """
    if isinstance(value, pb.Input):
        return value
    if isinstance(value, str | os.PathLike):
        text = os.fspath(value)
        if isinstance(value, str) and text.startswith("data:"):
            return pb.Input(image_base64=text)
        if isinstance(value, str) and _URL.match(text):
            raise ValueError(f"URLs are not fetched; download the image first and pass its path or bytes: {text}")
        return pb.Input(image=Path(text).read_bytes())
    if isinstance(value, bytes | bytearray | memoryview):
        return pb.Input(image=bytes(value))
    if _PILImage is not None and isinstance(value, _PILImage.Image):
        image = value if value.mode in ("RGB", "RGBA", "L") else value.convert("RGB")
        return to_input(np.asarray(image))
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint8:
            channels = 1 if value.ndim == 2 else value.shape[-1]
            if value.ndim not in (2, 3) or channels not in _RAW_FORMATS:
                raise ValueError(f"uint8 arrays must be HxW, HxWx3 or HxWx4, got shape {value.shape}")
            height, width = value.shape[:2]
            return pb.Input(
                raw=pb.RawImage(
                    width=width,
                    height=height,
                    format=_RAW_FORMATS[channels],
                    data=np.ascontiguousarray(value).tobytes(),
                )
            )
        if value.dtype in (np.float32, np.float16):
            dtype = pb.DATA_TYPE_FLOAT32 if value.dtype == np.float32 else pb.DATA_TYPE_FLOAT16
            return pb.Input(
                tensor=pb.Tensor(
                    dims=list(value.shape),
                    dtype=dtype,
                    raw_data=np.ascontiguousarray(value).astype("<" + value.dtype.char).tobytes(),
                )
            )
        raise ValueError(f"arrays must be uint8 pixels or float32/float16 tensors, got {value.dtype}")
    raise TypeError(f"cannot classify a {type(value).__name__}")
