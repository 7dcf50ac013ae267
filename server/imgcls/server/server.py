"""Assembling and running the gRPC server: servicer, health, reflection, limits, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from imgcls.server.engine.engine import Engine
from imgcls.server.grpc.auth import BearerTokenInterceptor, server_credentials
from imgcls.server.grpc.servicer import ImageClassifierServicer
from imgcls.server.metrics import Metrics
from imgcls.server.settings import ServerSettings
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ImageClassifierService"].full_name

# After shutdown begins, calls whose request was still arriving are let into the servicer (and
# refused there with UNAVAILABLE) until no call has arrived for SETTLE_QUIET_S, for at most
# SETTLE_MAX_S. Calls gRPC has not handed to the servicer when server.stop runs are reset by gRPC
# core, which clients see as CANCELLED: the settle turns most of those into a retryable UNAVAILABLE.
SETTLE_QUIET_S = 0.1
SETTLE_MAX_S = 1.0


@dataclass
class RunningServer:
    """A started server: its port, engine and the handles needed to stop it."""

    server: grpc.aio.Server
    engine: Engine
    servicer: ImageClassifierServicer
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped)
    port: int
    settings: ServerSettings
    metrics: Metrics
    metrics_port: int | None = None

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful: NOT_SERVING at once, refuse new calls, let accepted work finish within grace."""
        grace = self.settings.grace_period_s if grace is None else grace
        deadline = time.monotonic() + grace
        await self.set_serving(False)
        self.servicer.refuse_new_calls()
        await self._settle(min(grace, SETTLE_MAX_S))
        # gRPC refuses new calls from here and waits up to the rest of grace for accepted ones.
        await self.server.stop(max(0.0, deadline - time.monotonic()))
        await self.engine.stop(drain=True)
        self.metrics.shutdown()

    async def _settle(self, limit: float) -> None:
        ends = time.monotonic() + limit
        while (now := time.monotonic()) < ends:
            quiet_until = self.servicer.last_call_at + SETTLE_QUIET_S
            if now >= quiet_until:
                return
            await asyncio.sleep(min(quiet_until, ends) - now)


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    if settings.max_connection_age_s is not None:
        # At least 1 ms: gRPC reads 0 as "close at once".
        options.append(("grpc.max_connection_age_ms", max(1, round(settings.max_connection_age_s * 1000))))
        if settings.max_connection_age_grace_s is not None:
            options.append(("grpc.max_connection_age_grace_ms", round(settings.max_connection_age_grace_s * 1000)))
    return options


async def start_server(settings: ServerSettings, engine: Engine | None = None) -> RunningServer:
    """Load the models (unless given an engine), bind, and report SERVING once everything is ready.

    If anything fails on the way, whatever was started (batcher threads, pools, the port) is stopped
    again before the error propagates.
    """
    # Read the TLS files first: a bad path fails before a model is loaded.
    credentials = server_credentials(settings.tls) if settings.tls is not None else None
    if engine is None:
        engine = await asyncio.to_thread(Engine.load, settings)
    interceptors = []
    if settings.auth_tokens:
        interceptors.append(BearerTokenInterceptor(settings.auth_tokens, open_health=settings.auth_open_health))
    server = grpc.aio.server(options=server_options(settings), interceptors=interceptors)
    metrics = Metrics(engine)
    engine.start(asyncio.get_running_loop())
    try:
        servicer = ImageClassifierServicer(engine, metrics)
        pb_grpc.add_ImageClassifierServiceServicer_to_server(servicer, server)
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        address = f"{settings.host}:{settings.port}"
        try:
            if credentials is not None:
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises RuntimeError when the address cannot be bound
            raise OSError(f"cannot bind {address}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot bind {address}")
        await server.start()
        metrics_port = (
            metrics.serve_http(settings.host, settings.metrics_port) if settings.metrics_port is not None else None
        )
    except BaseException:
        await server.stop(0)
        await engine.stop(drain=False)
        metrics.shutdown()
        raise
    running = RunningServer(server, engine, servicer, health_servicer, port, settings, metrics, metrics_port)
    await running.set_serving(True)
    loop = asyncio.get_running_loop()

    def model_failed(model: str, exc: BaseException) -> None:
        # Every call to that model fails from now on: NOT_SERVING, so probes restart or drain this replica.
        log.error("model %s can no longer serve (%s): reporting NOT_SERVING", model, exc)
        asyncio.run_coroutine_threadsafe(running.set_serving(False), loop)

    engine.on_model_failure(model_failed)
    return running


def log_startup_summary(running: RunningServer) -> None:
    """At info: where the server listens and how, then one line per model with what it runs on."""
    settings = running.settings
    metrics = f"http://{settings.host}:{running.metrics_port}/metrics" if running.metrics_port is not None else "off"
    log.info(
        "imgcls serving on %s:%d (%s, auth %s, metrics %s, max connection age %s, grace period %.1fs): "
        "models %s (default %s)",
        settings.host,
        running.port,
        ("mTLS" if settings.tls.client_ca_file else "TLS") if settings.tls else "plaintext",
        # Whether tokens are required, never the tokens.
        "bearer token" if settings.auth_tokens else "off",
        metrics,
        f"{settings.max_connection_age_s:g}s" if settings.max_connection_age_s is not None else "unlimited",
        settings.grace_period_s,
        ", ".join(running.engine.models),
        running.engine.default_model,
        extra={"port": running.port, "metrics_port": running.metrics_port},
    )
    configured = {m.name: m for m in settings.served_models}
    for name, model in running.engine.models.items():
        batching = settings.batching_for(configured[name])
        runtime = settings.runtime_for(configured[name])
        graph = model.backend.graph
        summary = {
            "model": name,
            "source": model.files.source,
            "variant": model.files.variant or "-",  # "-": a spec or bare .onnx file has no variants
            "input_dtype": graph.input_dtype.name,
            "providers": list(model.backend.providers),
            "instances": model.batcher.instances,
            # As resolved: 0 in the settings means "share out the usable CPUs".
            "intra_op_threads": model.backend.options.intra_op_threads,
            "solo_intra_op_threads": model.backend.options.solo_intra_op_threads,
            "inter_op_threads": runtime.inter_op_threads,
            # The batcher's own size: a graph with a fixed batch dimension overrides the setting.
            "max_batch_size": model.batcher.max_batch_size,
            "max_queue_delay_us": batching.max_queue_delay_us,
            "queue_limit": batching.queue_limit,
        }
        log.info(
            "model %s%s: source=%s variant=%s input_dtype=%s providers=%s instances=%d threads intra=%d "
            "(lone run %s) inter=%d; batching max_batch_size=%d max_queue_delay_us=%d queue_limit=%d",
            name,
            " (default)" if name == running.engine.default_model else "",
            summary["source"],
            summary["variant"],
            summary["input_dtype"],
            ",".join(model.backend.providers),
            model.batcher.instances,
            model.backend.options.intra_op_threads,
            model.backend.options.solo_intra_op_threads or "-",
            runtime.inter_op_threads,
            model.batcher.max_batch_size,
            batching.max_queue_delay_us,
            batching.queue_limit,
            extra=summary,
        )


async def serve(settings: ServerSettings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    running = await start_server(settings)
    log_startup_summary(running)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: finishing accepted requests (grace %.1fs)", settings.grace_period_s)
    await running.stop()
    log.info("stopped")
