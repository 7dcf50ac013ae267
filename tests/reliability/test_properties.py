"""Property-based tests (hypothesis) through the real server: whatever a caller sends as an image,
raw bitmap, tensor or parameters, the answer is OK, INVALID_ARGUMENT or RESOURCE_EXHAUSTED (never
INTERNAL or UNKNOWN), and the server goes on answering a good request correctly afterwards.

Hypothesis drives plain (synchronous) tests, so the server runs on its own event loop in a
background thread and the tests call it through blocking stubs.
"""

from __future__ import annotations

import asyncio
import base64
import math
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from imgcls.server.images.preprocessing import OVERRIDABLE_KEYS
from imgcls.server.server import RunningServer, start_server
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from reliability import corpus
from support.inputs import good_request
from support.paths import IMAGES
from support.servers import make_settings

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
SAMPLE = (3, 224, 224)
SAMPLE_VALUES = math.prod(SAMPLE)
# Small, so every example decodes in milliseconds. (Long, thin images no longer need this: their
# resize is bounded by preprocessing.MAX_RESIZED_PIXELS, see test_hostile_images.)
MAX_IMAGE_PIXELS = 1024
SEEDS = corpus.seed_files(corpus.load_rgb(IMAGES / "coffee.jpg"))
GOOD_IMAGE = SEEDS["small.png"]  # 32x24: under MAX_IMAGE_PIXELS

PROPERTY_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    database=None,  # no .hypothesis folder left behind; failures print their example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class ThreadedServer:
    """A real server on its own event loop in a daemon thread."""

    loop: asyncio.AbstractEventLoop
    running: RunningServer
    thread: threading.Thread

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.running.stop(grace=1.0), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


def start_threaded_server(**overrides: object) -> ThreadedServer:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="property-server", daemon=True)
    thread.start()
    running = asyncio.run_coroutine_threadsafe(start_server(make_settings(**overrides)), loop).result(timeout=60)
    return ThreadedServer(loop, running, thread)


@dataclass
class Client:
    stub: pb_grpc.ImageClassifierServiceStub
    good_answer: list[int]  # the label indices of the good request, taken at start-up

    def call(self, request: pb.ClassifyRequest) -> tuple[grpc.StatusCode, str, pb.ClassifyResponse | None]:
        try:
            response = self.stub.Classify(request, timeout=60)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", None  # type: ignore[attr-defined]
        return grpc.StatusCode.OK, "", response

    def check(self, request: pb.ClassifyRequest) -> tuple[grpc.StatusCode, pb.ClassifyResponse | None]:
        code, message, response = self.call(request)
        event(code.name)  # --hypothesis-show-statistics shows how often each outcome came up
        assert code in ALLOWED, f"{code.name}: {message}"
        if code != grpc.StatusCode.OK:
            assert message, f"{code.name} without a message"
        # The server keeps answering a good request, and answers it correctly.
        good_code, good_message, good = self.call(good_request(GOOD_IMAGE))
        assert good_code == grpc.StatusCode.OK, f"good request after a hostile one: {good_code.name}: {good_message}"
        assert good is not None and [label.index for label in good.results[0].labels] == self.good_answer
        return code, response


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    server = start_threaded_server(max_image_pixels=MAX_IMAGE_PIXELS)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.running.port}")
    try:
        stub = pb_grpc.ImageClassifierServiceStub(channel)
        answer = stub.Classify(good_request(GOOD_IMAGE), timeout=60)
        yield Client(stub, [label.index for label in answer.results[0].labels])
    finally:
        channel.close()
        server.stop()


# --- strategies ---------------------------------------------------------------------------


@st.composite
def mutated_seed(draw: st.DrawFn) -> bytes:
    """A small valid file of some format with bytes overwritten, inserted or cut off."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    for _ in range(draw(st.integers(0, 8))):
        action = rng.random()
        at = rng.randrange(len(data))
        if action < 0.6:
            data[at] = rng.randrange(256)
        elif action < 0.8:
            data[at:at] = rng.randbytes(rng.randrange(1, 16))
        else:
            del data[at : at + rng.randrange(1, 64)]
        if not data:
            break
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


image_bytes = st.one_of(st.binary(max_size=2048), mutated_seed())

dims_value = st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1))


@st.composite
def raw_images(draw: st.DrawFn) -> pb.RawImage:
    width, height = draw(dims_value), draw(dims_value)
    fmt = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 99]))
    channels = {1: 3, 2: 4, 3: 3, 4: 1}.get(fmt, 3)
    expected = width * height * channels
    length = draw(
        st.one_of(
            st.just(expected) if expected <= 64 * 64 * 4 else st.just(0),
            st.integers(0, 4096),
            st.just(max(expected - 1, 0)) if expected <= 64 * 64 * 4 else st.just(1),
        )
    )
    return pb.RawImage(width=width, height=height, format=fmt, data=bytes(length))


int64 = st.integers(-(2**63), 2**63 - 1)


@st.composite
def tensors(draw: st.DrawFn) -> pb.Tensor:
    dims = draw(
        st.one_of(
            st.lists(st.one_of(st.integers(-2, 300), int64), max_size=6),
            st.tuples(st.integers(-1, 3), st.just(3), st.just(224), st.just(224)).map(list),
            st.just(list(SAMPLE)),
        )
    )
    dtype = draw(st.sampled_from([0, 1, 2, 3, 99]))
    itemsize = 2 if dtype == pb.DATA_TYPE_FLOAT16 else 4
    count = math.prod(dims) if dims and all(0 < d <= 300 for d in dims) else 0
    fits = 0 < count <= 2 * SAMPLE_VALUES
    payload = draw(st.sampled_from(["raw-exact", "raw-random", "float-exact", "float-random", "both", "none"]))
    tensor = pb.Tensor(dims=dims, dtype=dtype)
    if payload == "raw-exact" and fits:
        values = draw(st.sampled_from([0.0, 1.0, -3.5, math.nan, math.inf]))
        tensor.raw_data = np.full(count, values, dtype="<f2" if itemsize == 2 else "<f4").tobytes()
    elif payload == "float-exact" and fits:
        tensor.float_data.extend([draw(st.floats(width=32))] * count)
    elif payload == "raw-random":
        tensor.raw_data = draw(st.binary(max_size=1024))
    elif payload == "float-random":
        tensor.float_data.extend(draw(st.lists(st.floats(width=32), max_size=64)))
    elif payload == "both":
        tensor.raw_data = draw(st.binary(min_size=1, max_size=64))
        tensor.float_data.extend(draw(st.lists(st.floats(width=32), min_size=1, max_size=8)))
    return tensor


@st.composite
def parameters(draw: st.DrawFn) -> pb.Parameters:
    message = pb.Parameters(function_to_apply=draw(st.integers(0, 5) | st.integers(-(2**31), 2**31 - 1)))
    if draw(st.booleans()):
        message.top_k = draw(st.integers(-(2**31), 2**31 - 1) | st.integers(-2, 1001))
    if draw(st.booleans()):
        message.threshold = draw(st.floats(width=32) | st.floats(-0.5, 1.5, width=32))
    return message


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=False), st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)
size_values = st.one_of(
    st.integers(-5, 5000),
    st.fixed_dictionaries({"height": st.integers(-5, 5000), "width": st.integers(-5, 5000)}),
    st.fixed_dictionaries({"shortest_edge": st.integers(-5, 5000)}),
    st.floats(allow_nan=False),
)
# Every key, do_resize included: do_resize=False on this fixed-size model must be refused
# INVALID_ARGUMENT, never reach ONNX Runtime (test_hostile_requests checks the message).
override_keys = st.sampled_from([*sorted(OVERRIDABLE_KEYS), "unknown_key"])
override_dicts = st.dictionaries(
    override_keys,
    st.one_of(json_values, size_values),
    max_size=4,
)


def as_struct(value: dict[str, object]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


# --- properties ---------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(data=image_bytes)
def test_any_bytes_as_an_image_are_answered_or_refused(client: Client, data: bytes) -> None:
    client.check(pb.ClassifyRequest(inputs=[pb.Input(image=data)]))


@st.composite
def base64_texts(draw: st.DrawFn) -> str:
    """Arbitrary text, or a (possibly broken) file as standard or URL-safe base64, maybe as a data: URL."""
    if draw(st.booleans()):
        return draw(st.text(max_size=256))
    encoded = base64.b64encode(draw(image_bytes)).decode()
    if draw(st.booleans()):
        encoded = encoded.replace("+", "-").replace("/", "_").rstrip("=")
    prefix = draw(st.sampled_from(["", "data:image/png;base64,", "data:image/png,", "data:;base64,"]))
    return prefix + encoded


@PROPERTY_SETTINGS
@given(text=base64_texts())
def test_any_base64_text_is_answered_or_refused(client: Client, text: str) -> None:
    client.check(pb.ClassifyRequest(inputs=[pb.Input(image_base64=text)]))


@PROPERTY_SETTINGS
@given(raw=raw_images())
def test_any_raw_image_is_answered_or_refused(client: Client, raw: pb.RawImage) -> None:
    code, _ = client.check(pb.ClassifyRequest(inputs=[pb.Input(raw=raw)]))
    expected_len = raw.width * raw.height * {1: 3, 2: 4, 3: 3, 4: 1}.get(raw.format, -1)
    if len(raw.data) != expected_len or raw.width * raw.height == 0:
        assert code == grpc.StatusCode.INVALID_ARGUMENT  # a bitmap that does not add up is never classified


@PROPERTY_SETTINGS
@given(tensor=tensors())
def test_any_tensor_is_answered_or_refused(client: Client, tensor: pb.Tensor) -> None:
    code, response = client.check(pb.ClassifyRequest(inputs=[pb.Input(tensor=tensor)]))
    if any(d <= 0 for d in tensor.dims) or tensor.dtype not in (pb.DATA_TYPE_FLOAT32, pb.DATA_TYPE_FLOAT16):
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    if code == grpc.StatusCode.OK:
        assert response is not None and len(response.results) == (tensor.dims[0] if len(tensor.dims) == 4 else 1)


@PROPERTY_SETTINGS
@given(params=parameters(), overrides=override_dicts)
def test_any_parameters_and_overrides_are_answered_or_refused(
    client: Client, params: pb.Parameters, overrides: dict[str, object]
) -> None:
    request = pb.ClassifyRequest(inputs=[pb.Input(image=GOOD_IMAGE)], parameters=params)
    if overrides:
        request.preprocessor_overrides.CopyFrom(as_struct(overrides))
    code, response = client.check(request)
    if code == grpc.StatusCode.OK:
        assert response is not None
        labels = response.results[0].labels
        top_k = params.top_k if params.HasField("top_k") else 5
        assert len(labels) <= (1000 if top_k == 0 else min(top_k, 1000))
        scores = [label.score for label in labels]
        assert scores == sorted(scores, reverse=True) or any(math.isnan(s) for s in scores)
