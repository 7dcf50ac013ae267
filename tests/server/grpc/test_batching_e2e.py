"""Dynamic batching through the real server and the embedded model: concurrent unary callers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from support.gated_backend import Gate, gated_server
from support.servers import connect, running_server
from support.waiting import poll_until

Reference = dict[str, list[dict[str, Any]]]
MODEL = "efficientnet-lite0"
SIX_IMAGES = ["cat.jpg", "coffee.jpg", "rocket.jpg", "astronaut.jpg", "camera.png", "coffee_1920x1280.jpg"]


def image_request(data: bytes, request_id: str = "") -> pb.ClassifyRequest:
    return pb.ClassifyRequest(inputs=[pb.Input(image=data)], request_id=request_id, parameters=pb.Parameters(top_k=1))


async def stats(stub: pb_grpc.ImageClassifierServiceStub) -> pb.ModelStats:
    return (await stub.GetModel(pb.GetModelRequest())).model.stats


async def classify_concurrently(
    stub: pb_grpc.ImageClassifierServiceStub, names: list[str], image_bytes: Callable[[str], bytes]
) -> list[pb.ClassifyResponse]:
    calls = [stub.Classify(image_request(image_bytes(name), request_id=str(i))) for i, name in enumerate(names)]
    return list(await asyncio.gather(*calls))


async def test_concurrent_callers_are_batched_and_each_gets_its_own_answer(
    image_bytes: Callable[[str], bytes], reference: Reference
) -> None:
    names = [SIX_IMAGES[i % len(SIX_IMAGES)] for i in range(16)]
    gate = Gate()
    one_instance = {"batching": {"max_batch_size": 8}, "runtime": {"instances": 1}}
    async with gated_server(gate, **one_instance) as server, connect(server) as stub:
        # The first caller's run holds the only instance at the gate; the other 15 queue behind it.
        first = asyncio.ensure_future(stub.Classify(image_request(image_bytes(names[0]), request_id="0")))
        await gate.wait_for_runs(1)
        rest = [
            asyncio.ensure_future(stub.Classify(image_request(image_bytes(name), request_id=str(i))))
            for i, name in enumerate(names[1:], start=1)
        ]
        batcher = server.engine.get(MODEL).batcher
        assert await poll_until(lambda: batcher.queue_depth == 15), f"{batcher.queue_depth} queued, 15 expected"
        gate.open()
        responses = [await first, *[await call for call in rest]]
        for i, (name, response) in enumerate(zip(names, responses, strict=True)):
            assert response.request_id == str(i)
            assert response.results[0].labels[0].label == reference[name][0]["label"], name
        model_stats = await stats(stub)
    # The one held, then the 15 queued as full batches of max_batch_size and the remainder.
    assert gate.batch_sizes == [1, 8, 7]
    assert model_stats.inputs == 16
    assert model_stats.batches == 3
    assert dict(model_stats.batch_size_counts) == {1: 1, 8: 1, 7: 1}


async def test_batching_off_runs_every_input_alone(image_bytes: Callable[[str], bytes], reference: Reference) -> None:
    names = [SIX_IMAGES[i % len(SIX_IMAGES)] for i in range(8)]
    async with running_server(batching={"max_batch_size": 1}) as server, connect(server) as stub:
        responses = await classify_concurrently(stub, names, image_bytes)
        for name, response in zip(names, responses, strict=True):
            assert response.results[0].labels[0].label == reference[name][0]["label"], name
        model_stats = await stats(stub)
    assert dict(model_stats.batch_size_counts) == {1: 8}
    assert model_stats.batches == model_stats.inputs == 8


async def test_request_larger_than_max_batch_size_is_answered_whole_and_in_order(
    image_bytes: Callable[[str], bytes], reference: Reference
) -> None:
    names = [SIX_IMAGES[i % len(SIX_IMAGES)] for i in range(20)]
    request = pb.ClassifyRequest(inputs=[pb.Input(image=image_bytes(n)) for n in names], request_id="big")
    one_instance = {"batching": {"max_batch_size": 8}, "runtime": {"instances": 1}}
    async with running_server(**one_instance) as server, connect(server) as stub:
        response = await stub.Classify(request)
        model_stats = await stats(stub)
    assert len(response.results) == 20
    assert [r.labels[0].label for r in response.results] == [reference[n][0]["label"] for n in names]
    # The 20 samples are queued together, so one instance runs them as 8 + 8 + 4.
    assert dict(model_stats.batch_size_counts) == {8: 2, 4: 1}


async def test_request_over_the_queue_limit_is_refused(image_bytes: Callable[[str], bytes]) -> None:
    request = pb.ClassifyRequest(inputs=[pb.Input(image=image_bytes("cat.jpg"))] * 5)
    async with running_server(batching={"queue_limit": 4}) as server, connect(server) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Classify(request)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue full" in (caught.value.details() or "")
        # Nothing of the refused request ran, and a request within the limit still works.
        assert (await stats(stub)).inputs == 0
        ok = await stub.Classify(pb.ClassifyRequest(inputs=[pb.Input(image=image_bytes("cat.jpg"))] * 4))
        assert len(ok.results) == 4


def tensor_input(value: float) -> pb.Input:
    """One pre-processed sample: no decoding, so it reaches the batcher without delay."""
    array = np.full((1, 3, 224, 224), value, dtype=np.float32)
    return pb.Input(tensor=pb.Tensor(dims=array.shape, dtype=pb.DATA_TYPE_FLOAT32, raw_data=array.tobytes()))


async def test_inputs_of_a_caller_that_gave_up_are_not_run(image_bytes: Callable[[str], bytes]) -> None:
    gate = Gate()
    async with gated_server(gate, runtime={"instances": 1}) as server, connect(server) as stub:
        # A first caller's run holds the only instance; the impatient caller's input queues behind it
        # and its deadline passes there, however long decoding or conversion took before.
        holder = asyncio.ensure_future(stub.Classify(pb.ClassifyRequest(inputs=[tensor_input(0.1)])))
        await gate.wait_for_runs(1)
        impatient = asyncio.ensure_future(stub.Classify(pb.ClassifyRequest(inputs=[tensor_input(0.5)]), timeout=2))
        batcher = server.engine.get(MODEL).batcher
        assert await poll_until(lambda: batcher.queue_depth == 1), "the impatient input never queued"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await impatient
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "deadline" in (caught.value.details() or "").lower()
        gate.open()
        assert len((await holder).results) == 1
        response = await stub.Classify(pb.ClassifyRequest(inputs=[pb.Input(image=image_bytes("cat.jpg"))]))
        assert len(response.results) == 1
        model_stats = await stats(stub)
    assert gate.batch_sizes == [1, 1]  # the holder's and the patient caller's: never the impatient one
    assert model_stats.dropped_inputs == 1
    assert model_stats.inputs == 2
