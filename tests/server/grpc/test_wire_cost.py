"""The walk that says what a request message's parse will hold, before it is parsed (grpc/wire_cost.py)."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import struct_pb2
from imgcls.server.grpc.wire_cost import MAX_FIELDS, TooManyFields, parsed_cost
from imgcls.v1 import classifier_pb2 as pb
from support.paths import IMAGES
from tritonclient.grpc import service_pb2

JPEG = (IMAGES / "coffee.jpg").read_bytes()
TENSOR = np.zeros((1, 3, 224, 224), np.float32).tobytes()


def overrides() -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update({"crop_pct": 1.0, "size": {"shortest_edge": 224}, "image_mean": [0.5, 0.5, 0.5]})
    return struct


def v2_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="m", id="7", raw_input_contents=[TENSOR])
    request.inputs.add(name="pixel_values", datatype="FP32", shape=[1, 3, 224, 224])
    request.outputs.add(name="logits").parameters["classification"].int64_param = 3
    request.parameters["preprocessor_overrides"].string_param = '{"crop_pct": 1.0}'
    return request


ORDINARY = {
    "a JPEG": pb.ClassifyRequest(inputs=[pb.Input(image=JPEG)], request_id="r", parameters=pb.Parameters(top_k=3)),
    "a batch of JPEGs with overrides": pb.ClassifyRequest(
        inputs=[pb.Input(image=JPEG)] * 64, preprocessor_overrides=overrides()
    ),
    "a tensor": pb.ClassifyRequest(
        inputs=[pb.Input(tensor=pb.Tensor(dims=[1, 3, 224, 224], dtype=pb.DATA_TYPE_FLOAT32, raw_data=TENSOR))]
    ),
    "a raw frame": pb.ClassifyRequest(
        inputs=[pb.Input(raw=pb.RawImage(width=224, height=224, format=pb.PIXEL_FORMAT_RGB8, data=bytes(150528)))]
    ),
    "a stream frame": pb.ClassifyStreamRequest(inputs=[pb.Input(image=JPEG)], drop_stale=True),
    "a v2 request": v2_request(),
}


@pytest.mark.parametrize("message", ORDINARY.values(), ids=ORDINARY.keys())
def test_an_ordinary_request_is_walked_and_costs_about_its_size(message: object) -> None:
    data = message.SerializeToString()  # type: ignore[attr-defined]
    cost = parsed_cost(data, message.DESCRIPTOR)  # type: ignore[attr-defined]
    assert cost is not None and len(data) <= cost <= len(data) + 16 * 1024


def test_packed_varints_and_empty_submessages_cost_what_they_become() -> None:
    dims = pb.ClassifyRequest(inputs=[pb.Input(tensor=pb.Tensor(dims=[1] * 50_000))]).SerializeToString()
    assert parsed_cost(dims, pb.ClassifyRequest.DESCRIPTOR) >= 8 * 50_000  # type: ignore[operator]
    empty = pb.ClassifyRequest(inputs=[pb.Input()] * 30_000).SerializeToString()
    assert len(empty) == 60_000
    assert parsed_cost(empty, pb.ClassifyRequest.DESCRIPTOR) >= 48 * len(empty)  # type: ignore[operator]


@pytest.mark.parametrize(
    "message",
    [
        pb.ClassifyRequest(inputs=[pb.Input()] * (MAX_FIELDS + 1)),
        service_pb2.ModelInferRequest(raw_input_contents=[b""] * (MAX_FIELDS + 1)),
        pb.ClassifyRequest(inputs=[pb.Input(tensor=pb.Tensor(dims=[1], dtype=pb.DATA_TYPE_FLOAT32))] * 30_000),
    ],
    ids=["empty inputs", "empty raw contents", "nested fields"],
)
def test_more_fields_than_any_request_has_are_refused_before_the_parse(message: object) -> None:
    with pytest.raises(TooManyFields):
        parsed_cost(message.SerializeToString(), message.DESCRIPTOR)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "data",
    [
        pb.ClassifyRequest(inputs=[pb.Input(image=JPEG)]).SerializeToString()[:-10],  # cut short
        b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint of 11 bytes
        b"\x4b\x08\x01",  # a group that never ends
        b"\x4c",  # an end of a group never begun
        b"\x12",  # a key without its length
    ],
    ids=["truncated", "overlong varint", "unended group", "unbegun group", "no length"],
)
def test_what_the_walk_cannot_read_is_left_to_the_parse(data: bytes) -> None:
    assert parsed_cost(data, pb.ClassifyRequest.DESCRIPTOR) is None


def deep(levels: int) -> pb.ClassifyRequest:
    value = struct_pb2.Value(string_value="x")
    for _ in range(levels):
        outer = struct_pb2.Value()
        outer.list_value.values.append(value)
        value = outer
    request = pb.ClassifyRequest(inputs=[pb.Input(image=JPEG)])
    request.preprocessor_overrides.fields["deep"].CopyFrom(value)
    return request


def test_nesting_is_walked_as_deep_as_protobuf_parses() -> None:
    """Every depth protobuf parses is walked (so nothing it takes can hide a flood behind it)."""
    for levels in (0, 10, 20, 30, 40, 47):
        data = deep(levels).SerializeToString()
        pb.ClassifyRequest.FromString(data)
        assert parsed_cost(data, pb.ClassifyRequest.DESCRIPTOR) is not None, levels


@pytest.mark.parametrize(
    "prefix",
    [bytes([9 << 3 | 3, 9 << 3 | 4]), deep(30).SerializeToString()],
    ids=["an empty group", "deep overrides"],
)
def test_a_prefix_protobuf_accepts_does_not_hide_a_flood_of_fields(prefix: bytes) -> None:
    """What protobuf parses (groups, nesting to its own limit) is walked, so nothing in front turns the count
    off (a reviewer's: an empty group before 10M empty inputs did)."""
    data = prefix + b"\x12\x00" * (MAX_FIELDS + 1)
    pb.ClassifyRequest.FromString(data[: len(prefix) + 200])  # protobuf takes it
    with pytest.raises(TooManyFields):
        parsed_cost(data, pb.ClassifyRequest.DESCRIPTOR)


def test_packed_floats_cost_what_arrived_and_packed_varints_eight_bytes_each() -> None:
    floats = pb.ClassifyRequest(inputs=[pb.Input(tensor=pb.Tensor(float_data=[0.5] * 1_000_000))]).SerializeToString()
    assert len(floats) <= parsed_cost(floats, pb.ClassifyRequest.DESCRIPTOR) <= len(floats) + 1024  # type: ignore[operator]
