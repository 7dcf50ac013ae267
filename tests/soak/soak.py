"""Soak: a real ``imgcls serve`` under long, mixed, partly hostile load, watched for leaks and drift.

    .venv/bin/python tests/soak/soak.py --duration 600 --callers 64 --streams 8 --out soak.json

Starts the server as a subprocess (the embedded EfficientNet-Lite0, default settings; extra flags
with ``--server-arg=--max-batch-size=4`` and the like), then for ``--duration`` seconds:

- ``--callers`` unary callers each keep one Classify call in flight: a good request (one or two
  shared images, as files, base64 or raw pixels) or a bad one (random bytes, a truncated JPEG, an
  empty image, raw pixels of the wrong length, a tensor of the wrong shape; beside good inputs);
- ``--streams`` ClassifyStreams send the same mix as frames, a few in flight each, and are
  reopened every ``--frames-per-stream`` frames so stream set-up and tear-down are soaked too.

Every good answer must have the reference top-1 (../shared/images/reference-efficientnet-lite0.json);
every bad one must be INVALID_ARGUMENT naming the bad input. The server's RSS, open file
descriptors and threads are sampled every second. The report (Markdown on stdout, JSON with
``--out``): counts, errors by status, RSS growth after warm-up (and its slope), fd and thread
min/max, and p50/p99 latency of the first and the last minute (tenth, for runs under 10 minutes).

Exit status: 0 when every good request was answered right, every bad one got the right status and
the server stopped cleanly; 1 otherwise; 2 when the server did not start. Speed is reported, never
judged.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tests") not in sys.path:  # run as a script: the shared test helpers live in tests/
    sys.path.insert(0, str(ROOT / "tests"))

from support.paths import SHARED  # noqa: E402
from support.serve_process import ServeProcess  # noqa: E402

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
CALL_TIMEOUT_S = 60.0
STREAM_IN_FLIGHT = 4  # frames written but not yet answered, per stream
BAD_SHARE = 0.25  # of requests and frames
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
INVALID = grpc.StatusCode.INVALID_ARGUMENT


# --- what is sent, and what must come back --------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One input and what it must get: a top-1 index (good) or None (bad: INVALID_ARGUMENT)."""

    name: str
    input: pb.Input
    top1: int | None

    @property
    def good(self) -> bool:
        return self.top1 is not None


def good_items(shared: Path) -> list[Item]:
    """Every shared image as a file, coffee.jpg also as base64 and as raw RGB pixels."""
    reference = json.loads((shared / "images" / "reference-efficientnet-lite0.json").read_text())
    items = []
    for name, labels in sorted(reference.items()):
        data = (shared / "images" / name).read_bytes()
        items.append(Item(name, pb.Input(image=data), int(labels[0]["index"])))
    coffee = (shared / "images" / "coffee.jpg").read_bytes()
    espresso = int(reference["coffee.jpg"][0]["index"])
    items.append(Item("coffee.jpg as base64", pb.Input(image_base64=base64.b64encode(coffee).decode()), espresso))
    with Image.open(io.BytesIO(coffee)) as image:
        rgb = image.convert("RGB")
    raw = pb.RawImage(width=rgb.width, height=rgb.height, format=pb.PIXEL_FORMAT_RGB8, data=rgb.tobytes())
    items.append(Item("coffee.jpg as raw RGB8", pb.Input(raw=raw), espresso))
    return items


def bad_items(shared: Path, seed: int) -> list[Item]:
    coffee = (shared / "images" / "coffee.jpg").read_bytes()
    noise = random.Random(seed).randbytes(8192)
    wrong_shape = np.zeros((1, 4, 224, 224), "<f4")
    return [
        Item("random bytes", pb.Input(image=noise), None),
        Item("truncated JPEG", pb.Input(image=coffee[: len(coffee) // 2]), None),
        Item("empty image", pb.Input(image=b""), None),
        Item(
            "raw RGB8 of the wrong length",
            pb.Input(raw=pb.RawImage(width=8, height=8, format=pb.PIXEL_FORMAT_RGB8, data=bytes(5))),
            None,
        ),
        Item(
            "tensor of the wrong shape",
            pb.Input(
                tensor=pb.Tensor(
                    dims=list(wrong_shape.shape), dtype=pb.DATA_TYPE_FLOAT32, raw_data=wrong_shape.tobytes()
                )
            ),
            None,
        ),
    ]


@dataclass(frozen=True)
class Plan:
    """A request's inputs: all good, or exactly one bad one (at `bad_at`) among good ones."""

    items: tuple[Item, ...]

    @property
    def bad_at(self) -> int | None:
        return next((i for i, item in enumerate(self.items) if not item.good), None)

    @property
    def good(self) -> bool:
        return self.bad_at is None


def draw_request(rng: random.Random, good: Sequence[Item], bad: Sequence[Item]) -> Plan:
    items = [rng.choice(good) for _ in range(rng.choice((1, 1, 2)))]
    if rng.random() < BAD_SHARE:
        items.insert(rng.randrange(len(items) + 1), rng.choice(bad))
    return Plan(tuple(items))


def draw_frame(rng: random.Random, good: Sequence[Item], bad: Sequence[Item]) -> Plan:
    return Plan((rng.choice(bad) if rng.random() < BAD_SHARE else rng.choice(good),))


def judge(plan: Plan, code: grpc.StatusCode, message: str, top1s: Sequence[int] | None) -> str | None:
    """None when the outcome is right for the plan; else what was wrong."""
    if plan.good:
        if code != grpc.StatusCode.OK:
            return f"good {[i.name for i in plan.items]}: {code.name}: {message[:300]}"
        want = [item.top1 for item in plan.items]
        if list(top1s or []) != want:
            return f"good {[i.name for i in plan.items]}: top-1 {list(top1s or [])}, want {want}"
        return None
    bad = plan.items[plan.bad_at or 0]
    if code != INVALID:
        return f"bad {bad.name!r}: {code.name} (want INVALID_ARGUMENT): {message[:300]}"
    if f"inputs[{plan.bad_at}]" not in message:
        return f"bad {bad.name!r}: message does not name inputs[{plan.bad_at}]: {message[:300]}"
    return None


# --- what happened ---------------------------------------------------------------------------


@dataclass
class Tally:
    """Outcomes of one kind of call (unary requests or stream frames)."""

    good: int = 0
    bad: int = 0
    codes: Counter[str] = field(default_factory=Counter)  # "good/OK", "bad/INVALID_ARGUMENT", ...
    failures: list[str] = field(default_factory=list)  # the first few, for the report
    failure_count: int = 0
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (answered at, seconds)

    def record(
        self, plan: Plan, code: grpc.StatusCode, message: str, top1s: Sequence[int] | None, started: float
    ) -> None:
        now = time.monotonic()
        if plan.good:
            self.good += 1
        else:
            self.bad += 1
        self.codes[f"{'good' if plan.good else 'bad'}/{code.name}"] += 1
        self.latencies.append((now, now - started))
        problem = judge(plan, code, message, top1s)
        if problem is not None:
            self.failure_count += 1
            if len(self.failures) < 20:
                self.failures.append(problem)


class Sampler(threading.Thread):
    """RSS, open fds and threads of the server process, once a second."""

    def __init__(self, pid: int, interval_s: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self._process = psutil.Process(pid)
        self._interval = interval_s
        self._stop_event = threading.Event()
        self.samples: list[tuple[float, int, int, int]] = []  # (monotonic, rss bytes, fds, threads)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                with self._process.oneshot():
                    rss = self._process.memory_info().rss
                    fds = self._process.num_fds()
                    threads = self._process.num_threads()
                self.samples.append((time.monotonic(), rss, fds, threads))
            except psutil.Error:
                return  # the server is gone; the report says so
            self._stop_event.wait(self._interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


# --- the server ------------------------------------------------------------------------------


# --- the load --------------------------------------------------------------------------------


def top1s_of(results: Sequence[pb.Result]) -> list[int]:
    return [result.labels[0].index if result.labels else -1 for result in results]


async def unary_caller(
    stub: pb_grpc.ImageClassifierServiceStub,
    tally: Tally,
    rng: random.Random,
    pools: tuple[list[Item], list[Item]],
    end: float,
) -> None:
    while time.monotonic() < end:
        plan = draw_request(rng, *pools)
        started = time.monotonic()
        request = pb.ClassifyRequest(inputs=[item.input for item in plan.items])
        try:
            response = await stub.Classify(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            tally.record(plan, exc.code(), exc.details() or "", None, started)
        else:
            tally.record(plan, grpc.StatusCode.OK, "", top1s_of(response.results), started)


async def stream_caller(
    stub: pb_grpc.ImageClassifierServiceStub,
    tally: Tally,
    rng: random.Random,
    pools: tuple[list[Item], list[Item]],
    end: float,
    frames_per_stream: int,
    opened: Counter[str],
) -> None:
    """Streams one after another, each of up to frames_per_stream frames, until the end."""
    while time.monotonic() < end:
        opened["streams"] += 1
        call = stub.ClassifyStream(timeout=CALL_TIMEOUT_S + frames_per_stream)
        sent: dict[str, tuple[Plan, float]] = {}
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)

        async def write(
            call: Any = call, sent: dict[str, tuple[Plan, float]] = sent, slots: asyncio.Semaphore = slots
        ) -> None:
            for number in range(frames_per_stream):
                await slots.acquire()
                if time.monotonic() >= end:
                    break
                plan = draw_frame(rng, *pools)
                request_id = f"frame-{number}"
                sent[request_id] = (plan, time.monotonic())
                await call.write(pb.ClassifyStreamRequest(inputs=[i.input for i in plan.items], request_id=request_id))
            await call.done_writing()

        writer = asyncio.create_task(write())
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                entry = sent.pop(response.request_id, None)
                if entry is None:
                    tally.failure_count += 1
                    tally.failures.append(f"stream answered a frame never sent: {response.request_id!r}")
                    continue
                plan, started = entry
                code = grpc.StatusCode.OK if response.status.code == 0 else _code(response.status.code)
                tally.record(plan, code, response.status.message, top1s_of(response.results), started)
                slots.release()
            await writer
        except grpc.aio.AioRpcError as exc:  # the stream itself failed: every frame in flight did
            writer.cancel()
            for plan, started in sent.values():
                tally.record(plan, exc.code(), f"stream ended: {exc.details()}", None, started)
            opened["failed streams"] += 1
        if sent:  # answered streams must answer every frame
            for plan, started in sent.values():
                tally.record(plan, grpc.StatusCode.UNKNOWN, "frame never answered", None, started)


def _code(value: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == value), grpc.StatusCode.UNKNOWN)


async def drive(
    target: str, args: argparse.Namespace, pools: tuple[list[Item], list[Item]]
) -> tuple[Tally, Tally, Counter[str], float, float]:
    unary, frames, opened = Tally(), Tally(), Counter[str]()
    channels = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(4)]
    try:
        stubs = [pb_grpc.ImageClassifierServiceStub(c) for c in channels]
        start = time.monotonic()
        end = start + args.duration
        seeds = random.Random(args.seed)
        tasks = [
            unary_caller(stubs[i % len(stubs)], unary, random.Random(seeds.random()), pools, end)
            for i in range(args.callers)
        ]
        tasks += [
            stream_caller(
                stubs[i % len(stubs)], frames, random.Random(seeds.random()), pools, end, args.frames_per_stream, opened
            )
            for i in range(args.streams)
        ]
        await asyncio.gather(*tasks)
        return unary, frames, opened, start, time.monotonic()
    finally:
        for channel in channels:
            await channel.close()


# --- the report ------------------------------------------------------------------------------


def percentiles(latencies: Sequence[float]) -> dict[str, float | int | None]:
    if not latencies:
        return {"n": 0, "p50_ms": None, "p99_ms": None}
    values = np.asarray(latencies) * 1e3
    return {
        "n": len(latencies),
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
    }


def latency_windows(tally: Tally, start: float, end: float, window: float) -> dict[str, Any]:
    first = [s for at, s in tally.latencies if at <= start + window]
    last = [s for at, s in tally.latencies if at >= end - window]
    return {"window_s": round(window, 1), "first": percentiles(first), "last": percentiles(last)}


def resources(samples: Sequence[tuple[float, int, int, int]], warm_from: float) -> dict[str, Any]:
    if not samples:
        return {"samples": 0}
    warm = [s for s in samples if s[0] >= warm_from] or list(samples[-1:])
    mb = 1 / 2**20
    times = np.asarray([s[0] for s in warm])
    rss = np.asarray([s[1] * mb for s in warm])
    # Least-squares slope: a steady climb shows here even when the end points happen to be close.
    slope = float(np.polyfit(times - times[0], rss, 1)[0] * 60) if len(warm) >= 3 else 0.0
    return {
        "samples": len(samples),
        "rss_mb": {
            "start": round(samples[0][1] * mb, 1),
            "after_warmup": round(float(rss[0]), 1),
            "end": round(float(rss[-1]), 1),
            "max": round(max(s[1] for s in samples) * mb, 1),
            "growth_after_warmup": round(float(rss[-1] - rss[0]), 1),
            "growth_after_warmup_pct": round(float((rss[-1] - rss[0]) / rss[0] * 100), 2),
            "slope_after_warmup_mb_per_min": round(slope, 2),
        },
        "fds": {"min": min(s[2] for s in samples), "max": max(s[2] for s in samples)},
        "fds_after_warmup": {"min": min(s[2] for s in warm), "max": max(s[2] for s in warm)},
        "threads": {"min": min(s[3] for s in samples), "max": max(s[3] for s in samples)},
        "threads_after_warmup": {"min": min(s[3] for s in warm), "max": max(s[3] for s in warm)},
        # [seconds from the first sample, RSS MB, fds, threads], at most ~120 points, for plotting.
        "series": [
            [round(t - samples[0][0], 1), round(r * mb, 1), f, n]
            for t, r, f, n in samples[:: max(1, len(samples) // 120)]
        ],
    }


def tally_report(tally: Tally, start: float, end: float, window: float) -> dict[str, Any]:
    return {
        "total": tally.good + tally.bad,
        "good": tally.good,
        "bad": tally.bad,
        "per_second": round((tally.good + tally.bad) / max(end - start, 1e-9), 1),
        "by_status": dict(sorted(tally.codes.items())),
        "failures": tally.failure_count,
        "failure_examples": tally.failures,
        "latency": latency_windows(tally, start, end, window),
    }


def markdown(report: dict[str, Any]) -> str:
    config, res = report["config"], report["resources"]
    lines = [
        f"# imgcls soak: {'PASS' if report['passed'] else 'FAIL'}",
        "",
        f"{config['duration_s']} s, {config['callers']} unary callers, {config['streams']} streams "
        f"({report['streams_opened']} opened, {report['streams_failed']} failed), warm-up {config['warmup_s']} s; "
        f"server exit status {report['server']['exit_code']}",
        "",
        "| calls | total | good | bad | per s | failures | p50 first | p99 first | p50 last | p99 last |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("unary", "stream_frames"):
        part = report[kind]
        first, last = part["latency"]["first"], part["latency"]["last"]
        lines.append(
            f"| {kind} | {part['total']} | {part['good']} | {part['bad']} | {part['per_second']} | {part['failures']} "
            f"| {first['p50_ms']} ms | {first['p99_ms']} ms | {last['p50_ms']} ms | {last['p99_ms']} ms |"
        )
    window = report["unary"]["latency"]["window_s"]
    lines += [
        "",
        f"Latency windows: the first and the last {window} s.",
        "",
        "| status | unary | stream frames |",
        "|---|---|---|",
    ]
    statuses = sorted(set(report["unary"]["by_status"]) | set(report["stream_frames"]["by_status"]))
    for status in statuses:
        unary, frames = report["unary"]["by_status"].get(status, 0), report["stream_frames"]["by_status"].get(status, 0)
        lines.append(f"| {status} | {unary} | {frames} |")
    if res.get("samples"):
        rss = res["rss_mb"]
        lines += [
            "",
            "| server | value |",
            "|---|---|",
            f"| RSS start / after warm-up / end / max | {rss['start']} / {rss['after_warmup']} / {rss['end']} "
            f"/ {rss['max']} MB |",
            f"| RSS growth after warm-up | {rss['growth_after_warmup']} MB ({rss['growth_after_warmup_pct']} %), "
            f"slope {rss['slope_after_warmup_mb_per_min']} MB/min |",
            f"| open fds min / max (after warm-up) | {res['fds']['min']} / {res['fds']['max']} "
            f"({res['fds_after_warmup']['min']} / {res['fds_after_warmup']['max']}) |",
            f"| threads min / max (after warm-up) | {res['threads']['min']} / {res['threads']['max']} "
            f"({res['threads_after_warmup']['min']} / {res['threads_after_warmup']['max']}) |",
            f"| samples | {res['samples']} |",
        ]
    problems = report["unary"]["failure_examples"] + report["stream_frames"]["failure_examples"] + report["problems"]
    if problems:
        lines += ["", "Failures (first few):", "", *(f"- {p}" for p in problems[:20])]
    lines += ["", f"Server log: {report['server']['log']}"]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--callers", type=int, default=64, help="concurrent unary callers (default 64)")
    parser.add_argument("--streams", type=int, default=8, help="concurrent ClassifyStreams (default 8)")
    parser.add_argument("--frames-per-stream", type=int, default=500, help="frames before a stream is reopened")
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds before RSS growth is measured (default: a tenth, at most 60)",
    )
    parser.add_argument("--sample-interval", type=float, default=1.0, help="seconds between resource samples")
    parser.add_argument("--seed", type=int, default=1, help="seed of the request mix")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--server-log", type=Path, help="server output (default: a temporary file, kept)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra imgcls serve flag (repeat)")
    parser.add_argument(
        "--shared", type=Path, default=SHARED, help="shared data folder (default ../shared or SHARED_DIR)"
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.callers < 0 or args.streams < 0 or args.callers + args.streams == 0:
        parser.error("need a positive --duration and at least one caller or stream")
    if args.warmup is None:
        args.warmup = min(60.0, args.duration / 10)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pools = (good_items(args.shared), bad_items(args.shared, args.seed))
    log_path = args.server_log or Path(tempfile.mkstemp(prefix="imgcls-soak-", suffix=".log")[1])
    server = ServeProcess(log_path, "--grace-period", "5", *args.server_arg)
    try:
        server.start()
    except AssertionError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    assert server.process is not None
    sampler = Sampler(server.process.pid, args.sample_interval)
    sampler.start()
    try:
        unary, frames, opened, start, end = asyncio.run(drive(server.target, args, pools))
    finally:
        sampler.stop()
        exit_code = server.stop()

    problems = []
    if exit_code != 0:
        problems.append(f"server exit status {exit_code} (want 0 after SIGTERM)")
    if not sampler.samples:
        problems.append("no resource sample was taken")
    window = 60.0 if args.duration >= 600 else args.duration / 10
    report: dict[str, Any] = {
        "config": {
            "duration_s": args.duration,
            "callers": args.callers,
            "streams": args.streams,
            "frames_per_stream": args.frames_per_stream,
            "warmup_s": args.warmup,
            "seed": args.seed,
            "server_args": args.server_arg,
            "good_inputs": [item.name for item in pools[0]],
            "bad_inputs": [item.name for item in pools[1]],
        },
        "server": {"command": server.command, "exit_code": exit_code, "log": str(log_path)},
        "elapsed_s": round(end - start, 1),
        "unary": tally_report(unary, start, end, window),
        "stream_frames": tally_report(frames, start, end, window),
        "streams_opened": opened["streams"],
        "streams_failed": opened["failed streams"],
        "resources": resources(sampler.samples, start + args.warmup),
        "problems": problems,
    }
    report["passed"] = unary.failure_count == 0 and frames.failure_count == 0 and not problems
    print(markdown(report))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
