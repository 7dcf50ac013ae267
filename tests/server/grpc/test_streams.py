"""ClassifyStream through the real server and the embedded model."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import grpc
import pytest
from imgcls.client import Client, StreamResult
from imgcls.server.server import RunningServer
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from PIL import Image
from support.gated_backend import Gate, gated_server
from support.inputs import image_input
from support.paths import IMAGES
from support.servers import CHANNEL_OPTIONS, connect, running_server
from support.waiting import poll_until

Reference = dict[str, list[dict[str, Any]]]
SIX_IMAGES = ["cat.jpg", "coffee.jpg", "rocket.jpg", "astronaut.jpg", "camera.png", "coffee_1920x1280.jpg"]
MODEL = "efficientnet-lite0"
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
OK = grpc.StatusCode.OK.value[0]


def raw_input(name: str) -> pb.Input:
    """The image as a decoded RGB frame, as a video source would send it."""
    image = Image.open(io.BytesIO((IMAGES / name).read_bytes())).convert("RGB")
    return pb.Input(
        raw=pb.RawImage(width=image.width, height=image.height, format=pb.PIXEL_FORMAT_RGB8, data=image.tobytes())
    )


def frame(inputs: pb.Input, request_id: str, **fields: Any) -> pb.ClassifyStreamRequest:
    return pb.ClassifyStreamRequest(inputs=[inputs], request_id=request_id, **fields)


async def send(messages: Iterable[pb.ClassifyStreamRequest]) -> AsyncIterator[pb.ClassifyStreamRequest]:
    for message in messages:
        yield message


async def collect(
    stub: pb_grpc.ImageClassifierServiceStub, messages: Iterable[pb.ClassifyStreamRequest]
) -> list[pb.ClassifyStreamResponse]:
    return [response async for response in stub.ClassifyStream(send(messages))]


def top1(response: pb.ClassifyStreamResponse | pb.ClassifyResponse) -> str:
    return response.results[0].labels[0].label


async def test_long_stream_alongside_unary_calls_answers_every_frame_in_order(reference: Reference) -> None:
    names = [SIX_IMAGES[i % len(SIX_IMAGES)] for i in range(200)]
    raws = {name: raw_input(name) for name in SIX_IMAGES}
    encoded = {name: image_input(name) for name in SIX_IMAGES}
    # Every fourth frame is a raw RGB frame, the rest encoded images.
    messages = [frame(raws[n] if i % 4 == 3 else encoded[n], str(i)) for i, n in enumerate(names)]
    unary_names = [SIX_IMAGES[i % len(SIX_IMAGES)] for i in range(24)]

    async with running_server() as server, connect(server) as stub:

        async def unary_calls() -> list[pb.ClassifyResponse]:
            calls = [stub.Classify(pb.ClassifyRequest(inputs=[encoded[n]])) for n in unary_names]
            return list(await asyncio.gather(*calls))

        responses, unary = await asyncio.gather(collect(stub, messages), unary_calls())

    assert len(responses) == 200
    assert [r.request_id for r in responses] == [str(i) for i in range(200)]
    for name, response in zip(names, responses, strict=True):
        assert response.status.code == OK, response.status.message
        assert not response.skipped
        assert top1(response) == reference[name][0]["label"], (response.request_id, name)
    assert [top1(r) for r in unary] == [reference[n][0]["label"] for n in unary_names]


async def test_first_message_sets_the_stream_defaults(stub: pb_grpc.ImageClassifierServiceStub) -> None:
    first = frame(image_input("cat.jpg"), "0", model=MODEL, parameters=pb.Parameters(top_k=2))
    later = [frame(image_input(n), str(i)) for i, n in enumerate(SIX_IMAGES[1:], start=1)]
    # A message with its own parameters uses them, and does not change the defaults after it.
    own = frame(image_input("cat.jpg"), "own", parameters=pb.Parameters(top_k=3))
    after = frame(image_input("coffee.jpg"), "after")
    responses = await collect(stub, [first, *later, own, after])
    assert [r.request_id for r in responses] == ["0", "1", "2", "3", "4", "5", "own", "after"]
    for response in responses:
        assert response.model == MODEL
        assert response.status.code == OK
    # The server default is top 5: two labels each means the first message's top_k carried over.
    assert [len(r.results[0].labels) for r in responses] == [2, 2, 2, 2, 2, 2, 3, 2]


async def test_stream_responses_name_the_served_model_when_the_stream_names_none(
    stub: pb_grpc.ImageClassifierServiceStub,
) -> None:
    responses = await collect(stub, [frame(image_input("cat.jpg"), "0"), frame(image_input("coffee.jpg"), "1")])
    assert [r.status.code for r in responses] == [OK, OK]
    assert [r.model for r in responses] == [MODEL, MODEL]


async def test_bad_frame_gets_its_own_error_and_the_stream_goes_on(
    stub: pb_grpc.ImageClassifierServiceStub, reference: Reference
) -> None:
    messages = [
        frame(image_input("cat.jpg"), "good-1"),
        frame(pb.Input(image=b"this is not an image"), "bad"),
        frame(image_input("coffee.jpg"), "good-2"),
        frame(raw_input("rocket.jpg"), "good-3"),
    ]
    responses = await collect(stub, messages)
    assert [r.request_id for r in responses] == ["good-1", "bad", "good-2", "good-3"]
    bad = responses[1]
    assert bad.status.code == INVALID_ARGUMENT
    assert "not a decodable image" in bad.status.message
    assert len(bad.results) == 0
    for response, name in zip([responses[0], *responses[2:]], ["cat.jpg", "coffee.jpg", "rocket.jpg"], strict=True):
        assert response.status.code == OK
        assert top1(response) == reference[name][0]["label"]


async def test_unknown_enum_in_a_frame_fails_only_that_frame(
    stub: pb_grpc.ImageClassifierServiceStub, reference: Reference
) -> None:
    messages = [
        frame(image_input("cat.jpg"), "0"),
        frame(image_input("cat.jpg"), "1", parameters=pb.Parameters(function_to_apply=99)),  # type: ignore[arg-type]
        frame(image_input("coffee.jpg"), "2"),
    ]
    responses = await collect(stub, messages)
    assert [r.request_id for r in responses] == ["0", "1", "2"]
    assert responses[1].status.code == INVALID_ARGUMENT
    assert "function_to_apply 99" in responses[1].status.message
    assert responses[0].status.code == responses[2].status.code == OK
    assert top1(responses[2]) == reference["coffee.jpg"][0]["label"]


async def test_unknown_model_in_the_first_message_ends_the_stream(stub: pb_grpc.ImageClassifierServiceStub) -> None:
    messages = [frame(image_input("cat.jpg"), "0", model="no-such-model"), frame(image_input("cat.jpg"), "1")]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub, messages)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in (caught.value.details() or "")


def tiny_frame(request_id: str, **fields: Any) -> pb.ClassifyStreamRequest:
    """An 8x8 raw frame: many of them arrive at once, far faster than the model classifies."""
    raw = pb.RawImage(width=8, height=8, format=pb.PIXEL_FORMAT_RGB8, data=bytes(range(192)))
    return frame(pb.Input(raw=raw), request_id, **fields)


async def skipping_behind_a_held_frame(
    server: RunningServer,
    gate: Gate,
    stub: pb_grpc.ImageClassifierServiceStub,
    messages: list[pb.ClassifyStreamRequest],
) -> list[pb.ClassifyStreamResponse]:
    """Send a drop_stale stream whose first frame is held at the gate until two frames behind it were
    skipped (each newer frame replaces the one waiting), then let the model run; every response, in order."""
    responses = asyncio.ensure_future(collect(stub, messages))
    assert await poll_until(lambda: server.engine.stats(MODEL).dropped_inputs >= 2), "no frame was skipped"
    gate.open()
    return await responses


async def test_drop_stale_skips_old_frames_but_answers_every_frame_in_order(reference: Reference) -> None:
    messages = [tiny_frame("0", drop_stale=True), *(tiny_frame(str(i)) for i in range(1, 60))]
    messages.append(frame(image_input("cat.jpg"), "last"))
    gate = Gate()
    async with gated_server(gate, stream_max_in_flight=1) as server, connect(server) as stub:
        responses = await skipping_behind_a_held_frame(server, gate, stub, messages)
    assert [r.request_id for r in responses] == [m.request_id for m in messages]
    skipped = [r for r in responses if r.skipped]
    assert len(skipped) >= 2  # at least the two skipped while the first frame was held
    assert not responses[0].skipped  # the frame that was running when newer ones came
    for response in skipped:
        assert len(response.results) == 0
    for response in responses:
        if not response.skipped:
            assert response.status.code == OK
            assert len(response.results) == 1
    # The newest frame is never stale: it is always classified.
    assert not responses[-1].skipped
    assert top1(responses[-1]) == reference["cat.jpg"][0]["label"]
    # Every frame not skipped ran, each alone (stream_max_in_flight=1), and nothing else did.
    assert len(gate.batch_sizes) == len(responses) - len(skipped)


async def test_skipped_frames_count_as_dropped_inputs() -> None:
    messages = [tiny_frame("0", drop_stale=True), *(tiny_frame(str(i)) for i in range(1, 60))]
    gate = Gate()
    async with gated_server(gate, stream_max_in_flight=1) as server, connect(server) as stub:
        responses = await skipping_behind_a_held_frame(server, gate, stub, messages)
        stats = (await stub.GetModel(pb.GetModelRequest())).model.stats
    skipped = sum(r.skipped for r in responses)
    assert skipped >= 2
    assert stats.dropped_inputs == skipped
    assert stats.inputs == len(messages) - skipped


async def quiet(gate: Gate, server: RunningServer, *, for_s: float = 1.0, within_s: float = 60.0) -> int:
    """Runs reached the gate (open) once no new run has come for for_s seconds while the model had nothing
    queued or held: the stream stopped taking frames. Bounded by within_s; returns the run count."""
    batcher = server.engine.get(MODEL).batcher
    ends = time.monotonic() + within_s
    last, since = -1, time.monotonic()
    while time.monotonic() < ends:
        runs = gate.runs
        if runs != last or batcher.queue_depth or gate.held:
            last, since = runs, time.monotonic()
        elif time.monotonic() - since >= for_s:
            return runs
        await asyncio.sleep(0.05)
    raise AssertionError(f"the stream never stopped taking frames ({gate.runs} runs in {within_s:.0f} s)")


async def test_client_that_never_reads_holds_the_server_back() -> None:
    # 1 MB raw frames: gRPC's flow-control windows hold only a few of them.
    big = pb.RawImage(width=600, height=600, format=pb.PIXEL_FORMAT_RGB8, data=bytes(600 * 600 * 3))
    total = 60
    pulled = 0

    def requests() -> Iterator[pb.ClassifyStreamRequest]:
        nonlocal pulled
        for i in range(total):
            pulled += 1
            message = frame(pb.Input(raw=big), str(i))
            if i == 0:
                # Every label in every answer (~30 KB each), so the client's receive window fills
                # after a couple of unread answers and the server cannot write more.
                message.parameters.top_k = 0
            yield message

    gate = Gate()
    one_at_a_time = {"batching": {"max_batch_size": 1}, "runtime": {"instances": 1}}
    async with gated_server(gate, stream_max_in_flight=2, **one_at_a_time) as server:
        # BDP probing off: the client's receive window stays at its small initial size instead of
        # growing to megabytes of unread answers.
        options = [*CHANNEL_OPTIONS, ("grpc.http2.bdp_probe", 0)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=options) as channel:
            call = pb_grpc.ImageClassifierServiceStub(channel).ClassifyStream(requests())
            # The model held: the stream has taken its two in-flight frames (one running, one queued).
            await gate.wait_for_runs(1)
            assert await poll_until(lambda: server.engine.get(MODEL).batcher.queue_depth == 1)
            # The model free, the client still not reading: answers fill its window, then nothing moves.
            gate.open()
            taken = await quiet(gate, server)
            assert pulled < 20, f"the client could send {pulled} frames: nothing held the stream back"
            assert 2 < taken < 10, f"{taken} frames classified for a client that read no answer"
            # Reading resumes the stream: every frame is answered, in order; it was held back, not stuck.
            responses = [response async for response in call]
    assert [r.request_id for r in responses] == [str(i) for i in range(total)]
    assert all(r.status.code == OK and len(r.results[0].labels) == 1000 for r in responses)
    assert gate.runs == total


def _stream_with_sync_client(server: RunningServer, names: list[str]) -> list[StreamResult]:
    with Client(f"127.0.0.1:{server.port}") as client:
        return list(client.classify_stream([IMAGES / n for n in names], top_k=1))


async def test_sync_client_stream_yields_results_in_order(server: RunningServer, reference: Reference) -> None:
    names = SIX_IMAGES * 2
    results = await asyncio.to_thread(_stream_with_sync_client, server, names)
    assert [r.request_id for r in results] == [str(i) for i in range(len(names))]
    for name, result in zip(names, results, strict=True):
        assert result.ok, result.message
        assert len(result.predictions[0]) == 1
        assert result.predictions[0][0].label == reference[name][0]["label"]


async def test_first_frame_with_bad_input_still_sets_the_stream_defaults() -> None:
    bad = pb.Input(raw=pb.RawImage(width=2, height=2, format=99, data=b"\0" * 12))  # unknown pixel format
    first = frame(bad, "0", parameters=pb.Parameters(top_k=1))
    async with running_server() as server, connect(server) as stub:
        responses = await collect(stub, [first, frame(image_input("coffee.jpg"), "1")])
    assert responses[0].status.code == INVALID_ARGUMENT
    assert "inputs[0]" in responses[0].status.message
    # The second frame left parameters empty: it takes the first frame's top_k=1, bad input or not.
    assert responses[1].status.code == OK
    assert [label.label for label in responses[1].results[0].labels] == ["espresso"]


async def test_non_finite_override_is_refused_per_frame_and_the_stream_goes_on() -> None:
    overrides = pb.ClassifyStreamRequest().preprocessor_overrides
    overrides.update({"crop_pct": float("nan")})
    bad = frame(image_input("coffee.jpg"), "0")
    bad.preprocessor_overrides.CopyFrom(overrides)
    async with running_server() as server, connect(server) as stub:
        responses = await collect(stub, [bad, frame(image_input("coffee.jpg"), "1")])
        # The same override in a unary call: INVALID_ARGUMENT, not INTERNAL.
        request = pb.ClassifyRequest(inputs=[image_input("coffee.jpg")])
        request.preprocessor_overrides.CopyFrom(overrides)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Classify(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "preprocessor_overrides: numbers must be finite"
    assert responses[0].status.code == INVALID_ARGUMENT
    assert responses[0].status.message == "preprocessor_overrides: numbers must be finite"
    assert responses[1].status.code == OK and top1(responses[1]) == "espresso"


async def test_tiny_crop_pct_is_refused_not_an_overflow() -> None:
    request = pb.ClassifyRequest(inputs=[image_input("coffee.jpg")])
    request.preprocessor_overrides.update({"crop_pct": 1e-310})
    async with running_server() as server, connect(server) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Classify(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "crop_pct" in (caught.value.details() or "") and "over the limit of 2048" in (caught.value.details() or "")
