"""A raw HTTP/2 gRPC client over a plain socket (the ``h2`` package), for callers no gRPC library would be:
length prefixes that lie, messages that never finish, a flow-control window never opened, HEADERS followed
at once by RST_STREAM, header bytes that are not UTF-8.

Used by the hostile-load tests; loopback only. Every wait is bounded by the caller's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

GRPC_CODES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


def grpc_frame(message: bytes, *, compressed: bool = False) -> bytes:
    """A gRPC length-prefixed message."""
    return struct.pack(">?I", compressed, len(message)) + message


def gzip_frame(message: bytes) -> bytes:
    return grpc_frame(gzip.compress(message, compresslevel=9), compressed=True)


@dataclass
class StreamState:
    """What the server answered on one stream."""

    opened: float
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    ended: float | None = None  # trailers or RST_STREAM received
    reset: int | None = None  # RST_STREAM error code from the server

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def code(self) -> str:
        """The gRPC status name; 'RST_STREAM' when the server reset the stream; '' while open."""
        status = self.header(b"grpc-status")
        if status is not None:
            return GRPC_CODES.get(int(status), status.decode())
        if self.reset is not None:
            return f"RST_STREAM({self.reset})"
        return ""

    @property
    def message(self) -> str:
        value = self.header(b"grpc-message")
        return value.decode("latin-1") if value is not None else ""


class RawH2:
    """One HTTP/2 connection. Incoming frames are processed by a reader task; data received is never
    acknowledged (no WINDOW_UPDATE) when `read_window` is 0, so the server's sending stalls."""

    def __init__(self, host: str, port: int, *, read_window: int | None = None) -> None:
        self.host, self.port = host, port
        self.read_window = read_window
        self.streams: dict[int, StreamState] = {}
        self.closed = asyncio.Event()
        self.goaway: int | None = None
        self._window_open = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False)
        self.conn = h2.connection.H2Connection(config)

    async def __aenter__(self) -> RawH2:
        reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self.conn.initiate_connection()
        if self.read_window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.read_window})
        await self.flush()
        self._reader = asyncio.create_task(self._read(reader))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        self.closed.set()

    async def flush(self) -> None:
        assert self._writer is not None
        data = self.conn.data_to_send()
        if data:
            self._writer.write(data)
            await self._writer.drain()

    def write_now(self) -> None:
        """Queue what h2 has to send, without waiting for the socket to drain."""
        assert self._writer is not None
        data = self.conn.data_to_send()
        if data:
            self._writer.write(data)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for event in events:
                    self._handle(event)
                self.write_now()  # settings ACKs, ping ACKs
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            self._window_open.set()

    def _handle(self, event: Any) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived) and stream is not None:
            stream.headers.extend(event.headers)
            if isinstance(event, h2.events.TrailersReceived):
                stream.ended = time.monotonic()
        elif isinstance(event, h2.events.DataReceived) and stream is not None:
            stream.data += event.data
            if self.read_window != 0 and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.ended = stream.ended or time.monotonic()
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            stream.reset = event.error_code
            stream.ended = stream.ended or time.monotonic()
        elif isinstance(event, h2.events.WindowUpdated):
            self._window_open.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event.error_code
            self.closed.set()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._window_open.set()

    def open(
        self, path: str, metadata: list[tuple[str, str | bytes]] | None = None, *, gzip_encoded: bool = False
    ) -> int:
        """Send HEADERS for a gRPC call; returns the stream id (not flushed: call flush())."""
        stream_id = self.conn.get_next_available_stream_id()
        headers: list[tuple[bytes, bytes]] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", f"{self.host}:{self.port}".encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
        if gzip_encoded:
            headers.append((b"grpc-encoding", b"gzip"))
        for key, value in metadata or ():
            headers.append((key.encode(), value if isinstance(value, bytes) else value.encode()))
        self.conn.send_headers(stream_id, headers)
        self.streams[stream_id] = StreamState(time.monotonic())
        return stream_id

    def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id)

    def send_some(self, stream_id: int, data: memoryview, *, end: bool = False) -> int:
        """Send as much of data as the flow-control windows allow now; returns how much was sent."""
        try:
            window = self.conn.local_flow_control_window(stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError):
            return 0
        sent = 0
        while sent < len(data) and window > 0:
            size = min(window, self.conn.max_outbound_frame_size, len(data) - sent)
            last = end and sent + size == len(data)
            self.conn.send_data(stream_id, data[sent : sent + size].tobytes(), end_stream=last)
            sent += size
            window -= size
        if end and not data:
            self.conn.end_stream(stream_id)
        return sent

    async def send(self, stream_id: int, data: bytes, *, end: bool, deadline: float) -> int:
        """Send data as the windows open, until all is sent, the stream ends, or the deadline; returns bytes sent."""
        view = memoryview(data)
        sent = 0
        while True:
            self._window_open.clear()
            sent += self.send_some(stream_id, view[sent:], end=end)
            await self.flush()
            state = self.streams[stream_id]
            if sent >= len(view) or state.ended is not None or self.closed.is_set():
                return sent
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return sent
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._window_open.wait(), remaining)

    async def wait_ended(self, stream_ids: list[int], deadline: float) -> None:
        """Until every stream has its answer (or the connection closed), at most until deadline."""
        while time.monotonic() < deadline:
            if self.closed.is_set() or all(self.streams[s].ended is not None for s in stream_ids):
                return
            await asyncio.sleep(0.02)
