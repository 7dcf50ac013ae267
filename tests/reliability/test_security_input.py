"""Hostile input aimed at the server rather than the model.

- A request's ``model`` is only a key into the served set: a path (existing or not), a URL or a
  Hugging Face repo id is NOT_FOUND naming the served models, and nothing is opened, loaded or
  fetched for it.
- Error messages for large bad inputs stay short and do not echo the input back (unary calls are
  capped by the gRPC layer; stream frame errors are sent as they are, so the cap must hold below).
- With debug logging on, the server's output holds neither a caller's image (bytes, base64 or
  metadata) nor a bearer token.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import onnxruntime as ort
import pytest
from google.protobuf import struct_pb2
from imgcls.server.engine import engine as engine_module
from imgcls.server.runtime import onnx as onnx_backend
from imgcls.server.sources import hub
from imgcls.server.sources import local as model_source
from imgcls.server.sources import resolve as resolve_module
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from PIL import Image
from reliability import corpus
from reliability.helpers import good_call
from support.inputs import COFFEE, ESPRESSO
from support.paths import EFFICIENTNET, IMAGES, OPEN_NSFW
from support.serve_process import ServeProcess
from support.servers import connect, running_server

SERVED = "efficientnet-lite0"
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT

# --- model names that are not keys ------------------------------------------------------------

EXISTING_ONNX = OPEN_NSFW / "model.onnx"
HOSTILE_MODEL_NAMES = [
    pytest.param("/etc/passwd", id="etc-passwd"),
    pytest.param("../shared/models/open-nsfw", id="relative-model-folder"),
    pytest.param(os.path.relpath(OPEN_NSFW, Path.cwd()), id="relative-to-cwd-model-folder"),
    pytest.param(str(EXISTING_ONNX), id="absolute-existing-onnx"),
    pytest.param(str(EFFICIENTNET), id="absolute-existing-hf-folder"),
    pytest.param(f"file://{EXISTING_ONNX}", id="file-url"),
    pytest.param("https://huggingface.co/google/vit-base-patch16-224/resolve/main/onnx/model.onnx", id="https-url"),
    pytest.param("google/vit-base-patch16-224", id="hf-repo-id"),
    pytest.param("Xenova/vit-base-patch16-224@main", id="hf-repo-id-at-revision"),
    pytest.param(f"{SERVED}/../../../../etc/passwd", id="served-name-then-traversal"),
]


def not_served(name: str) -> str:
    return f"model {name!r} is not served; served models: {SERVED}"


_PATH_EVENTS = ("open", "os.listdir", "os.scandir")


class Observer:
    """Records, while armed, what the process opens and which network calls it makes.

    Built on audit hooks (PEP 578), which see Python-level open() and socket calls from every
    thread; hooks cannot be removed, so one hook is installed per process and armed per test.
    """

    _installed: Observer | None = None

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.armed = False

    @classmethod
    def get(cls) -> Observer:
        if cls._installed is None:
            cls._installed = cls()
            sys.addaudithook(cls._installed._hook)
        return cls._installed

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.armed:
            return
        if event in _PATH_EVENTS:
            self.events.append((event, os.fsdecode(args[0]) if isinstance(args[0], str | bytes) else repr(args[0])))
        elif event.startswith(("socket.connect", "socket.getaddrinfo", "urllib.", "http.client.")):
            self.events.append((event, repr(args)[:200]))

    def touching(self, fragment: str) -> list[tuple[str, str]]:
        """Files or folders whose path holds `fragment`, and every network call (of any kind)."""
        return [(event, what) for event, what in self.events if event not in _PATH_EVENTS or fragment in what]


@pytest.fixture
def observer() -> Iterator[Observer]:
    watcher = Observer.get()
    watcher.events.clear()
    watcher.armed = True
    try:
        yield watcher
    finally:
        watcher.armed = False


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every way a model could be resolved, loaded or downloaded, replaced by a recorder that refuses."""
    calls: list[str] = []

    def refuse(what: str) -> Callable[..., Any]:
        def recorder(*args: Any, **kwargs: Any) -> Any:
            calls.append(f"{what}{args}")
            raise AssertionError(f"{what} called while serving a request: {args}")

        return recorder

    for module, name in [
        (engine_module, "resolve_model_files"),
        (engine_module, "onnx_backend"),
        (engine_module, "OnnxBackend"),
        (resolve_module, "load_local"),
        (resolve_module, "load_hf_folder"),
        (model_source, "resolve_local"),
        (model_source, "load_hf_folder"),
        (hub, "fetch_hub_model"),
        (onnx_backend, "OnnxBackend"),
        (ort, "InferenceSession"),
    ]:
        monkeypatch.setattr(module, name, refuse(f"{module.__name__}.{name}"))
    return calls


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


async def assert_served_set_unchanged(stub: pb_grpc.ImageClassifierServiceStub) -> None:
    listed = await stub.ListModels(pb.ListModelsRequest(), timeout=30)
    assert [m.name for m in listed.models] == [SERVED]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("name", HOSTILE_MODEL_NAMES)
async def test_model_name_that_is_a_path_url_or_repo_id_is_not_found_and_nothing_is_loaded(
    module_stub: pb_grpc.ImageClassifierServiceStub, observer: Observer, loads: list[str], name: str
) -> None:
    request = pb.ClassifyRequest(model=name, inputs=[pb.Input(image=COFFEE)])
    error = await rpc_error(module_stub.Classify(request, timeout=30))
    assert (error.code(), error.details()) == (NOT_FOUND, not_served(name))

    error = await rpc_error(module_stub.GetModel(pb.GetModelRequest(name=name), timeout=30))
    assert (error.code(), error.details()) == (NOT_FOUND, not_served(name))

    # A stream names its model in the first frame: the stream ends NOT_FOUND.
    frames = iter([pb.ClassifyStreamRequest(model=name, inputs=[pb.Input(image=COFFEE)])])
    stream = module_stub.ClassifyStream(frames, timeout=30)
    answered = [r async for r in _until_error(stream)]
    assert answered == []
    assert (await stream.code(), await stream.details()) == (NOT_FOUND, not_served(name))

    await good_call(module_stub)
    await assert_served_set_unchanged(module_stub)
    assert loads == [], "a model was resolved or loaded for a request"
    # Nothing opened or listed under the name, and no network call at all.
    probe = Path(name.split("://")[-1].split("@")[0]).name  # "passwd", "open-nsfw", "model.onnx", ...
    assert observer.touching(probe) == [], observer.touching(probe)


async def _until_error(stream: Any) -> AsyncIterator[pb.ClassifyStreamResponse]:
    try:
        async for response in stream:
            yield response
    except grpc.aio.AioRpcError:
        return


def test_observer_sees_opens_and_network_lookups(observer: Observer) -> None:
    # Guards the test above: what it asserts did not happen would have been seen.
    EXISTING_ONNX.open("rb").close()
    socket.getaddrinfo("127.0.0.1", 80)
    assert ("open", str(EXISTING_ONNX)) in observer.touching("open-nsfw")
    assert any(event == "socket.getaddrinfo" for event, _ in observer.touching("nothing-by-this-name"))


def test_existing_paths_used_above_really_exist() -> None:
    # Otherwise "an existing model file is still NOT_FOUND" would prove nothing.
    assert EXISTING_ONNX.is_file() and (EFFICIENTNET / "preprocessor_config.json").is_file()
    assert (Path.cwd() / os.path.relpath(OPEN_NSFW, Path.cwd())).is_dir()


# --- large bad inputs: short messages, input not echoed ----------------------------------------

MAX_MESSAGE = 400
BIG = 100_000


def overrides(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def big_text(tag: str) -> str:
    return (tag + "-") * (BIG // (len(tag) + 1))


def mid_text(tag: str) -> str:
    """Text under the 16 KiB overrides limit, still far over any message's length."""
    return (tag + "-") * (8000 // (len(tag) + 1))


BIG_BAD_INPUTS = [
    # Over 16 KiB, overrides are refused before they are converted (a Struct of a million values took seconds).
    # 100k values are more fields than any request has: refused before the parse (wire_cost).
    *(
        pytest.param(
            {"inputs": [pb.Input(image=COFFEE)], "preprocessor_overrides": overrides(value)},
            fragment,
            echoed,
            id=name,
        )
        for name, value, fragment, echoed in [
            ("override-key-100k-chars", {big_text("key"): 1}, "bytes, over the limit of 16384", big_text("key")[:1000]),
            ("image-mean-100k-values", {"image_mean": [0.5] * BIG}, "has more than 65536 fields", "0.5, " * 200),
            (
                "size-side-100k-chars",
                {"size": {"height": big_text("side"), "width": 1}},
                "bytes, over the limit of 16384",
                big_text("side")[:1000],
            ),
            ("size-dict-100k-values", {"size": {"x": [1] * BIG}}, "has more than 65536 fields", "1, " * 200),
        ]
    ),
    # Under it, each is refused by the check it fails, as briefly.
    pytest.param(
        {"inputs": [pb.Input(image=COFFEE)], "preprocessor_overrides": overrides({mid_text("key"): 1})},
        "preprocessor_overrides: unknown key 'key-key-",
        mid_text("key")[:1000],
        id="override-key-8k-chars",
    ),
    pytest.param(
        {"inputs": [pb.Input(image=COFFEE)], "preprocessor_overrides": overrides({"image_mean": [0.5] * 200})},
        "image_mean must be a number or a list of 3 numbers, got [0.5, 0.5,",
        "0.5, " * 100,
        id="image-mean-200-values",
    ),
    pytest.param(
        {
            "inputs": [pb.Input(image=COFFEE)],
            "preprocessor_overrides": overrides({"size": {"height": mid_text("side"), "width": 1}}),
        },
        "size: sides must be whole numbers, got 'side-side-",
        mid_text("side")[:1000],
        id="size-side-8k-chars",
    ),
    pytest.param(
        {"inputs": [pb.Input(image=COFFEE)], "preprocessor_overrides": overrides({"size": {"x": [1] * 250}})},
        "size must be a number, {height, width} or {shortest_edge}; got {'x': [1.0, 1.0,",
        "1, " * 100,
        id="size-dict-250-values",
    ),
    pytest.param(
        {"inputs": [pb.Input(tensor=pb.Tensor(dims=[7] * BIG, dtype=pb.DATA_TYPE_FLOAT32))]},
        "inputs[0]: tensor: 100000 dims, over the limit of 16",
        "7, " * 200,
        id="tensor-100k-dims",
    ),
    pytest.param(
        {"inputs": [pb.Input(tensor=pb.Tensor(dims=[-1] * BIG, dtype=pb.DATA_TYPE_FLOAT32))]},
        "inputs[0]: tensor: 100000 dims, over the limit of 16",
        "-1, " * 200,
        id="tensor-100k-negative-dims",
    ),
    pytest.param(
        {"inputs": [pb.Input(image=corpus.random_bytes(1 << 20))]},
        "inputs[0]: not a decodable image",
        None,
        id="1MiB-random-image",
    ),
    pytest.param(
        {"inputs": [pb.Input(image_base64="@" * (1 << 20))]},
        "inputs[0]: image_base64 is not valid base64",
        "@" * 100,
        id="1MiB-bad-base64",
    ),
    pytest.param(
        {"inputs": [pb.Input(image=b"II*\x00" + b"\xab" * (1 << 20))]},
        "inputs[0]: ",
        "\\xab" * 40,
        id="1MiB-tiff-header-then-junk",
    ),
]


def assert_short_and_not_echoed(message: str, fragment: str, echoed: str | None) -> None:
    assert fragment in message, f"{fragment!r} not in {message[:2000]!r}"
    assert len(message) <= MAX_MESSAGE, f"{len(message)} characters: {message[:2000]!r}"
    if echoed is not None:
        assert echoed not in message


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(("fields", "fragment", "echoed"), BIG_BAD_INPUTS)
async def test_large_bad_input_gets_a_short_message_in_a_call(
    module_stub: pb_grpc.ImageClassifierServiceStub, fields: dict[str, Any], fragment: str, echoed: str | None
) -> None:
    error = await rpc_error(module_stub.Classify(pb.ClassifyRequest(**fields), timeout=60))
    assert error.code() == INVALID, f"{error.code().name}: {(error.details() or '')[:500]}"
    assert_short_and_not_echoed(error.details() or "", fragment, echoed)


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(("fields", "fragment", "echoed"), BIG_BAD_INPUTS)
async def test_large_bad_input_gets_a_short_message_in_a_stream_frame(
    module_stub: pb_grpc.ImageClassifierServiceStub, fields: dict[str, Any], fragment: str, echoed: str | None
) -> None:
    # Frame errors travel in the response's status, not through the gRPC layer's cap.
    frames = [
        pb.ClassifyStreamRequest(**fields, request_id="bad"),
        pb.ClassifyStreamRequest(inputs=[pb.Input(image=COFFEE)], request_id="good", preprocessor_overrides={}),
    ]
    if "more than 65536 fields" in fragment:
        # Refused before it is parsed, as a message that is not protobuf is: the stream ends with it.
        error = await rpc_error(_collect(module_stub.ClassifyStream(iter(frames), timeout=60)))
        assert error.code() == INVALID
        assert_short_and_not_echoed(error.details() or "", fragment, echoed)
        return
    responses = [r async for r in module_stub.ClassifyStream(iter(frames), timeout=60)]
    assert [r.request_id for r in responses] == ["bad", "good"]
    assert responses[0].status.code == INVALID.value[0], responses[0].status
    assert_short_and_not_echoed(responses[0].status.message, fragment, echoed)
    assert responses[1].results[0].labels[0].index == ESPRESSO


@pytest.mark.asyncio(loop_scope="module")
async def test_huge_model_name_is_not_found_with_the_served_models_named(
    module_stub: pb_grpc.ImageClassifierServiceStub,
) -> None:
    name = big_text("model")
    error = await rpc_error(
        module_stub.Classify(pb.ClassifyRequest(model=name, inputs=[pb.Input(image=COFFEE)]), timeout=30)
    )
    details = error.details() or ""
    assert error.code() == NOT_FOUND
    assert details.startswith("model 'model-model-") and details.endswith(f"is not served; served models: {SERVED}")
    assert len(details) <= MAX_MESSAGE and name[:1000] not in details


# --- debug logs: no image, no token ----------------------------------------------------------

TOKEN = "tok-3b9e51c0d7a24f68"  # distinctive: finding it in a log is no accident
MARKER = "imgcls-secret-7d2f"  # inside the images' metadata: short enough that Pillow would log it


def jpeg_with_description(text: str) -> bytes:
    exif = Image.Exif()
    exif[0x010E] = text  # ImageDescription
    exif[0x0112] = 1  # orientation: read by preprocessing, so the EXIF block is parsed
    return corpus.encode(corpus.load_rgb(IMAGES / "coffee.jpg"), "JPEG", quality=90, exif=exif.tobytes())


def png_with_text(text: str) -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", text)
    return corpus.encode(corpus.load_rgb(IMAGES / "coffee.jpg"), "PNG", pnginfo=info)


def test_debug_logs_hold_neither_images_nor_tokens(tmp_path: Path) -> None:
    jpeg, png = jpeg_with_description(MARKER), png_with_text(MARKER)
    server = ServeProcess(
        tmp_path / "serve.log", "--grace-period", "1", "--log-level", "debug", env={"IMGCLS_AUTH_TOKENS": TOKEN}
    )
    try:
        server.start()
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ImageClassifierServiceStub(channel)
            auth = (("authorization", f"Bearer {TOKEN}"),)
            good = pb.ClassifyRequest(
                inputs=[pb.Input(image=jpeg), pb.Input(image_base64=base64.b64encode(png).decode())],
                request_id="logged-request",
            )
            response = stub.Classify(good, metadata=auth, timeout=60)
            assert [r.labels[0].index for r in response.results] == [ESPRESSO, ESPRESSO]
            # A broken copy of the same image (refused), a wrong token, and a stream.
            broken = pb.ClassifyRequest(inputs=[pb.Input(image=corpus.truncated(jpeg))])
            with pytest.raises(grpc.RpcError) as refused:
                stub.Classify(broken, metadata=auth, timeout=60)
            assert refused.value.code() == INVALID  # type: ignore[attr-defined]
            with pytest.raises(grpc.RpcError) as unauthenticated:
                stub.Classify(good, metadata=(("authorization", f"Bearer wrong-{TOKEN}"),), timeout=60)
            assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            frames = [pb.ClassifyStreamRequest(inputs=[pb.Input(image=jpeg)], request_id=f"f{i}") for i in range(3)]
            answers = list(stub.ClassifyStream(iter(frames), metadata=auth, timeout=60))
            assert [a.results[0].labels[0].index for a in answers] == [ESPRESSO] * 3
    finally:
        server.stop()
    output = server.output()

    # Debug output was really on (the request line), so the checks below look at real output.
    assert "DEBUG imgcls" in output and "logged-request" in output, output[-3000:]
    assert TOKEN not in output
    assert MARKER not in output
    for data in (jpeg, png):
        encoded = base64.b64encode(data).decode()
        for at in range(0, len(encoded) - 48, len(encoded) // 8):
            assert encoded[at : at + 48] not in output
        for at in range(0, len(data) - 24, len(data) // 8):
            chunk = data[at : at + 24]
            assert repr(chunk)[2:-1] not in output and chunk.hex() not in output


async def test_in_process_server_under_root_debug_logging_logs_no_image_metadata(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An application that embeds the server and turns every logger to DEBUG (as caplog does here):
    # Pillow would log each EXIF tag's value as it parses it, i.e. the caller's image metadata.
    request = pb.ClassifyRequest(inputs=[pb.Input(image=jpeg_with_description(MARKER))], request_id="embedded")
    caplog.set_level(logging.DEBUG)
    async with running_server(log_level="debug") as served, connect(served) as stub:
        response = await stub.Classify(request, timeout=60)
    assert response.results[0].labels[0].index == ESPRESSO
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # debug output was really on
    assert MARKER not in caplog.text


def test_marker_image_carries_the_marker_where_pillow_reads_it() -> None:
    # Guards the log test: the marker is in the EXIF Pillow parses, so a leak would show.
    with Image.open(io.BytesIO(jpeg_with_description(MARKER))) as image:
        assert image.getexif()[0x010E] == MARKER
    with Image.open(io.BytesIO(png_with_text(MARKER))) as image:
        assert image.info["Comment"] == MARKER


async def _collect(responses: Any) -> list[Any]:
    return [r async for r in responses]
