"""Prometheus metrics, scraped over HTTP from a real server after real calls."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from imgcls.server.server import RunningServer, start_server
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from support.paths import IMAGES
from support.servers import connect, make_settings, running_server

MODEL = "efficientnet-lite0"
GOOD_CALLS = 3
STREAM_FRAMES = 2


@dataclass
class Scrape:
    """One /metrics page, as samples looked up by name and labels."""

    samples: list[Sample]

    def find(self, name: str, **labels: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        found = self.find(name, **labels)
        assert len(found) == 1, f"expected one sample {name}{labels}, got {found}"
        return found[0].value


async def scrape(server: RunningServer) -> Scrape:
    assert server.metrics_port is not None and server.metrics_port > 0

    def fetch() -> str:
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            return response.read().decode()

    # urllib blocks: in a thread, so this event loop (and the gRPC server on it) keeps running.
    text = await asyncio.to_thread(fetch)
    return Scrape([s for family in text_string_to_metric_families(text) for s in family.samples])


def image(name: str = "coffee.jpg") -> pb.Input:
    return pb.Input(image=(IMAGES / name).read_bytes())


async def stream_frames(stub: pb_grpc.ImageClassifierServiceStub, count: int) -> list[pb.ClassifyStreamResponse]:
    async def frames() -> AsyncIterator[pb.ClassifyStreamRequest]:
        for index in range(count):
            yield pb.ClassifyStreamRequest(inputs=[image()], request_id=str(index))

    return [response async for response in stub.ClassifyStream(frames())]


@pytest.fixture
async def metrics_server() -> AsyncIterator[RunningServer]:
    async with running_server(metrics_port=0) as running:
        yield running


@pytest.fixture
async def exercised(metrics_server: RunningServer) -> tuple[Scrape, pb.ModelStats]:
    """A server after good calls, a bad call, an unknown-model call and a short stream."""
    async with connect(metrics_server) as stub:
        for _ in range(GOOD_CALLS):
            await stub.Classify(pb.ClassifyRequest(inputs=[image()]))
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.Classify(pb.ClassifyRequest(inputs=[pb.Input(image=b"not an image at all")]))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.Classify(pb.ClassifyRequest(model="no-such-model", inputs=[image()]))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no-such-model" in (unknown.value.details() or "")
        responses = await stream_frames(stub, STREAM_FRAMES)
        assert [r.status.code for r in responses] == [0] * STREAM_FRAMES
        stats = (await stub.GetModel(pb.GetModelRequest(name=MODEL))).model.stats
    return await scrape(metrics_server), stats


def test_metrics_port_zero_picks_a_free_port(metrics_server: RunningServer) -> None:
    assert metrics_server.metrics_port not in (None, 0)


async def test_metrics_server_not_started_without_metrics_port(server: RunningServer) -> None:
    assert server.metrics_port is None


def test_request_counters_by_model_protocol_method_and_outcome(exercised: tuple[Scrape, pb.ModelStats]) -> None:
    metrics, _ = exercised
    total = "imgcls_requests_total"
    assert metrics.value(total, model=MODEL, protocol="imgcls.v1", method="Classify", outcome="ok") == GOOD_CALLS
    assert metrics.value(total, model=MODEL, protocol="imgcls.v1", method="Classify", outcome="invalid_input") == 1
    assert (
        metrics.value(total, model=MODEL, protocol="imgcls.v1", method="ClassifyStream", outcome="ok") == STREAM_FRAMES
    )
    # Unknown names share one label value: callers cannot grow the label set.
    assert metrics.value(total, model="_unknown", protocol="imgcls.v1", method="Classify", outcome="not_found") == 1
    assert not [s for s in metrics.samples if s.labels.get("model") == "no-such-model"]


def test_input_counters_by_model_and_outcome(exercised: tuple[Scrape, pb.ModelStats]) -> None:
    metrics, _ = exercised
    assert metrics.value("imgcls_inputs_total", model=MODEL, outcome="ok") == GOOD_CALLS + STREAM_FRAMES
    assert metrics.value("imgcls_inputs_total", model=MODEL, outcome="invalid_input") == 1
    assert metrics.value("imgcls_inputs_total", model="_unknown", outcome="not_found") == 1


def test_request_duration_histogram_counts_every_call(exercised: tuple[Scrape, pb.ModelStats]) -> None:
    metrics, _ = exercised
    name = "imgcls_request_duration_seconds_count"
    assert metrics.value(name, model=MODEL, method="Classify") == GOOD_CALLS + 1  # the good ones and the bad one
    assert metrics.value(name, model="_unknown", method="Classify") == 1
    assert metrics.value(name, model=MODEL, method="ClassifyStream") == STREAM_FRAMES
    assert metrics.value("imgcls_request_duration_seconds_sum", model=MODEL, method="Classify") > 0


def test_batch_histograms_match_model_stats(exercised: tuple[Scrape, pb.ModelStats]) -> None:
    metrics, stats = exercised
    assert stats.batches > 0
    # One observation per ONNX Runtime run, as GetModel counts them.
    assert metrics.value("imgcls_batch_size_count", model=MODEL) == stats.batches
    assert metrics.value("imgcls_batch_size_sum", model=MODEL) == stats.inputs
    assert metrics.value("imgcls_queue_duration_seconds_count", model=MODEL) == stats.batches
    assert metrics.value("imgcls_compute_duration_seconds_count", model=MODEL) == stats.batches
    assert metrics.value("imgcls_compute_duration_seconds_sum", model=MODEL) > 0


def test_gauges(exercised: tuple[Scrape, pb.ModelStats]) -> None:
    metrics, _ = exercised
    assert metrics.value("imgcls_pending_inputs", model=MODEL) == 0  # nothing queued once every call answered
    assert metrics.value("imgcls_model_load_seconds", model=MODEL) > 0
    assert metrics.value("imgcls_model_ready", model=MODEL) == 1
    assert metrics.value("imgcls_streams_in_flight") == 0  # the stream ended


async def test_streams_in_flight_counts_an_open_stream(metrics_server: RunningServer) -> None:
    requests: asyncio.Queue[pb.ClassifyStreamRequest | None] = asyncio.Queue()

    async def frames() -> AsyncIterator[pb.ClassifyStreamRequest]:
        while (request := await requests.get()) is not None:
            yield request

    async with connect(metrics_server) as stub:
        call = stub.ClassifyStream(frames())
        await requests.put(pb.ClassifyStreamRequest(inputs=[image()], request_id="open"))
        first = await call.read()
        assert first.request_id == "open"  # the stream is running on the server
        assert (await scrape(metrics_server)).value("imgcls_streams_in_flight") == 1
        await requests.put(None)
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
    assert (await scrape(metrics_server)).value("imgcls_streams_in_flight") == 0


async def test_metrics_http_server_closes_on_stop() -> None:
    running = await start_server(make_settings(metrics_port=0))
    try:
        before = await scrape(running)
    finally:
        await running.stop(grace=1.0)
    assert before.value("imgcls_model_ready", model=MODEL) == 1
    # The HTTP server goes with the gRPC server: nothing is left listening on the port.
    with pytest.raises(urllib.error.URLError) as refused:
        await scrape(running)
    assert isinstance(refused.value.reason, ConnectionRefusedError)
