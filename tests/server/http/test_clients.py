"""Clients no one here wrote, over HTTP: huggingface_hub.InferenceClient, curl and tritonclient.http (JSON and binary,
blocking and asyncio) classify every shared image with the reference top-5, scores equal to imgcls.v1's over gRPC."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_http_aio
from huggingface_hub import InferenceClient
from imgcls.server.images.preprocessing import compile_preprocessor
from imgcls.server.server import RunningServer
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from PIL import Image
from server.http.helpers import (
    IMAGE_NAMES,
    MODEL,
    assert_reference_top5,
    curl,
    image,
    needs_curl,
    same_float32,
    url,
    v1_answer,
)
from support.paths import EFFICIENTNET, IMAGES

pytestmark = pytest.mark.asyncio(loop_scope="module")


def assert_same_as_v1(got: list[tuple[str, float]], want: list[Any]) -> None:
    assert [label for label, _ in got] == [w.label for w in want]
    for (label, score), expected in zip(got, want, strict=True):
        assert same_float32(score, expected.score), (label, score, expected.score)


# -- Hugging Face InferenceClient ------------------------------------------------------------------
@pytest.mark.parametrize("name", IMAGE_NAMES)
async def test_inference_client_classifies_every_image(
    http_server: RunningServer, http_stub: pb_grpc.ImageClassifierServiceStub, name: str
) -> None:
    client = InferenceClient(model=url(http_server, f"/models/{MODEL}"))
    # A path with top_k: JSON with the image as base64; bytes without parameters: the raw image as the body.
    from_path = await asyncio.to_thread(client.image_classification, str(IMAGES / name), top_k=5)
    from_bytes = await asyncio.to_thread(client.image_classification, image(name))
    want = await v1_answer(http_stub, image(name))
    assert_reference_top5(name, [x.label for x in from_path])
    assert_same_as_v1([(x.label, x.score) for x in from_path], want)
    assert_same_as_v1([(x.label, x.score) for x in from_bytes], want)


async def test_inference_client_parameters_and_base_url(
    http_server: RunningServer, http_stub: pb_grpc.ImageClassifierServiceStub
) -> None:
    client = InferenceClient(base_url=url(http_server, f"/models/{MODEL}"))
    top3 = await asyncio.to_thread(client.image_classification, image("cat.jpg"), top_k=3)
    sigmoid = await asyncio.to_thread(
        client.image_classification, image("cat.jpg"), top_k=2, function_to_apply="sigmoid"
    )
    assert [x.label for x in top3] == ["Egyptian cat", "tiger cat", "tabby, tabby cat"]
    response = await http_stub.Classify(
        pb.ClassifyRequest(
            inputs=[pb.Input(image=image("cat.jpg"))],
            parameters=pb.Parameters(top_k=2, function_to_apply=pb.FUNCTION_TO_APPLY_SIGMOID),
        )
    )
    assert_same_as_v1([(x.label, x.score) for x in sigmoid], list(response.results[0].labels))


# -- curl ----------------------------------------------------------------------------------------
@needs_curl
@pytest.mark.parametrize("name", IMAGE_NAMES)
async def test_curl_data_binary_classifies_every_image(
    http_server: RunningServer, http_stub: pb_grpc.ImageClassifierServiceStub, name: str
) -> None:
    answer = await curl("--data-binary", f"@{IMAGES / name}", url(http_server, f"/models/{MODEL}"))
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    got = answer.json()
    assert_reference_top5(name, [x["label"] for x in got])
    assert_same_as_v1([(x["label"], x["score"]) for x in got], await v1_answer(http_stub, image(name)))


@needs_curl
async def test_curl_json_with_base64_data_url_and_parameters(
    http_server: RunningServer, http_stub: pb_grpc.ImageClassifierServiceStub
) -> None:
    data_url = "data:image/jpeg;base64," + base64.b64encode(image("coffee.jpg")).decode()
    body = json.dumps({"inputs": data_url, "parameters": {"top_k": 2, "threshold": 0.01}}).encode()
    answer = await curl(
        "-H", "Content-Type: application/json", "--data-binary", "@-", url(http_server, f"/models/{MODEL}"), stdin=body
    )
    assert answer.status == 200
    got = answer.json()
    assert [x["label"] for x in got] == ["espresso", "cup"]
    assert_same_as_v1([(x["label"], x["score"]) for x in got], await v1_answer(http_stub, image("coffee.jpg"), top_k=2))


@needs_curl
async def test_curl_query_parameters_on_a_raw_body(http_server: RunningServer) -> None:
    answer = await curl(
        "-H", "Content-Type: image/jpeg", "--data-binary", f"@{IMAGES / 'cat.jpg'}",
        url(http_server, f"/models/{MODEL}?top_k=1&function_to_apply=none"),
    )  # fmt: skip
    got = answer.json()
    assert len(got) == 1 and got[0]["label"] == "Egyptian cat"
    assert got[0]["score"] > 1  # a logit: no softmax applied


# -- tritonclient.http ---------------------------------------------------------------------------
def bytes_input(data: bytes, *, binary: bool) -> triton_http.InferInput:
    tensor = triton_http.InferInput("image", [1, 1], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_), binary_data=True)
    else:  # JSON cannot carry raw bytes: the image view reads a text element as base64
        tensor.set_data_from_numpy(np.array([[base64.b64encode(data).decode()]], dtype=np.object_), binary_data=False)
    return tensor


def triton_scores(client: Any, data: bytes, *, binary: bool) -> tuple[np.ndarray, list[str]]:
    """The image view's scores and its classification strings (top 5), in one request."""
    outputs = [
        triton_http.InferRequestedOutput("scores", binary_data=binary),
    ]
    result = client.infer(f"{MODEL}_image", [bytes_input(data, binary=binary)], outputs=outputs)
    classified = client.infer(
        f"{MODEL}_image",
        [bytes_input(data, binary=binary)],
        outputs=[triton_http.InferRequestedOutput("scores", binary_data=binary, class_count=5)],
    )
    strings = [s.decode() if isinstance(s, bytes) else s for s in classified.as_numpy("scores").reshape(-1)]
    return result.as_numpy("scores"), strings


def assert_triton_matches_v1(name: str, scores: np.ndarray, strings: list[str], want: list[Any]) -> None:
    assert scores.shape == (1, 1000) and scores.dtype == np.float32
    assert [int(np.argsort(-scores[0], kind="stable")[i]) for i in range(5)] == [w.index for w in want]
    for w in want:
        assert same_float32(float(scores[0, w.index]), w.score), (w.label, scores[0, w.index], w.score)
    parsed = [s.split(":", 2) for s in strings]
    assert_reference_top5(name, [label for _, _, label in parsed])
    assert [int(index) for _, index, _ in parsed] == [w.index for w in want]
    assert all(same_float32(float(value), w.score) for (value, _, _), w in zip(parsed, want, strict=True))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_tritonclient_http_classifies_every_image(
    http_server: RunningServer, http_stub: pb_grpc.ImageClassifierServiceStub, binary: bool
) -> None:
    def run() -> dict[str, tuple[np.ndarray, list[str]]]:
        client = triton_http.InferenceServerClient(f"127.0.0.1:{http_server.http_port}")
        try:
            assert client.is_server_live() and client.is_server_ready()
            assert client.is_model_ready(f"{MODEL}_image")
            return {name: triton_scores(client, image(name), binary=binary) for name in IMAGE_NAMES}
        finally:
            client.close()

    answers = await asyncio.to_thread(run)
    for name in IMAGE_NAMES:
        assert_triton_matches_v1(name, *answers[name], await v1_answer(http_stub, image(name)))


async def test_tritonclient_http_aio_defaults(
    http_server: RunningServer, http_stub: pb_grpc.ImageClassifierServiceStub
) -> None:
    """The asyncio client with no outputs named: all of them, binary (binary_data_output)."""
    client = triton_http_aio.InferenceServerClient(f"127.0.0.1:{http_server.http_port}")
    try:
        metadata = await client.get_model_metadata(f"{MODEL}_image")
        assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}]
        tensor = triton_http_aio.InferInput("image", [2, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[image("cat.jpg")], [image("rocket.jpg")]], dtype=np.object_))
        result = await client.infer(f"{MODEL}_image", [tensor], request_id="two")
    finally:
        await client.close()
    assert result.get_response()["id"] == "two"
    scores = result.as_numpy("scores")
    for row, name in enumerate(["cat.jpg", "rocket.jpg"]):
        want = await v1_answer(http_stub, image(name))
        assert all(same_float32(float(scores[row, w.index]), w.score) for w in want)


def preprocessed(name: str) -> np.ndarray:
    """The model input for an image, as the server's exact path computes it: 3x224x224 float32."""
    config = json.loads((EFFICIENTNET / "preprocessor_config.json").read_text())
    preprocessor = compile_preprocessor(config, dtype=np.dtype(np.float32), jpeg_draft=False)
    with Image.open(IMAGES / name) as opened:
        return preprocessor(opened)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_tritonclient_http_network_view_takes_tensors(
    http_server: RunningServer, http_stub: pb_grpc.ImageClassifierServiceStub, binary: bool
) -> None:
    batch = np.stack([preprocessed("cat.jpg"), preprocessed("coffee.jpg")])

    def run() -> tuple[dict[str, Any], np.ndarray, list[str]]:
        client = triton_http.InferenceServerClient(f"127.0.0.1:{http_server.http_port}")
        try:
            config = client.get_model_config(MODEL)
            tensor = triton_http.InferInput("pixel_values", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch, binary_data=binary)
            logits = client.infer(MODEL, [tensor]).as_numpy("logits")
            top = client.infer(
                MODEL, [tensor], outputs=[triton_http.InferRequestedOutput("logits", binary_data=binary, class_count=3)]
            ).as_numpy("logits")
            return config, logits, [s.decode() if isinstance(s, bytes) else s for s in top.reshape(-1)]
        finally:
            client.close()

    config, logits, strings = await asyncio.to_thread(run)
    assert config["max_batch_size"] > 0
    assert config["input"][0]["format"] == "FORMAT_NCHW" and config["input"][0]["dims"] == [3, 224, 224]
    assert config["output"][0]["label_filename"]
    assert logits.shape == (2, 1000)
    for row in range(len(batch)):
        tensor = pb.Tensor(dims=[1, 3, 224, 224], dtype=pb.DATA_TYPE_FLOAT32, raw_data=batch[row : row + 1].tobytes())
        response = await http_stub.Classify(
            pb.ClassifyRequest(
                inputs=[pb.Input(tensor=tensor)],
                parameters=pb.Parameters(top_k=3, function_to_apply=pb.FUNCTION_TO_APPLY_NONE),
            )
        )
        want = list(response.results[0].labels)
        assert all(same_float32(float(logits[row, w.index]), w.score) for w in want)
        assert [s.split(":", 2)[2] for s in strings[row * 3 : row * 3 + 3]] == [w.label for w in want]


# -- imgcls.v1 as JSON -----------------------------------------------------------------------------
@needs_curl
@pytest.mark.parametrize("name", IMAGE_NAMES)
async def test_v1_classify_json_equals_grpc(
    http_server: RunningServer, http_stub: pb_grpc.ImageClassifierServiceStub, name: str, tmp_path: Path
) -> None:
    body = tmp_path / "request.json"
    body.write_text(json.dumps({"inputs": [{"image": base64.b64encode(image(name)).decode()}], "request_id": "r1"}))
    answer = await curl(
        "-H", "Content-Type: application/json", "--data-binary", f"@{body}", url(http_server, "/v1/classify")
    )
    assert answer.status == 200
    got = answer.json()
    assert got["request_id"] == "r1" and got["model"] == MODEL
    labels = got["results"][0]["labels"]
    assert_reference_top5(name, [x["label"] for x in labels])
    want = await v1_answer(http_stub, image(name))
    assert [x["index"] for x in labels] == [w.index for w in want]
    assert all(same_float32(x["score"], w.score) for x, w in zip(labels, want, strict=True))


@needs_curl
async def test_v1_list_and_get_models(
    http_server: RunningServer, http_stub: pb_grpc.ImageClassifierServiceStub
) -> None:
    listed = (await curl(url(http_server, "/v1/models"))).json()
    got = (await curl(url(http_server, f"/v1/models/{MODEL}"))).json()
    grpc_info = (await http_stub.GetModel(pb.GetModelRequest(name=MODEL))).model
    assert [m["name"] for m in listed["models"]] == [MODEL]
    info = got["model"]
    assert info["name"] == MODEL and info["is_default"] is True and info["ready"] is True
    assert info["input_shape"] == ["-1", "3", "224", "224"]  # int64 as strings: the proto's JSON mapping
    assert info["num_labels"] == grpc_info.num_labels == len(info["labels"])
    assert info["default_function_to_apply"] == "FUNCTION_TO_APPLY_SOFTMAX"
    assert info["labels"][0] == grpc_info.labels[0]
