"""Prometheus metrics, named in the spirit of Triton's nv_inference_*; one registry per server."""

from __future__ import annotations

import functools
from typing import Any

from imgcls.server.engine.engine import Engine
from imgcls.server.engine.model import ServedModel
from imgcls.server.engine.observation import RequestRecord
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Listens to the engine (requests, batches) and reads its gauges; knows no protocol."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "imgcls_requests",
            "Requests (unary calls and stream frames) by model, front door protocol, method and outcome",
            ["model", "protocol", "method", "outcome"],
            registry=r,
        )
        self.inputs = Counter("imgcls_inputs", "Inputs by model and outcome", ["model", "outcome"], registry=r)
        self.request_duration = Histogram(
            "imgcls_request_duration_seconds",
            "End-to-end request duration",
            ["model", "protocol", "method"],
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
        self.streams = Gauge("imgcls_streams_in_flight", "Open streams", registry=r)
        self.streams.set_function(lambda: float(engine.active_streams))
        self.load_time = Gauge("imgcls_model_load_seconds", "Time to load each model", ["model"], registry=r)
        self.ready = Gauge("imgcls_model_ready", "1 when the model is serving", ["model"], registry=r)
        for name, model in engine.models.items():
            self.pending.labels(name).set_function(functools.partial(_queue_depth, model))
            self.ready.labels(name).set_function(functools.partial(_ready, model))
            self.load_time.labels(name).set(model.load_seconds)
            model.add_batch_listener(self._batch_observer(name))
        self._children: dict[tuple[str, str, str, str], tuple[Any, Any, Any]] = {}
        engine.add_request_listener(self.observe)
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

    def observe(self, record: RequestRecord) -> None:
        key = (record.model, record.protocol, record.method, record.outcome_name)
        children = self._children.get(key)
        if children is None:
            # Looked up once per label set, not per request: labels() validates and locks every time. The
            # label sets are few (model names are served ones or one "unknown" label; outcomes are kinds).
            model, protocol, method, outcome = key
            children = self._children[key] = (
                self.requests.labels(model, protocol, method, outcome),
                self.inputs.labels(model, outcome),
                self.request_duration.labels(model, protocol, method),
            )
        requests, inputs, duration = children
        requests.inc()
        inputs.inc(record.inputs)
        duration.observe(record.seconds)

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
    return float(model.queue_depth)


def _ready(model: ServedModel) -> float:
    return 1.0 if model.ready else 0.0
