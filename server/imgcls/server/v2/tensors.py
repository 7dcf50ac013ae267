"""Tensor bytes in the Open Inference Protocol's forms: typed values, raw little-endian, length-prefixed BYTES.

Every error is an InvalidInputError whose message names the input (``input 'image': ...``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from imgcls.server.domain.errors import InvalidInputError
from imgcls.server.images.decoding import brief
from imgcls.server.v2.types import BYTES_LENGTH, NUMPY_OF_DATATYPE, InputTensor, encode_bytes_elements

__all__ = [
    "bytes_elements",
    "decode_bytes_elements",
    "element_count",
    "encode_bytes_elements",
    "named",
    "numeric_array",
]


def named(tensor: InputTensor | str) -> str:
    name = tensor if isinstance(tensor, str) else tensor.name
    return f"input {brief(name)}"


def element_count(tensor: InputTensor) -> int:
    """prod(shape), refusing negative dims (a request's shape has no -1)."""
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in tensor.shape):
        raise InvalidInputError(f"{named(tensor)}: shape {brief(list(tensor.shape))} must be non-negative integers")
    return math.prod(tensor.shape)


def decode_bytes_elements(raw: bytes | memoryview, count: int, name: str) -> list[bytes]:
    """The inverse of encode_bytes_elements, checking there are exactly ``count`` elements and nothing after."""
    view = memoryview(raw).cast("B")
    elements: list[bytes] = []
    offset = 0
    while offset < len(view):
        if len(elements) == count:
            raise InvalidInputError(
                f"{named(name)}: {len(view) - offset} bytes after its {count} BYTES elements "
                "(each element is a 4-byte little-endian length, then that many bytes)"
            )
        if offset + 4 > len(view):
            raise InvalidInputError(
                f"{named(name)}: element {len(elements)} is truncated: {len(view) - offset} bytes left where a "
                "4-byte little-endian length prefix was expected"
            )
        (length,) = BYTES_LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInputError(
                f"{named(name)}: element {len(elements)} claims {length} bytes but only {len(view) - offset} "
                "follow (each element is a 4-byte little-endian length, then that many bytes)"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if len(elements) != count:
        raise InvalidInputError(f"{named(name)}: has {len(elements)} BYTES elements but its shape needs {count}")
    return elements


def bytes_elements(tensor: InputTensor) -> list[bytes | str]:
    """A BYTES input's elements, row-major: from raw (length-prefixed) or data (bytes or str elements)."""
    if tensor.datatype != "BYTES":
        raise InvalidInputError(f"{named(tensor)}: datatype is {brief(tensor.datatype)}; it takes BYTES")
    count = element_count(tensor)
    if tensor.raw is not None:
        if tensor.data is not None:
            raise InvalidInputError(f"{named(tensor)}: has both raw contents and typed contents; send one")
        return list(decode_bytes_elements(tensor.raw, count, tensor.name))
    flat = _flatten(tensor.data if tensor.data is not None else [], tensor)
    for index, element in enumerate(flat):
        if not isinstance(element, bytes | bytearray | memoryview | str):
            raise InvalidInputError(
                f"{named(tensor)}: element {index} is a {type(element).__name__}; BYTES elements are bytes or text"
            )
    if len(flat) != count:
        raise InvalidInputError(f"{named(tensor)}: has {len(flat)} BYTES elements but its shape needs {count}")
    return [e if isinstance(e, bytes | str) else bytes(e) for e in flat]


def numeric_array(tensor: InputTensor) -> np.ndarray:
    """An FP32 or FP16 input as a numpy array of its shape (raw bytes are viewed, not copied)."""
    dtype = NUMPY_OF_DATATYPE.get(tensor.datatype)
    if dtype is None:
        raise InvalidInputError(f"{named(tensor)}: datatype {brief(tensor.datatype)} is not accepted; use FP32 or FP16")
    count = element_count(tensor)
    if tensor.raw is not None:
        if tensor.data is not None:
            raise InvalidInputError(f"{named(tensor)}: has both raw contents and typed contents; send one")
        size = len(memoryview(tensor.raw).cast("B"))
        if size != count * dtype.itemsize:
            raise InvalidInputError(
                f"{named(tensor)}: raw contents have {size} bytes but shape {list(tensor.shape)} of "
                f"{tensor.datatype} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(tensor.raw, dtype=dtype).reshape(tensor.shape)
    data = tensor.data if tensor.data is not None else []
    try:
        array = np.asarray(data, dtype=dtype) if not isinstance(data, np.ndarray) else data.astype(dtype, copy=False)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: an integer beyond any float
        raise InvalidInputError(f"{named(tensor)}: data is not a list of numbers ({type(exc).__name__})") from None
    if array.size != count:
        raise InvalidInputError(
            f"{named(tensor)}: has {array.size} values but shape {brief(list(tensor.shape))} needs {count}"
        )
    return array.reshape(tensor.shape)


def check_json_numbers(tensor: InputTensor) -> None:
    """JSON data of a numeric tensor holds numbers and nothing else: converted to the dtype, numpy would take
    "1.5", true and null (as NaN) for numbers. Where the JSON is parsed (off the event loop when it is large);
    gRPC's typed contents cannot hold anything else."""
    data = tensor.data
    if tensor.datatype not in NUMPY_OF_DATATYPE or not isinstance(data, list):
        return
    flat = data if not data or not isinstance(data[0], list) else _flatten(data, tensor)
    if set(map(type, flat)) <= {int, float}:  # type() of each element, in C: bool is not int here
        return
    wrong = next(i for i, v in enumerate(flat) if isinstance(v, bool) or not isinstance(v, int | float | list))
    raise InvalidInputError(
        f"{named(tensor)}: element {wrong} is {brief(flat[wrong])}; {tensor.datatype} data holds numbers only"
    )


def _flatten(data: Any, tensor: InputTensor) -> list[Any]:
    """Nested lists (JSON data in the tensor's shape) flattened row-major; a flat list is returned as is."""
    if isinstance(data, np.ndarray):
        return list(data.reshape(-1))
    if isinstance(data, bytes | str):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list | tuple):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat
