"""What protobuf's parse of a request message will hold, estimated from its wire bytes before it is parsed.

A message of millions of tiny fields becomes many times its size once parsed: an empty submessage is 2 bytes
on the wire and ~70 in the parsed message, a packed varint 1 byte and 8 (measured: 58 KB of gzip, 64 MB of
empty ``inputs`` once decompressed, parsed into 1.6 GB, and the parse held the event loop for seconds). The
walk below reads the message's fields by its descriptor, without building anything: it refuses a message of
more fields than any request has (MAX_FIELDS, before the parse), and otherwise says what the parse will hold,
for the memory budget. It skips over every bytes, string and packed field in one step, so an image or a
tensor costs a few steps; only the adversarial shapes are walked long, and never past MAX_FIELDS.

Anything it cannot walk (a malformed message, nesting deeper than protobuf's own limit) is left to the parse,
which refuses what is malformed: the walk never refuses a message the parse would take, except for its
field count.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor

# Far above any request (imgcls.v1: ~5 per input, 64 inputs; v2: a few per tensor and parameter).
MAX_FIELDS = 65536
MAX_DEPTH = 100  # upb's own limit: anything deeper the parse refuses
# Parsed, per field: a submessage's own object, a scalar's slot, a packed element (at most one a byte).
_SUBMESSAGE = 96
_SCALAR = 16
_PACKED_ELEMENT = 8

_LENGTH_DELIMITED = 2
_START_GROUP, _END_GROUP = 3, 4
_NOT_MESSAGE = {FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_STRING}
# Packed elements of a fixed size are held as they arrived; varints (at least one byte each) as 8 bytes.
_FIXED_SIZE = {
    FieldDescriptor.TYPE_FLOAT,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_DOUBLE,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_BOOL,
}


class TooManyFields(Exception):
    """The message has more than MAX_FIELDS fields."""


class _Unwalkable(Exception):
    """Not a message this walk reads (malformed, or groups): the parse decides."""


def parsed_cost(data: bytes, descriptor: Any) -> int | None:
    """Bytes the parsed message will hold (beyond the wire bytes themselves), an upper bound for the shapes
    that grow; None when the walk cannot read it (the parse decides). TooManyFields past MAX_FIELDS."""
    budget = [MAX_FIELDS]
    try:
        cost, _ = _walk(memoryview(data), 0, len(data), descriptor, budget, 0)
    except _Unwalkable:
        return None
    return cost


def _varint(view: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Unwalkable
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _walk(
    view: memoryview, pos: int, end: int, descriptor: Any, budget: list[int], depth: int, group: int | None = None
) -> tuple[int, int]:
    """(cost, where it ended): at end, or just past the end-group key of `group` (a group's fields)."""
    if depth > MAX_DEPTH:
        raise _Unwalkable
    fields = descriptor.fields_by_number if descriptor is not None else {}
    cost = 0
    while pos < end:
        key, pos = _varint(view, pos, end)
        budget[0] -= 1
        if budget[0] < 0:
            raise TooManyFields
        wire = key & 7
        if wire == 0:
            _, pos = _varint(view, pos, end)
            cost += _SCALAR
        elif wire == 1:
            pos += 8
            cost += _SCALAR
        elif wire == 5:
            pos += 4
            cost += _SCALAR
        elif wire == _LENGTH_DELIMITED:
            length, pos = _varint(view, pos, end)
            if pos + length > end:
                raise _Unwalkable
            field = fields.get(key >> 3)
            if field is not None and field.type == FieldDescriptor.TYPE_MESSAGE:
                inner, _ = _walk(view, pos, pos + length, field.message_type, budget, depth + 1)
                cost += _SUBMESSAGE + inner
            elif field is not None and field.type in _FIXED_SIZE:
                cost += _SCALAR + length  # packed floats, doubles, fixed ints, bools: held as they came
            elif field is not None and field.type not in _NOT_MESSAGE:
                cost += _PACKED_ELEMENT * length  # packed varints: at most one element a byte, 8 bytes each
            else:
                cost += _SCALAR + length  # bytes, a string, or a field this message does not know: a copy
            pos += length
        elif wire == _START_GROUP:
            # A group (unknown to every message here, but protobuf keeps it): its fields count like any others.
            inner, pos = _walk(view, pos, end, None, budget, depth + 1, group=key >> 3)
            cost += _SUBMESSAGE + inner
        elif wire == _END_GROUP and group is not None and key >> 3 == group:
            return cost, pos
        else:
            raise _Unwalkable  # an end-group without its start, or not a wire type at all
    if group is not None or pos != end:
        raise _Unwalkable
    return cost, pos
