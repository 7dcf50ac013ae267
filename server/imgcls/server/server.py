"""The server: one engine behind a list of front doors, with start-up and graceful shutdown.

Front doors (gRPC today) only convert between their protocol and the engine; this module starts
them over one engine, reports where they listen, and stops them in order on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from imgcls.server.engine.engine import Engine
from imgcls.server.grpc.door import GrpcFrontDoor
from imgcls.server.http.door import HttpFrontDoor
from imgcls.server.metrics import Metrics
from imgcls.server.runtime import files, memory
from imgcls.server.settings import ServerSettings

log = logging.getLogger(__name__)

# After shutdown begins, calls whose request was still arriving are let in (and refused by the
# engine with UNAVAILABLE) until no call has arrived for SETTLE_QUIET_S, for at most SETTLE_MAX_S.
# Calls gRPC has not handed to a servicer when server.stop runs are reset by gRPC core, which clients
# see as CANCELLED: the settle turns most of those into a retryable UNAVAILABLE.
SETTLE_QUIET_S = 0.1
SETTLE_MAX_S = 1.0


class FrontDoor(Protocol):
    name: str
    port: int

    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


@dataclass
class RunningServer:
    """A started server: its engine, its front doors and the handles needed to stop it."""

    engine: Engine
    doors: list[FrontDoor]
    settings: ServerSettings
    metrics: Metrics
    metrics_port: int | None = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def grpc(self) -> GrpcFrontDoor:
        return next(d for d in self.doors if isinstance(d, GrpcFrontDoor))

    @property
    def port(self) -> int:
        """The gRPC port."""
        return self.grpc.port

    @property
    def http(self) -> HttpFrontDoor | None:
        return next((d for d in self.doors if isinstance(d, HttpFrontDoor)), None)

    @property
    def http_port(self) -> int | None:
        """The HTTP port, None when HTTP is off (http_port 0)."""
        http = self.http
        return http.port if http is not None else None

    @property
    def health(self) -> Any:
        return self.grpc.health

    async def set_serving(self, serving: bool) -> None:
        await self.grpc.set_serving(serving)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful: not ready at once, refuse new calls, let accepted work finish within grace."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.grace_period_s if grace is None else grace
        deadline = time.monotonic() + grace
        self.engine.begin_shutdown()
        await self._settle(min(grace, SETTLE_MAX_S))
        await asyncio.gather(*(door.stop(max(0.0, deadline - time.monotonic())) for door in self.doors))
        await self.engine.stop(drain=True)
        self.metrics.shutdown()

    async def _settle(self, limit: float) -> None:
        ends = time.monotonic() + limit
        while (now := time.monotonic()) < ends:
            quiet_until = self.engine.last_call_at + SETTLE_QUIET_S
            if now >= quiet_until:
                return
            await asyncio.sleep(min(quiet_until, ends) - now)


async def start_server(settings: ServerSettings, engine: Engine | None = None) -> RunningServer:
    """Load the models (unless given an engine), start every front door, and report ready.

    If anything fails on the way, whatever was started (batcher threads, pools, ports) is stopped
    again before the error propagates.
    """
    if engine is None:
        # Read the TLS files before loading models: a bad path fails fast.
        _check_tls(settings)
        engine = await asyncio.to_thread(Engine.load, settings)
    doors: list[FrontDoor] = []
    metrics = Metrics(engine)
    engine.start(asyncio.get_running_loop())
    try:
        doors.append(GrpcFrontDoor(engine, settings))
        if settings.http_port != 0:
            doors.append(HttpFrontDoor(engine, settings))
        for door in doors:
            await door.start()
        metrics_port = (
            metrics.serve_http(settings.host, settings.metrics_port) if settings.metrics_port is not None else None
        )
    except BaseException:
        for door in doors:
            await door.stop(0)
        await engine.stop(drain=False)
        metrics.shutdown()
        raise
    return RunningServer(engine, doors, settings, metrics, metrics_port)


def _check_tls(settings: ServerSettings) -> None:
    if settings.tls is not None:
        from imgcls.server.grpc.auth import server_credentials

        server_credentials(settings.tls)


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
    for model in running.engine.describe_all():
        runtime, batching = model.runtime, model.batching
        summary = {
            "model": model.name,
            "source": running.engine.get(model.name).files.source,  # the operator's own path: logs only
            "variant": model.variant or "-",  # "-": a spec or bare .onnx file has no variants
            "input_dtype": model.input_dtype,
            "providers": list(runtime.providers),
            "instances": batching.instances,
            # As resolved: 0 in the settings means "share out the usable CPUs".
            "intra_op_threads": runtime.intra_op_threads,
            "solo_intra_op_threads": runtime.solo_intra_op_threads,
            "inter_op_threads": runtime.inter_op_threads,
            # The batcher's own size: a graph with a fixed batch dimension overrides the setting.
            "max_batch_size": batching.max_batch_size,
            "max_queue_delay_us": batching.max_queue_delay_us,
            "queue_limit": batching.queue_limit,
        }
        log.info(
            "model %s%s: source=%s variant=%s input_dtype=%s providers=%s instances=%d threads intra=%d "
            "(lone run %s) inter=%d; batching max_batch_size=%d max_queue_delay_us=%d queue_limit=%d",
            model.name,
            " (default)" if model.name == running.engine.default_model else "",
            summary["source"],
            summary["variant"],
            summary["input_dtype"],
            ",".join(runtime.providers),
            batching.instances,
            runtime.intra_op_threads,
            runtime.solo_intra_op_threads or "-",
            runtime.inter_op_threads,
            batching.max_batch_size,
            batching.max_queue_delay_us,
            batching.queue_limit,
            extra=summary,
        )


# malloc arenas for the whole process: decode, inference and gRPC threads each take one by default
# (up to 8 per core), and memory freed in one cannot serve another.
MALLOC_ARENAS = 4


async def serve(settings: ServerSettings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    memory.limit_arenas(MALLOC_ARENAS)
    # Here, not at import: only a serving process needs room for thousands of connections.
    soft, hard = files.raise_open_file_limit(files.MOST_FDS)
    running = await start_server(settings)
    log_startup_summary(running)
    http = running.http
    log.info(
        "open-file limit %d (hard %d): HTTP holds up to %d connections%s",
        soft,
        hard,
        http.limits.max_connections if http is not None else 0,
        ""
        if http is None or http.limits.max_connections >= settings.http_max_connections
        else f" (http_max_connections {settings.http_max_connections} does not fit: raise the hard limit, ulimit -Hn)",
        extra={"open_file_limit": soft, "open_file_hard_limit": hard},
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: finishing accepted requests (grace %.1fs)", settings.grace_period_s)
    await running.stop()
    counts = {name: running.engine.stats(name) for name in running.engine.models}
    log.info(
        "stopped; requests answered per model: %s",
        ", ".join(f"{name} {c.requests} ({c.failed_requests} failed)" for name, c in counts.items()),
        extra={"requests": {name: c.requests for name, c in counts.items()}},
    )
