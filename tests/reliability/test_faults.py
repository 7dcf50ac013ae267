"""Faults: callers that cancel, vanish or never read; an ONNX Runtime run that fails for some
inputs; overload (queue full, deadlines). After each, the server serves others correctly and has
not leaked asyncio tasks, threads or file descriptors.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from imgcls.server.server import RunningServer
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from onnx import TensorProto, helper, numpy_helper
from reliability.helpers import (
    Resources,
    beside_good_callers,
    good_call,
    leftover_tasks,
    settle,
)
from support.gated_backend import Gate, gated_server
from support.inputs import COFFEE, ESPRESSO, good_request
from support.paths import IMAGES
from support.servers import connect, running_server
from support.waiting import poll_until

MODEL = "efficientnet-lite0"


def frames(count: int, **fields: object) -> list[pb.ClassifyStreamRequest]:
    return [
        pb.ClassifyStreamRequest(inputs=[pb.Input(image=COFFEE)], request_id=f"f{i}", **fields)  # type: ignore[arg-type]
        for i in range(count)
    ]


def requests_seen(server: RunningServer, model: str = MODEL) -> int:
    return server.engine.models[model].request_stats.requests


async def warmed_baseline(stub: pb_grpc.ImageClassifierServiceStub) -> Resources:
    """Counts once every lazily started thread exists: a multi-input request fills the decode pool."""
    await stub.Classify(pb.ClassifyRequest(inputs=[pb.Input(image=COFFEE)] * 4), timeout=60)
    async for _ in stub.ClassifyStream(iter(frames(2))):
        pass
    return Resources.now()


async def assert_no_leaks(server: RunningServer, baseline: Resources) -> None:
    assert await poll_until(lambda: server.engine.active_streams == 0), "a stream handler never finished"
    after = await settle(baseline)
    assert after.tasks <= baseline.tasks, f"leaked tasks: {leftover_tasks()}"
    assert after.threads <= baseline.threads + 2, (baseline, after)
    assert after.fds <= baseline.fds + 4, (baseline, after)


# --- callers that give up ---------------------------------------------------------------------


async def test_cancelled_call_leaves_server_serving_without_leaks(server: RunningServer) -> None:
    async with connect(server) as stub:
        baseline = await warmed_baseline(stub)
        seen = requests_seen(server)
        call = stub.Classify(pb.ClassifyRequest(inputs=[pb.Input(image=COFFEE)] * 32))
        assert await poll_until(lambda: requests_seen(server) > seen), "the call never reached the model"
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert call.cancelled() and (await call.code()) == grpc.StatusCode.CANCELLED
        await good_call(stub)
        await assert_no_leaks(server, baseline)


async def test_cancelled_stream_leaves_server_serving_without_leaks(server: RunningServer) -> None:
    async with connect(server) as stub:
        baseline = await warmed_baseline(stub)
        call = stub.ClassifyStream()
        for frame in frames(12):
            await call.write(frame)
        first = await call.read()
        assert first.results[0].labels[0].index == ESPRESSO
        call.cancel()  # mid-stream: frames still in flight on the server
        assert await poll_until(lambda: server.engine.active_streams == 0)
        await good_call(stub)
        await assert_no_leaks(server, baseline)


async def test_client_that_closes_its_channel_mid_calls_leaves_server_serving(server: RunningServer) -> None:
    async with connect(server) as stub:
        baseline = await warmed_baseline(stub)
        seen = requests_seen(server)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        doomed = pb_grpc.ImageClassifierServiceStub(channel)
        calls = [doomed.Classify(pb.ClassifyRequest(inputs=[pb.Input(image=COFFEE)] * 8)) for _ in range(6)]
        streams = [doomed.ClassifyStream(iter(frames(20))) for _ in range(2)]
        assert await poll_until(lambda: requests_seen(server) >= seen + 6), "the calls never reached the model"
        await channel.close()  # no grace: every call in flight is cut off
        for call in calls:
            assert (await call.code()) == grpc.StatusCode.CANCELLED
        for stream in streams:
            assert (await stream.code()) == grpc.StatusCode.CANCELLED
        await beside_good_callers(stub, good_request())
        await assert_no_leaks(server, baseline)


VANISHING_CLIENT = textwrap.dedent(
    """
    import sys, time, grpc
    from imgcls.v1 import classifier_pb2 as pb, classifier_pb2_grpc as pb_grpc
    image = open(sys.argv[2], "rb").read()
    stub = pb_grpc.ImageClassifierServiceStub(grpc.insecure_channel(sys.argv[1]))
    request = pb.ClassifyRequest(inputs=[pb.Input(image=image)] * 8)
    calls = [stub.Classify.future(request) for _ in range(6)]
    frames = (pb.ClassifyStreamRequest(inputs=[pb.Input(image=image)]) for _ in range(1000))
    stream = stub.ClassifyStream(frames)
    next(stream)
    print("streaming", flush=True)
    time.sleep(600)
    """
)


async def test_client_process_killed_mid_calls_leaves_server_serving(server: RunningServer) -> None:
    async with connect(server) as stub:
        baseline = await warmed_baseline(stub)
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            VANISHING_CLIENT,
            f"127.0.0.1:{server.port}",
            str(IMAGES / "coffee.jpg"),
            stdout=subprocess.PIPE,
        )
        try:
            assert client.stdout is not None
            line = await asyncio.wait_for(client.stdout.readline(), timeout=60)
            assert line.strip() == b"streaming"
            assert server.engine.active_streams == 1
        finally:
            client.send_signal(signal.SIGKILL)  # no goodbye: the connection just drops
            await client.wait()
        assert await poll_until(lambda: server.engine.active_streams == 0, attempts=800)
        await beside_good_callers(stub, good_request())
        await assert_no_leaks(server, baseline)


async def test_stream_whose_responses_are_never_read_is_held_back(server: RunningServer) -> None:
    async with connect(server) as stub:
        baseline = await warmed_baseline(stub)
        seen = requests_seen(server)
        call = stub.ClassifyStream()
        # top_k=0: every response carries 1000 labels (~30 KB), so unread responses fill the
        # flow-control windows and the server must stop taking frames.
        total = 400
        writer = asyncio.create_task(_write_all(call, frames(total, parameters=pb.Parameters(top_k=0))))
        assert await poll_until(lambda: requests_seen(server) >= seen + 8)
        # Others are served while the stream is stuck.
        for _ in range(3):
            await beside_good_callers(stub, good_request())
        taken = requests_seen(server) - seen
        assert not writer.done(), "all frames were accepted: nothing held the stream back"
        assert taken < total
        call.cancel()
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        assert await poll_until(lambda: server.engine.active_streams == 0)
        await good_call(stub)
        await assert_no_leaks(server, baseline)


async def _write_all(call: grpc.aio.StreamStreamCall, messages: list[pb.ClassifyStreamRequest]) -> None:
    for message in messages:
        await call.write(message)
    await call.done_writing()


# --- an ONNX Runtime run that fails ----------------------------------------------------------------


def build_poison_model(folder: Path) -> Path:
    """x [N,3,4,4] -> 2 scores; the run fails when int(max(x)) + 1 does not divide 2.

    Preprocessed images lie in [-1, 1] (ViT normalisation), so every image runs; a tensor holding
    100 makes a Reshape target of [101, -1] for a 2-element vector, which ONNX Runtime refuses.
    """
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])
    initializers = [
        numpy_helper.from_array(np.array([[1.0, -1.0], [0.5, 0.5], [-1.0, 1.0]], np.float32), "w"),
        numpy_helper.from_array(np.zeros(2, np.float32), "zeros2"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["scores"]),
        helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=0),
        helper.make_node("Cast", ["peak"], ["peak_int"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["peak_int", "axis0"], ["peak_vec"]),
        helper.make_node("Add", ["peak_vec", "one"], ["rows"]),
        helper.make_node("Concat", ["rows", "minus_one"], ["shape"], axis=0),
        helper.make_node("Reshape", ["zeros2", "shape"], ["reshaped"]),
        helper.make_node("ReduceSum", ["reshaped"], ["zero"], keepdims=0),
        helper.make_node("Add", ["scores", "zero"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "poison", [x], [logits], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = folder / "poison.onnx"
    onnx.save(model, str(path))
    (folder / "labels.txt").write_text("left\nright\n")
    return path


def poison_tensor(peak: float) -> np.ndarray:
    x = np.zeros((1, 3, 4, 4), np.float32)
    x[0, 0, 0, 0] = peak
    return x


def tensor_input(x: np.ndarray) -> pb.Input:
    return pb.Input(tensor=pb.Tensor(dims=list(x.shape), dtype=pb.DATA_TYPE_FLOAT32, raw_data=x.tobytes()))


def test_poison_model_fails_only_for_the_poison_value(tmp_path: Path) -> None:
    # The fixture model itself: ONNX Runtime runs it for ordinary values and fails for the poison.
    session = ort.InferenceSession(str(build_poison_model(tmp_path)))
    assert session.run(None, {"x": poison_tensor(1.0)})[0].shape == (1, 2)
    assert session.run(None, {"x": -np.ones((3, 3, 4, 4), np.float32)})[0].shape == (3, 2)
    with pytest.raises(Exception, match="Reshape"):
        session.run(None, {"x": poison_tensor(100.0)})


async def test_failing_inference_fails_only_its_caller_and_batcher_goes_on(tmp_path: Path) -> None:
    path = build_poison_model(tmp_path)
    settings = {"models": [{"name": "poison", "source": str(path)}], "batching": {"max_batch_size": 1}}
    async with running_server(**settings) as server, connect(server) as stub:
        good_tensor = pb.ClassifyRequest(model="poison", inputs=[tensor_input(poison_tensor(0.5))])
        good_image = pb.ClassifyRequest(model="poison", inputs=[pb.Input(image=COFFEE)])
        poisoned = pb.ClassifyRequest(model="poison", inputs=[tensor_input(poison_tensor(100.0))])
        want = await stub.Classify(good_tensor)

        outcomes = await asyncio.gather(
            *(stub.Classify(r) for r in [good_tensor, good_image] * 3 + [poisoned] + [good_tensor, good_image] * 3),
            return_exceptions=True,
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(errors) == 1, errors
        error = errors[0]
        assert isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.INTERNAL
        assert "model poison: inference failed" in (error.details() or "")
        assert "Reshape" in (error.details() or "")
        assert outcomes.index(error) == 6  # the poisoned caller, nobody else
        answers = [o for o in outcomes if isinstance(o, pb.ClassifyResponse)]
        assert all(len(a.results[0].labels) == 2 for a in answers)
        assert all(a.results[0] == want.results[0] for a in answers[::2][:3])  # the good tensors

        # The batcher goes on: later requests run, and the model still reports ready.
        assert (await stub.Classify(good_tensor)).results[0] == want.results[0]
        info = (await stub.GetModel(pb.GetModelRequest(name="poison"))).model
        assert info.ready and info.stats.failed_requests == 1


# --- overload -----------------------------------------------------------------------------


def tensor_request() -> pb.ClassifyRequest:
    """One pre-processed sample: no decoding, so it reaches the model at once."""
    return pb.ClassifyRequest(inputs=[tensor_input(np.full((1, 3, 224, 224), 0.1, np.float32))])


async def test_full_queue_refuses_some_callers_and_answers_the_rest() -> None:
    # One run held at the gate occupies the only instance; 4 inputs fit in the queue behind it, and
    # every caller past them is refused at once, not queued without bound.
    gate = Gate()
    settings = {"batching": {"max_batch_size": 8, "queue_limit": 4}, "runtime": {"instances": 1}}
    async with gated_server(gate, **settings) as server, connect(server) as stub:
        holder = asyncio.ensure_future(stub.Classify(tensor_request()))
        await gate.wait_for_runs(1)
        calls = [asyncio.ensure_future(stub.Classify(good_request())) for _ in range(24)]
        # Every call is answered or refused while the gate is still closed: the refusals come at once.
        assert await poll_until(lambda: sum(c.done() for c in calls) == 20, attempts=2400), "refusals did not come"
        assert server.engine.get(MODEL).batcher.queue_depth == 4
        gate.open()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        await holder
        ok = [o for o in outcomes if isinstance(o, pb.ClassifyResponse)]
        refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        assert (len(ok), len(refused)) == (4, 20), outcomes
        assert all(r.results[0].labels[0].index == ESPRESSO for r in ok)
        for error in refused:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            # The model's queue (4), or this one connection's share of the decode queue (half of 4).
            details = error.details() or ""
            assert ("queue full" in details and "limit 4" in details) or (
                "this connection has 2 images waiting to be decoded (limit 2)" in details
            ), details
        await good_call(stub)
    assert gate.batch_sizes == [1, 4, 1]  # the holder, the four queued callers, the last good call


async def test_expired_callers_get_deadline_exceeded_and_their_work_is_dropped_not_run() -> None:
    gate = Gate()
    async with gated_server(gate, runtime={"instances": 1}) as server, connect(server) as stub:
        # A held run occupies the only instance: the four callers' inputs are decoded and queued
        # behind it, and their deadlines pass there, whatever decoding took.
        holder = asyncio.ensure_future(stub.Classify(tensor_request()))
        await gate.wait_for_runs(1)
        calls = [asyncio.ensure_future(stub.Classify(good_request(), timeout=3)) for _ in range(4)]
        batcher = server.engine.get(MODEL).batcher
        assert await poll_until(lambda: batcher.queue_depth == 4), "the callers' inputs never queued"
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        for outcome in outcomes:
            assert isinstance(outcome, grpc.aio.AioRpcError), outcome
            assert outcome.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "Deadline" in (outcome.details() or "")
        gate.open()
        await holder

        async def stats() -> pb.ModelStats:
            return (await stub.GetModel(pb.GetModelRequest())).model.stats

        # Freed, the instance drops the expired inputs from the head of the queue.
        assert await poll_until(lambda: server.engine.stats(MODEL).dropped_inputs == 4)
        current = await stats()
        assert current.dropped_inputs == 4
        assert current.inputs == 1 and current.batches == 1  # only the holder's input ran
        await good_call(stub)
        assert (await stats()).inputs == 2
    assert gate.batch_sizes == [1, 1]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts file descriptors through /proc")
def test_fd_counter_sees_new_descriptors() -> None:
    # The leak checks above rely on this counter: it must notice an open descriptor.
    before = len(os.listdir("/proc/self/fd"))
    read_end, write_end = os.pipe()
    try:
        assert len(os.listdir("/proc/self/fd")) == before + 2
    finally:
        os.close(read_end)
        os.close(write_end)
