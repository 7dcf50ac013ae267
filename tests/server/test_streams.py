"""ClassifyStream through the real server and the embedded model."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import grpc
import pytest
from imgcls.client import Client, StreamResult
from imgcls.server.server import RunningServer
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from PIL import Image
from support.inputs import image_input
from support.paths import IMAGES
from support.servers import connect, running_server

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


async def test_drop_stale_skips_old_frames_but_answers_every_frame_in_order(reference: Reference) -> None:
    messages = [tiny_frame("0", drop_stale=True), *(tiny_frame(str(i)) for i in range(1, 60))]
    messages.append(frame(image_input("cat.jpg"), "last"))
    async with running_server(stream_max_in_flight=1) as server, connect(server) as stub:
        responses = await collect(stub, messages)
    assert [r.request_id for r in responses] == [m.request_id for m in messages]
    skipped = [r for r in responses if r.skipped]
    assert skipped, "frames arriving faster than one at a time is classified must be skipped"
    for response in skipped:
        assert len(response.results) == 0
    for response in responses:
        if not response.skipped:
            assert response.status.code == OK
            assert len(response.results) == 1
    # The newest frame is never stale: it is always classified.
    assert not responses[-1].skipped
    assert top1(responses[-1]) == reference["cat.jpg"][0]["label"]


async def test_skipped_frames_count_as_dropped_inputs() -> None:
    messages = [tiny_frame("0", drop_stale=True), *(tiny_frame(str(i)) for i in range(1, 60))]
    async with running_server(stream_max_in_flight=1) as server, connect(server) as stub:
        responses = await collect(stub, messages)
        stats = (await stub.GetModel(pb.GetModelRequest())).model.stats
    skipped = sum(r.skipped for r in responses)
    assert skipped > 0
    assert stats.dropped_inputs >= skipped


async def _wait_until_still(
    stub: pb_grpc.ImageClassifierServiceStub, pulled: Callable[[], int], *, polls: int = 300
) -> tuple[int, int]:
    """Poll until neither the pulled-message count nor the model's inputs change for 5 polls in a row.

    Bounded: gives up after `polls` polls, returning what it saw then.
    """
    last: tuple[int, int] | None = None
    still = 0
    for _ in range(polls):
        await asyncio.sleep(0.1)
        inputs = (await stub.GetModel(pb.GetModelRequest())).model.stats.inputs
        now = (pulled(), inputs)
        still = still + 1 if now == last else 0
        if still >= 5:
            break
        last = now
    assert last is not None
    return last


async def test_client_that_never_reads_holds_the_server_back() -> None:
    # 1 MB raw frames: gRPC's flow-control windows hold only a few of them.
    big = pb.RawImage(width=600, height=600, format=pb.PIXEL_FORMAT_RGB8, data=bytes(600 * 600 * 3))
    pulled = 0

    def requests() -> Iterator[pb.ClassifyStreamRequest]:
        nonlocal pulled
        for i in range(300):
            pulled += 1
            message = frame(pb.Input(raw=big), str(i))
            if i == 0:
                # Every label in every answer (~30 KB each), so the client's receive window fills
                # after a couple of unread answers and the server cannot write more.
                message.parameters.top_k = 0
            yield message

    async with running_server(stream_max_in_flight=2) as server, connect(server) as stub:
        # BDP probing off: the client's receive window stays at its small initial size instead of
        # growing to megabytes of unread answers.
        options = [
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.http2.bdp_probe", 0),
        ]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=options) as channel:
            call = pb_grpc.ImageClassifierServiceStub(channel).ClassifyStream(requests())
            try:
                count, classified = await _wait_until_still(stub, lambda: pulled)
            finally:
                call.cancel()
    assert classified >= 2  # the server did work: the bound is not because nothing ran
    assert count < 100, f"the server kept reading frames nobody read answers for ({count} pulled)"


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
