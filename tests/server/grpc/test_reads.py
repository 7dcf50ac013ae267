"""Bounded reads on a real gRPC server: size caps per method, undecodable messages, request_id cap, budget."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from imgcls.server.engine import engine as engine_module
from imgcls.server.runtime import memory
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from support.fake_backend import fake_engine
from support.inputs import image_input
from support.servers import CHANNEL_OPTIONS, connect, running_server

CLASSIFY = "/imgcls.v1.ImageClassifierService/Classify"
GET_MODEL = "/imgcls.v1.ImageClassifierService/GetModel"
CLASSIFY_STREAM = "/imgcls.v1.ImageClassifierService/ClassifyStream"


async def call_raw(port: int, method: str, payload: bytes) -> grpc.aio.AioRpcError:
    """Sends payload as the request message, bytes as they are; returns the error it ends with."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(method)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(payload, timeout=30)
    return caught.value


async def test_a_small_method_refuses_a_large_message() -> None:
    async with running_server() as server:
        error = await call_raw(server.port, GET_MODEL, pb.GetModelRequest(name="x" * 100_000).SerializeToString())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "is over the limit of 65536 bytes for /imgcls.v1.ImageClassifierService/GetModel" in error.details()


async def test_invalid_utf8_in_a_string_field_is_invalid_argument() -> None:
    # Field 4 (request_id), length 2, bytes that are not UTF-8.
    payload = b"\x22\x02\xff\xfe"
    async with running_server() as server:
        error = await call_raw(server.port, CLASSIFY, payload)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message for /imgcls.v1.ImageClassifierService/Classify" in error.details()
    assert "UTF-8" in error.details()


async def test_a_huge_request_id_is_refused_and_never_echoed() -> None:
    request_id = "r" * 100_000
    request = pb.ClassifyRequest(request_id=request_id, inputs=[pb.Input(image=b"x")])
    async with running_server() as server:
        error = await call_raw(server.port, CLASSIFY, request.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "request_id: 100000 characters, over the limit of 256"


async def test_an_undecodable_stream_frame_ends_the_stream_with_its_status_after_the_frames_before_it() -> None:
    good = pb.ClassifyStreamRequest(inputs=[image_input("coffee.jpg")], request_id="good").SerializeToString()

    async def frames() -> AsyncIterator[bytes]:
        yield good
        yield b"\x22\x02\xff\xfe"  # request_id (field 4), bytes that are not UTF-8

    answered: list[str] = []
    async with (
        running_server() as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=CHANNEL_OPTIONS) as channel,
    ):
        call = channel.stream_stream(CLASSIFY_STREAM, response_deserializer=pb.ClassifyStreamResponse.FromString)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for response in call(frames(), timeout=30):
                answered.append(response.request_id)
    assert answered == ["good"]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"not a valid protobuf message for {CLASSIFY_STREAM}" in (caught.value.details() or "")


async def test_a_request_larger_than_any_share_of_the_budget_is_refused_at_once() -> None:
    frame = pb.RawImage(width=3840, height=2160, format=pb.PIXEL_FORMAT_RGB8, data=bytes(3840 * 2160 * 3))
    request = pb.ClassifyRequest(inputs=[pb.Input(raw=frame)])
    async with running_server(memory_budget_bytes=32 << 20) as server:
        error = await call_raw(server.port, CLASSIFY, request.SerializeToString())
        assert server.engine.budget.used == 0  # nothing held after the refusal
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than one caller may hold" in error.details()


async def test_a_request_with_no_turn_to_be_received_within_the_read_wait_is_refused_then() -> None:
    request = pb.ClassifyRequest(inputs=[image_input("cat.jpg")])
    async with running_server(read_wait_s=0.3) as server:
        gate = server.engine.read_gate
        # Every slot taken (as by senders of large messages): the call waits its turn, holding nothing.
        holders = [gate.slot(f"other-{i}") for i in range(gate.slots)]
        for holder in holders:
            await holder.__aenter__()
        try:
            error = await call_raw(server.port, CLASSIFY, request.SerializeToString())
            assert gate.waiting == 0  # refused, not left in the line
        finally:
            for holder in holders:
                await holder.__aexit__(None, None, None)
        async with connect(server) as stub:  # a free slot: answered
            assert (await stub.Classify(request, timeout=30)).results
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "no turn to send the request within 0.3s" in error.details()


async def test_freed_heap_is_given_back_after_large_work(monkeypatch: pytest.MonkeyPatch) -> None:
    trimmed = asyncio.Event()
    monkeypatch.setattr(engine_module, "TRIM_CHECK_S", 0.01)
    monkeypatch.setattr(memory, "trim", trimmed.set)
    engine, _ = fake_engine()
    engine.start(asyncio.get_running_loop())
    try:
        engine.budget.lease(10 << 20).release()
        assert not engine.worth_trimming(0)  # small releases are not worth a trim
        held = engine.budget.lease(70 << 20)
        assert not engine.worth_trimming(0)  # nor while large work is still in flight
        held.release()
        assert engine.worth_trimming(0)
        await asyncio.wait_for(trimmed.wait(), 5)
    finally:
        await engine.stop(drain=False)


async def test_more_calls_at_once_on_one_channel_than_http2_once_allowed_are_all_answered() -> None:
    """Calls over a connection's stream limit, opened before the client has read the server's SETTINGS,
    are refused by HTTP/2 (UNAVAILABLE): the default limit leaves room for a busy client's burst."""
    tensor = np.zeros((1, 3, 224, 224), np.float32)
    request = pb.ClassifyRequest(
        inputs=[pb.Input(tensor=pb.Tensor(dims=tensor.shape, dtype=pb.DATA_TYPE_FLOAT32, raw_data=tensor.tobytes()))]
    )
    async with running_server() as server, connect(server) as stub:
        answers = await asyncio.gather(*(stub.Classify(request) for _ in range(120)), return_exceptions=True)
    failures = [a for a in answers if isinstance(a, BaseException)]
    assert failures == []


async def test_a_burst_of_calls_past_grpc_cores_own_pending_limit_is_answered_not_cancelled() -> None:
    """2000 calls at once over 32 connections: before imgcls takes them up, gRPC core (grpcio's default of
    1000 pending calls) dropped 10-15% of them at random as CANCELLED; imgcls raises that bound so its own
    admission decides."""
    async with running_server() as server:
        channels = [
            grpc.aio.insecure_channel(
                f"127.0.0.1:{server.port}", options=[*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(32)
        ]
        try:
            stubs = [pb_grpc.ImageClassifierServiceStub(channel) for channel in channels]
            answers = await asyncio.gather(
                *(stubs[i % 32].ListModels(pb.ListModelsRequest(), timeout=60) for i in range(2000)),
                return_exceptions=True,
            )
        finally:
            await asyncio.gather(*(channel.close() for channel in channels))
    failures = Counter(a.code().name for a in answers if isinstance(a, grpc.aio.AioRpcError))
    assert not [a for a in answers if isinstance(a, BaseException) and not isinstance(a, grpc.aio.AioRpcError)]
    assert failures == Counter()


async def test_each_method_gets_its_bounded_handler_built_once_not_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from imgcls.server.grpc import reads

    built: Counter[str] = Counter()
    original = reads._bounded

    def counting(handler: grpc.RpcMethodHandler, reader: reads._Reader) -> grpc.RpcMethodHandler:
        built[reader._method] += 1
        return original(handler, reader)

    monkeypatch.setattr(reads, "_bounded", counting)
    engine, _ = fake_engine()
    async with running_server(engine=engine) as server, connect(server) as stub:
        for _ in range(3):
            await stub.GetModel(pb.GetModelRequest())
            await stub.Classify(pb.ClassifyRequest(inputs=[image_input("cat.jpg")]))
        for _ in range(2):  # no handler: nothing built, nothing kept
            assert (await call_raw(server.port, "/imgcls.v1.ImageClassifierService/Nope", b"")).code() == (
                grpc.StatusCode.UNIMPLEMENTED
            )
    assert built == {GET_MODEL: 1, CLASSIFY: 1}
