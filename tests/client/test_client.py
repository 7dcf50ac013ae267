"""imgcls.client against a real server: every kind of image argument, options, models, health, errors.

The servers run on the test's event loop, so the blocking Client is always called from a thread.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, Unpack, get_type_hints

import grpc
import numpy as np
import pytest
from imgcls.client import AsyncClient, ClassifyOptions, Client, ClientError, Prediction
from imgcls.client.client import build_request
from imgcls.client.messages import RankingOptions
from imgcls.server.images.preprocessing import compile_preprocessor
from imgcls.server.server import RunningServer
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
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


# --- Prediction, keyword arguments, timeouts (issue 11, point 9) -------------------------------------


async def test_prediction_carries_the_class_index(server: RunningServer) -> None:
    predictions = await in_thread(server, lambda client: client.classify(COFFEE, top_k=3))
    want = REFERENCE["coffee.jpg"][:3]
    assert [(p.label, p.index) for p in predictions] == [(w["label"], w["index"]) for w in want]
    assert all(type(p.index) is int for p in predictions)  # not tuple.index
    first = predictions[0]
    assert repr(first).startswith("Prediction(label='espresso', score=0.9") and repr(first).endswith(", index=967)")
    with pytest.raises(AttributeError):
        first.index = 1  # type: ignore[misc]
    assert first == Prediction("espresso", first.score, 967)


def var_keyword(function: Callable[..., Any]) -> Any:
    """The annotation of function's **parameter (None without one), evaluated as typing sees it."""
    names = [p.name for p in inspect.signature(function).parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    return get_type_hints(function, include_extras=True)[names[0]] if names else None


@pytest.mark.parametrize("client_class", [Client, AsyncClient])
def test_classify_methods_take_the_classify_options_as_typed_keywords(
    client_class: type[Client] | type[AsyncClient],
) -> None:
    options = {"model", "top_k", "threshold", "function_to_apply", "preprocessor_overrides", "timeout"}
    assert ClassifyOptions.__optional_keys__ >= options
    for name in ("classify", "classify_batch", "classify_stream"):
        assert var_keyword(getattr(client_class, name)) == Unpack[ClassifyOptions], name
    for name in ("__init__", "classify_request"):
        assert var_keyword(getattr(client_class, name)) is None, name
    # build_request makes no call, so it has no timeout.
    assert var_keyword(build_request) == Unpack[RankingOptions]
    assert RankingOptions.__optional_keys__ == ClassifyOptions.__optional_keys__ - {"timeout"}


def test_a_misspelt_option_is_a_type_error() -> None:
    with Client("127.0.0.1:1") as client, pytest.raises(TypeError, match="topk"):
        client.classify(COFFEE, topk=3)  # type: ignore[call-arg]


def test_every_classify_method_names_an_unknown_keyword_before_sending() -> None:
    with Client("127.0.0.1:1") as client:
        with pytest.raises(TypeError, match="'topk'"):
            client.classify_batch([COFFEE], topk=3)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="'topk'"):
            client.classify_stream([COFFEE], topk=3)  # type: ignore[call-arg]  # when called, not iterated
        with pytest.raises(TypeError, match="'drop_stale'"):
            client.classify(COFFEE, drop_stale=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'topk'"):
        build_request([COFFEE], topk=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'timeout'"):
        build_request([COFFEE], timeout=3)  # type: ignore[call-arg]


async def test_async_classify_methods_name_an_unknown_keyword() -> None:
    async with AsyncClient("127.0.0.1:1") as client:
        with pytest.raises(TypeError, match="'topk'"):
            await client.classify(COFFEE, topk=3)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="'topk'"):
            await client.classify_batch([COFFEE], topk=3)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="'topk'"):
            client.classify_stream([COFFEE], topk=3)  # type: ignore[call-arg]  # when called, not iterated


async def test_per_call_timeout_overrides_the_client_s(server: RunningServer) -> None:
    def call(client: Client) -> tuple[list[Prediction], ClientError]:
        ok = client.classify(COFFEE, timeout=30)  # the client's own timeout would expire at once
        with pytest.raises(ClientError) as late:
            client.classify(COFFEE, timeout=1e-6)
        return ok, late.value

    ok, late = await in_thread(server, call, timeout=1e-6)
    assert ok[0].label == "espresso"
    assert late.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_async_per_call_timeout(aclient: AsyncClient) -> None:
    with pytest.raises(ClientError) as late:
        await aclient.classify(COFFEE, timeout=1e-6)
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (await aclient.classify(COFFEE, timeout=None))[0].label == "espresso"


async def test_async_classify_request(aclient: AsyncClient) -> None:
    request = build_request([COFFEE, IMAGES / "cat.jpg"], request_id="abc", top_k=1)
    response = await aclient.classify_request(request, timeout=30)
    assert isinstance(response, pb.ClassifyResponse)
    assert response.request_id == "abc"
    assert [r.labels[0].index for r in response.results] == [967, 285]


def test_urls_are_not_fetched_nor_read_as_paths() -> None:
    with Client("127.0.0.1:1") as client:
        for url in ("https://example.com/cat.jpg", "http://example.com/cat.jpg", "s3://bucket/cat.jpg"):
            with pytest.raises(ValueError, match="URLs are not fetched; download the image first"):
                client.classify(url)


def test_missing_file_and_folder_name_the_path(tmp_path: Path) -> None:
    with Client("127.0.0.1:1") as client:
        with pytest.raises(FileNotFoundError, match=r"nope\.jpg"):
            client.classify(tmp_path / "nope.jpg")
        with pytest.raises(IsADirectoryError, match=re.escape(str(tmp_path))):
            client.classify(tmp_path)


# --- streams: options, and frames that cannot be sent ------------------------------------------------


async def test_stream_takes_function_to_apply_and_preprocessor_overrides(server: RunningServer) -> None:
    overrides = {"crop_pct": 1.0}

    def call(client: Client) -> tuple[list[Any], list[Prediction], list[Prediction]]:
        frames = [COFFEE, IMAGES / "cat.jpg"]
        results = list(client.classify_stream(frames, top_k=1, function_to_apply="sigmoid"))
        overridden = list(client.classify_stream([COFFEE], top_k=1, preprocessor_overrides=overrides))
        unary = client.classify(COFFEE, top_k=1, preprocessor_overrides=overrides)
        plain = client.classify(COFFEE, top_k=1)
        return [results, overridden], unary, plain

    (results, overridden), unary, plain = await in_thread(server, call)
    assert [r.predictions[0][0].label for r in results] == ["espresso", "Egyptian cat"]
    assert all(r.predictions[0][0].score > 0.99 for r in results[:1])  # sigmoid, not softmax's 0.95
    assert overridden[0].predictions[0][0].score == pytest.approx(unary[0].score, abs=1e-6)
    assert unary[0].score != pytest.approx(plain[0].score, abs=1e-4)  # the override really changed the input


async def test_async_stream_takes_function_to_apply_and_overrides(aclient: AsyncClient) -> None:
    results = [r async for r in aclient.classify_stream([COFFEE], top_k=1, function_to_apply="sigmoid")]
    assert results[0].predictions[0][0].score > 0.99
    overridden = [r async for r in aclient.classify_stream([COFFEE], preprocessor_overrides={"crop_pct": 1.0})]
    unary = await aclient.classify(COFFEE, preprocessor_overrides={"crop_pct": 1.0})
    assert overridden[0].predictions[0] == unary


@pytest.mark.timeout(60)
async def test_stream_with_a_missing_file_raises_its_error_after_the_frames_before_it(
    server: RunningServer, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.jpg"

    def call(client: Client) -> tuple[list[Any], BaseException]:
        answered = []
        with pytest.raises(FileNotFoundError) as info:
            for result in client.classify_stream([COFFEE, missing, COFFEE], top_k=1):
                answered.append(result)
        return answered, info.value

    answered, error = await in_thread(server, call)
    assert [r.predictions[0][0].label for r in answered] == ["espresso"]
    assert str(missing) in str(error)
    assert "frame 1 of the stream" in "".join(getattr(error, "__notes__", []))


@pytest.mark.timeout(60)
async def test_stream_whose_frames_iterator_fails_raises_that_error(server: RunningServer) -> None:
    def frames() -> Iterator[Any]:
        yield COFFEE
        raise RuntimeError("camera unplugged")

    def call(client: Client) -> list[Any]:
        return list(client.classify_stream(frames()))

    with pytest.raises(RuntimeError, match="camera unplugged"):
        await in_thread(server, call)


@pytest.mark.timeout(60)
async def test_async_stream_with_a_missing_file_raises_its_error(aclient: AsyncClient, tmp_path: Path) -> None:
    answered = []
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        async for result in aclient.classify_stream([COFFEE, tmp_path / "missing.jpg"]):
            answered.append(result)
    assert [r.predictions[0][0].label for r in answered] == ["espresso"]

    async def frames() -> AsyncIterator[Any]:
        yield COFFEE
        raise RuntimeError("camera unplugged")

    with pytest.raises(RuntimeError, match="camera unplugged"):
        _ = [r async for r in aclient.classify_stream(frames())]


@pytest.mark.timeout(120)
async def test_a_stream_refused_while_frames_are_written_reports_the_servers_status() -> None:
    # grpc.aio reports a write that races the server's refusal as INTERNAL ("Internal error from Core",
    # grpc/grpc#36066): the server said RESOURCE_EXHAUSTED, and both imgcls clients must say so, every time.
    big = (IMAGES / "coffee_1920x1280.jpg").read_bytes()
    async with (
        running_server(max_streams=1) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        held: Any = pb_grpc.ImageClassifierServiceStub(channel).ClassifyStream()
        await held.initial_metadata()  # admitted: the one stream the server allows is taken
        async with AsyncClient(f"127.0.0.1:{server.port}", timeout=30) as client:
            for _ in range(20):
                with pytest.raises(ClientError) as refused:
                    async for _result in client.classify_stream([big] * 8):
                        pass
                assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "streams open (limit)" in refused.value.message

        def blocking(client: Client) -> list[ClientError]:
            errors = []
            for _ in range(5):
                with pytest.raises(ClientError) as error:
                    list(client.classify_stream([big] * 8))
                errors.append(error.value)
            return errors

        for error in await in_thread(server, blocking, timeout=30):
            assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "streams open" in error.message
        held.cancel()
