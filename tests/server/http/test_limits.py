"""What one HTTP connection or request may cost: tokens and body limits refused from the headers before the body is
read, bodies counted while they stream, slow bodies and headers timed out, huge headers and too many connections
refused. Raw sockets, so the test controls exactly what is sent and when."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from imgcls.server.http import door
from imgcls.server.http.guard import HttpLimits
from imgcls.server.server import RunningServer
from imgcls.server.settings import ServerSettings
from server.http.helpers import MODEL
from support.inputs import COFFEE
from support.servers import running_server

TOKEN = "limits-token-5e2f"
HF = f"/models/{MODEL}"
LIMIT = 1 << 20  # max_message_bytes of these servers


def limits(**overrides: Any) -> Callable[[ServerSettings], HttpLimits]:
    return lambda settings: HttpLimits(max_body_bytes=settings.max_message_bytes, **overrides)


@asynccontextmanager
async def server_with(
    monkeypatch: pytest.MonkeyPatch, *, http_limits: dict[str, Any] | None = None, **settings: Any
) -> AsyncIterator[RunningServer]:
    monkeypatch.setattr(door, "default_limits", limits(**(http_limits or {})))
    async with running_server(http_port="auto", max_message_bytes=LIMIT, **settings) as server:
        yield server


class Connection:
    """One raw TCP connection to the HTTP port."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.sent = 0

    @classmethod
    async def open(cls, server: RunningServer) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
        self.sent += len(data)

    async def response(self, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        """The next response: status, headers (lower-case names), body (by Content-Length)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(self.reader.readexactly(int(headers.get("content-length", "0"))), timeout)
        return int(lines[0].split()[1]), headers, body

    async def closed_by_server(self, timeout: float = 10.0) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), timeout) == b""
        except ConnectionError:
            return True

    def close(self) -> None:
        self.writer.close()


def head(path: str, *lines: str) -> bytes:
    return ("\r\n".join([f"POST {path} HTTP/1.1", "Host: test", *lines]) + "\r\n\r\n").encode()


async def send_until_answered(connection: Connection, chunk: bytes, *, most: int) -> tuple[int, dict[str, str], bytes]:
    """Keep sending chunk until the server answers (or `most` bytes went out); the response."""
    answer = asyncio.create_task(connection.response(timeout=30))
    try:
        while not answer.done() and connection.sent < most:
            await connection.send(chunk)
            await asyncio.sleep(0)
    except ConnectionError:
        pass  # the server answered and closed while we were still sending
    return await answer


# -- refused from the headers, before the body is read --------------------------------------------------
async def test_bad_token_refuses_a_huge_body_before_reading_it(monkeypatch: pytest.MonkeyPatch) -> None:
    async with server_with(monkeypatch, auth_tokens=[TOKEN]) as server:
        connection = await Connection.open(server)
        await connection.send(head(HF, "Authorization: Bearer wrong", f"Content-Length: {1 << 30}"))
        status, headers, body = await send_until_answered(connection, b"\0" * 65536, most=1 << 30)
        assert status == 401
        assert headers["www-authenticate"].startswith("Bearer") and headers["connection"] == "close"
        assert b"bearer token" in body
        # Answered while the client still had almost all of its gigabyte to send, and the connection is closed:
        # the server read no more than what was in flight.
        assert connection.sent < 16 << 20, connection.sent
        assert await connection.closed_by_server()
        connection.close()


async def test_bad_token_on_a_chunked_body_and_no_token_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    async with server_with(monkeypatch, auth_tokens=[TOKEN]) as server:
        chunked = await Connection.open(server)
        await chunked.send(head(HF, "Transfer-Encoding: chunked"))
        status, headers, _ = await send_until_answered(chunked, b"10000\r\n" + b"\0" * 65536 + b"\r\n", most=1 << 30)
        assert status == 401 and headers["connection"] == "close"
        assert chunked.sent < 16 << 20
        chunked.close()


async def test_refused_small_body_keeps_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short unread body is drained, so the connection carries the caller's next (right) request."""
    async with server_with(monkeypatch, auth_tokens=[TOKEN]) as server:
        connection = await Connection.open(server)
        await connection.send(head(HF, "Authorization: Bearer wrong", f"Content-Length: {len(COFFEE)}") + COFFEE)
        status, headers, _ = await connection.response()
        assert status == 401 and "connection" not in headers
        right = head(HF, f"Authorization: Bearer {TOKEN}", f"Content-Length: {len(COFFEE)}") + COFFEE
        await connection.send(right)
        status, _, body = await connection.response()
        assert status == 200 and b"espresso" in body
        connection.close()


async def test_413_from_content_length_before_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    async with server_with(monkeypatch) as server:
        connection = await Connection.open(server)
        await connection.send(head(HF, f"Content-Length: {1 << 30}"))
        status, headers, body = await send_until_answered(connection, b"\0" * 65536, most=1 << 30)
        assert status == 413 and headers["connection"] == "close"
        assert f"over the limit of {LIMIT} bytes".encode() in body
        assert connection.sent < 16 << 20
        assert await connection.closed_by_server()
        connection.close()


async def test_413_while_a_chunked_body_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    async with server_with(monkeypatch) as server:
        connection = await Connection.open(server)
        await connection.send(head(HF, "Transfer-Encoding: chunked"))
        status, headers, body = await send_until_answered(
            connection, b"4000\r\n" + b"\0" * 16384 + b"\r\n", most=1 << 30
        )
        assert status == 413 and headers["connection"] == "close" and b"over the limit" in body
        assert connection.sent < 16 << 20
        assert await connection.closed_by_server()
        connection.close()


async def test_413_for_a_compressed_body_that_expands_past_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = gzip.compress(b"\0" * (LIMIT * 64))  # 4 MiB of zeros in a few KiB
    async with server_with(monkeypatch) as server:
        connection = await Connection.open(server)
        await connection.send(head(HF, "Content-Encoding: gzip", f"Content-Length: {len(bomb)}") + bomb)
        status, _, body = await connection.response()
        assert status == 413 and b"over the limit" in body
        connection.close()


# -- slow bodies, slow and huge headers, too many connections -----------------------------------------
async def test_408_for_a_body_that_stalls(monkeypatch: pytest.MonkeyPatch) -> None:
    async with server_with(monkeypatch, http_limits={"body_idle_timeout_s": 0.3}) as server:
        connection = await Connection.open(server)
        await connection.send(head(HF, f"Content-Length: {len(COFFEE)}") + COFFEE[:1000])
        started = time.monotonic()
        status, headers, body = await connection.response()
        assert status == 408 and headers["connection"] == "close" and b"did not arrive in time" in body
        assert time.monotonic() - started < 5
        assert await connection.closed_by_server()
        connection.close()


async def test_408_for_a_body_that_trickles(monkeypatch: pytest.MonkeyPatch) -> None:
    async with server_with(monkeypatch, http_limits={"body_idle_timeout_s": 0.5, "body_timeout_s": 1.0}) as server:
        connection = await Connection.open(server)
        await connection.send(head(HF, f"Content-Length: {len(COFFEE)}"))
        answer = asyncio.create_task(connection.response())
        for byte in COFFEE[:200]:  # one byte every 50 ms: never idle for long, never finished
            if answer.done():
                break
            await connection.send(bytes([byte]))
            await asyncio.sleep(0.05)
        status, _, _ = await answer
        assert status == 408
        connection.close()


async def test_408_for_headers_that_never_finish_and_idle_connections_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    async with server_with(monkeypatch, http_limits={"header_timeout_s": 0.3}) as server:
        slow = await Connection.open(server)
        await slow.send(b"POST /models/x HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        status, headers, _ = await slow.response()
        assert status == 408 and headers["connection"] == "close"
        silent = await Connection.open(server)  # connects and never sends a byte
        assert await silent.closed_by_server(timeout=5)
        slow.close()
        silent.close()


async def test_431_for_huge_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    async with server_with(monkeypatch) as server:
        connection = await Connection.open(server)
        await connection.send(b"GET /v2 HTTP/1.1\r\nHost: test\r\nX-Big: ")
        status, headers, body = await send_until_answered(connection, b"a" * 16384, most=64 << 20)
        assert status == 431 and headers["connection"] == "close" and b"headers are over" in body
        assert connection.sent < 1 << 20
        connection.close()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.005)


async def test_at_the_cap_an_idle_connection_makes_room_for_a_request(monkeypatch: pytest.MonkeyPatch) -> None:
    async with server_with(monkeypatch, http_limits={"max_connections": 3}) as server:
        protocol = server.http.protocol  # type: ignore[union-attr]
        idle = [await Connection.open(server) for _ in range(2)]
        used = await Connection.open(server)  # idle between two requests (keep-alive)
        await until(lambda: len(protocol.fresh) == 3)
        await used.send(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
        assert (await used.response())[0] == 200
        extra = await Connection.open(server)
        await extra.send(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
        status, _, _ = await extra.response()
        assert status == 200
        # The oldest that never sent a byte made room, not the one a client has used; the others are still open.
        assert await idle[0].closed_by_server() and protocol.evicted == [1]
        await used.send(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
        assert (await used.response())[0] == 200
        for connection in [*idle, used, extra]:
            connection.close()


async def test_503_past_the_connection_cap_when_every_connection_is_sending_a_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(door, "PARTIAL_HEADERS_GRACE_S", 60.0)
    async with server_with(monkeypatch, http_limits={"max_connections": 3}) as server:
        protocol = server.http.protocol  # type: ignore[union-attr]
        held = [await Connection.open(server) for _ in range(3)]
        for connection in held:
            await connection.send(b"GET /v2/health/live HTTP/1.1\r\n")  # part-way through its headers
        await until(lambda: len(protocol.partial) == 3)
        extra = await Connection.open(server)
        status, headers, body = await extra.response()
        assert status == 503 and headers["retry-after"] == "1" and b"too many connections" in body
        await held[0].send(b"Host: test\r\n\r\n")
        assert (await held[0].response())[0] == 200  # now idle between requests: room for the next
        again = await Connection.open(server)
        await again.send(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
        status, _, _ = await again.response()
        assert status == 200 and await held[0].closed_by_server()
        for connection in [*held, extra, again]:
            connection.close()


async def test_at_the_cap_headers_slower_than_the_grace_are_cut_with_408_before_a_pooled_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(door, "PARTIAL_HEADERS_GRACE_S", 0.0)
    async with server_with(monkeypatch, http_limits={"max_connections": 3}) as server:
        protocol = server.http.protocol  # type: ignore[union-attr]
        pooled = await Connection.open(server)
        await pooled.send(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
        assert (await pooled.response())[0] == 200
        slow = [await Connection.open(server) for _ in range(2)]
        for connection in slow:
            await connection.send(b"GET /v2/health/live HTTP/1.1\r\nX-Slow: ")
        await until(lambda: len(protocol.partial) == 2 and len(protocol.idle) == 1)
        extra = await Connection.open(server)
        await extra.send(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
        assert (await extra.response())[0] == 200
        status, headers, body = await slow[0].response()
        assert status == 408 and b"request headers were too slow while the server was full" in body
        assert headers["connection"] == "close"
        await pooled.send(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
        assert (await pooled.response())[0] == 200  # the client's pooled connection was kept
        for connection in [pooled, *slow, extra]:
            connection.close()


# -- slow senders yield their read slot to those waiting --------------------------------------------------
async def test_a_body_slower_than_the_minimum_rate_is_cut_with_408_while_others_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    big = 2 << 20  # over the small-body size: received in the shared read slots
    async with running_server(http_port="auto", max_message_bytes=4 << 20) as server:
        gate = server.engine.body_gate
        holders = [gate.slot(f"other-{i}") for i in range(gate.slots - 1)]
        for holder in holders:
            await holder.__aenter__()
        try:
            slow = await Connection.open(server)
            await slow.send(head(HF, f"Content-Length: {big}") + bytes(1000))
            answer = asyncio.create_task(slow.response())
            async with asyncio.timeout(10):
                while gate.busy < gate.slots:  # the slow body holds the last slot
                    await asyncio.sleep(0.005)
            waiting = await Connection.open(server)
            await waiting.send(head(HF, f"Content-Length: {big}"))  # waits for that slot
            while not answer.done():  # 1 KB a tick: far under the 16 KiB/s the server requires
                await slow.send(bytes(1000))
                await asyncio.wait({answer}, timeout=0.1)
            status, headers, body = await answer
            assert status == 408 and headers["connection"] == "close"
            assert b"under the 16384 B/s the server requires while others wait" in body
            # The waiting one got the slot: it is received, and answered (zeros are no image).
            await waiting.send(bytes(big))
            status, _, body = await waiting.response()
            assert status == 400 and b"inputs[0]" in body
        finally:
            for holder in holders:
                await holder.__aexit__(None, None, None)
        for connection in (slow, waiting):
            connection.close()


async def test_a_slow_body_keeps_its_slot_while_nobody_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    async with server_with(monkeypatch) as server:
        connection = await Connection.open(server)
        await connection.send(head(HF, f"Content-Length: {len(COFFEE)}"))
        started = time.monotonic()
        view = memoryview(COFFEE)
        for offset in range(0, len(COFFEE), len(COFFEE) // 15):  # ~2 s at a few KB a second
            await connection.send(view[offset : offset + len(COFFEE) // 15])
            await asyncio.sleep(0.12)
        status, _, body = await connection.response()
        assert time.monotonic() - started > 1.5  # past the grace the rate is judged after
        assert status == 200 and b"espresso" in body, body
        connection.close()


def test_lingering_after_a_refusal_when_the_client_is_already_gone_just_closes() -> None:
    """write_eof on a socket whose peer reset it raises ENOTCONN (seen under the trickled-bodies attack):
    the connection is closed, no traceback."""

    class GoneTransport:
        closed = False

        def is_closing(self) -> bool:
            return False

        def can_write_eof(self) -> bool:
            return True

        def write_eof(self) -> None:
            raise OSError(107, "Transport endpoint is not connected")

        def close(self) -> None:
            self.closed = True

    transport = GoneTransport()
    protocol = SimpleNamespace(transport=transport, _lingering=False)
    door.BoundedHttpToolsProtocol._drop_the_rest_then_close(protocol)  # type: ignore[arg-type]
    assert transport.closed and not protocol._lingering
