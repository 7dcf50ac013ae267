"""A ClassifyRequest's tensor payloads as views of the received message, not copies.

Parsed the ordinary way, a 602 KB tensor is copied twice after gRPC received it: into the parsed message,
then out of it as ``raw_data`` bytes. Here the message's bytes are scanned first: each input that is a tensor
with its ``raw_data`` once gets that field cut out, and the rest (small) is parsed by protobuf as usual; the
tensor's data is handed on as a memoryview of the received bytes, which NumPy reads in place.

Only the plain wire form is lifted: an input holding exactly one ``tensor`` field, whose ``raw_data`` occurs
once. Anything else (repeated or merged fields, unknown wire types, a truncated message) is left to protobuf
as it is, so the parsed message (and any DecodeError) is exactly what ``ClassifyRequest.FromString`` gives.
"""

from __future__ import annotations

from typing import NamedTuple

from imgcls.v1 import classifier_pb2 as pb

_INPUTS = 2  # ClassifyRequest.inputs
_TENSOR = 4  # Input.tensor
_RAW_DATA = 3  # Tensor.raw_data
_LEN = 2  # the length-delimited wire type


class Lifted(NamedTuple):
    """The message without the lifted payloads, and per input its payload (None: parsed as usual)."""

    message: pb.ClassifyRequest
    payloads: tuple[memoryview | None, ...]


class _Unusual(Exception):
    """A wire form this scan does not lift: protobuf parses the message as it is."""


def parse_classify(raw: bytes) -> pb.ClassifyRequest | Lifted:
    """The request, with its tensor payloads lifted out as views of raw when there are any."""
    try:
        parts, payloads = _split(raw)
    except _Unusual:
        return pb.ClassifyRequest.FromString(raw)
    if not any(p is not None for p in payloads):
        return pb.ClassifyRequest.FromString(raw)
    return Lifted(pb.ClassifyRequest.FromString(b"".join(parts)), tuple(payloads))


def unwrap(request: pb.ClassifyRequest | Lifted) -> Lifted:
    return request if isinstance(request, Lifted) else Lifted(request, ())


def _split(raw: bytes) -> tuple[list[bytes], list[memoryview | None]]:
    view = memoryview(raw)
    parts: list[bytes] = []
    payloads: list[memoryview | None] = []
    for number, wire_type, start, value_start, end in _fields(raw, 0, len(raw)):
        if number == _INPUTS and wire_type == _LEN:
            lifted = _lift_input(raw, value_start, end)
            if lifted is not None:
                stripped, data = lifted
                parts.append(_key(_INPUTS) + _varint_bytes(len(stripped)) + stripped)
                payloads.append(view[data[0] : data[1]])
                continue
            payloads.append(None)
        parts.append(raw[start:end])
    return parts, payloads


def _lift_input(raw: bytes, start: int, end: int) -> tuple[bytes, tuple[int, int]] | None:
    """(the Input without its tensor's raw_data, where raw_data lies in raw), or None to keep it as it is."""
    fields = list(_fields(raw, start, end))
    if len(fields) != 1 or fields[0][0] != _TENSOR or fields[0][1] != _LEN:
        return None
    _, _, _, tensor_start, tensor_end = fields[0]
    kept: list[bytes] = []
    data: tuple[int, int] | None = None
    for number, wire_type, field_start, value_start, field_end in _fields(raw, tensor_start, tensor_end):
        if number == _RAW_DATA:
            if wire_type != _LEN or data is not None:
                return None  # raw_data twice: protobuf keeps the last; not worth lifting
            data = (value_start, field_end)
        else:
            kept.append(raw[field_start:field_end])
    if data is None:
        return None
    tensor = b"".join(kept)
    return _key(_TENSOR) + _varint_bytes(len(tensor)) + tensor, data


def _fields(raw: bytes, pos: int, end: int) -> list[tuple[int, int, int, int, int]]:
    """Each field in raw[pos:end]: (number, wire type, start, value start, end)."""
    fields = []
    while pos < end:
        start = pos
        key, pos = _varint(raw, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise _Unusual
        if wire_type == 0:
            value_start = pos
            _, pos = _varint(raw, pos, end)
        elif wire_type == _LEN:
            length, value_start = _varint(raw, pos, end)
            pos = value_start + length
        elif wire_type == 1:
            value_start, pos = pos, pos + 8
        elif wire_type == 5:
            value_start, pos = pos, pos + 4
        else:
            raise _Unusual  # groups: long deprecated, and not in this schema
        if pos > end:
            raise _Unusual
        fields.append((number, wire_type, start, value_start, pos))
    return fields


def _varint(raw: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end and shift < 64:
        byte = raw[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise _Unusual


def _key(number: int) -> bytes:
    return _varint_bytes(number << 3 | _LEN)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
