"""Hostile load (issue 12): the server in a child process, a normal caller in another, and the attacks.

Shared by tests/reliability/test_hostile_load.py (every row at a scale this machine runs in seconds) and
tests/reliability/attack.py (one row at a time, at test or full scale, by hand). Loopback only; every
wait is bounded.

- ChildServer: ``imgcls serve`` (serve_child.py) on port 0 with its own RSS, peak RSS (VmHWM, reset through
  /proc/PID/clear_refs before each row), threads and file descriptors read from /proc.
- NormalCaller: normal_caller.py in its own process, one small image every 0.25 s on its own connection
  per door, every call reported with its start on the (system-wide) monotonic clock.
- ROWS: each attack of the issue's table, as an async function of (Target, parameters) -> Outcomes, with
  its parameters at test and at full scale.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.environment import without_server_variables
from support.paths import ROOT

HERE = Path(__file__).resolve().parent
SERVE_CHILD = Path(os.environ.get("HOSTILE_SERVE_CHILD", HERE / "serve_child.py"))
NORMAL_CALLER = HERE / "normal_caller.py"
MIB = 1 << 20


@dataclass(frozen=True)
class ProcStatus:
    rss: int  # bytes
    peak: int  # VmHWM: the most RSS since start or the last reset_peak()
    threads: int
    fds: int


class ChildServer:
    """``imgcls serve`` in a child process on 127.0.0.1, gRPC on port 0 and HTTP on "auto"."""

    def __init__(self, log_path: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self.flags = list(flags)
        self.env = {**without_server_variables(), **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.grpc_port = 0
        self.http_port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 60.0) -> ChildServer:
        command = [sys.executable, str(SERVE_CHILD), "--host", "127.0.0.1", "--port", "0", "--http-port", "auto"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*command, *self.flags],
                stdout=subprocess.PIPE,
                stderr=log,
                env=self.env,
                cwd=ROOT,
            )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        buffered = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while b"\n" not in buffered:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    self.stop()
                    raise AssertionError(f"the server did not start:\n{self.log()[-3000:]}")
                if selector.select(min(remaining, 0.5)):
                    chunk = os.read(self.process.stdout.fileno(), 4096)
                    if not chunk:
                        continue
                    buffered += chunk
        line = buffered.split(b"\n", 1)[0].decode()
        ports = json.loads(line.split(" ", 1)[1])
        self.grpc_port, self.http_port = int(ports["grpc"]), int(ports["http"] or 0)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> ProcStatus:
        fields: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    number = int(value.split()[0])
                    fields[key] = number * 1024 if key != "Threads" else number
        fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        return ProcStatus(fields["VmRSS"], fields["VmHWM"], fields["Threads"], fds)

    def reset_peak(self) -> None:
        """VmHWM back to the current RSS (Linux: 5 > /proc/PID/clear_refs)."""
        with open(f"/proc/{self.pid}/clear_refs", "w") as refs:
            refs.write("5")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


@dataclass(frozen=True)
class NormalCall:
    door: str
    start: float
    seconds: float
    code: str
    top1: Any
    details: str = ""
    request_id: str = ""


class NormalCaller:
    """normal_caller.py in its own process; its calls collected by a reader thread."""

    def __init__(self, grpc_target: str, http_address: str | None = None, token: str | None = None) -> None:
        self.args = ["--grpc", grpc_target]
        if http_address:
            self.args += ["--http", http_address]
        if token:
            self.args += ["--token", token]
        self.calls: list[NormalCall] = []
        self._lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> NormalCaller:
        self.process = subprocess.Popen(
            [sys.executable, str(NORMAL_CALLER), *self.args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=without_server_variables(),
            cwd=ROOT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            entry = json.loads(line)
            with self._lock:
                self.calls.append(NormalCall(**entry))

    def between(self, start: float, end: float, door: str | None = None) -> list[NormalCall]:
        """Calls that started in [start, end) (and have been answered)."""
        with self._lock:
            return [c for c in self.calls if start <= c.start < end and (door is None or c.door == door)]

    def wait_answered(self, doors: int, after: float, timeout_s: float = 30.0) -> None:
        """Until every door has answered a call started after `after` (polling, bounded)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                seen = {c.door for c in self.calls if c.start >= after}
            if len(seen) >= doors:
                return
            time.sleep(0.05)
        raise AssertionError(f"the normal caller got no answer within {timeout_s}s")

    def stop(self) -> None:
        if self.process is None:
            return
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


# --- what the attackers saw ------------------------------------------------------------------------


@dataclass
class Outcomes:
    """How the attacker's calls ended: code name -> count, with the seconds each refusal took."""

    codes: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)  # one message per code, for failure reports
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, code: str, seconds: float, message: str = "") -> None:
        self.codes[code] += 1
        self.seconds.setdefault(code, []).append(seconds)
        if message and code not in self.messages:
            self.messages[code] = message[:300]

    def slowest(self, code: str) -> float:
        return max(self.seconds.get(code, [0.0]))

    @property
    def total(self) -> int:
        return sum(self.codes.values())


@dataclass(frozen=True)
class Target:
    server: ChildServer
    token: str | None

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []


Attack = Callable[[Target, dict[str, Any]], Awaitable[Outcomes]]


@dataclass(frozen=True)
class Row:
    name: str
    what: str  # the words
    attack: Attack
    test: dict[str, Any]
    full: dict[str, Any]


@dataclass
class RowReport:
    row: str
    scale: str
    idle: ProcStatus
    start: ProcStatus  # as the row began (what earlier rows left)
    peak_rss: int
    after: ProcStatus
    outcomes: Outcomes
    normal: list[NormalCall]
    seconds: float

    @property
    def growth(self) -> int:
        """Peak RSS over the RSS the row began with."""
        return self.peak_rss - self.start.rss

    def normal_seconds(self, door: str | None = None) -> list[float]:
        return [c.seconds for c in self.normal if door is None or c.door == door]

    def summary(self) -> dict[str, Any]:
        latencies = self.normal_seconds()
        return {
            "row": self.row,
            "scale": self.scale,
            "seconds": round(self.seconds, 1),
            "idle_rss_mib": round(self.idle.rss / MIB),
            "start_rss_mib": round(self.start.rss / MIB),
            "peak_rss_mib": round(self.peak_rss / MIB),
            "after_rss_mib": round(self.after.rss / MIB),
            "attacker": dict(self.outcomes.codes),
            "attacker_slowest_s": {k: round(max(v), 2) for k, v in self.outcomes.seconds.items()},
            "attacker_p50_s": {k: round(percentile(v, 50), 2) for k, v in self.outcomes.seconds.items()},
            "attacker_messages": self.outcomes.messages,
            "extra": self.outcomes.extra,
            "normal_calls": len(latencies),
            "normal_codes": dict(Counter(c.code for c in self.normal)),
            "normal_failures": sorted({f"{c.door} {c.code}: {c.details}" for c in self.normal if c.code != "OK"})[:5],
            "normal_p50_s": round(percentile(latencies, 50), 3),
            "normal_p99_s": round(percentile(latencies, 99), 3),
            # the slowest, with the gRPC ones' request_id (their line in the server's debug log)
            "normal_slowest": [
                f"{c.door} {c.request_id} {c.seconds:.2f}s"
                for c in sorted(self.normal, key=lambda c: c.seconds, reverse=True)[:3]
            ],
            "threads": [self.idle.threads, self.after.threads],
            "fds": [self.idle.fds, self.after.fds],
        }


async def measure(row: Row, scale: str, target: Target, caller: NormalCaller, idle: ProcStatus) -> RowReport:
    """Run one row against the server with the normal caller beside it; peak RSS over the row."""
    server = target.server
    server.reset_peak()
    start = server.status()
    started = time.monotonic()
    outcomes = await row.attack(target, row.test if scale == "test" else row.full)
    ended = time.monotonic()
    peak = server.status().peak
    # Calls that started during the attack, answered by now or soon (each is bounded by its timeout).
    await _until(lambda: _answered(caller, started, ended), timeout_s=35.0)
    after = server.status()
    normal = caller.between(started, ended)
    return RowReport(row.name, scale, idle, start, peak, after, outcomes, normal, ended - started)


def _answered(caller: NormalCaller, started: float, ended: float) -> bool:
    # The call in flight at `ended` has been reported once one starting after `ended` has.
    return bool(caller.between(ended, math.inf))


async def _until(condition: Callable[[], bool], *, timeout_s: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(step)
    return True


# --- the attacks ------------------------------------------------------------------------------------

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 128 * MIB),
    ("grpc.max_send_message_length", 128 * MIB),
    # Its own connection per channel (channels to one target would share one otherwise): one owner each.
    ("grpc.use_local_subchannel_pool", 1),
]
CLASSIFY = "/imgcls.v1.ImageClassifierService/Classify"
CLASSIFY_STREAM = "/imgcls.v1.ImageClassifierService/ClassifyStream"
LIST_MODELS = "/imgcls.v1.ImageClassifierService/ListModels"
GET_MODEL = "/imgcls.v1.ImageClassifierService/GetModel"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
SECRET = "s3cr3t-hostile-token"  # the server's accepted token; never to appear in its log


def _grpc() -> Any:
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    import grpc

    return grpc


def _pb() -> Any:
    from imgcls.v1 import classifier_pb2

    return classifier_pb2


def _image(name: str) -> bytes:
    from support.paths import IMAGES

    return (IMAGES / name).read_bytes()


def channel(target: Target) -> Any:
    return _grpc().aio.insecure_channel(target.server.target, options=CHANNEL_OPTIONS)


async def unary(
    ch: Any,
    method: str,
    payload: bytes,
    *,
    target: Target,
    timeout: float,
    compression: Any = None,
    metadata: Any = None,
) -> tuple[str, float, str, bytes]:
    """One unary call of pre-serialized bytes: (code name, seconds, details, response bytes)."""
    grpc = _grpc()
    call = ch.unary_unary(method)
    started = time.monotonic()
    try:
        response = await call(
            payload,
            timeout=timeout,
            metadata=target.metadata if metadata is None else metadata,
            compression=compression,
        )
        return "OK", time.monotonic() - started, "", response
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, time.monotonic() - started, exc.details() or "", b""


async def warm_up(target: Target, rounds: int = 3) -> None:
    """Full batches of large JPEGs, so ONNX Runtime's arenas and the decode threads' heaps are at their working
    size before idle RSS is taken (otherwise the first row pays for them)."""
    pb = _pb()
    payload = _classify_payload([pb.Input(image=_image("coffee_1920x1280.jpg"))])
    async with channel(target) as ch:
        for _ in range(rounds):
            await asyncio.gather(*(unary(ch, CLASSIFY, payload, target=target, timeout=60) for _ in range(16)))
    if target.server.http_port:  # and a JSON tensor, large enough for the thread JSON is parsed on
        body = _json_tensor(1, 4)
        head = _http_head(
            target,
            "/v2/models/efficientnet-lite0/infer",
            {"content-type": "application/json", "content-length": str(len(body))},
        )
        status = await _post_until_answered(target, head, body, 60)
        assert status == "HTTP 200", status


def _classify_payload(inputs: list[Any], **fields: Any) -> bytes:
    pb = _pb()
    return pb.ClassifyRequest(inputs=inputs, parameters=pb.Parameters(top_k=1), **fields).SerializeToString()


async def _until_deadline(ch: Any, payload: bytes, target: Target, deadline: float, outcomes: Outcomes) -> None:
    while time.monotonic() < deadline:
        code, seconds, details, _ = await unary(ch, CLASSIFY, payload, target=target, timeout=60)
        outcomes.add(code, seconds, details)


async def large_frames(target: Target, p: dict[str, Any]) -> Outcomes:
    """Many callers, each on its own connection, sending requests of raw RGB frames in a loop."""
    pb = _pb()
    size = p["width"] * p["height"] * 3
    frame = (bytes(range(256)) * (size // 256 + 1))[:size]
    raw = pb.Input(raw=pb.RawImage(width=p["width"], height=p["height"], format=pb.PIXEL_FORMAT_RGB8, data=frame))
    payload = _classify_payload([raw] * p["frames"])
    del frame, raw
    outcomes = Outcomes()
    outcomes.extra["request_mib"] = round(len(payload) / MIB, 1)
    deadline = time.monotonic() + p["duration"]
    channels = [channel(target) for _ in range(p["callers"])]
    try:
        await asyncio.gather(*(_until_deadline(ch, payload, target, deadline, outcomes) for ch in channels))
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    return outcomes


async def many_jpegs(target: Target, p: dict[str, Any]) -> Outcomes:
    """Concurrent calls, each of many large JPEGs, kept in flight for the duration."""
    pb = _pb()
    payload = _classify_payload([pb.Input(image=_image("coffee_1920x1280.jpg"))] * p["images"])
    outcomes = Outcomes()
    outcomes.extra["request_mib"] = round(len(payload) / MIB, 1)
    deadline = time.monotonic() + p["duration"]
    channels = [channel(target) for _ in range(p["connections"])]
    try:
        await asyncio.gather(
            *(
                _until_deadline(channels[i % len(channels)], payload, target, deadline, outcomes)
                for i in range(p["calls"])
            )
        )
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    return outcomes


async def unread_streams(target: Target, p: dict[str, Any]) -> Outcomes:
    """ClassifyStream calls that each write frames of a large JPEG and never read an answer."""
    grpc = _grpc()
    pb = _pb()
    frame = pb.ClassifyStreamRequest(inputs=[pb.Input(image=_image("coffee_1920x1280.jpg"))])
    outcomes = Outcomes()
    channels = [channel(target) for _ in range(p["connections"])]
    calls: list[Any] = []
    written: Counter[int] = Counter()

    async def writer(index: int) -> None:
        ch = channels[index % len(channels)]
        call = ch.stream_stream(
            CLASSIFY_STREAM,
            request_serializer=pb.ClassifyStreamRequest.SerializeToString,
            response_deserializer=pb.ClassifyStreamResponse.FromString,
        )(metadata=target.metadata, timeout=120)
        calls.append(call)
        for _ in range(p["frames"]):
            await call.write(frame)  # waits while the server holds the stream back (flow control)
            written[index] += 1

    started = time.monotonic()
    tasks = [asyncio.create_task(writer(i)) for i in range(p["streams"])]
    await asyncio.wait(tasks, timeout=p["hold"])
    # Streams the server refused have ended on their own (RESOURCE_EXHAUSTED at once); the rest are cut now.
    for call in calls:
        if call.done():
            code = await call.code()
            outcomes.add(code.name, time.monotonic() - started, await call.details() or "")
        else:
            outcomes.add("OPEN (cancelled by the attacker)", time.monotonic() - started)
            call.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(ch.close() for ch in channels))
    outcomes.extra["frames_written"] = sum(written.values())
    del grpc
    return outcomes


async def unary_flood(target: Target, p: dict[str, Any]) -> Outcomes:
    """Thousands of concurrent unary calls of one large JPEG, all sent at once."""
    pb = _pb()
    payload = _classify_payload([pb.Input(image=_image("coffee_1920x1280.jpg"))])
    outcomes = Outcomes()
    channels = [channel(target) for _ in range(p["connections"])]
    try:
        results = await asyncio.gather(
            *(
                unary(channels[i % len(channels)], CLASSIFY, payload, target=target, timeout=p["timeout"])
                for i in range(p["calls"])
            )
        )
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    for code, seconds, details, _ in results:
        outcomes.add(code, seconds, details)
    return outcomes


async def tokenless_gzip(target: Target, p: dict[str, Any]) -> Outcomes:
    """Calls WITHOUT a token, gzip-compressed, each an image of zeros that expands to zeros_mib."""
    grpc = _grpc()
    pb = _pb()
    payload = _classify_payload([pb.Input(image=bytes(p["zeros_mib"] * MIB))])
    outcomes = Outcomes()
    channels = [channel(target) for _ in range(p["connections"])]
    try:
        results = await asyncio.gather(
            *(
                unary(
                    channels[i % len(channels)],
                    CLASSIFY,
                    payload,
                    target=target,
                    timeout=60,
                    compression=grpc.Compression.Gzip,
                    metadata=[],
                )
                for i in range(p["calls"])
            )
        )
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    for code, seconds, details, _ in results:
        outcomes.add(code, seconds, details)
    return outcomes


async def stalled_messages(target: Target, p: dict[str, Any]) -> Outcomes:
    """Raw HTTP/2 calls whose length prefix claims claim_mib, sending what the server lets in of send_mib,
    never finishing. Connections stay open for `hold` seconds (the server must let go of memory anyway)."""
    from reliability.raw_h2 import RawH2

    header = b"\x00" + (p["claim_mib"] * MIB).to_bytes(4, "big")
    body = header + bytes(p["send_mib"] * MIB)
    outcomes = Outcomes()
    started = time.monotonic()
    deadline = started + p["hold"]
    connections = [RawH2("127.0.0.1", target.server.grpc_port) for _ in range(p["connections"])]
    sent = 0
    try:
        for conn in connections:
            await conn.__aenter__()
        streams = []
        for i in range(p["calls"]):
            conn = connections[i % len(connections)]
            streams.append((conn, conn.open(CLASSIFY, target.metadata)))
        for conn in connections:
            await conn.flush()
        results = await asyncio.gather(*(conn.send(sid, body, end=False, deadline=deadline) for conn, sid in streams))
        sent = sum(results)
        await asyncio.gather(*(c.wait_ended([s for cc, s in streams if cc is c], deadline) for c in connections))
        for conn, sid in streams:
            state = conn.streams[sid]
            code = state.code or "OPEN (no answer while the attacker held on)"
            outcomes.add(code, (state.ended or time.monotonic()) - state.opened, state.message)
    finally:
        for conn in connections:
            await conn.close()
    outcomes.extra["sent_mib"] = round(sent / MIB)
    return outcomes


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited protobuf field, written by hand (so it may hold what a library would refuse)."""

    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    return varint(number << 3 | 2) + varint(len(data)) + data


async def huge_request_id(target: Target, p: dict[str, Any]) -> Outcomes:
    """On one connection that never opens its flow-control window: gzip calls whose message expands to a
    request_id (or a reflection request) of id_mib; nothing large may come back or stay pinned."""
    from reliability.raw_h2 import RawH2, gzip_frame

    pb = _pb()
    huge = "x" * (p["id_mib"] * MIB)
    image = pb.Input(image=_image("cat.jpg"))
    # In this order: reflection's streams take their read slots before the ClassifyStream ones, which then
    # hold them (waiting for a second message that never comes) until the attacker leaves.
    messages = {
        CLASSIFY: gzip_frame(pb.ClassifyRequest(inputs=[image], request_id=huge).SerializeToString()),
        REFLECTION: gzip_frame(_field(4, huge.encode())),  # ServerReflectionRequest.file_containing_symbol
        CLASSIFY_STREAM: gzip_frame(pb.ClassifyStreamRequest(inputs=[image], request_id=huge).SerializeToString()),
    }
    del huge
    counts = {CLASSIFY: p["classify"], REFLECTION: p["reflection"], CLASSIFY_STREAM: p["streams"]}
    outcomes = Outcomes()
    outcomes.extra["wire_kib"] = {k.rsplit("/", 1)[1]: len(v) // 1024 for k, v in messages.items()}
    before = target.server.status().rss
    started = time.monotonic()
    deadline = started + p["hold"]
    async with RawH2("127.0.0.1", target.server.grpc_port, read_window=0) as conn:
        streams = []
        for method, count in counts.items():
            for _ in range(count):
                metadata = [] if method == REFLECTION else target.metadata
                streams.append((method, conn.open(method, metadata, gzip_encoded=True)))
        await conn.flush()
        ends = {CLASSIFY: True, CLASSIFY_STREAM: False, REFLECTION: False}  # streams stay open
        await asyncio.gather(*(conn.send(s, messages[m], end=ends[m], deadline=deadline) for m, s in streams))
        await conn.wait_ended([s for _, s in streams], deadline)
        # Still connected: what the server holds for this connection (given a moment to hand freed heap back).
        settle = time.monotonic() + p["settle"]
        rss = target.server.status().rss
        while rss > before + p["let_go_mib"] * MIB and time.monotonic() < settle:
            await asyncio.sleep(0.1)
            rss = target.server.status().rss
        outcomes.extra["held_mib_while_connected"] = round((rss - before) / MIB)
        for method, sid in streams:
            state = conn.streams[sid]
            code = state.code or "OPEN (answer held back by the closed window)"
            outcomes.add(
                f"{method.rsplit('/', 1)[1]}: {code}", (state.ended or time.monotonic()) - state.opened, state.message
            )
        outcomes.extra["largest_answer_bytes"] = max(
            len(conn.streams[s].data) + sum(len(k) + len(v) for k, v in conn.streams[s].headers) for _, s in streams
        )
    return outcomes


async def rapid_reset(target: Target, p: dict[str, Any]) -> Outcomes:
    """HEADERS + RST_STREAM pairs as fast as one connection takes them, while bystanders on other
    connections make ordinary calls (none may fail)."""
    from reliability.raw_h2 import RawH2

    pb = _pb()
    payload = _classify_payload([pb.Input(image=_image("cat.jpg"))])
    outcomes = Outcomes()
    bystanders: Counter[str] = Counter()
    stop = asyncio.Event()

    async def bystander(ch: Any) -> None:
        while not stop.is_set():
            code, _seconds, details, _ = await unary(ch, CLASSIFY, payload, target=target, timeout=30)
            bystanders[code] += 1
            if code != "OK":
                outcomes.messages.setdefault(f"bystander {code}", details)

    channels = [channel(target) for _ in range(p["bystanders"])]
    tasks = [asyncio.create_task(bystander(ch)) for ch in channels]
    pairs = 0
    started = time.monotonic()
    try:
        while pairs < p["pairs"] and time.monotonic() - started < p["duration"]:
            async with RawH2("127.0.0.1", target.server.grpc_port) as conn:
                while pairs < p["pairs"] and time.monotonic() - started < p["duration"] and not conn.closed.is_set():
                    for _ in range(100):
                        try:
                            conn.reset(conn.open(CLASSIFY, target.metadata))
                        except Exception:  # the server sent GOAWAY or ran out of stream ids: a new connection
                            break
                        pairs += 1
                    await conn.flush()
                    await asyncio.sleep(0)  # the bystanders share this event loop
                outcomes.add(
                    f"connection ended (GOAWAY {conn.goaway})" if conn.goaway is not None else "connection kept", 0.0
                )
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(ch.close() for ch in channels))
    outcomes.extra["pairs"] = pairs
    outcomes.extra["pairs_per_s"] = round(pairs / max(time.monotonic() - started, 1e-9))
    outcomes.extra["bystanders"] = dict(bystanders)
    return outcomes


async def bad_auth_header(target: Target, p: dict[str, Any]) -> Outcomes:
    """Calls whose authorization header carries a byte that is not UTF-8 (the real token, and another)."""
    from reliability.raw_h2 import RawH2

    pb = _pb()
    body = _grpc_frame(_classify_payload([pb.Input(image=_image("cat.jpg"))]))
    values = [f"Bearer {SECRET}".encode() + b"\xff", b"Bearer attacker-marker-\xc3\x28-token"]
    outcomes = Outcomes()
    deadline = time.monotonic() + p["timeout"]
    async with RawH2("127.0.0.1", target.server.grpc_port) as conn:
        streams = []
        for i in range(p["calls"]):
            sid = conn.open(CLASSIFY, [("authorization", values[i % 2])])
            conn.send_some(sid, memoryview(body), end=True)
            streams.append(sid)
        await conn.flush()
        await conn.wait_ended(streams, deadline)
        for sid in streams:
            state = conn.streams[sid]
            outcomes.add(state.code or "no answer", (state.ended or time.monotonic()) - state.opened, state.message)
    return outcomes


def _grpc_frame(message: bytes) -> bytes:
    from reliability.raw_h2 import grpc_frame

    return grpc_frame(message)


async def invalid_utf8(target: Target, p: dict[str, Any]) -> Outcomes:
    """String fields that are not UTF-8: request_id and model of Classify, a stream frame's request_id,
    GetModel's name, ModelInfer's id."""
    grpc = _grpc()
    pb = _pb()
    bad = b"\xff\xfe\xc3\x28"
    image = pb.Input(image=_image("cat.jpg")).SerializeToString()
    payloads = {
        "Classify request_id": (CLASSIFY, _field(2, image) + _field(4, b"id-" + bad)),
        "Classify model": (CLASSIFY, _field(1, bad) + _field(2, image)),
        "GetModel name": (GET_MODEL, _field(1, bad)),
        "ModelInfer id": (MODEL_INFER, _field(1, b"efficientnet-lite0_image") + _field(3, bad)),
    }
    outcomes = Outcomes()
    async with channel(target) as ch:
        for _ in range(p["rounds"]):
            for name, (method, payload) in payloads.items():
                code, seconds, details, _ = await unary(ch, method, payload, target=target, timeout=30)
                outcomes.add(f"{name}: {code}", seconds, details)
            call = ch.stream_stream(CLASSIFY_STREAM)(metadata=target.metadata, timeout=30)
            await call.write(_field(2, image) + _field(4, b"frame-" + bad))
            await call.done_writing()
            started = time.monotonic()
            try:
                async for response in call:
                    answer = pb.ClassifyStreamResponse.FromString(response)
                    code = grpc.StatusCode.OK.name if answer.status.code == 0 else _code_name(answer.status.code)
                    outcomes.add(f"ClassifyStream frame request_id: frame {code}", time.monotonic() - started)
                outcomes.add("ClassifyStream frame request_id: stream OK", time.monotonic() - started)
            except grpc.aio.AioRpcError as exc:
                outcomes.add(f"ClassifyStream frame request_id: stream {exc.code().name}", time.monotonic() - started)
    return outcomes


def _code_name(number: int) -> str:
    from reliability.raw_h2 import GRPC_CODES

    return GRPC_CODES.get(number, str(number))


async def install_paths(target: Target, p: dict[str, Any]) -> Outcomes:
    """ListModels and GetModel (gRPC, HTTP), from a caller without a token where the server allows it:
    nothing that names the server's filesystem may come back."""
    import urllib.request

    outcomes = Outcomes()
    answers: dict[str, bytes] = {}
    async with channel(target) as ch:
        for name, method, payload in (("ListModels", LIST_MODELS, b""), ("GetModel", GET_MODEL, b"")):
            code, seconds, details, response = await unary(ch, method, payload, target=target, timeout=30)
            outcomes.add(f"{name}: {code}", seconds, details)
            answers[name] = response

    def http_get(path: str) -> bytes:
        request = urllib.request.Request(f"http://{target.server.http_address}{path}", headers=_http_auth(target))
        with urllib.request.urlopen(request, timeout=30) as answer:
            return bytes(answer.read())

    for path in ("/v1/models", "/v1/models/efficientnet-lite0", "/v2/models/efficientnet-lite0/config"):
        started = time.monotonic()
        answers[path] = await asyncio.to_thread(http_get, path)
        outcomes.add(f"GET {path}: OK", time.monotonic() - started)
    forbidden = [str(ROOT).encode(), str(Path.home()).encode(), b"/server/imgcls", b"/work/"]
    outcomes.extra["leaks"] = sorted(k for k, v in answers.items() if any(f in v for f in forbidden))
    return outcomes


def _http_auth(target: Target) -> dict[str, str]:
    return {"authorization": f"Bearer {target.token}"} if target.token else {}


# --- HTTP attacks (raw sockets: what no HTTP library would send) ---------------------------------------


async def _read_status(reader: asyncio.StreamReader, timeout: float) -> str:
    """The response's status code, 'closed' when the server closed without one, 'none' on timeout."""
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except TimeoutError:
        return "none"
    except (ConnectionError, OSError):
        return "reset"
    if not line:
        return "closed"
    parts = line.split()
    return f"HTTP {parts[1].decode()}" if len(parts) > 1 else "closed"


def _http_head(target: Target, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"host: {target.server.http_address}"]
    lines += [f"{k}: {v}" for k, v in {**_http_auth(target), **headers}.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _connect(target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", target.server.http_port, limit=1 << 20)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def http_slow_body(target: Target, p: dict[str, Any]) -> Outcomes:
    """POSTs whose body trickles in (a few bytes at a time) for longer than the server allows."""
    outcomes = Outcomes()
    head = _http_head(
        target,
        "/models/efficientnet-lite0",
        {"content-type": "image/jpeg", "content-length": str(p["body_kib"] * 1024)},
    )

    async def one() -> None:
        started = time.monotonic()
        reader, writer = await _connect(target)
        try:
            writer.write(head)
            status_task = asyncio.create_task(_read_status(reader, p["hold"]))
            sent = 0
            while not status_task.done() and sent < p["body_kib"] * 1024 - 16:
                with contextlib.suppress(ConnectionError, OSError):
                    writer.write(b"\xff" * 16)
                    await writer.drain()
                sent += 16
                await asyncio.wait({status_task}, timeout=p["interval"])
            status = await status_task
            outcomes.add(status, time.monotonic() - started)
        finally:
            await _close(writer)

    await asyncio.gather(*(one() for _ in range(p["connections"])))
    return outcomes


async def http_huge_headers(target: Target, p: dict[str, Any]) -> Outcomes:
    """Requests whose headers go on for header_kib (many headers of 8 KiB each)."""
    outcomes = Outcomes()
    filler = "a" * 8190

    async def one(index: int) -> None:
        started = time.monotonic()
        reader, writer = await _connect(target)
        try:
            writer.write(b"POST /models/efficientnet-lite0 HTTP/1.1\r\nhost: x\r\n")
            status_task = asyncio.create_task(_read_status(reader, p["timeout"]))
            for i in range(p["header_kib"] // 8):
                if status_task.done():
                    break
                try:
                    writer.write(f"x-filler-{i}: {filler}\r\n".encode())
                    await writer.drain()
                except (ConnectionError, OSError):
                    break
            outcomes.add(await status_task, time.monotonic() - started)
        finally:
            await _close(writer)

    await asyncio.gather(*(one(i) for i in range(p["connections"])))
    return outcomes


async def http_body_over_limit(target: Target, p: dict[str, Any]) -> Outcomes:
    """Bodies over the limit: a Content-Length that says so, a chunked body that grows past it, and a
    gzip body that expands past it."""
    import gzip

    outcomes = Outcomes()
    limit = p["limit_mib"] * MIB
    expanding = gzip.compress(bytes(limit + MIB), compresslevel=9)
    path = "/models/efficientnet-lite0"

    async def declared() -> None:
        started = time.monotonic()
        reader, writer = await _connect(target)
        try:
            writer.write(_http_head(target, path, {"content-length": str(limit + MIB)}))
            status_task = asyncio.create_task(_read_status(reader, p["timeout"]))
            chunk = bytes(1 << 16)
            for _ in range((limit + MIB) // len(chunk)):
                if status_task.done():
                    break
                try:
                    writer.write(chunk)
                    await writer.drain()
                except (ConnectionError, OSError):
                    break
                await asyncio.sleep(0)  # a client reading its answer while it sends
            outcomes.add(f"declared: {await status_task}", time.monotonic() - started)
        finally:
            await _close(writer)

    async def chunked() -> None:
        started = time.monotonic()
        reader, writer = await _connect(target)
        try:
            writer.write(_http_head(target, path, {"transfer-encoding": "chunked"}))
            status_task = asyncio.create_task(_read_status(reader, p["timeout"]))
            chunk = b"%x\r\n" % (1 << 16) + bytes(1 << 16) + b"\r\n"
            for _ in range((limit + MIB) // (1 << 16)):
                if status_task.done():
                    break
                try:
                    writer.write(chunk)
                    await writer.drain()
                except (ConnectionError, OSError):
                    break
                await asyncio.sleep(0)
            outcomes.add(f"chunked: {await status_task}", time.monotonic() - started)
        finally:
            await _close(writer)

    async def expands() -> None:
        started = time.monotonic()
        reader, writer = await _connect(target)
        try:
            headers = {"content-length": str(len(expanding)), "content-encoding": "gzip"}
            writer.write(_http_head(target, path, headers) + expanding)
            outcomes.add(f"gzip: {await _read_status(reader, p['timeout'])}", time.monotonic() - started)
        finally:
            await _close(writer)

    kinds = [declared, chunked, expands]
    await asyncio.gather(*(kinds[i % 3]() for i in range(p["connections"])))
    return outcomes


async def http_large_bodies(target: Target, p: dict[str, Any]) -> Outcomes:
    """Many connections, each POSTing large bodies (under the limit) in a loop."""
    outcomes = Outcomes()
    body = bytes(p["body_mib"] * MIB)
    head = _http_head(
        target, "/models/efficientnet-lite0", {"content-type": "image/jpeg", "content-length": str(len(body))}
    )
    deadline = time.monotonic() + p["duration"]

    async def one() -> None:
        while time.monotonic() < deadline:
            started = time.monotonic()
            reader, writer = await _connect(target)
            try:
                writer.write(head)
                status_task = asyncio.create_task(_read_status(reader, 60))
                view = memoryview(body)
                for offset in range(0, len(body), 1 << 20):
                    if status_task.done():
                        break
                    try:
                        writer.write(view[offset : offset + (1 << 20)])
                        await writer.drain()
                    except (ConnectionError, OSError):
                        break
                outcomes.add(await status_task, time.monotonic() - started)
            finally:
                await _close(writer)

    await asyncio.gather(*(one() for _ in range(p["connections"])))
    return outcomes


async def http_tokenless_gzip(target: Target, p: dict[str, Any]) -> Outcomes:
    """HTTP POSTs without a token whose gzip body expands to zeros_mib: refused from the headers."""
    import gzip

    outcomes = Outcomes()
    body = gzip.compress(bytes(p["zeros_mib"] * MIB), compresslevel=9)
    head = (
        f"POST /models/efficientnet-lite0 HTTP/1.1\r\nhost: x\r\ncontent-encoding: gzip\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()

    async def one() -> None:
        started = time.monotonic()
        reader, writer = await _connect(target)
        try:
            writer.write(head + body)
            outcomes.add(await _read_status(reader, 30), time.monotonic() - started)
        finally:
            await _close(writer)

    await asyncio.gather(*(one() for _ in range(p["calls"])))
    return outcomes


def _room_for(connections: int) -> int:
    """Raise this process's open-file soft limit to hold `connections` sockets; how many it may open."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        top = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return connections if soft == resource.RLIM_INFINITY else min(connections, soft - 256)


async def _hold_idle(port: int, p: dict[str, Any], partial: bytes) -> Outcomes:
    """p["connections"] TCP connections to port: even ones send nothing, odd ones `partial`; held p["hold"] s."""
    outcomes = Outcomes()
    started = time.monotonic()
    count = _room_for(p["connections"])
    outcomes.extra["connections"] = count
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failed = 0
    for i in range(count):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            failed += 1
            continue
        if i % 2:
            writer.write(partial)
        opened.append((reader, writer))
    outcomes.extra["opened_s"] = round(time.monotonic() - started, 2)
    statuses = await asyncio.gather(*(_read_status(r, p["hold"] - (time.monotonic() - started)) for r, _ in opened))
    for status in statuses:
        outcomes.add(status if status != "none" else "still open (attacker left)", time.monotonic() - started)
    if failed:
        outcomes.add("connect failed", 0.0)
    await asyncio.gather(*(_close(w) for _, w in opened))
    return outcomes


async def http_idle_connections(target: Target, p: dict[str, Any]) -> Outcomes:
    """Many connections that send nothing, or half a request line, and wait."""
    return await _hold_idle(target.server.http_port, p, b"POST /models/efficientnet-lite0 HT")


async def grpc_idle_connections(target: Target, p: dict[str, Any]) -> Outcomes:
    """Many connections to the gRPC port that send nothing, or half the HTTP/2 preface, and wait."""
    return await _hold_idle(target.server.grpc_port, p, b"PRI * HTTP/2.0\r\n")


async def _post_until_answered(target: Target, head: bytes, body: bytes, timeout: float) -> str:
    """Send head and body (as a client reading its answer while it sends would); the status."""
    reader, writer = await _connect(target)
    try:
        writer.write(head)
        status_task = asyncio.create_task(_read_status(reader, timeout))
        view = memoryview(body)
        for offset in range(0, len(body), 1 << 20):
            if status_task.done():
                break
            try:
                writer.write(view[offset : offset + (1 << 20)])
                await writer.drain()
            except (ConnectionError, OSError):
                break
        return await status_task
    finally:
        await _close(writer)


async def http_trickled_bodies(target: Target, p: dict[str, Any]) -> Outcomes:
    """Bodies that promise claim_mib and trickle rate_kib a second."""
    outcomes = Outcomes()
    head = _http_head(
        target,
        "/models/efficientnet-lite0",
        {"content-type": "image/jpeg", "content-length": str(p["claim_mib"] * MIB)},
    )
    piece = b"\xff" * (p["rate_kib"] * 1024)

    async def one() -> None:
        started = time.monotonic()
        reader, writer = await _connect(target)
        try:
            writer.write(head)
            status_task = asyncio.create_task(_read_status(reader, p["hold"]))
            while not status_task.done():
                with contextlib.suppress(ConnectionError, OSError):
                    writer.write(piece)
                    await writer.drain()
                await asyncio.wait({status_task}, timeout=1.0)
            outcomes.add(await status_task, time.monotonic() - started)
        finally:
            await _close(writer)

    await asyncio.gather(*(one() for _ in range(p["connections"])))
    return outcomes


def _json_tensor(batch: int, digits: int) -> bytes:
    import numpy as np

    values = np.random.default_rng(batch).random(batch * 3 * 224 * 224).round(digits)
    # The text a client's json.dumps writes for these floats; built by hand, as json.dumps takes seconds.
    data = ",".join(np.char.mod(f"%.{digits}f", values))
    tensor = f'{{"name":"pixel_values","shape":[{batch},3,224,224],"datatype":"FP32","data":[{data}]}}'
    return f'{{"inputs":[{tensor}]}}'.encode()


async def http_json_numbers(target: Target, p: dict[str, Any]) -> Outcomes:
    """v2 JSON requests whose tensor is written as JSON numbers: `calls` over the JSON limit (batch big_batch),
    as many under it (batch small_batch), at once."""
    outcomes = Outcomes()
    path = "/v2/models/efficientnet-lite0/infer"
    bodies = {"over": _json_tensor(p["big_batch"], 7), "under": _json_tensor(p["small_batch"], 4)}
    outcomes.extra["mb"] = {k: round(len(v) / 1e6, 1) for k, v in bodies.items()}

    async def one(kind: str) -> None:
        body = bodies[kind]
        head = _http_head(target, path, {"content-type": "application/json", "content-length": str(len(body))})
        started = time.monotonic()
        status = await _post_until_answered(target, head, body, p["timeout"])
        outcomes.add(f"{kind}: {status}", time.monotonic() - started)

    await asyncio.gather(*(one(kind) for _ in range(p["calls"]) for kind in bodies))
    return outcomes


async def http_json_base64(target: Target, p: dict[str, Any]) -> Outcomes:
    """HF-route JSON requests carrying base64_mb of base64 (as a chunked body: no Content-Length to judge by),
    and as many with a Content-Length."""
    import base64

    outcomes = Outcomes()
    text = base64.b64encode(bytes(p["base64_mb"] * 750_000))
    body = b'{"inputs":"' + text + b'"}'
    path = "/models/efficientnet-lite0"

    async def declared() -> None:
        head = _http_head(target, path, {"content-type": "application/json", "content-length": str(len(body))})
        started = time.monotonic()
        status = await _post_until_answered(target, head, body, p["timeout"])
        outcomes.add(f"declared: {status}", time.monotonic() - started)

    async def chunked() -> None:
        head = _http_head(target, path, {"content-type": "application/json", "transfer-encoding": "chunked"})
        framed = b"".join(
            b"%x\r\n" % len(body[i : i + (1 << 20)]) + body[i : i + (1 << 20)] + b"\r\n"
            for i in range(0, len(body), 1 << 20)
        )
        started = time.monotonic()
        status = await _post_until_answered(target, head, framed + b"0\r\n\r\n", p["timeout"])
        outcomes.add(f"chunked: {status}", time.monotonic() - started)

    await asyncio.gather(*((chunked if i % 2 else declared)() for i in range(p["calls"])))
    return outcomes


def _gzip_json(head: bytes, element: bytes, count: int, tail: bytes) -> bytes:
    import gzip

    return gzip.compress(head + b",".join([element] * count) + tail, compresslevel=9)


async def http_json_structure(target: Target, p: dict[str, Any]) -> Outcomes:
    """JSON bodies of a few KiB on the wire, gzip, that decode to mib of {"":[]} (about 30x their text once
    parsed): `calls` over the structure limit, to each JSON route, and as many just under it, at once."""
    count = (p["mib"] * MIB - 256) // 8  # just under max_json_bytes once decoded
    under = 32_000  # two containers each: under the 65536 limit
    routes = {
        "v2": (
            "/v2/models/efficientnet-lite0_image/infer",
            b'{"inputs":[{"name":"image","shape":[1,1],"datatype":"BYTES","data":[',
            b"]}]}",
        ),
        "hf": ("/models/efficientnet-lite0", b'{"inputs":"x","parameters":{"a":[', b"]}}"),
        "v1": ("/v1/classify", b'{"inputs":[{"image_base64":"x"}],"preprocessor_overrides":{"a":[', b"]}}"),
    }
    bodies = {
        (route, kind): (path, _gzip_json(head, b'{"":[]}', count if kind == "over" else under, tail))
        for route, (path, head, tail) in routes.items()
        for kind in ("over", "under")
    }
    outcomes = Outcomes()
    outcomes.extra["wire_kib"] = {f"{r}-{k}": round(len(b) / 1024) for (r, k), (_, b) in bodies.items()}

    async def one(route: str, kind: str) -> None:
        path, body = bodies[(route, kind)]
        headers = {"content-type": "application/json", "content-encoding": "gzip", "content-length": str(len(body))}
        started = time.monotonic()
        status = await _post_until_answered(target, _http_head(target, path, headers), body, p["timeout"])
        outcomes.add(f"{kind}: {status}", time.monotonic() - started)

    await asyncio.gather(*(one(route, kind) for _ in range(p["calls"]) for route, kind in bodies))
    return outcomes


# --- the table ----------------------------------------------------------------------------------------

ROWS: dict[str, Row] = {
    row.name: row
    for row in (
        Row(
            "large_frames",
            "64 concurrent callers, each sending requests of two raw 3840x2160 RGB frames (50 MB)",
            large_frames,
            test={"callers": 8, "width": 1920, "height": 1080, "frames": 2, "duration": 2.5},
            full={"callers": 64, "width": 3840, "height": 2160, "frames": 2, "duration": 30.0},
        ),
        Row(
            "many_jpegs",
            "500 concurrent calls of 64 x 387 KB JPEGs",
            many_jpegs,
            test={"calls": 24, "connections": 6, "images": 16, "duration": 2.5},
            full={"calls": 500, "connections": 16, "images": 64, "duration": 30.0},
        ),
        Row(
            "unread_streams",
            "1000 ClassifyStream calls each writing 8 large JPEG frames and never reading",
            unread_streams,
            test={"streams": 60, "connections": 2, "frames": 8, "hold": 2.5},
            full={"streams": 1000, "connections": 16, "frames": 8, "hold": 30.0},
        ),
        Row(
            "unary_flood",
            "2000 concurrent unary calls of one large JPEG",
            unary_flood,
            test={"calls": 300, "connections": 6, "timeout": 60},
            full={"calls": 2000, "connections": 32, "timeout": 60},
        ),
        Row(
            "tokenless_gzip",
            "32 gzip calls WITHOUT a token, each an image of 60 MB of zeros (58 KB on the wire)",
            tokenless_gzip,
            test={"calls": 6, "connections": 3, "zeros_mib": 60},
            full={"calls": 32, "connections": 8, "zeros_mib": 60},
        ),
        Row(
            "stalled_messages",
            "150 raw HTTP/2 calls whose length prefix claims 64 MiB, 60 MB sent, never finished",
            stalled_messages,
            test={"calls": 12, "connections": 3, "claim_mib": 64, "send_mib": 20, "hold": 4.0},
            full={"calls": 150, "connections": 3, "claim_mib": 64, "send_mib": 60, "hold": 30.0},
        ),
        Row(
            "huge_request_id",
            "40 streams on a connection that never opens its window, each a gzip call carrying a 60 MB "
            "request_id; the same through reflection",
            huge_request_id,
            test={
                "classify": 4,
                "streams": 4,
                "reflection": 4,
                "id_mib": 60,
                "hold": 3.0,
                "settle": 5.0,
                "let_go_mib": 96,
            },
            full={
                "classify": 20,
                "streams": 10,
                "reflection": 20,
                "id_mib": 60,
                "hold": 20.0,
                "settle": 10.0,
                "let_go_mib": 96,
            },
        ),
        Row(
            "rapid_reset",
            "50,000 HEADERS + RST_STREAM on one connection in 9 s",
            rapid_reset,
            test={"pairs": 15_000, "duration": 3.0, "bystanders": 2},
            full={"pairs": 50_000, "duration": 9.0, "bystanders": 4},
        ),
        Row(
            "bad_auth_header",
            "an authorization header with a non-UTF-8 byte",
            bad_auth_header,
            test={"calls": 10, "timeout": 10.0},
            full={"calls": 200, "timeout": 30.0},
        ),
        Row(
            "invalid_utf8",
            "request_id or string fields with invalid UTF-8",
            invalid_utf8,
            test={"rounds": 2},
            full={"rounds": 50},
        ),
        Row(
            "install_paths",
            "ListModels or GetModel from any caller",
            install_paths,
            test={},
            full={},
        ),
        Row(
            "http_slow_body",
            "HTTP: bodies trickled for longer than the server allows",
            http_slow_body,
            test={"connections": 20, "body_kib": 1024, "interval": 0.2, "hold": 4.0},
            full={"connections": 500, "body_kib": 1024, "interval": 0.5, "hold": 30.0},
        ),
        Row(
            "http_huge_headers",
            "HTTP: requests with a megabyte of headers",
            http_huge_headers,
            test={"connections": 20, "header_kib": 1024, "timeout": 10.0},
            full={"connections": 200, "header_kib": 4096, "timeout": 30.0},
        ),
        Row(
            "http_idle_connections",
            "HTTP: 3000 idle TCP connections that never send a byte, or half a request line",
            http_idle_connections,
            test={"connections": 3000, "hold": 4.0},
            full={"connections": 12_000, "hold": 30.0},
        ),
        Row(
            "grpc_idle_connections",
            "gRPC: 3000 idle TCP connections that never send a byte, or half the HTTP/2 preface",
            grpc_idle_connections,
            test={"connections": 3000, "hold": 4.0},
            full={"connections": 12_000, "hold": 30.0},
        ),
        Row(
            "http_trickled_bodies",
            "HTTP: 400 bodies promising 50 MB, each trickling 1 KB a second",
            http_trickled_bodies,
            test={"connections": 100, "claim_mib": 50, "rate_kib": 1, "hold": 5.0},
            full={"connections": 400, "claim_mib": 50, "rate_kib": 1, "hold": 30.0},
        ),
        Row(
            "http_json_numbers",
            "HTTP: 24 v2 JSON requests of 16x3x224x224 floats as JSON numbers (39 MB of text), and 24 of 2x3x224x224",
            http_json_numbers,
            test={"calls": 6, "big_batch": 16, "small_batch": 2, "timeout": 30.0},
            full={"calls": 24, "big_batch": 16, "small_batch": 2, "timeout": 60.0},
        ),
        Row(
            "http_json_structure",
            'HTTP: gzip JSON bodies of ~24 KiB that decode to 16 MiB of {"":[]} (~500 MB parsed), every JSON route',
            http_json_structure,
            test={"calls": 2, "mib": 16, "timeout": 30.0},
            full={"calls": 8, "mib": 16, "timeout": 60.0},
        ),
        Row(
            "http_json_base64",
            "HTTP: 32 JSON requests carrying 40 MB of base64 (half chunked)",
            http_json_base64,
            test={"calls": 8, "base64_mb": 40, "timeout": 30.0},
            full={"calls": 32, "base64_mb": 40, "timeout": 60.0},
        ),
        Row(
            "http_body_over_limit",
            "HTTP: bodies over the limit (declared, chunked, gzip-expanding)",
            http_body_over_limit,
            test={"connections": 6, "limit_mib": 64, "timeout": 20.0},
            full={"connections": 60, "limit_mib": 64, "timeout": 30.0},
        ),
        Row(
            "http_large_bodies",
            "HTTP: many connections POSTing 40 MB bodies",
            http_large_bodies,
            test={"connections": 8, "body_mib": 20, "duration": 2.5},
            full={"connections": 64, "body_mib": 40, "duration": 30.0},
        ),
        Row(
            "http_tokenless_gzip",
            "HTTP: POSTs without a token whose gzip body expands to 60 MB",
            http_tokenless_gzip,
            test={"calls": 8, "zeros_mib": 60},
            full={"calls": 32, "zeros_mib": 60},
        ),
    )
}
