"""Graceful shutdown: accepted calls finish with correct answers, new calls are refused, nothing is lost.

In-process through RunningServer.stop, and end to end through ``imgcls serve`` and SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imgcls.server.server import start_server
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from support.gated_backend import Gate, gated_engine
from support.paths import IMAGES
from support.serve_process import ServeProcess as ChildServer
from support.servers import make_settings
from support.waiting import poll_until

# Images with a clear winner, so a correct answer is unambiguous whatever the batch composition.
NAMES = ("coffee.jpg", "camera.png", "rocket.jpg")
IMAGE_BYTES = {name: (IMAGES / name).read_bytes() for name in NAMES}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
POLLS = 2000  # bounds every polling loop below (each poll waits 10 ms at most)


def request_for(index: int) -> tuple[pb.ClassifyRequest, list[str]]:
    """Call number index: the images in a rotated order, so answers swapped between calls would show."""
    names = [NAMES[(index + k) % len(NAMES)] for k in range(len(NAMES))]
    request = pb.ClassifyRequest(inputs=[pb.Input(image=IMAGE_BYTES[n]) for n in names], request_id=f"call-{index}")
    return request, names


def assert_correct(response: pb.ClassifyResponse, index: int, reference: dict[str, list[dict[str, Any]]]) -> None:
    _, names = request_for(index)
    assert response.request_id == f"call-{index}"
    assert len(response.results) == len(names)  # complete: one result per input
    for name, result in zip(names, response.results, strict=True):
        top = result.labels[0]
        assert top.label == reference[name][0]["label"], name
        assert top.score == pytest.approx(reference[name][0]["score"], abs=2e-3), name


# -- in process: RunningServer.stop -------------------------------------------------------------


async def first_refusal(port: int) -> grpc.aio.AioRpcError:
    """Polls a new channel with cheap calls until the server refuses one (it has begun to stop)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ImageClassifierServiceStub(channel)
        for _ in range(POLLS):
            try:
                await stub.ListModels(pb.ListModelsRequest(), timeout=30)
            except grpc.aio.AioRpcError as exc:
                return exc
            await asyncio.sleep(0.01)
    raise AssertionError("the stopping server kept taking new calls")


async def classify_new_call(port: int) -> grpc.aio.AioRpcError | pb.ClassifyResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            return await pb_grpc.ImageClassifierServiceStub(channel).Classify(request_for(0)[0], timeout=30)
        except grpc.aio.AioRpcError as exc:
            return exc


async def test_stop_finishes_accepted_calls_and_refuses_new_ones(
    reference: dict[str, list[dict[str, Any]]],
) -> None:
    gate = Gate()  # the model's runs wait here, so accepted calls are still in flight when stop begins
    engine = await asyncio.to_thread(gated_engine, gate)
    running = await start_server(make_settings(), engine=engine)
    calls, racing = 12, 12
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.ImageClassifierServiceStub(channel)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == SERVING
            tasks = [asyncio.ensure_future(stub.Classify(request_for(i)[0], timeout=120)) for i in range(calls)]
            # Every one of them accepted (it reached its model), and the first run held at the gate.
            assert await poll_until(lambda: engine.stats().requests == calls), engine.stats()
            await gate.wait_for_runs(1)
            stopping = asyncio.create_task(running.stop(grace=30))
            # More calls on the same channel race with the start of the stop: each is accepted or refused.
            tasks += [
                asyncio.ensure_future(stub.Classify(request_for(i)[0], timeout=120))
                for i in range(calls, calls + racing)
            ]

            assert (await watch.read()).status == NOT_SERVING
            refusal = await first_refusal(running.port)
            late = await classify_new_call(running.port)
            assert not stopping.done()  # all of this happened while stop was draining (the gate is closed)
            watch.cancel()

            gate.open()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            await stopping
    finally:
        gate.open()
        await running.stop(grace=0)  # no-op after a clean stop; frees the server if the test failed early

    assert refusal.code() == grpc.StatusCode.UNAVAILABLE, refusal
    assert isinstance(late, grpc.aio.AioRpcError), "a Classify call begun during stop was served"
    assert late.code() == grpc.StatusCode.UNAVAILABLE, late  # by the engine, or the port already closed
    succeeded = 0
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, grpc.aio.AioRpcError):
            # Only a call racing with the stop, and one the server never accepted (the counts below: every
            # accepted call succeeded): refused by the engine (UNAVAILABLE), or, its message still arriving
            # when gRPC stopped taking calls, reset by gRPC core (CANCELLED; see the settle in server.py).
            assert index >= calls, f"call {index} was accepted before stop began, then failed: {outcome}"
            assert outcome.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), (index, outcome)
        else:
            assert isinstance(outcome, pb.ClassifyResponse), (index, outcome)
            assert_correct(outcome, index, reference)
            succeeded += 1
    # Every call the server accepted (it reached the model) was answered with its result.
    stats = engine.stats()
    assert stats.failed_requests == 0
    assert succeeded == stats.requests >= calls


async def test_health_not_serving_after_stop() -> None:
    running = await start_server(make_settings())
    await running.stop(grace=1.0)
    # The health servicer itself (the port is closed now) says NOT_SERVING for the server and the service.
    for service in ("", "imgcls.v1.ImageClassifierService"):
        response = await running.health.Check(health_pb2.HealthCheckRequest(service=service), None)
        assert response.status == NOT_SERVING, service
    assert not running.engine.ready


# -- end to end: imgcls serve and a signal ------------------------------------------------------


class ServeProcess(ChildServer):
    """The shared ``imgcls serve`` child process, with a channel to call it while it stops."""

    def start(self, timeout_s: float = 120.0) -> ServeProcess:
        super().start(timeout_s)
        self.channel = grpc.insecure_channel(self.target)
        self.stub = pb_grpc.ImageClassifierServiceStub(self.channel)
        return self

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.process is not None
        return self.process

    def wait_accepted(self, calls: int) -> None:
        """Polls GetModel until `calls` Classify calls have reached the model (the server accepted them)."""
        seen = 0
        for _ in range(POLLS):
            seen = self.stub.GetModel(pb.GetModelRequest(), timeout=30).model.stats.requests
            if seen >= calls:
                assert seen == calls, f"{seen} calls reached the model, {calls} were sent"
                return
            time.sleep(0.01)
        raise AssertionError(f"{seen} of {calls} Classify calls reached the model")

    def close(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path / "serve.log", "--grace-period", "10").start()
    try:
        yield process
    finally:
        process.close()


def classify_blocking(channel: grpc.Channel, index: int) -> pb.ClassifyResponse | grpc.RpcError:
    try:
        return pb_grpc.ImageClassifierServiceStub(channel).Classify(request_for(index)[0], timeout=120)
    except grpc.RpcError as exc:
        return exc


def test_sigterm_drains_accepted_calls_and_exits_zero(
    serve_process: ServeProcess, reference: dict[str, list[dict[str, Any]]]
) -> None:
    calls = 24
    watch = health_pb2_grpc.HealthStub(serve_process.channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
    assert next(watch).status == SERVING
    with ThreadPoolExecutor(max_workers=calls) as pool:
        futures: list[Future[pb.ClassifyResponse | grpc.RpcError]] = [
            pool.submit(classify_blocking, serve_process.channel, i) for i in range(calls)
        ]
        serve_process.wait_accepted(calls)  # every call accepted before the signal
        unanswered = sum(not f.done() for f in futures)
        serve_process.proc.send_signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
        watch.cancel()  # an open watch would hold the server for its whole grace period
        with grpc.insecure_channel(serve_process.target) as channel:
            late = classify_blocking(channel, calls)  # a new call after the server began to stop
        outcomes = [f.result() for f in futures]
    # Grace period (10 s) plus a margin for the batcher drain and interpreter exit.
    returncode = serve_process.proc.wait(timeout=40)
    log = serve_process.output()

    assert returncode == 0, log
    assert "shutting down" in log and "stopped" in log, log
    assert unanswered > 0, "every call was answered before the signal: the drain was not exercised"
    # Every call the server accepted was answered with its result: never UNAVAILABLE, CANCELLED, INTERNAL
    # or DEADLINE_EXCEEDED for one of them.
    for index, outcome in enumerate(outcomes):
        assert isinstance(outcome, pb.ClassifyResponse), (index, outcome)
        assert_correct(outcome, index, reference)
    assert isinstance(late, grpc.RpcError) and late.code() == grpc.StatusCode.UNAVAILABLE, late


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_server_exits_zero_on_signal(serve_process: ServeProcess, signum: signal.Signals) -> None:
    serve_process.proc.send_signal(signum)
    returncode = serve_process.proc.wait(timeout=40)
    assert returncode == 0, serve_process.output()
    assert "stopped" in serve_process.output()
