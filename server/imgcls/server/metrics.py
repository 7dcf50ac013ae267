"""Prometheus metrics, named in the spirit of Triton's nv_inference_*; one registry per server."""

from __future__ import annotations

import functools
from typing import Any

import grpc
from imgcls.server.engine.engine import Engine
from imgcls.server.engine.model import ServedModel
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "imgcls_requests",
            "Requests (unary calls and stream frames) by model, method and status code",
            ["model", "method", "code"],
            registry=r,
        )
        self.inputs = Counter("imgcls_inputs", "Inputs by model and status code", ["model", "code"], registry=r)
        self.request_duration = Histogram(
            "imgcls_request_duration_seconds",
            "End-to-end request duration",
            ["model", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "imgcls_queue_duration_seconds",
            "Mean time the inputs of a batch waited in the queue",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_duration = Histogram(
            "imgcls_compute_duration_seconds",
            "ONNX Runtime run duration per batch",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "imgcls_batch_size", "Inputs per ONNX Runtime run", ["model"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.pending = Gauge("imgcls_pending_inputs", "Inputs queued, not yet running", ["model"], registry=r)
        self.streams = Gauge("imgcls_streams_in_flight", "Open ClassifyStream calls", registry=r)
        self.load_time = Gauge("imgcls_model_load_seconds", "Time to load each model", ["model"], registry=r)
        self.ready = Gauge("imgcls_model_ready", "1 when the model is serving", ["model"], registry=r)
        for name, model in engine.models.items():
            self.pending.labels(name).set_function(functools.partial(_queue_depth, model))
            self.ready.labels(name).set_function(functools.partial(_ready, model))
            self.load_time.labels(name).set(model.load_seconds)
            model.batcher.on_batch = self._batch_observer(name)
        self._http: Any = None
        self.port: int | None = None

    def _batch_observer(self, model: str) -> Any:
        queue, compute, size = (
            self.queue_duration.labels(model),
            self.compute_duration.labels(model),
            self.batch_size.labels(model),
        )

        def observe(batch_size: int, mean_queue_s: float, compute_s: float) -> None:
            size.observe(batch_size)
            queue.observe(mean_queue_s)
            compute.observe(compute_s)

        return observe

    def observe(self, model: str, method: str, code: grpc.StatusCode, inputs: int, seconds: float) -> None:
        self.requests.labels(model, method, code.name).inc()
        self.inputs.labels(model, code.name).inc(inputs)
        self.request_duration.labels(model, method).observe(seconds)

    def serve_http(self, host: str, port: int) -> int:
        """Start the /metrics HTTP server; returns the bound port (port 0 picks one)."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._http.server_port)
        return self.port

    def shutdown(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def _queue_depth(model: ServedModel) -> float:
    return float(model.batcher.queue_depth)


def _ready(model: ServedModel) -> float:
    return 1.0 if model.ready else 0.0
