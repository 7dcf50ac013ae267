"""Run the whole benchmark in one go, so every ratio compares figures taken minutes apart on one machine.

    python -m benchmarks.run [--quick] [--out DIR] [--with-peers]

1. the limit: raw ONNX Runtime on pre-processed tensors per batch size, decode + preprocess costs
   and the straightforward in-process path (benchmarks/raw_ort.py);
2. the server, started as a user starts it (``imgcls serve``), twice (batching on: the defaults;
   off: ``--max-batch-size 1``), driven by a separate load-generating process
   (benchmarks/loadgen.py) at several concurrencies with tensor, 640px JPEG and 1920x1280 JPEG
   inputs, plus ClassifyStream with raw and JPEG frames; the servers' RSS and CPU time are sampled
   throughout;
3. optional peers: transformers.js in Node and the Python transformers pipeline (benchmarks/peers.py);
4. results.json, results.md, throughput.png and latency.png in --out (benchmarks/report.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
import numpy as np
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imgcls.server.runtime.cpus import available_cpus
from imgcls.server.settings import DEFAULT_MODEL_NAME, EMBEDDED_MODEL_DIR, ServerSettings
from PIL import Image

from benchmarks import peers, protocols, report
from benchmarks.raw_ort import Budget, LocalModel, measure_batches, measure_pipeline, measure_preprocess

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "latest"
LOADGEN = Path(__file__).resolve().parent / "loadgen.py"

# Input kinds of the unary levels, and the streams: name -> what is sent.
KINDS: dict[str, str] = {
    "tensor": "pre-processed float32 tensor (raw_data) of coffee.jpg",
    "jpeg_small": "coffee.jpg",
    "jpeg_large": "coffee_1920x1280.jpg",
}
STREAMS: dict[str, str] = {
    "stream_raw": "640x480 raw RGB8 frames",
    # The unary JPEG's own bytes as every frame: "streams >= unary" compares the same work per image.
    "stream_jpeg": "coffee.jpg frames",
}
FRAME_SIZE = (640, 480)


@dataclass(frozen=True)
class Profile:
    """How much of everything to run: the full benchmark or the --quick smoke run."""

    name: str
    batch_sizes: list[int]
    raw: Budget
    latency: Budget
    preprocess: Budget
    pipeline: Budget
    recheck: Budget
    concurrencies: list[int]
    kinds: list[str]
    warmup_s: float
    duration_s: float
    max_requests: int
    stream_warmup_s: float
    stream_duration_s: float
    stream_max_frames: int
    peer_duration_s: float
    peer_concurrencies: list[int] = field(default_factory=lambda: [1, 4])


FULL = Profile(
    name="full",
    batch_sizes=[1, 2, 4, 8, 16, 32],
    raw=Budget(seconds=2.0, max_runs=2000),
    latency=Budget(seconds=2.0, max_runs=500, min_runs=50),
    preprocess=Budget(seconds=1.0, max_runs=300, min_runs=10),
    pipeline=Budget(seconds=1.5, max_runs=300, min_runs=10),
    recheck=Budget(seconds=1.5, max_runs=1000),
    concurrencies=[1, 4, 16, 64],
    kinds=list(KINDS),
    warmup_s=0.8,
    duration_s=5.0,
    max_requests=5000,
    stream_warmup_s=1.0,
    stream_duration_s=6.0,
    stream_max_frames=5000,
    peer_duration_s=5.0,
)
QUICK = Profile(
    name="quick",
    batch_sizes=[1, 2],
    raw=Budget(seconds=0.05, max_runs=3, min_runs=1, warmup_runs=1),
    latency=Budget(seconds=0.05, max_runs=5, min_runs=2, warmup_runs=1),
    preprocess=Budget(seconds=0.05, max_runs=3, min_runs=1, warmup_runs=0),
    pipeline=Budget(seconds=0.05, max_runs=3, min_runs=1, warmup_runs=0),
    recheck=Budget(seconds=0.05, max_runs=2, min_runs=1, warmup_runs=1),
    concurrencies=[1, 4],
    kinds=list(KINDS),
    warmup_s=0.1,
    duration_s=0.5,
    max_requests=6,
    stream_warmup_s=0.0,  # a 6-frame stream has no steady state to wait for
    stream_duration_s=0.5,
    stream_max_frames=6,
    peer_duration_s=0.5,
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the servers ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``imgcls serve`` in a subprocess, as a user starts it; SIGTERM stops it gracefully."""

    def __init__(self, name: str, extra_args: list[str], model_arg: str | None, log_path: Path) -> None:
        self.name = name
        self.extra_args = extra_args
        self.model_arg = model_arg
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.http_port = 0
        self._log: TextIO | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "imgcls.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.model_arg:
            command += ["--model", self.model_arg]
        # Two servers run at once: each takes a free HTTP port, not the default 8000.
        return [*command, "--grace-period", "2", "--http-port", str(self.http_port), *self.extra_args]

    def start(self, timeout_s: float = 90.0) -> None:
        for attempt in range(3):  # the free port may be taken between probing and binding
            self.port, self.http_port = free_port(), free_port()
            self._log = self.log_path.open("a")
            self._log.write(f"$ {' '.join(self.command())}\n")
            self._log.flush()
            env = {k: v for k, v in os.environ.items() if not k.startswith("IMGCLS_")}
            self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env)
            if self._wait_serving(timeout_s):
                return
            self.stop()
            log(f"server {self.name} did not come up (attempt {attempt + 1}); see {self.log_path}")
        raise RuntimeError(f"server {self.name} failed to start; log: {self.log_path}")

    def _wait_serving(self, timeout_s: float) -> bool:
        """Poll grpc.health.v1 until SERVING; False when the process exits or time runs out."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    response = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return True
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


class Sampler(threading.Thread):
    """Samples RSS and CPU time of the server processes every interval, with wall-clock stamps."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.05) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.samples: dict[str, list[tuple[float, int, float]]] = {name: [] for name in pids}
        self._interval = interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            self.sample()
            if self._stop_event.wait(self._interval):
                self.sample()
                return

    def sample(self) -> None:
        for name, process in self._processes.items():
            try:
                with process.oneshot():
                    cpu = process.cpu_times()
                    self.samples[name].append((time.time(), process.memory_info().rss, cpu.user + cpu.system))
            except psutil.Error:
                pass

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def window(self, name: str, start: float, end: float) -> dict[str, float]:
        """Peak RSS and CPU seconds of one server between two wall-clock times."""
        inside = [s for s in self.samples[name] if start <= s[0] <= end]
        if not inside:  # a window shorter than the interval: the nearest sample
            inside = [min(self.samples[name], key=lambda s: abs(s[0] - end))]
        cpu = inside[-1][2] - inside[0][2]
        span = max(inside[-1][0] - inside[0][0], 1e-9)
        return {
            "peak_rss_mb": max(s[1] for s in inside) / 2**20,
            "server_cpu_s": cpu,
            "server_cpu_util": cpu / span if len(inside) > 1 else 0.0,
        }

    def overall(self, name: str) -> dict[str, float]:
        samples = self.samples[name]
        return {
            "peak_rss_mb": max(s[1] for s in samples) / 2**20 if samples else 0.0,
            "start_rss_mb": samples[0][1] / 2**20 if samples else 0.0,
        }


# -- payloads and the plan ---------------------------------------------------------------------------
def write_payloads(model: LocalModel, images: dict[str, Path], folder: Path) -> dict[str, dict[str, Any]]:
    """The files the load generator sends: the tensor comes from the server's own preprocessing."""
    tensor_path = folder / "tensor.npy"
    np.save(tensor_path, model.tensor_for(images["jpeg_small"])[None])
    frame = Image.open(images["jpeg_small"]).convert("RGB").resize(FRAME_SIZE, Image.Resampling.BILINEAR)
    raw_path = folder / "frame.rgb"
    raw_path.write_bytes(frame.tobytes())
    return {
        "tensor": {"type": "tensor", "path": str(tensor_path)},
        "jpeg_small": {"type": "image", "path": str(images["jpeg_small"])},
        "jpeg_large": {"type": "image", "path": str(images["jpeg_large"])},
        "stream_raw": {"type": "raw", "path": str(raw_path), "width": FRAME_SIZE[0], "height": FRAME_SIZE[1]},
        "stream_jpeg": {"type": "image", "path": str(images["jpeg_small"])},
    }


def build_levels(profile: Profile, stream_in_flight: int) -> list[dict[str, Any]]:
    """Unary levels with batching on and off back to back (alternating order against drift), then streams."""
    levels = []
    flip = False
    for kind in profile.kinds:
        for concurrency in profile.concurrencies:
            order = ["off", "on"] if flip else ["on", "off"]
            flip = not flip
            for batching in order:
                levels.append(
                    {
                        "id": f"{kind}-c{concurrency}-batching_{batching}",
                        "mode": "unary",
                        "kind": kind,
                        "payload": kind,
                        "batching": batching,
                        "target": batching,
                        "concurrency": concurrency,
                        "warmup_s": profile.warmup_s,
                        "duration_s": profile.duration_s,
                        "max_requests": profile.max_requests,
                    }
                )
    for stream in STREAMS:
        levels.append(
            {
                "id": f"{stream}-batching_on",
                "mode": "stream",
                "kind": stream,
                "payload": stream,
                "batching": "on",
                "target": "on",
                "concurrency": stream_in_flight,
                "warmup_s": profile.stream_warmup_s,
                "duration_s": profile.stream_duration_s,
                "max_requests": profile.stream_max_frames,
            }
        )
    return levels


def run_loadgen(plan: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    plan_path, out_path = folder / "plan.json", folder / "loadgen-results.json"
    plan_path.write_text(json.dumps(plan, indent=1))
    completed = subprocess.run(
        [sys.executable, str(LOADGEN), "--plan", str(plan_path), "--out", str(out_path)], check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"load generator failed with exit status {completed.returncode}")
    return list(json.loads(out_path.read_text()))


def describe_inputs(images: dict[str, Path]) -> dict[str, str]:
    """Labels for the report, with the real image sizes."""
    labels = {"tensor": "tensor"}
    for kind, path in images.items():
        with Image.open(path) as image:
            labels[kind] = f"JPEG {image.width}x{image.height}"
    frame = f"{FRAME_SIZE[0]}x{FRAME_SIZE[1]}"
    stream_jpeg = f"stream, {labels['jpeg_small']}" if "jpeg_small" in labels else "stream, JPEG"
    return {**labels, "stream_raw": f"stream, raw {frame} RGB8", "stream_jpeg": stream_jpeg}


# -- machine info ----------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    import grpc as grpc_module
    import onnxruntime
    import PIL

    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": sys.platform,
        "python": sys.version.split()[0],
        "onnxruntime": onnxruntime.__version__,
        "grpcio": grpc_module.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "git": commit,
        "load_average_start": list(os.getloadavg()),
    }


# -- the run -------------------------------------------------------------------------------------
def measure_limit(model: LocalModel, sample: np.ndarray, images: dict[str, Path], profile: Profile) -> dict[str, Any]:
    log(f"raw ONNX Runtime at batch sizes {profile.batch_sizes}")
    limit = measure_batches(model, sample, profile.batch_sizes, profile.raw, profile.latency)
    for row in limit["batches"]:
        log(f"  batch {row['batch_size']:>2}: {row['images_per_s']:.1f} img/s")
    log("decode + preprocess costs and fidelity (every jpeg_draft mode) and the straightforward path")
    return {
        "raw_ort": limit,
        "preprocess": measure_preprocess(model, images, profile.preprocess),
        "pipeline": measure_pipeline(model, images, profile.pipeline),
    }


def recheck_limit(model: LocalModel, sample: np.ndarray, best_batch: int, profile: Profile) -> dict[str, Any]:
    """The limit again after the server runs: the machine is shared, so say how much it drifted."""
    sizes = sorted({1, best_batch})
    again = measure_batches(model, sample, sizes, profile.recheck, profile.recheck)
    return {
        "batches": again["batches"],
        "best": again["best"],
        "batch1_latency_ms": again["batch1_latency_ms"],
    }


def run(profile: Profile, out: Path, *, with_peers: bool, model_dir: Path, images_dir: Path) -> dict[str, Any]:
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    images = {"jpeg_small": images_dir / "coffee.jpg", "jpeg_large": images_dir / "coffee_1920x1280.jpg"}
    for path in images.values():
        if not path.is_file():
            raise FileNotFoundError(f"benchmark image missing: {path} (set SHARED_DIR)")
    settings = ServerSettings()
    info = machine_info()
    log(f"{profile.name} run on {info['cpu_model']} ({info['logical_cpus']} CPUs), onnxruntime {info['onnxruntime']}")

    model = LocalModel(model_dir)
    try:
        sample = model.tensor_for(images["jpeg_small"])
        limit = measure_limit(model, sample, images, profile)

        model_arg = None if model_dir.resolve() == EMBEDDED_MODEL_DIR.resolve() else f"{DEFAULT_MODEL_NAME}={model_dir}"
        server_log = out / "server.log"
        server_log.write_text("")
        servers = {
            "on": ServerProcess("on", [], model_arg, server_log),
            "off": ServerProcess("off", ["--max-batch-size", "1"], model_arg, server_log),
        }
        with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as tmp:
            folder = Path(tmp)
            payloads = write_payloads(model, images, folder)
            try:
                for name, server in servers.items():
                    server.start()
                    log(f"server (batching {name}) serving: {' '.join(server.command())}")
                sampler = Sampler({name: s.pid for name, s in servers.items()})
                sampler.start()
                plan_levels = build_levels(profile, settings.stream_max_in_flight)
                plan_levels += protocols.build_levels(profile)  # every door, the same work (protocols.py)
                plan = {
                    "targets": {name: s.target for name, s in servers.items()},
                    "payloads": payloads,
                    "model": "",
                    "v2_model": DEFAULT_MODEL_NAME,  # the Open Inference Protocol names the model
                    "http_targets": {name: f"127.0.0.1:{s.http_port}" for name, s in servers.items()},
                    "levels": plan_levels,
                }
                log(f"load generator: {len(plan_levels)} levels")
                try:
                    levels = run_loadgen(plan, folder)
                finally:
                    sampler.stop()
            finally:
                for server in servers.values():
                    server.stop()
        for level in levels:
            level.update(sampler.window(level["target"], level["wall_start"], level["wall_end"]))
        levels, protocol_levels = protocols.split(levels)
        memory = {name: sampler.overall(name) for name in servers}

        log("re-checking the limit")
        limit["recheck"] = recheck_limit(model, sample, limit["raw_ort"]["best"]["batch_size"], profile)
    finally:
        model.close()

    peer_results = peers.run_peers(
        with_peers=with_peers,
        quick=profile.name == "quick",
        model_dir=model_dir,
        images=images,
        concurrencies=profile.peer_concurrencies,
        duration_s=profile.peer_duration_s,
        log=log,
    )
    info["load_average_end"] = list(os.getloadavg())
    results = {
        "meta": {
            "profile": profile.name,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": time.time() - started,
            "model": str(model_dir),
            "machine": info,
            "server_settings": {
                "batching_on": f"defaults (max_batch_size={settings.batching.max_batch_size}, "
                f"max_queue_delay_us={settings.batching.max_queue_delay_us})",
                "batching_off": "--max-batch-size 1",
                "stream_max_in_flight": settings.stream_max_in_flight,
                "jpeg_draft": settings.jpeg_draft,
                "preprocess_threads": settings.preprocess_threads or available_cpus(),
            },
            "inputs": describe_inputs(images),
        },
        "limit": limit,
        "server": {"levels": levels, "memory": memory},
        "protocols": protocols.summarize(protocol_levels),
        "peers": peer_results,
    }
    report.write_all(results, out)
    log(f"done in {time.time() - started:.0f}s: {out / 'results.md'}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every stage (seconds)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument(
        "--with-peers",
        action="store_true",
        help="npm install transformers.js in benchmarks/transformers_js (if needed) and benchmark it",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=EMBEDDED_MODEL_DIR,
        help="Hugging Face layout model folder (default: the embedded EfficientNet-Lite0 the server serves)",
    )
    parser.add_argument("--images", type=Path, default=SHARED / "images", help="folder with coffee*.jpg")
    args = parser.parse_args(argv)
    run(
        QUICK if args.quick else FULL,
        args.out,
        with_peers=args.with_peers,
        model_dir=args.model_dir.resolve(),
        images_dir=args.images,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
