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
from support.paths import IMAGES
from support.serve_process import ServeProcess as ChildServer
from support.servers import make_settings

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


async def requests_seen(stub: pb_grpc.ImageClassifierServiceStub) -> int:
    """Polls GetModel until some Classify call has reached the model; returns how many have."""
    for _ in range(POLLS):
        seen = (await stub.GetModel(pb.GetModelRequest(), timeout=30)).model.stats.requests
        if seen > 0:
            return seen
        await asyncio.sleep(0.01)
    raise AssertionError("no Classify call reached the model")


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
    running = await start_server(make_settings())
    calls = 40
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.ImageClassifierServiceStub(channel)
            # An open health watch sees NOT_SERVING as it is published; while it stays open it also
            # keeps server.stop in its grace period, so the refusal below is seen during the drain.
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == SERVING
            tasks = [asyncio.ensure_future(stub.Classify(request_for(i)[0], timeout=120)) for i in range(calls)]
            accepted = await requests_seen(stub)
            stopping = asyncio.create_task(running.stop(grace=30))

            assert (await watch.read()).status == NOT_SERVING
            refusal = await first_refusal(running.port)
            late = await classify_new_call(running.port)
            assert not stopping.done()  # all of this happened while stop was draining
            watch.cancel()

            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            await stopping
    finally:
        await running.stop(grace=0)  # no-op after a clean stop; frees the server if the test failed early

    assert refusal.code() == grpc.StatusCode.UNAVAILABLE, refusal
    assert isinstance(late, grpc.aio.AioRpcError), "a Classify call begun during stop was served"
    assert late.code() == grpc.StatusCode.UNAVAILABLE, late
    succeeded = 0
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, grpc.aio.AioRpcError):
            # Refused before the server took it; never accepted and then dropped.
            assert outcome.code() == grpc.StatusCode.UNAVAILABLE, (index, outcome)
        else:
            assert isinstance(outcome, pb.ClassifyResponse), (index, outcome)
            assert_correct(outcome, index, reference)
            succeeded += 1
    # Every call that reached the model before stop began was answered.
    assert succeeded >= accepted > 0


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

    def requests_seen(self) -> int:
        for _ in range(POLLS):
            seen = self.stub.GetModel(pb.GetModelRequest(), timeout=30).model.stats.requests
            if seen > 0:
                return seen
            time.sleep(0.01)
        raise AssertionError("no Classify call reached the model")

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
    with ThreadPoolExecutor(max_workers=12) as pool:
        futures: list[Future[pb.ClassifyResponse | grpc.RpcError]] = [
            pool.submit(classify_blocking, serve_process.channel, i) for i in range(calls)
        ]
        accepted = serve_process.requests_seen()
        serve_process.proc.send_signal(signal.SIGTERM)
        outcomes = [f.result() for f in futures]
    # Grace period (10 s) plus a margin for the batcher drain and interpreter exit.
    returncode = serve_process.proc.wait(timeout=40)
    log = serve_process.output()

    assert returncode == 0, log
    assert "shutting down" in log and "stopped" in log, log
    succeeded = 0
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, grpc.RpcError):
            # Only refusals: never CANCELLED, INTERNAL or DEADLINE_EXCEEDED for an accepted call.
            assert outcome.code() == grpc.StatusCode.UNAVAILABLE, (index, outcome.code(), outcome.details())
        else:
            assert_correct(outcome, index, reference)
            succeeded += 1
    assert succeeded >= accepted > 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_server_exits_zero_on_signal(serve_process: ServeProcess, signum: signal.Signals) -> None:
    serve_process.proc.send_signal(signum)
    returncode = serve_process.proc.wait(timeout=40)
    assert returncode == 0, serve_process.output()
    assert "stopped" in serve_process.output()
