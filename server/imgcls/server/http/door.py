"""The HTTP front door: the ASGI app (app.py) on uvicorn, on the event loop the gRPC server runs on.

uvicorn is driven step by step (startup, its once-a-second tick, shutdown) instead of ``Server.serve()``,
which would install its own SIGINT/SIGTERM handlers over the server's. The listening sockets are bound
here, so a taken port fails in one line (as the gRPC door does) and port "auto" reports the port it got.

Connections are bounded where uvicorn leaves them open: httptools has no limit on header size and
uvicorn no timeout for a request's headers, so the protocol below adds both, and caps connections. An idle
connection costs a file descriptor and a few KB, so the cap is high (http_max_connections, 10000 by
default, within the open-file limit); at the cap, the connection doing the least is closed to make room:
the oldest that never sent a byte, else the oldest that has been sending its headers for over
PARTIAL_HEADERS_GRACE_S (408), else the oldest idle between requests (a client's pooled connection, the
last to go: a client that used it will likely use it again). So a flood of idle sockets cannot shut out a
caller that sends a request; only when every connection is working is a new one refused (503).
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl
import time
from collections import OrderedDict
from typing import Any, ClassVar

import uvicorn
from imgcls.server.domain.errors import ConfigError
from imgcls.server.engine.engine import Engine
from imgcls.server.http.app import build_app
from imgcls.server.http.errors import error_body
from imgcls.server.http.guard import BODY_COMPLETE_KEY, HttpLimits
from imgcls.server.http.json_bodies import JsonParsing
from imgcls.server.runtime import files
from imgcls.server.settings import ServerSettings, TlsSettings
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

BACKLOG = 2048
# A connection part-way through its headers is closed to make room only after this long: one that sends a
# request at an ordinary pace is past its headers by then.
PARTIAL_HEADERS_GRACE_S = 1.0


def default_limits(settings: ServerSettings) -> HttpLimits:
    return HttpLimits(
        max_body_bytes=settings.max_message_bytes,
        max_connections=files.connection_room(settings.http_max_connections),
        max_json_bytes=settings.max_json_bytes,
    )


def ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """The gRPC door's certificate and key; with a client CA, clients must present a certificate it signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file is not None:
            context.load_verify_locations(cafile=tls.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except OSError as exc:
        raise ConfigError(f"tls: cannot read {exc.filename}: {exc.strerror}") from exc
    except ssl.SSLError as exc:
        raise ConfigError(f"tls: {exc}") from exc
    context.set_alpn_protocols(["http/1.1"])
    return context


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a cap on connections, header bytes and the time headers may take."""

    # Set on the subclass protocol_class() makes, one per door: its limits, and its connections that are
    # doing nothing useful, oldest first: fresh (never sent a byte), partial (part-way through a request's
    # headers, since when) and idle (between requests, on keep-alive).
    limits: HttpLimits
    fresh: ClassVar[OrderedDict[BoundedHttpToolsProtocol, None]]
    partial: ClassVar[OrderedDict[BoundedHttpToolsProtocol, float]]
    idle: ClassVar[OrderedDict[BoundedHttpToolsProtocol, None]]
    evicted: ClassVar[list[int]]  # [count], for the log and the tests

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_bytes = 0
        self._awaiting_headers = True
        self._header_timer: asyncio.TimerHandle | None = None
        self._lingering = False
        self._lingered = 0
        self._linger_timer: asyncio.TimerHandle | None = None
        if len(self.connections) >= self.limits.max_connections and not self._make_room():
            # Answered, not just dropped, so a client knows to back off and retry.
            self.transport = transport
            # Closed at once, no lingering: under a flood of connections each refused one must cost nothing.
            self._refuse(503, "too many connections; retry later", retry=True, linger=False)
            return
        super().connection_made(transport)
        self.fresh[self] = None
        self._arm_header_timer()

    def _make_room(self) -> bool:
        """Close the connection doing the least (see the module's doc); False when every one is working."""
        if self._close_oldest(self.fresh):
            return True
        now = time.monotonic()
        while self.partial:
            victim, since = next(iter(self.partial.items()))
            if now - since < PARTIAL_HEADERS_GRACE_S:
                break
            del self.partial[victim]
            if not victim.transport.is_closing():
                victim._refuse(408, "the request headers were too slow while the server was full", linger=False)
                self.evicted[0] += 1
                return True
        return self._close_oldest(self.idle)

    def _close_oldest(self, connections: OrderedDict[BoundedHttpToolsProtocol, None]) -> bool:
        while connections:
            victim, _ = connections.popitem(last=False)
            if not victim.transport.is_closing():
                victim.transport.close()
                self.evicted[0] += 1
                return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.fresh.pop(self, None)
        self.partial.pop(self, None)
        self.idle.pop(self, None)
        self._cancel_header_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        if self.flow is None:  # refused in connection_made: uvicorn never saw it
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # the rest of a refused body: dropped unread
            self._lingered += len(data)
            if self._lingered > self.limits.linger_bytes:
                self.transport.close()
            return
        if self in self.fresh or self in self.idle:  # a request begins: partial until its headers are complete
            self.fresh.pop(self, None)
            self.idle.pop(self, None)
            self.partial[self] = time.monotonic()
        super().data_received(data)
        if self._awaiting_headers and self.parser is not None and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse(431, f"request line and headers are over {self.limits.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers = True
        self._header_bytes = 0
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self.partial.pop(self, None)
        self._cancel_header_timer()
        super().on_headers_complete()
        if self.cycle is not None and not isinstance(self.cycle.transport, _LingeringClose):
            self.cycle.transport = _LingeringClose(self, self.transport)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.cycle is not None:
            self.cycle.scope[BODY_COMPLETE_KEY] = True  # type: ignore[literal-required]  # read_body needs no turn for it

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.timeout_keep_alive_task is not None:
            self.idle[self] = None  # between requests: the keep-alive timer runs

    def linger(self) -> None:
        """Close after a response; if the request's body is still arriving, half-close and drop it for a while
        first, so a client still sending reads the answer (401, 413) instead of a connection reset."""
        cycle = self.cycle
        if cycle is None or not cycle.more_body:
            self.transport.close()
        else:
            self._drop_the_rest_then_close()

    def _drop_the_rest_then_close(self) -> None:
        transport = self.transport
        if transport.is_closing() or not transport.can_write_eof():  # TLS cannot half-close
            transport.close()
            return
        try:
            transport.write_eof()
        except OSError:  # the client is gone already (ENOTCONN): nothing to linger for
            transport.close()
            return
        self._lingering = True
        if self.flow is not None:
            self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(self.limits.linger_s, transport.close)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._headers_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if not self._awaiting_headers or self.transport.is_closing():
            return
        if self._header_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # a connection that never sent anything: nothing to answer
        else:
            self._refuse(408, "the request headers did not arrive in time")

    def _refuse(self, status: int, message: str, *, retry: bool = False, linger: bool = True) -> None:
        """Answer and close, unless a response is still being written on this connection (then just close)."""
        cycle = getattr(self, "cycle", None)
        if cycle is None or cycle.response_complete:
            body = error_body(message)
            head = [
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}",
                "content-type: application/json",
                f"content-length: {len(body)}",
                "connection: close",
            ]
            if retry:
                head.append("retry-after: 1")
            self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        if linger:
            self._drop_the_rest_then_close()
        else:
            self.transport.close()


class _LingeringClose:
    """The transport as a request's cycle sees it: its close() lingers (BoundedHttpToolsProtocol.linger)."""

    def __init__(self, protocol: BoundedHttpToolsProtocol, transport: asyncio.Transport) -> None:
        self._protocol = protocol
        self._transport = transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol.linger()


_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def protocol_class(limits: HttpLimits) -> type[BoundedHttpToolsProtocol]:
    return type(
        "ImgclsHttpProtocol",
        (BoundedHttpToolsProtocol,),
        {"limits": limits, "fresh": OrderedDict(), "partial": OrderedDict(), "idle": OrderedDict(), "evicted": [0]},
    )


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address host resolves to, all on one port (port 0 picks a free one)."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        seen = set()
        for family, kind, proto, _, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            port = port or sock.getsockname()[1]
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise OSError(f"cannot bind {host}:{port} for HTTP: {exc.strerror or exc}") from exc
    return sockets


class HttpFrontDoor:
    """The Open Inference Protocol REST API, the Hugging Face Inference API and imgcls.v1 as JSON, on one port."""

    name = "http"

    def __init__(self, engine: Engine, settings: ServerSettings, limits: HttpLimits | None = None) -> None:
        self._settings = settings
        self.limits = limits or default_limits(settings)
        # Read the TLS files first: a bad path fails before anything binds.
        self._ssl = ssl_context(settings.tls) if settings.tls is not None else None
        self._parsing = JsonParsing()
        self.app = build_app(engine, settings, self.limits, self._parsing)
        # Its connections' bookkeeping (fresh, partial, idle, evicted) is the door's own, observable in tests.
        self.protocol = protocol_class(self.limits)
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._sockets: list[socket.socket] = []
        self._ticks: asyncio.Task[None] | None = None
        uvicorn_log = logging.getLogger("uvicorn.error")
        if uvicorn_log.level == logging.NOTSET:
            uvicorn_log.setLevel(logging.WARNING)  # its start and stop lines repeat what the server logs

    @property
    def scheme(self) -> str:
        return "https" if self._ssl is not None else "http"

    async def start(self) -> None:
        port = self._settings.http_port
        self._sockets = bind(self._settings.host, 0 if port == "auto" else port)
        self.port = int(self._sockets[0].getsockname()[1])
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            http=self.protocol,
            ws="none",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=math.ceil(self.limits.keep_alive_s),
            backlog=BACKLOG,
        )
        config.load()
        config.ssl = self._ssl
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=self._sockets)
        except BaseException:
            self._close_sockets()
            raise
        self._server = server
        log.info(
            "HTTP on %s: Open Inference Protocol REST (/v2), Hugging Face Inference API (/models/NAME), "
            "imgcls.v1 as JSON (/v1); OpenAPI at /openapi.json, docs at /docs",
            self.url(),
            extra={"http_port": self.port},
        )
        # uvicorn's tick: the Date header once a second, and noticing should_exit.
        self._ticks = asyncio.create_task(server.main_loop(), name="http-door-ticks")

    async def stop(self, grace: float) -> None:
        """Stop accepting; requests already accepted are answered within grace, then cancelled."""
        server = self._server
        if server is None:
            self._close_sockets()
            return
        self._server = None
        server.should_exit = True
        if self._ticks is not None:
            await self._ticks
        server.config.timeout_graceful_shutdown = max(grace, 0.0)  # type: ignore[assignment]
        await server.shutdown(sockets=self._sockets)
        self._close_sockets()
        self._parsing.close()

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()

    def url(self, host: str | None = None) -> str:
        return f"{self.scheme}://{host or self._settings.host}:{self.port}"
