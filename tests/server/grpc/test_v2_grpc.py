"""The Open Inference Protocol over gRPC, driven by clients no one here wrote: tritonclient.grpc (blocking,
asyncio and streaming) against a real server on port 0, compared with imgcls.v1 on the same server.

The shared server serves EfficientNet-Lite0 fp32 ("lite") and fp16 ("half") on the exact decode path
(jpeg_draft off), where the served top-5 is the transformers reference.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import queue
import re
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from google.protobuf import json_format
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from imgcls.server.domain.errors import ConfigError
from imgcls.server.engine.engine import Engine, onnx_backend
from imgcls.server.server import RunningServer
from imgcls.server.sources.local import ModelFiles
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from support.paths import EFFICIENTNET, IMAGES, ROOT
from support.servers import CHANNEL_OPTIONS, connect, make_settings, running_server
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVICE = "inference.GRPCInferenceService"
MODELS = [
    {"name": "lite", "source": str(EFFICIENTNET), "dtype": "fp32"},
    {"name": "half", "source": str(EFFICIENTNET), "dtype": "fp16"},
]
# Every image in the shared folder (the reference lists each one's top-5).
REFERENCE: dict[str, list[dict[str, Any]]] = json.loads((IMAGES / "reference-efficientnet-lite0.json").read_text())
NAMES = sorted(REFERENCE)
TOKEN = "v2-s3cret-token"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[RunningServer]:
    async with running_server(models=MODELS, jpeg_draft=False, http_port=0) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def v1(server: RunningServer) -> AsyncIterator[pb_grpc.ImageClassifierServiceStub]:
    async with connect(server) as stub:
        yield stub


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def aio_client(server: RunningServer) -> AsyncIterator[triton_aio.InferenceServerClient]:
    client = triton_aio.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[triton.InferenceServerClient]:
    """The blocking client: call it through asyncio.to_thread, since the server runs on this event loop."""
    blocking = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        yield blocking
    finally:
        blocking.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def raw_stub(server: RunningServer) -> AsyncIterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=CHANNEL_OPTIONS) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


# --- helpers ---------------------------------------------------------------------------------


def image_input(*names: str) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(names), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[(IMAGES / n).read_bytes()] for n in names], dtype=np.object_))
    return tensor


def pixel_input(array: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("pixel_values", list(array.shape), "FP16" if array.dtype == np.float16 else "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def pixels(batch: int, seed: int, dtype: Any = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (batch, 3, 224, 224)).astype(dtype)


def parse(strings: np.ndarray) -> list[tuple[float, int, str]]:
    """Triton's classification strings "value:index:label", one row."""
    rows = []
    for text in strings:
        value, index, label = (text.decode() if isinstance(text, bytes) else text).split(":", 2)
        rows.append((float(value), int(index), label))
    return rows


async def v1_scores(v1: pb_grpc.ImageClassifierServiceStub, model: str, item: pb.Input, function: int) -> np.ndarray:
    """imgcls.v1's scores for every label of one input, by label index."""
    parameters = pb.Parameters(top_k=0, function_to_apply=function)  # type: ignore[arg-type]
    response = await v1.Classify(pb.ClassifyRequest(model=model, inputs=[item], parameters=parameters))
    rows = []
    for result in response.results:
        row = np.full(1000, np.nan)
        for label in result.labels:
            row[label.index] = label.score
        rows.append(row)
    return np.array(rows)


def v1_tensor(array: np.ndarray) -> pb.Input:
    dtype = pb.DATA_TYPE_FLOAT16 if array.dtype == np.float16 else pb.DATA_TYPE_FLOAT32
    return pb.Input(tensor=pb.Tensor(dims=list(array.shape), dtype=dtype, raw_data=array.tobytes()))


def assert_reference_top5(strings: np.ndarray, name: str) -> None:
    got = parse(strings)
    want = REFERENCE[name]
    assert [(i, label) for _, i, label in got] == [(w["index"], w["label"]) for w in want], name
    for (value, _, label), expected in zip(got, want, strict=True):
        assert value == pytest.approx(expected["score"], abs=0.01), label


def status_of(error: InferenceServerException) -> str:
    return str(error.status())


# --- the image view, by every client ---------------------------------------------------------


async def test_blocking_client_classifies_every_image_as_the_reference_and_as_imgcls_v1(
    client: triton.InferenceServerClient, v1: pb_grpc.ImageClassifierServiceStub
) -> None:
    for name in NAMES:
        top5 = triton.InferRequestedOutput("scores", class_count=5)
        result = await asyncio.to_thread(
            client.infer, "lite_image", [image_input(name)], outputs=[top5], request_id=name
        )
        assert result.get_response().id == name
        strings = result.as_numpy("scores")
        assert strings.shape == (1, 5)
        assert_reference_top5(strings[0], name)
        # The classification strings name the labels imgcls.v1 ranks first for the same input.
        response = await v1.Classify(
            pb.ClassifyRequest(model="lite", inputs=[pb.Input(image=(IMAGES / name).read_bytes())])
        )
        assert [label for _, _, label in parse(strings[0])] == [x.label for x in response.results[0].labels]
        # With no output named, the whole scores tensor: equal to imgcls.v1's scores for every label.
        full = (await asyncio.to_thread(client.infer, "lite_image", [image_input(name)])).as_numpy("scores")
        assert full.shape == (1, 1000) and full.dtype == np.float32
        expected = await v1_scores(
            v1, "lite", pb.Input(image=(IMAGES / name).read_bytes()), pb.FUNCTION_TO_APPLY_SOFTMAX
        )
        np.testing.assert_allclose(full, expected, rtol=0, atol=1e-6)


async def test_asyncio_client_classifies_every_image_concurrently_and_in_one_batch(
    aio_client: triton_aio.InferenceServerClient, v1: pb_grpc.ImageClassifierServiceStub
) -> None:
    top5 = [triton.InferRequestedOutput("scores", class_count=5)]
    results = await asyncio.gather(
        *(aio_client.infer("lite_image", [image_input(n)], outputs=top5, request_id=n) for n in NAMES)
    )
    for name, result in zip(NAMES, results, strict=True):
        assert result.get_response().id == name
        assert_reference_top5(result.as_numpy("scores")[0], name)
    batch = (await aio_client.infer("lite_image", [image_input(*NAMES)], model_version="1")).as_numpy("scores")
    assert batch.shape == (len(NAMES), 1000)
    for name, row in zip(NAMES, batch, strict=True):
        expected = await v1_scores(
            v1, "lite", pb.Input(image=(IMAGES / name).read_bytes()), pb.FUNCTION_TO_APPLY_SOFTMAX
        )
        np.testing.assert_allclose(row, expected[0], rtol=0, atol=1e-6)


async def test_blocking_stream_answers_every_request_with_its_id_and_goes_on_after_bad_ones(
    client: triton.InferenceServerClient,
) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()

    def run() -> list[tuple[Any, Any]]:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            top5 = [triton.InferRequestedOutput("scores", class_count=5)]
            for name in NAMES:
                client.async_stream_infer("lite_image", [image_input(name)], outputs=top5, request_id=name)
            bad = triton.InferInput("image", [1, 1], "BYTES")
            bad.set_data_from_numpy(np.array([[b"not an image"]], dtype=np.object_))
            client.async_stream_infer("lite_image", [bad], request_id="bad-image")
            client.async_stream_infer("nope", [image_input("cat.jpg")], request_id="bad-model")
            client.async_stream_infer("lite_image", [image_input("cat.jpg")], outputs=top5, request_id="after")
            return [answers.get(timeout=60) for _ in range(len(NAMES) + 3)]
        finally:
            client.stop_stream()

    received = await asyncio.to_thread(run)
    good = {result.get_response().id: result for result, error in received if error is None}
    errors = [error for _, error in received if error is not None]
    assert sorted(good) == sorted([*NAMES, "after"])
    for name in NAMES:
        assert_reference_top5(good[name].as_numpy("scores")[0], name)
    assert_reference_top5(good["after"].as_numpy("scores")[0], "cat.jpg")
    messages = sorted(e.message() for e in errors)
    assert len(messages) == 2
    assert "input 'image' element 0: not a decodable image" in messages[0]
    assert "model 'nope' is not served" in messages[1]


async def test_asyncio_stream_answers_in_order(aio_client: triton_aio.InferenceServerClient) -> None:
    async def requests() -> AsyncIterator[dict[str, Any]]:
        for name in NAMES:
            top5 = [triton.InferRequestedOutput("scores", class_count=5)]
            yield {"model_name": "lite_image", "inputs": [image_input(name)], "outputs": top5, "request_id": name}
        yield {"model_name": "lite_image", "inputs": [pixel_input(pixels(1, 0))], "request_id": "wrong-input"}
        yield {"model_name": "lite", "inputs": [pixel_input(pixels(1, 0))], "request_id": "tensor"}

    ids, errors = [], []
    async for result, error in aio_client.stream_infer(requests()):
        if error is not None:
            errors.append(error.message())
            ids.append("error")
        else:
            ids.append(result.get_response().id)
            if result.get_response().id in REFERENCE:
                assert_reference_top5(result.as_numpy("scores")[0], result.get_response().id)
        if len(ids) == len(NAMES) + 2:
            break
    assert ids == [*NAMES, "error", "tensor"]
    assert errors == ["model lite_image has no input 'pixel_values'; it takes 'image'"]


# --- the network view ---------------------------------------------------------------------------


async def test_network_view_tensors_equal_imgcls_v1_tensor_path(
    aio_client: triton_aio.InferenceServerClient,
    raw_stub: service_pb2_grpc.GRPCInferenceServiceStub,
    v1: pb_grpc.ImageClassifierServiceStub,
) -> None:
    array = pixels(2, seed=7)
    expected = await v1_scores(v1, "lite", v1_tensor(array), pb.FUNCTION_TO_APPLY_NONE)  # the logits
    # raw_input_contents: what tritonclient sends.
    raw = (await aio_client.infer("lite", [pixel_input(array)])).as_numpy("logits")
    assert raw.shape == (2, 1000) and raw.dtype == np.float32
    np.testing.assert_allclose(raw, expected, rtol=0, atol=1e-6)
    # Typed contents (fp32_contents), written by hand.
    request = service_pb2.ModelInferRequest(model_name="lite", id="typed")
    tensor = request.inputs.add(name="pixel_values", datatype="FP32", shape=list(array.shape))
    tensor.contents.fp32_contents.extend(array.reshape(-1).tolist())
    response = await raw_stub.ModelInfer(request)
    assert response.id == "typed" and [o.name for o in response.outputs] == ["logits"]
    # Asked in typed contents, answered in typed contents (what grpcurl users can read).
    assert not response.raw_output_contents
    typed = np.array(response.outputs[0].contents.fp32_contents, dtype=np.float32).reshape(2, 1000)
    np.testing.assert_allclose(typed, expected, rtol=0, atol=1e-6)


async def test_fp16_variant_network_view_equals_imgcls_v1(
    aio_client: triton_aio.InferenceServerClient, v1: pb_grpc.ImageClassifierServiceStub
) -> None:
    metadata = await aio_client.get_model_metadata("half", as_json=True)
    assert [i["datatype"] for i in metadata["inputs"]] == ["FP16"]
    array = pixels(1, seed=3, dtype=np.float16)
    result = (await aio_client.infer("half", [pixel_input(array)])).as_numpy("logits")
    assert result.dtype == np.float16
    expected = await v1_scores(v1, "half", v1_tensor(array), pb.FUNCTION_TO_APPLY_NONE)
    np.testing.assert_allclose(result.astype(np.float32), expected, rtol=0, atol=1e-6)
    # Its image view still answers FP32 scores.
    scores = (await aio_client.infer("half_image", [image_input("coffee.jpg")])).as_numpy("scores")
    assert scores.dtype == np.float32 and int(np.argmax(scores)) == REFERENCE["coffee.jpg"][0]["index"]


async def test_classification_of_the_network_output_carries_labels(
    aio_client: triton_aio.InferenceServerClient,
) -> None:
    array = pixels(1, seed=11)
    logits = (await aio_client.infer("lite", [pixel_input(array)])).as_numpy("logits")[0]
    outputs = [triton.InferRequestedOutput("logits", class_count=3)]
    strings = (await aio_client.infer("lite", [pixel_input(array)], outputs=outputs)).as_numpy("logits")
    top = parse(strings[0])
    assert [i for _, i, _ in top] == list(np.argsort(-logits, kind="stable")[:3])
    config = await aio_client.get_model_config("lite", as_json=True)
    assert config["config"]["output"][0]["label_filename"] == "labels.txt"
    assert all(label for _, _, label in top)


async def test_request_parameters_mean_what_they_mean_in_imgcls_v1(
    aio_client: triton_aio.InferenceServerClient,
) -> None:
    cat = [image_input("cat.jpg")]
    three = (await aio_client.infer("lite_image", cat, parameters={"top_k": 3})).as_numpy("scores")
    assert three.shape == (1, 3) and parse(three[0])[0][2] == "Egyptian cat"
    logits = (await aio_client.infer("lite_image", cat, parameters={"function_to_apply": "none"})).as_numpy("scores")
    assert logits.max() > 1  # logits, not probabilities
    overrides = json.dumps({"crop_pct": 1.0, "size": {"shortest_edge": 224}})
    changed = await aio_client.infer("lite_image", cat, parameters={"preprocessor_overrides": overrides})
    plain = await aio_client.infer("lite_image", cat)
    assert not np.array_equal(changed.as_numpy("scores"), plain.as_numpy("scores"))


# --- errors -------------------------------------------------------------------------------------


async def test_millions_of_empty_inputs_are_refused_before_any_is_converted(
    raw_stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    request = service_pb2.ModelInferRequest(model_name="lite_image")
    request.inputs.extend([service_pb2.ModelInferRequest.InferInputTensor()] * 1_000_000)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith("request message has more than 65536 fields")
    request = service_pb2.ModelInferRequest(model_name="lite_image")
    request.inputs.extend([service_pb2.ModelInferRequest.InferInputTensor()] * 60_000)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_stub.ModelInfer(request)
    assert info.value.details() == "request has 60000 inputs, over the limit of 64"
    request = service_pb2.ModelInferRequest(model_name="lite_image", raw_input_contents=[b""] * 60_000)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_stub.ModelInfer(request)
    assert info.value.details() == "request has 60000 raw_input_contents entries, over the limit of 64"
    request = service_pb2.ModelInferRequest(model_name="lite_image")
    request.inputs.add(name="image", datatype="BYTES", shape=[1] * 20_000)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_stub.ModelInfer(request)
    assert info.value.details() == "input 'image': 20000 dims, over the limit of 16"
    request = service_pb2.ModelInferRequest(model_name="lite_image")
    request.inputs.add(name="image", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.extend([b""] * 60_000)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_stub.ModelInfer(request)
    assert info.value.details() == "input 'image': 60000 BYTES elements, over the limit of 64 images"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ('{"crop_pct": ' + str(10**400) + "}", "crop_pct must be a finite number within a float's range"),
        ('{"size": {"shortest_edge": ' + str(10**400) + "}}", "size.shortest_edge must be a finite number"),
        ('{"image_mean": NaN}', "preprocessor_overrides is not valid JSON (NaN is not a number JSON allows)"),
    ],
    ids=["crop_pct", "size", "nan"],
)
async def test_overrides_text_with_numbers_no_float_holds_is_invalid_argument(
    raw_stub: service_pb2_grpc.GRPCInferenceServiceStub, overrides: str, fragment: str
) -> None:
    request = service_pb2.ModelInferRequest(model_name="lite_image")
    tensor = request.inputs.add(name="image", datatype="BYTES", shape=[1, 1])
    tensor.contents.bytes_contents.append((IMAGES / "cat.jpg").read_bytes())
    request.parameters["preprocessor_overrides"].string_param = overrides
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert fragment in (info.value.details() or "")


async def test_unknown_model_or_version_is_not_found(client: triton.InferenceServerClient) -> None:
    calls = [
        lambda: client.infer("nope", [image_input("cat.jpg")]),
        lambda: client.get_model_metadata("nope"),
        lambda: client.get_model_config("nope"),
        lambda: client.get_inference_statistics("nope"),
        lambda: client.is_model_ready("nope"),
        lambda: client.infer("lite_image", [image_input("cat.jpg")], model_version="2"),
    ]
    messages = []
    for call in calls:
        with pytest.raises(InferenceServerException) as caught:
            await asyncio.to_thread(call)
        assert status_of(caught.value) == "StatusCode.NOT_FOUND"
        messages.append(caught.value.message())
    assert messages[:5] == ["model 'nope' is not served; served models: lite, lite_image, half, half_image"] * 5
    assert messages[5] == "model lite_image has no version '2'; its one version is 1"


async def test_bad_inputs_are_invalid_argument_naming_the_input(
    aio_client: triton_aio.InferenceServerClient, raw_stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    junk = triton.InferInput("image", [2, 1], "BYTES")
    junk.set_data_from_numpy(np.array([[(IMAGES / "cat.jpg").read_bytes()], [b"\x89PNG truncated"]], dtype=np.object_))
    wrong_shape = pixel_input(np.zeros((1, 3, 64, 64), np.float32))
    wrong_type = triton.InferInput("pixel_values", [1, 3, 224, 224], "INT32")
    wrong_type.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.int32))
    cases = [
        ("lite_image", junk, "input 'image' element 1"),
        (
            "lite",
            wrong_shape,
            "input 'pixel_values': shape [1, 3, 64, 64] does not match the model's [-1, 3, 224, 224]",
        ),
        ("lite", wrong_type, "input 'pixel_values': datatype 'INT32' is not accepted"),
    ]
    for model, tensor, expected in cases:
        with pytest.raises(InferenceServerException) as caught:
            await aio_client.infer(model, [tensor])
        assert status_of(caught.value) == "StatusCode.INVALID_ARGUMENT"
        assert expected in caught.value.message()
    # By hand: raw contents of the wrong size, FP16 in typed contents, raw_input_contents not one per input.
    short = service_pb2.ModelInferRequest(model_name="lite", raw_input_contents=[b"\x00" * 12])
    short.inputs.add(name="pixel_values", datatype="FP32", shape=[1, 3, 224, 224])
    half_typed = service_pb2.ModelInferRequest(model_name="half")
    half_typed.inputs.add(name="pixel_values", datatype="FP16", shape=[1, 3, 224, 224]).contents.fp32_contents.append(0)
    mismatched = service_pb2.ModelInferRequest(model_name="lite_image", raw_input_contents=[b"", b""])
    mismatched.inputs.add(name="image", datatype="BYTES", shape=[1, 1])
    for request, expected in [
        (short, "input 'pixel_values': raw contents have 12 bytes"),
        (half_typed, "input 'pixel_values': FP16 values travel in raw_input_contents"),
        (mismatched, "raw_input_contents has 2 entries but the request has 1 inputs"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await raw_stub.ModelInfer(request)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert expected in (error.value.details() or "")


async def test_a_huge_request_id_is_refused_and_never_echoed_in_a_call_and_in_a_stream(
    raw_stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    request = service_pb2.ModelInferRequest(model_name="lite_image", id="r" * 100_000)
    request.inputs.add(name="image", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(
        (IMAGES / "cat.jpg").read_bytes()
    )
    expected = "request_id: 100000 characters, over the limit of 256"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await raw_stub.ModelInfer(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == expected
    answers = [answer async for answer in raw_stub.ModelStreamInfer(iter([request]))]
    assert [(a.error_message, a.infer_response.id) for a in answers] == [(expected, "")]


async def test_every_other_rpc_is_unimplemented_and_names_itself(
    raw_stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    implemented = {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"}
    implemented |= {"ModelStreamInfer", "ModelConfig", "ModelStatistics"}
    others = [m for m in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods]
    others = [m for m in others if m.name not in implemented]
    assert len(others) == 11  # repository, shared memory, trace and log settings
    for method in others:
        request_class = getattr(service_pb2, method.input_type.name)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await getattr(raw_stub, method.name)(request_class())
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED, method.name
        assert error.value.details() == f"{SERVICE}/{method.name} is not implemented by imgcls"


# --- metadata, config, statistics, health, reflection ---------------------------------------


async def test_server_and_model_metadata(client: triton.InferenceServerClient, server: RunningServer) -> None:
    def read() -> dict[str, Any]:
        return {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready("lite_image") and client.is_model_ready("half", "1"),
            "server": client.get_server_metadata(as_json=True),
            "image": client.get_model_metadata("lite_image", as_json=True),
            "network": client.get_model_metadata("lite", as_json=True),
            "config": client.get_model_config("lite", as_json=True)["config"],
            "image_config": client.get_model_config("lite_image", as_json=True)["config"],
        }

    got = await asyncio.to_thread(read)
    assert got["live"] and got["ready"] and got["model_ready"]
    assert got["server"]["name"] == "imgcls"
    assert got["server"]["extensions"] == ["classification", "model_configuration", "statistics"]
    assert got["image"]["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": ["-1", "1"]}]
    assert got["image"]["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": ["-1", "1000"]}]
    assert got["network"]["inputs"] == [
        {"name": "pixel_values", "datatype": "FP32", "shape": ["-1", "3", "224", "224"]}
    ]
    config = got["config"]
    assert int(config["max_batch_size"]) == server.settings.max_inputs_per_request
    assert config["input"][0]["format"] == "FORMAT_NCHW" and config["input"][0]["data_type"] == "TYPE_FP32"
    assert [int(d) for d in config["input"][0]["dims"]] == [3, 224, 224]
    assert config["dynamic_batching"]["preferred_batch_size"] == [4]
    assert got["image_config"]["input"][0]["data_type"] == "TYPE_STRING"


async def test_statistics_follow_the_batcher(
    aio_client: triton_aio.InferenceServerClient, v1: pb_grpc.ImageClassifierServiceStub
) -> None:
    await aio_client.infer("lite_image", [image_input("cat.jpg")])
    stats = (await aio_client.get_inference_statistics("lite_image", as_json=True))["model_stats"][0]
    model = (await v1.GetModel(pb.GetModelRequest(name="lite"))).model.stats
    assert stats["name"] == "lite_image" and stats["version"] == "1"
    assert int(stats["inference_count"]) == model.inputs
    assert int(stats["execution_count"]) == model.batches
    assert {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]} == dict(
        model.batch_size_counts
    )
    assert int(stats["inference_stats"]["success"]["count"]) > 0


async def test_health_and_reflection_list_the_v2_service(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = (await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))).status
    assert status == health_pb2.HealthCheckResponse.SERVING

    def reflect() -> tuple[list[str], list[str]]:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = list(database.get_services())
            service = DescriptorPool(database).FindServiceByName(SERVICE)
            return services, [m.name for m in service.methods]

    services, methods = await asyncio.to_thread(reflect)
    assert SERVICE in services and "imgcls.v1.ImageClassifierService" in services
    assert {"ModelInfer", "ModelStreamInfer", "ModelConfig", "ModelStatistics"} <= set(methods)


async def test_metrics_are_labelled_by_protocol(
    server: RunningServer, aio_client: triton_aio.InferenceServerClient, v1: pb_grpc.ImageClassifierServiceStub
) -> None:
    def count(protocol: str, method: str) -> float:
        labels = {"model": "lite", "protocol": protocol, "method": method, "outcome": "ok"}
        return server.metrics.registry.get_sample_value("imgcls_requests_total", labels) or 0.0

    before = count("v2-grpc", "ModelInfer"), count("imgcls.v1", "Classify")
    await aio_client.infer("lite_image", [image_input("cat.jpg")])
    await aio_client.infer("lite", [pixel_input(pixels(1, 0))])
    await v1.Classify(pb.ClassifyRequest(model="lite", inputs=[pb.Input(image=(IMAGES / "cat.jpg").read_bytes())]))
    assert count("v2-grpc", "ModelInfer") == before[0] + 2
    assert count("imgcls.v1", "Classify") == before[1] + 1


async def test_a_stream_cancelled_mid_way_leaves_nothing_running(
    server: RunningServer, raw_stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    def ours() -> list[asyncio.Task[Any]]:
        names = ("_stream_one", "_read_ahead", "ModelStreamInfer")
        return [t for t in asyncio.all_tasks() if any(n in repr(t.get_coro()) for n in names)]

    call: Any = raw_stub.ModelStreamInfer()
    for index in range(6):
        request = service_pb2.ModelInferRequest(model_name="lite_image", id=str(index))
        request.inputs.add(name="image", datatype="BYTES", shape=[1, 1])
        data = (IMAGES / "coffee_1920x1280.jpg").read_bytes()
        request.raw_input_contents.append(len(data).to_bytes(4, "little") + data)
        await call.write(request)
    first = await call.read()
    assert first.infer_response.id == "0" and not first.error_message
    assert server.engine.active_streams == 1 and ours()  # the reader, the requests in flight
    call.cancel()
    for _ in range(500):
        if server.engine.active_streams == 0 and not ours():
            break
        await asyncio.sleep(0.01)
    assert server.engine.active_streams == 0
    assert ours() == []


# --- servers of their own -------------------------------------------------------------------------


async def test_tokens_apply_to_the_v2_service() -> None:
    async with running_server(auth_tokens=[TOKEN], http_port=0) as server:
        client = triton_aio.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            for call in (
                lambda headers: client.infer("efficientnet-lite0_image", [image_input("cat.jpg")], headers=headers),
                lambda headers: client.get_model_metadata("efficientnet-lite0", headers=headers),
                lambda headers: client.get_server_metadata(headers=headers),
            ):
                for headers in (None, {"authorization": "Bearer wrong"}):
                    with pytest.raises(InferenceServerException) as caught:
                        await call(headers)
                    assert status_of(caught.value) == "StatusCode.UNAUTHENTICATED"
                await call({"authorization": f"Bearer {TOKEN}"})
            # Health stays open as grpc.health.v1 does (probes carry no token), unless closed.
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready("efficientnet-lite0")
        finally:
            await client.close()


async def test_closed_health_needs_the_token_for_v2_health_too() -> None:
    async with running_server(auth_tokens=[TOKEN], auth_open_health=False, http_port=0) as server:
        client = triton_aio.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            with pytest.raises(InferenceServerException) as caught:
                await client.is_server_ready()
            assert status_of(caught.value) == "StatusCode.UNAUTHENTICATED"
            assert await client.is_server_ready(headers={"authorization": f"Bearer {TOKEN}"})
        finally:
            await client.close()


async def test_a_model_named_like_another_model_image_view_is_refused_at_start() -> None:
    models = [{"name": "cam", "source": str(EFFICIENTNET)}, {"name": "cam_image", "source": str(EFFICIENTNET)}]
    with pytest.raises(ConfigError, match="cam_image would be both a served model and"):
        async with running_server(models=models, http_port=0):
            pass


async def test_while_shutting_down_ready_turns_false_and_calls_are_unavailable() -> None:
    async with running_server(http_port=0) as server:
        client = triton_aio.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            assert await client.is_server_ready() and await client.is_model_ready("efficientnet-lite0_image")
            server.engine.begin_shutdown()
            assert await client.is_server_live()
            assert not await client.is_server_ready()
            assert not await client.is_model_ready("efficientnet-lite0_image")
            with pytest.raises(InferenceServerException) as caught:
                await client.infer("efficientnet-lite0_image", [image_input("cat.jpg")])
            assert status_of(caught.value) == "StatusCode.UNAVAILABLE"
            assert "shutting down" in caught.value.message()
        finally:
            await client.close()


async def test_v2_streams_count_against_the_open_streams_limit() -> None:
    async with (
        running_server(max_streams=1, http_port=0) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        first: Any = stub.ModelStreamInfer()
        await first.initial_metadata()  # admitted: the server sends headers at once
        assert server.engine.active_streams == 1
        second: Any = stub.ModelStreamInfer()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await second.read()
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "streams open" in (error.value.details() or "")
        await first.done_writing()
        assert await first.read() == grpc.aio.EOF


class GatedBackend:
    """The real ONNX backend, with every run held until `gate` is set; records each run's batch."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.graph = inner.graph
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[np.ndarray] = []

    @property
    def has_solo_session(self) -> bool:
        return False

    def describe(self) -> Any:
        return self.inner.describe()

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(timeout=60)
        self.batches.append(batch.copy())
        return self.inner.run(batch)  # type: ignore[no-any-return]

    run_alone = run


async def test_mixed_protocol_load_shares_batches() -> None:
    """A held run lets inputs of both protocols queue; the next run holds them all (batch-size histogram)."""
    backends: list[GatedBackend] = []

    def gated(files: ModelFiles, options: Any) -> GatedBackend:
        backends.append(GatedBackend(onnx_backend(files, options)))
        return backends[-1]

    overrides = {
        "batching": {"max_batch_size": 8, "max_queue_delay_us": 0},
        "runtime": {"instances": 1},
        "http_port": 0,
    }
    settings = make_settings(**overrides)
    engine = await asyncio.to_thread(Engine.load, settings, gated)
    (backend,) = backends
    v1_array, v2_array = pixels(1, seed=21), pixels(1, seed=22)
    async with running_server(engine=engine, **overrides) as server, connect(server) as v1:
        client = triton_aio.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            first = asyncio.ensure_future(v1.Classify(pb.ClassifyRequest(inputs=[v1_tensor(v1_array)])))
            assert await asyncio.to_thread(backend.entered.wait, 30)  # the first run is held
            waiting = [
                asyncio.ensure_future(v1.Classify(pb.ClassifyRequest(inputs=[v1_tensor(v1_array)]))),
                asyncio.ensure_future(
                    v1.Classify(pb.ClassifyRequest(inputs=[pb.Input(image=(IMAGES / "cat.jpg").read_bytes())]))
                ),
                asyncio.ensure_future(client.infer("efficientnet-lite0", [pixel_input(v2_array)])),
                asyncio.ensure_future(client.infer("efficientnet-lite0_image", [image_input("coffee.jpg")])),
            ]
            model = engine.get("efficientnet-lite0")
            for _ in range(3000):
                if model.queue_depth == 4:
                    break
                await asyncio.sleep(0.01)
            assert model.queue_depth == 4
            backend.gate.set()
            await first
            answers = await asyncio.gather(*waiting)
            stats = (await client.get_inference_statistics("efficientnet-lite0", as_json=True))["model_stats"][0]
        finally:
            backend.gate.set()
            await client.close()
    assert [len(b) for b in backend.batches] == [1, 4]
    shared = backend.batches[1]
    assert any(np.array_equal(row, v1_array[0]) for row in shared)  # imgcls.v1's tensor
    assert any(np.array_equal(row, v2_array[0]) for row in shared)  # v2's tensor, in the same run
    assert {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]} == {1: 1, 4: 1}
    assert answers[1].results[0].labels[0].label == REFERENCE["cat.jpg"][0]["label"]
    assert int(np.argmax(answers[3].as_numpy("scores"))) == REFERENCE["coffee.jpg"][0]["index"]


# --- the README's examples paste and run ----------------------------------------------------------


def readme_section() -> str:
    """The Open Inference Protocol page (docs/doors/open-inference-grpc.md) up to its closing section."""
    text = (ROOT / "docs" / "doors" / "open-inference-grpc.md").read_text()
    return text[: text.index("\n## Every door, one engine")]


async def test_readme_examples_give_the_answers_shown() -> None:
    section = readme_section()
    (python,) = re.findall(r"```python\n(.+?)\n```", section, re.S)
    (shown_text,) = re.findall(r"```text\n(.+?)\n```", section, re.S)
    grpcurl = re.search(r"-d '(\{\"model_name\".+?)' \\\n", section, re.S)
    assert grpcurl is not None and "| jq -r '.outputs[0].contents.bytesContents[] | @base64d'" in section
    cat = base64.b64encode((ROOT / "examples" / "images" / "cat.jpg").read_bytes()).decode()
    body = grpcurl.group(1).replace("'\"$(base64 -w0 examples/images/cat.jpg)\"'", cat)
    async with running_server(http_port=0) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            response = await stub.ModelInfer(json_format.Parse(body, service_pb2.ModelInferRequest()))
        # grpcurl prints bytes as base64; jq's @base64d turns each element back into its text.
        assert [e.decode() for e in response.outputs[0].contents.bytes_contents] == shown_text.splitlines()

        code = python.replace("127.0.0.1:50051", f"127.0.0.1:{server.port}")
        output = io.StringIO()

        def run() -> None:
            cwd = os.getcwd()
            os.chdir(ROOT)
            try:
                with contextlib.redirect_stdout(output):
                    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
            finally:
                os.chdir(cwd)

        await asyncio.to_thread(run)
    printed = re.sub(r"\n\s+", " ", output.getvalue()).splitlines()  # numpy wraps long rows
    comments = [line[2:] for line in python.splitlines() if line.startswith("# ")]
    assert printed == comments
