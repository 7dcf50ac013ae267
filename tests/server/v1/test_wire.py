"""v1/wire.py: tensor payloads lifted out of a received ClassifyRequest as views, the rest as protobuf parses it."""

from __future__ import annotations

import random

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from imgcls.server.v1 import converters, wire
from imgcls.v1 import classifier_pb2 as pb


def tensor_input(rng: random.Random, *, float_data: bool = False) -> pb.Input:
    values = np.random.default_rng(rng.randrange(1 << 30)).random((1, 3, 4, 4), dtype=np.float32)
    tensor = pb.Tensor(dims=values.shape, dtype=pb.DATA_TYPE_FLOAT32)
    if float_data:
        tensor.float_data.extend(values.ravel().tolist())
    else:
        tensor.raw_data = values.tobytes()
    return pb.Input(tensor=tensor)


def random_request(rng: random.Random) -> pb.ClassifyRequest:
    request = pb.ClassifyRequest(model=rng.choice(["", "efficientnet-lite0"]), request_id=f"r{rng.randrange(99)}")
    for _ in range(rng.randrange(0, 5)):
        kind = rng.randrange(4)
        if kind == 0:
            request.inputs.append(tensor_input(rng))
        elif kind == 1:
            request.inputs.append(tensor_input(rng, float_data=True))
        elif kind == 2:
            request.inputs.append(pb.Input(image=rng.randbytes(rng.randrange(1, 300))))
        else:
            raw = pb.RawImage(width=2, height=1, format=pb.PIXEL_FORMAT_RGB8, data=b"abcdef")
            request.inputs.append(pb.Input(raw=raw))
    if rng.random() < 0.5:
        request.parameters.top_k = rng.randrange(10)
    if rng.random() < 0.5:
        request.preprocessor_overrides.update({"do_resize": rng.random() < 0.5})
    return request


def converted(request: pb.ClassifyRequest | wire.Lifted) -> object:
    message, payloads = wire.unwrap(request)
    return converters.request_from_pb(message, payloads)


@pytest.mark.parametrize("seed", range(60))
def test_the_lifted_parse_converts_to_what_protobuf_s_parse_does(seed: int) -> None:
    rng = random.Random(seed)
    raw = random_request(rng).SerializeToString()
    if seed % 3 == 0:  # two messages back to back: protobuf merges them (repeated fields concatenate)
        raw += random_request(rng).SerializeToString()
    if seed % 5 == 0:  # an unknown field, which protobuf keeps
        raw += bytes([0x50 | 0, 7])  # field 10, varint 7
    assert converted(wire.parse_classify(raw)) == converted(pb.ClassifyRequest.FromString(raw))


def test_a_tensor_s_data_is_a_view_of_the_received_bytes() -> None:
    request = pb.ClassifyRequest(inputs=[tensor_input(random.Random(1)), pb.Input(image=b"jpeg")], request_id="x")
    raw = request.SerializeToString()
    parsed = wire.parse_classify(raw)
    assert isinstance(parsed, wire.Lifted)
    assert parsed.message.request_id == "x" and parsed.message.inputs[0].tensor.raw_data == b""
    payload, image = parsed.payloads
    assert image is None and payload is not None
    assert bytes(payload) == request.inputs[0].tensor.raw_data
    assert np.shares_memory(np.frombuffer(payload, np.uint8), np.frombuffer(raw, np.uint8))  # not a copy


def test_a_tensor_field_given_twice_is_parsed_by_protobuf_as_it_is() -> None:
    # Input.tensor twice: protobuf merges the two (dims of both, the last raw_data); the scan leaves it alone.
    once = b"\x22\x06\x08\x01\x1a\x02ab"  # tensor {dims: 1, raw_data: "ab"}
    raw = b"\x12" + bytes([2 * len(once)]) + once * 2
    parsed = wire.parse_classify(raw)
    assert isinstance(parsed, pb.ClassifyRequest)
    assert parsed == pb.ClassifyRequest.FromString(raw)
    assert list(parsed.inputs[0].tensor.dims) == [1, 1]


def test_raw_data_twice_is_not_lifted() -> None:
    tensor = b"\x1a\x02ab\x1a\x02cd"  # raw_data "ab" then "cd": protobuf keeps "cd"
    raw = b"\x12" + bytes([2 + len(tensor)]) + b"\x22" + bytes([len(tensor)]) + tensor
    parsed = wire.parse_classify(raw)
    assert isinstance(parsed, pb.ClassifyRequest)
    assert parsed.inputs[0].tensor.raw_data == b"cd"


@pytest.mark.parametrize("cut", [1, 3, 10, 50])
def test_a_truncated_message_fails_as_protobuf_fails(cut: int) -> None:
    raw = pb.ClassifyRequest(inputs=[tensor_input(random.Random(2))]).SerializeToString()[:-cut]
    with pytest.raises(DecodeError):
        pb.ClassifyRequest.FromString(raw)
    with pytest.raises(DecodeError):
        wire.parse_classify(raw)
