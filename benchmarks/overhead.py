"""Where the server's CPU goes: its CPU-ms per image on every door and input kind, beside raw ONNX Runtime's at
the batch size the server ran, and (with --flame) a py-spy flame graph of the server under each load.

    python -m benchmarks.overhead                          # the table, about a minute on 2 cores
    python -m benchmarks.overhead --flame DIR              # also DIR/flame-<door>-<kind>.svg (py-spy)
    python -m benchmarks.overhead --doors imgcls.v1 --kinds tensor --seconds 10 --flame DIR

One ``imgcls serve`` (defaults, batching on) per load, so a flame graph shows that load only; the load
generator (benchmarks/loadgen.py, another process) keeps --concurrency calls in flight for --seconds after a
warm-up. The server's CPU is read from /proc (psutil) over the measured window and divided by the images
answered in it; the raw figure is ``time.process_time`` of ONNX Runtime runs in this process, on the server's
own backend and settings, at the average batch size the server ran (GetModel's batch statistics), rounded to
a measured size. "Overhead" is the difference: what gRPC, HTTP, parsing, batching and Python cost per image on
top of the model. py-spy records the server as its child process (no ptrace of an unrelated process), at 200
samples a second without pausing it (--nonblocking), idle threads left out (--native: C and C++ frames too,
per thread, pausing the server for each sample); --folded writes folded stacks
(one line per stack and its sample count) to aggregate by function instead of an SVG.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.raw_ort import Budget, LocalModel, measure_batches
from benchmarks.run import FRAME_SIZE, SHARED, Sampler, ServerProcess, log, run_loadgen, write_payloads

DOORS = ("imgcls.v1", "imgcls.v1-stream", "v2-grpc", "v2-http", "hf-http")
# Input kinds per door: what each door can carry (HTTP's binary extension and the HF route take images).
DOOR_KINDS: dict[str, tuple[str, ...]] = {
    "imgcls.v1": ("tensor", "jpeg_small", "jpeg_large"),
    "imgcls.v1-stream": ("stream_raw", "stream_jpeg"),
    "v2-grpc": ("tensor", "jpeg_large"),
    "v2-http": ("jpeg_large",),
    "hf-http": ("jpeg_small", "jpeg_large"),
}
RAW_BATCH_SIZES = [1, 2, 4, 8, 16]
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def level(door: str, kind: str, concurrency: int, seconds: float) -> dict[str, Any]:
    stream = door.endswith("-stream")
    return {
        "id": f"{door}-{kind}",
        "mode": "stream" if stream else "unary",
        "kind": kind,
        "payload": kind,
        "batching": "on",
        "target": "on",
        "concurrency": concurrency,
        "warmup_s": 1.5,
        "duration_s": seconds,
        "max_requests": 1_000_000,
        **({} if door.startswith("imgcls.v1") else {"protocol": door}),
    }


class ProfiledServer(ServerProcess):
    """The server, started under ``py-spy record`` when a flame graph is wanted."""

    def __init__(self, name: str, log_path: Path, flame: Path | None, native: bool = False) -> None:
        super().__init__(name, [], None, log_path)
        self.flame = flame
        self.native = native

    def command(self) -> list[str]:
        command = super().command()
        if self.flame is None:
            return command
        form = "raw" if self.flame.suffix == ".txt" else "flamegraph"  # raw: folded stacks, one per line
        return [
            PY_SPY,
            "record",
            "--rate",
            "200",
            # Native stacks need the process paused for each sample (py-spy refuses --nonblocking with them).
            *(["--native", "--threads"] if self.native else ["--nonblocking"]),
            "--format",
            form,
            "-o",
            str(self.flame),
            "--",
            *command,
        ]

    def stop(self) -> None:
        # The server first: py-spy writes its flame graph once its child has exited.
        if self.flame is not None and self.process is not None and self.process.poll() is None:
            import psutil

            for child in psutil.Process(self.pid).children():
                child.terminate()
            try:  # py-spy writes once the server is gone, then exits by itself
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log(f"py-spy did not exit after the server; {self.flame} may be missing")
        super().stop()

    def server_pid(self) -> int:
        """The server's own pid: py-spy's child when it records."""
        if self.flame is None:
            return self.pid
        import psutil

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            children = psutil.Process(self.pid).children()
            if children:
                return int(children[0].pid)
            time.sleep(0.05)
        raise RuntimeError("py-spy did not start the server")


GRPC_THREADS = ("grpc", "event_engine", "lifeguard")  # gRPC core's own threads, by the names it gives them


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of the server's threads in three groups: the event loop (the main thread: asyncio,
    grpc.aio's callbacks, every door's Python), gRPC core's threads (its I/O, HTTP/2 and polling, in C++), and
    the rest (the batchers' workers running ONNX Runtime, its pool threads, the decoding executor)."""
    groups = {"event_loop": 0.0, "grpc_core": 0.0, "model_and_workers": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # a thread that ended meanwhile
            continue
        seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        if int(task.name) == pid:
            groups["event_loop"] += seconds
        elif name.startswith(GRPC_THREADS):
            groups["grpc_core"] += seconds
        else:
            groups["model_and_workers"] += seconds
    return groups


def measure(door: str, kind: str, args: argparse.Namespace, folder: Path, payloads: dict[str, Any]) -> dict[str, Any]:
    suffix = ".txt" if args.folded else ".svg"
    flame = args.flame / f"flame-{door}-{kind}{suffix}" if args.flame else None
    server = ProfiledServer(f"{door}-{kind}", folder / "server.log", flame, native=args.native)
    server.start()
    pid = server.server_pid()
    sampler = Sampler({"on": pid})
    sampler.start()
    threads_before = thread_cpu(pid)
    try:
        plan = {
            "targets": {"on": server.target},
            "http_targets": {"on": f"127.0.0.1:{server.http_port}"},
            "payloads": payloads,
            "model": "",
            "v2_model": "efficientnet-lite0",
            "levels": [level(door, kind, args.concurrency, args.seconds)],
        }
        (result,) = run_loadgen(plan, folder)
        threads_after = thread_cpu(pid)
    finally:
        sampler.stop()
        server.stop()
    window = sampler.window("on", result["window_wall_start"], result["window_wall_end"])
    images = result["images"]
    batches = result.get("server_batches") or {}
    spent = {group: threads_after[group] - threads_before[group] for group in threads_before}
    per_image = 1e3 * window["server_cpu_s"] / images if images else float("nan")
    # The whole run's shares (warm-up included: /proc's clock ticks are too coarse for the window alone),
    # applied to the window's CPU per image.
    shares = {group: seconds / max(sum(spent.values()), 1e-9) for group, seconds in spent.items()}
    return {
        "door": door,
        "kind": kind,
        "images_per_s": result["images_per_s"],
        "latency_ms": result["latency_ms"],
        "errors": result["errors"],
        "server_cpu_ms_per_image": per_image,
        "threads_ms_per_image": {group: share * per_image for group, share in shares.items()},
        "loadgen_cpu_ms_per_image": 1e3 * result["loadgen_cpu_s"] / max(images, 1),
        "mean_batch": batches.get("avg_batch_size"),
        "flame": str(flame) if flame else None,
    }


def raw_cpu(model_dir: Path, sample: np.ndarray, seconds: float) -> dict[int, float]:
    """CPU-ms per image of raw runs at each batch size, as the server runs them (its instances side by side)."""
    model = LocalModel(model_dir)
    try:
        budget = Budget(seconds=seconds, max_runs=100_000, min_runs=5, warmup_runs=3)
        measured = measure_batches(model, sample, RAW_BATCH_SIZES, budget, Budget(0.01, 1, 1, 0))
    finally:
        model.close()
    server_mode = [row for row in measured["batches"] if row["instances"] == measured["instances"]]
    return {row["batch_size"]: row["cpu_ms_per_image"] for row in server_mode}


def nearest(sizes: dict[int, float], batch: float | None) -> tuple[int, float]:
    size = min(sizes, key=lambda s: abs(s - (batch or 1.0)))
    return size, sizes[size]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| door | input | img/s | server CPU-ms/img | raw ORT CPU-ms/img (batch) "
        "| overhead ms/img | event loop / gRPC core / model threads ms/img | client CPU-ms/img |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['door']} | {r['kind']} | {r['images_per_s']:.1f} | {r['server_cpu_ms_per_image']:.2f} | "
            f"{r['raw_cpu_ms_per_image']:.2f} ({r['raw_batch']}) | {r['overhead_ms_per_image']:+.2f} | "
            f"{' / '.join(f'{v:.2f}' for v in r['threads_ms_per_image'].values())} | "
            f"{r['loadgen_cpu_ms_per_image']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--doors", default=",".join(DOORS), help=f"comma-separated, of {', '.join(DOORS)}")
    parser.add_argument("--kinds", default="", help="comma-separated input kinds (default: each door's own)")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight (streams: frames in flight)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per load")
    parser.add_argument("--flame", type=Path, help="folder for py-spy flame graphs (one SVG per load)")
    parser.add_argument("--folded", action="store_true", help="with --flame: folded stacks (.txt) instead of SVGs")
    parser.add_argument(
        "--native", action="store_true", help="with --flame: C/C++ frames too (gRPC core, NumPy), stacks per thread"
    )
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--images", type=Path, default=SHARED / "images", help="folder with coffee*.jpg")
    args = parser.parse_args(argv)
    from imgcls.server.settings import EMBEDDED_MODEL_DIR

    doors = [d for d in args.doors.split(",") if d]
    unknown = sorted(set(doors) - set(DOORS))
    if unknown:
        parser.error(f"unknown doors {unknown}; choose from {list(DOORS)}")
    if args.flame:
        if not Path(PY_SPY).exists():
            parser.error("--flame needs py-spy (pip install py-spy)")
        args.flame.mkdir(parents=True, exist_ok=True)
    images = {"jpeg_small": args.images / "coffee.jpg", "jpeg_large": args.images / "coffee_1920x1280.jpg"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = LocalModel(EMBEDDED_MODEL_DIR)
        try:
            payloads = write_payloads(model, images, folder)
            sample = model.tensor_for(images["jpeg_small"])
        finally:
            model.close()
        log("raw ONNX Runtime CPU per image at each batch size")
        raw = raw_cpu(EMBEDDED_MODEL_DIR, sample, seconds=min(args.seconds, 2.0))
        rows = []
        for door in doors:
            kinds = [k for k in args.kinds.split(",") if k] or list(DOOR_KINDS[door])
            for kind in kinds:
                if kind not in DOOR_KINDS[door]:
                    log(f"skipping {door} {kind}: that door does not carry it here")
                    continue
                log(f"{door} {kind}: c{args.concurrency}, {args.seconds:g} s")
                row = measure(door, kind, args, folder, payloads)
                # A decoded image costs its decode and preprocessing too: raw ORT is the model's share only.
                row["raw_batch"], row["raw_cpu_ms_per_image"] = nearest(raw, row["mean_batch"])
                row["overhead_ms_per_image"] = row["server_cpu_ms_per_image"] - row["raw_cpu_ms_per_image"]
                rows.append(row)
                log(
                    f"  {row['images_per_s']:.1f} img/s, server {row['server_cpu_ms_per_image']:.2f} CPU-ms/img, "
                    f"raw {row['raw_cpu_ms_per_image']:.2f} at batch {row['raw_batch']}"
                )
    print(table(rows))
    print(
        f"\n(frames: {FRAME_SIZE[0]}x{FRAME_SIZE[1]}; raw ORT CPU-ms/img per batch size: "
        + ", ".join(f"b{k} {v:.2f}" for k, v in raw.items())
        + f"; {os.cpu_count()} CPUs)"
    )
    if args.out:
        args.out.write_text(json.dumps({"raw_cpu_ms_per_image": raw, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
