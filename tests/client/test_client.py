"""imgcls.client against a real server: every kind of image argument, options, models, health, errors.

The servers run on the test's event loop, so the blocking Client is always called from a thread.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from imgcls.client import AsyncClient, Client, ClientError, Prediction
from imgcls.client.client import build_request
from imgcls.server.images.preprocessing import compile_preprocessor
from imgcls.server.server import RunningServer
from imgcls.v1 import classifier_pb2 as pb
from PIL import Image
from support.paths import EFFICIENTNET, IMAGES
from support.servers import running_server

T = TypeVar("T")
COFFEE = IMAGES / "coffee.jpg"
REFERENCE: dict[str, list[dict[str, Any]]] = json.loads((IMAGES / "reference-efficientnet-lite0.json").read_text())


def coffee_tensor() -> np.ndarray:
    config = json.loads((EFFICIENTNET / "preprocessor_config.json").read_text())
    preprocessor = compile_preprocessor(config, dtype=np.dtype(np.float32), jpeg_draft=False)
    with Image.open(COFFEE) as image:
        return preprocessor(image)


async def in_thread(server: RunningServer, call: Callable[[Client], T], **kwargs: Any) -> T:
    """Run call(client) on a fresh sync Client in a worker thread, so the server's loop keeps running."""

    def run() -> T:
        with Client(f"127.0.0.1:{server.port}", **kwargs) as client:
            return call(client)

    return await asyncio.to_thread(run)


@pytest.fixture
async def aclient(server: RunningServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(f"127.0.0.1:{server.port}") as client:
        yield client


def assert_espresso(predictions: list[Prediction]) -> None:
    assert all(isinstance(p, Prediction) for p in predictions)
    assert len(predictions) == 5
    assert predictions[0].label == "espresso"
    assert predictions[0].score == pytest.approx(REFERENCE["coffee.jpg"][0]["score"], abs=0.03)


# --- sync Client -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_image",
    [
        lambda: COFFEE,
        lambda: str(COFFEE),
        lambda: COFFEE.read_bytes(),
        lambda: bytearray(COFFEE.read_bytes()),
        lambda: "data:image/jpeg;base64," + base64.b64encode(COFFEE.read_bytes()).decode(),
        lambda: Image.open(COFFEE),
        lambda: Image.open(COFFEE).convert("RGBA"),
        lambda: Image.open(COFFEE).convert("P"),  # converted to RGB by the client
        lambda: np.asarray(Image.open(COFFEE).convert("RGB")),
        lambda: coffee_tensor(),
        lambda: coffee_tensor()[None],
        lambda: coffee_tensor().astype(np.float16),
    ],
    ids=[
        "path",
        "str path",
        "bytes",
        "bytearray",
        "data url",
        "PIL",
        "PIL RGBA",
        "PIL palette",
        "uint8 array",
        "float32 tensor",
        "float32 tensor batch 1",
        "float16 tensor",
    ],
)
async def test_classify_every_image_kind(server: RunningServer, make_image: Callable[[], Any]) -> None:
    image = make_image()
    assert_espresso(await in_thread(server, lambda client: client.classify(image)))


async def test_classify_gray_uint8_array(server: RunningServer) -> None:
    gray = np.asarray(Image.open(IMAGES / "camera.png"))
    assert gray.ndim == 2
    predictions = await in_thread(server, lambda client: client.classify(gray))
    assert predictions[0].label == "tripod"


async def test_classify_batch_keeps_order(server: RunningServer) -> None:
    names = ["rocket.jpg", "coffee.jpg", "camera.png", "cat.jpg"]
    results = await in_thread(server, lambda client: client.classify_batch([IMAGES / n for n in names]))
    assert [r[0].label for r in results] == [REFERENCE[n][0]["label"] for n in names]


async def test_classify_options(server: RunningServer) -> None:
    def call(client: Client) -> tuple[list[Prediction], list[Prediction], list[Prediction], list[Prediction]]:
        return (
            client.classify(COFFEE, top_k=2),
            client.classify(COFFEE, top_k=0, threshold=0.01),
            client.classify(COFFEE, top_k=1, function_to_apply="sigmoid"),
            client.classify(COFFEE, top_k=0, preprocessor_overrides={"crop_pct": 1.0}),
        )

    top2, thresholded, sigmoid, overridden = await in_thread(server, call)
    assert [p.label for p in top2] == ["espresso", "cup"]
    assert [p.label for p in thresholded] == ["espresso", "cup"]
    assert sigmoid[0].label == "espresso" and sigmoid[0].score > 0.99
    assert len(overridden) == 1000 and overridden[0].label == "espresso"


async def test_classify_request_with_model_and_request_id(server: RunningServer) -> None:
    request = build_request([COFFEE], model="efficientnet-lite0", request_id="abc")
    response = await in_thread(server, lambda client: client.classify_request(request))
    assert isinstance(response, pb.ClassifyResponse)
    assert (response.request_id, response.model) == ("abc", "efficientnet-lite0")


async def test_list_models_get_model_and_health(server: RunningServer) -> None:
    def call(client: Client) -> tuple[list[pb.ModelInfo], pb.ModelInfo, pb.ModelInfo, bool, bool]:
        return (
            client.list_models(),
            client.get_model(),
            client.get_model("efficientnet-lite0"),
            client.health(),
            client.health("imgcls.v1.ImageClassifierService"),
        )

    models, default, named, healthy, service_healthy = await in_thread(server, call)
    assert [m.name for m in models] == ["efficientnet-lite0"]
    assert default == named == models[0]
    assert default.num_labels == 1000 and default.is_default
    assert healthy and service_healthy


async def test_health_false_when_not_serving(server: RunningServer) -> None:
    await server.set_serving(False)
    assert await in_thread(server, lambda client: client.health()) is False


async def test_client_error_carries_the_code(server: RunningServer) -> None:
    with pytest.raises(ClientError) as unknown:
        await in_thread(server, lambda client: client.classify(COFFEE, model="nope"))
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND
    assert "'nope' is not served" in unknown.value.message
    assert str(unknown.value).startswith("NOT_FOUND: ")
    with pytest.raises(ClientError) as bad:
        await in_thread(server, lambda client: client.classify(b"not an image"))
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[0]: not a decodable image" in bad.value.message
    with pytest.raises(ClientError) as missing:
        await in_thread(server, lambda client: client.get_model("nope"))
    assert missing.value.code == grpc.StatusCode.NOT_FOUND


def test_client_refuses_what_it_cannot_send() -> None:
    # Refused locally, before any call: no server needed (the channel connects lazily).
    with Client("127.0.0.1:1") as client:
        with pytest.raises(TypeError, match="cannot classify a dict"):
            client.classify({"not": "an image"})
        with pytest.raises(ValueError, match="uint8 arrays must be"):
            client.classify(np.zeros((4, 4, 2), np.uint8))
        with pytest.raises(ValueError, match="float32/float16"):
            client.classify(np.zeros((3, 4, 4), np.float64))


async def test_client_error_when_nothing_listens() -> None:
    def call() -> bool:
        with Client("127.0.0.1:1", timeout=5) as client:
            return client.health()

    with pytest.raises(ClientError) as info:
        await asyncio.to_thread(call)
    assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_client_over_two_servers_uses_both() -> None:
    async with running_server() as first, running_server() as second:
        targets = [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"]

        def call() -> list[list[Prediction]]:
            with Client(targets) as client:
                return [client.classify(COFFEE) for _ in range(20)]

        results = await asyncio.to_thread(call)
        served = [s.engine.models["efficientnet-lite0"].request_stats.requests for s in (first, second)]
    assert all(r[0].label == "espresso" for r in results)
    assert sum(served) == 20
    # Round-robin balancing: both servers took work.
    assert min(served) > 0, served


# --- AsyncClient -------------------------------------------------------------------------------


async def test_async_classify_kinds(aclient: AsyncClient) -> None:
    for image in (COFFEE, COFFEE.read_bytes(), Image.open(COFFEE), np.asarray(Image.open(COFFEE)), coffee_tensor()):
        assert_espresso(await aclient.classify(image))


async def test_async_batch_options_and_concurrency(aclient: AsyncClient) -> None:
    names = ["cat.jpg", "coffee.jpg", "rocket.jpg"]
    batch = await aclient.classify_batch([IMAGES / n for n in names], top_k=1)
    assert [[p.label for p in r] for r in batch] == [[REFERENCE[n][0]["label"]] for n in names]
    # Several calls in flight on one channel.
    concurrent = await asyncio.gather(*(aclient.classify(IMAGES / n, threshold=0.1) for n in names))
    for name, predictions in zip(names, concurrent, strict=True):
        assert predictions[0].label == REFERENCE[name][0]["label"]
        assert all(p.score >= 0.1 for p in predictions)


async def test_async_models_health_and_errors(aclient: AsyncClient) -> None:
    models = await aclient.list_models()
    assert [m.name for m in models] == ["efficientnet-lite0"]
    assert (await aclient.get_model()).name == "efficientnet-lite0"
    assert await aclient.health()
    with pytest.raises(ClientError) as info:
        await aclient.classify(COFFEE, model="nope")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ClientError) as missing:
        await aclient.get_model("nope")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND


async def test_async_client_over_two_servers() -> None:
    async with running_server() as first, running_server() as second:
        async with AsyncClient([f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"]) as client:
            results = [await client.classify(COFFEE, top_k=1) for _ in range(20)]
        served = [s.engine.models["efficientnet-lite0"].request_stats.requests for s in (first, second)]
    assert all(r[0].label == "espresso" for r in results)
    assert sum(served) == 20
    assert min(served) > 0, served
