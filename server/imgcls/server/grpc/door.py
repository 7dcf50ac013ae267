"""The gRPC front door: one grpc.aio server with imgcls.v1, health and reflection on one port."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from imgcls.server.engine.engine import Engine
from imgcls.server.grpc.auth import BearerTokenInterceptor, server_credentials
from imgcls.server.grpc.health import HealthServicer
from imgcls.server.grpc.reads import BoundedReadInterceptor
from imgcls.server.grpc.servicer import ImageClassifierServicer
from imgcls.server.grpc.v2_servicer import SERVICE_NAME as V2_SERVICE_NAME
from imgcls.server.grpc.v2_servicer import OpenInferenceServicer
from imgcls.server.settings import ServerSettings
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from tritonclient.grpc import service_pb2_grpc as v2_grpc

log = logging.getLogger(__name__)

# gRPC's Cython layer logs here, at ERROR and with a traceback, every metadata value (or method name) it
# cannot decode as UTF-8, whole: an authorization header with one bad byte put its token in the log, and
# any caller could fill the log with bytes of its choosing. See WithheldValues.
GRPC_CYTHON_LOGGER = "grpc._cython.cygrpc"
# At most one such line per this many seconds (with the count of the ones left out).
UNDECODABLE_LOG_EVERY_S = 10.0

# Calls gRPC core may hold before the server takes them up (see server_options); each holds at most its
# stream's 64 KiB flow-control window of message bytes.
MAX_PENDING_CALLS = 4096

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ImageClassifierService"].full_name


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
        # Calls at once on one HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS).
        ("grpc.max_concurrent_streams", settings.max_calls_per_connection),
        # No window growth by bandwidth probing: a call's message is pulled in only when the server
        # asks for it (after admission, see reads.py), so calls waiting for admission hold ~nothing.
        ("grpc.http2.bdp_probe", 0),
        # Calls gRPC core has received but the server has not taken up yet. Past 1000 (grpcio's default,
        # up to a hard 3000) core drops new calls at random as CANCELLED, with no message and before imgcls
        # sees them: 130-170 of 2000 concurrent calls (and a rapid-reset flood's bystanders). Admission
        # is imgcls's to decide (read gate, budget, queues: RESOURCE_EXHAUSTED with a reason), so core only
        # refuses past a fixed bound far above any burst those leave waiting.
        ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
    ]
    if settings.max_connection_age_s is not None:
        # At least 1 ms: gRPC reads 0 as "close at once".
        options.append(("grpc.max_connection_age_ms", max(1, round(settings.max_connection_age_s * 1000))))
        if settings.max_connection_age_grace_s is not None:
            options.append(("grpc.max_connection_age_grace_ms", round(settings.max_connection_age_grace_s * 1000)))
    return options


class WithheldValues(logging.Filter):
    """Rewrites gRPC's "Invalid encoding on <value>" records: the value and the traceback are dropped, the
    level lowered to WARNING, and at most one line is written per UNDECODABLE_LOG_EVERY_S."""

    def __init__(self) -> None:
        super().__init__()
        self._last = -math.inf
        self._withheld = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith("Invalid encoding")):
            return True
        now = time.monotonic()
        if now - self._last < UNDECODABLE_LOG_EVERY_S:
            self._withheld += 1
            return False
        more = f" ({self._withheld} more since the last such line)" if self._withheld else ""
        self._last, self._withheld = now, 0
        record.msg = "a call carried a metadata value or method name that is not valid UTF-8 (value withheld)" + more
        record.args = None
        record.exc_info = record.exc_text = record.stack_info = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def withhold_undecodable_values() -> None:
    """Install WithheldValues on gRPC's Cython logger (once per process)."""
    logger = logging.getLogger(GRPC_CYTHON_LOGGER)
    if not any(isinstance(f, WithheldValues) for f in logger.filters):
        logger.addFilter(WithheldValues())


class GenericOnly:
    """What the generated add_*_to_server functions are handed instead of the server: each service's methods
    are registered as its generic handler only, not also as registered methods.

    For every call it accepts, grpcio's aio server runs asyncio.wait over one pending future per registered
    method (grpc/_cython/_cygrpc/aio/server.pyx.pxi, _server_main_loop): imgcls.v1, v2, health and reflection
    registered that way made it add and remove 29 done-callbacks per call, measured at 14% of the event
    loop's time under load. The generic handler the generated code adds anyway resolves a method with one dict
    lookup per service.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        """Nothing: add_generic_rpc_handlers has been given these methods already."""


class GrpcFrontDoor:
    """imgcls.v1 (and any other gRPC service added to it) over one port; health follows engine readiness."""

    name = "grpc"

    def __init__(self, engine: Engine, settings: ServerSettings) -> None:
        self._engine = engine
        self._settings = settings
        withhold_undecodable_values()
        # Read the TLS files first: a bad path fails before the server binds.
        self._credentials = server_credentials(settings.tls) if settings.tls is not None else None
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if settings.auth_tokens:
            # First: a call without a valid token is refused before its message is read at all.
            interceptors.append(BearerTokenInterceptor(settings.auth_tokens, open_health=settings.auth_open_health))
        interceptors.append(
            BoundedReadInterceptor(
                engine, max_message_bytes=settings.max_message_bytes, message_timeout_s=settings.message_timeout_s
            )
        )
        self.server = grpc.aio.server(options=server_options(settings), interceptors=interceptors)
        # Duck-typed: the generated code only calls the two methods GenericOnly has.
        self.registrar = cast(grpc.aio.Server, GenericOnly(self.server))
        self.servicer = ImageClassifierServicer(engine)
        pb_grpc.add_ImageClassifierServiceServicer_to_server(self.servicer, self.registrar)
        # The Open Inference Protocol on the same port (raises ConfigError when some NAME_image is a served name).
        self.v2_servicer = OpenInferenceServicer(engine)
        v2_grpc.add_GRPCInferenceServiceServicer_to_server(self.v2_servicer, self.registrar)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.registrar)
        self._services = [SERVICE_NAME, V2_SERVICE_NAME]
        self._pending: set[asyncio.Future[Any]] = set()
        self.port = 0

    def add_service(self, full_name: str) -> None:
        """Another service on this server (registered by its own module): health and reflection list it."""
        self._services.append(full_name)

    async def start(self) -> None:
        names = (*self._services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        # What reflection.enable_server_reflection does, through the registrar (it checks for a grpc.aio.Server).
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(names),  # type: ignore[attr-defined]
            self.registrar,
        )
        address = f"{self._settings.host}:{self._settings.port}"
        try:
            if self._credentials is not None:
                port = self.server.add_secure_port(address, self._credentials)
            else:
                port = self.server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises RuntimeError when the address cannot be bound
            raise OSError(f"cannot bind {address}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot bind {address}")
        self.port = port
        await self.server.start()
        await self.set_serving(self._engine.ready)
        self._engine.add_readiness_listener(self._readiness_changed)

    def _readiness_changed(self, ready: bool) -> None:
        future = asyncio.ensure_future(self.set_serving(ready))
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", *self._services):
            await self.health.set(service, status)

    async def stop(self, grace: float) -> None:
        """gRPC refuses new calls from here and waits up to grace for accepted ones (Watch streams are not
        waited for: they end first)."""
        # NOT_SERVING first (the readiness listener's update may not have run yet), so every Watch sends it
        # before it ends.
        await self.set_serving(False)
        await self.health.close_watches()
        await self.server.stop(grace)
