"""The benchmark harness runs end to end (--quick) and writes outputs of the expected shape.

Never asserts speed: only that every stage ran and reported what the README promises.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from support.paths import IMAGES, ROOT

# benchmarks/ is a top-level package of the checkout, not part of the installed imgcls.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import report
from benchmarks.loadgen import Window
from benchmarks.overhead import thread_cpu
from benchmarks.run import describe_inputs, write_payloads

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_module(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m benchmarks.MODULE ARGS` from the repository root, as documented; it must exit 0."""
    completed = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One --quick run of the whole harness (the documented command), shared by the structure tests."""
    out = tmp_path_factory.mktemp("bench")
    run_module("run", "--quick", "--out", str(out), "--images", str(IMAGES), timeout=180)
    return out


@pytest.fixture(scope="module")
def results(quick_run: Path) -> dict[str, Any]:
    return json.loads((quick_run / "results.json").read_text())


def test_writes_every_output(quick_run: Path) -> None:
    for name in ("results.json", "results.md", "throughput.png", "latency.png"):
        assert (quick_run / name).is_file(), name


@pytest.mark.parametrize("name", ["throughput.png", "latency.png"])
def test_plots_are_valid_png_files(quick_run: Path, name: str) -> None:
    path = quick_run / name
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()  # raises on a truncated or corrupt file
        assert image.format == "PNG"


def test_machine_info_is_recorded(results: dict[str, Any]) -> None:
    machine = results["meta"]["machine"]
    for key in ("cpu_model", "logical_cpus", "onnxruntime", "python"):
        assert machine[key], key
    assert results["meta"]["date"]
    assert results["meta"]["profile"] == "quick"


def test_limit_has_every_batch_size_and_decode_costs(results: dict[str, Any]) -> None:
    raw = results["limit"]["raw_ort"]
    assert sorted({row["batch_size"] for row in raw["batches"]}) == [1, 2]  # the --quick sizes
    # Measured as the server runs (its instances side by side), and one at a time on every core
    # where the server runs more than one instance.
    modes = {row["mode"] for row in raw["batches"]}
    assert f"{raw['instances']} side by side (server)" in modes
    assert len(modes) == (2 if raw["instances"] > 1 else 1)
    assert all(row["images_per_s"] > 0 and row["runs"] > 0 for row in raw["batches"])
    assert raw["best"]["images_per_s"] > 0
    assert raw["batch1_latency_ms"]["p50"] > 0
    # Both images, with jpeg_draft on and off.
    pairs = {(row["image"], row["jpeg_draft"]) for row in results["limit"]["preprocess"]}
    assert pairs == {(k, d) for k in ("jpeg_small", "jpeg_large") for d in (True, False)}
    assert {row["image"] for row in results["limit"]["pipeline"] if not row["jpeg_draft"]} == {
        "jpeg_small",
        "jpeg_large",
    }


def test_server_levels_cover_kinds_concurrencies_and_batching(results: dict[str, Any]) -> None:
    unary = {
        (lv["kind"], lv["concurrency"], lv["batching"]) for lv in results["server"]["levels"] if lv["mode"] == "unary"
    }
    expected = {(k, c, b) for k in ("tensor", "jpeg_small", "jpeg_large") for c in (1, 4) for b in ("on", "off")}
    assert unary == expected


def test_every_level_answered_without_errors_and_sampled_rss(results: dict[str, Any]) -> None:
    for level in results["server"]["levels"]:
        assert level["errors"] == {}, level["id"]
        assert level["requests"] > 0, level["id"]
        assert level["peak_rss_mb"] > 0, level["id"]
        assert level["loadgen_cpu_s"] >= 0, level["id"]
        assert set(level["latency_ms"]) >= {"p50", "p90", "p99"}, level["id"]


def test_streams_of_raw_and_jpeg_frames_ran(results: dict[str, Any]) -> None:
    streams = {lv["kind"]: lv for lv in results["server"]["levels"] if lv["mode"] == "stream"}
    assert set(streams) == {"stream_raw", "stream_jpeg"}
    for level in streams.values():
        assert level["images_per_s"] > 0
        assert level["latency_ms"]["p50"] is not None


def test_every_row_has_a_ratio_to_the_limit(results: dict[str, Any]) -> None:
    rows = results["rows"]
    sections = {row["section"] for row in rows}
    assert {"limit", "preprocess", "pipeline", "unary", "stream"} <= sections
    for row in rows:
        assert row["ratio"] is not None and math.isfinite(row["ratio"]), row["name"]


def test_markdown_prints_ratios_beside_figures(quick_run: Path, results: dict[str, Any]) -> None:
    text = (quick_run / "results.md").read_text()
    assert results["meta"]["machine"]["cpu_model"] in text
    # Every data row of the server tables shows a throughput with its ratio to raw.
    server_rows = [line for line in text.splitlines() if line.startswith(("| tensor |", "| JPEG ", "| stream, "))]
    assert len(server_rows) == len(results["server"]["levels"])
    for line in server_rows:
        assert "x raw)" in line, line


def test_peers_are_skipped_with_a_reason(results: dict[str, Any]) -> None:
    # --quick without --with-peers never installs or runs transformers.js.
    assert "--with-peers" in results["peers"]["transformers_js"]["skipped"]
    assert results["peers"]["transformers_py"].get("skipped") or results["peers"]["transformers_py"]["results"]


def test_targets_are_all_reported(results: dict[str, Any]) -> None:
    names = [t["name"] for t in results["targets"]]
    assert len(names) == 7
    # --quick measures no concurrency 16, so those targets are not judged.
    c16 = next(t for t in results["targets"] if "concurrency 16 >=" in t["name"])
    assert c16["met"] is None


def test_the_performance_issue_s_targets_are_judged_from_one_run() -> None:
    """Server CPU per image against raw ORT's at the batch size the server ran (its own instances), c1
    throughput against raw batch-1 run one at a time, and JPEG frames against unary JPEGs."""

    def level(kind: str, concurrency: int, rate: float, **extra: Any) -> dict[str, Any]:
        return {
            "mode": "stream" if kind.startswith("stream") else "unary",
            "kind": kind,
            "batching": "on",
            "concurrency": concurrency,
            "images_per_s": rate,
            "latency_ms": {"p50": 6.0, "p99": 9.0},
            **extra,
        }

    raw_rows = [
        {"batch_size": 1, "instances": 2, "images_per_s": 210.0, "cpu_ms_per_image": 9.5},
        {"batch_size": 1, "instances": 1, "images_per_s": 180.0, "cpu_ms_per_image": 11.0},
        {"batch_size": 4, "instances": 2, "images_per_s": 220.0, "cpu_ms_per_image": 9.0},
        {"batch_size": 4, "instances": 1, "images_per_s": 150.0, "cpu_ms_per_image": 13.0},
    ]
    results = {
        "limit": {
            "raw_ort": {
                "instances": 2,
                "batches": raw_rows,
                "best": {"images_per_s": 220.0},
                "batch1_latency_ms": {"p50": 5.5, "p99": 7.0},
            },
            "pipeline": [],
        },
        "server": {
            "levels": [
                # 1.9 cores for 200 img/s: 9.5 CPU-ms/img, at a mean batch of 3.6 (nearest raw: 4, 9.0 ms).
                level("tensor", 16, 200.0, server_cpu_util=1.9, server_batches={"avg_batch_size": 3.6}),
                level("tensor", 1, 150.0),
                level("jpeg_small", 16, 100.0),
                level("stream_jpeg", 16, 105.0),
                level("stream_raw", 16, 120.0),
            ]
        },
    }
    targets = {t["name"].split(" >=")[0].split(" <=")[0]: t for t in report.evaluate_targets(results)}
    c16 = targets["tensor inputs at concurrency 16"]
    assert c16["ratio"] == pytest.approx(200 / 220) and c16["met"] is False  # 0.909 < 0.92
    cpu = targets["server CPU per image at concurrency 16"]
    assert cpu["ratio"] == pytest.approx(9.5 / 9.0) and cpu["met"] is False  # 1.056 > 1.05
    assert "batch 4" in cpu["measured"]
    c1 = targets["concurrency-1 tensor throughput"]
    assert c1["ratio"] == pytest.approx(150 / 180) and c1["met"] is False  # the one-at-a-time session's rate
    latency = targets["concurrency-1 tensor p50"]
    assert "p99 9.00 vs 7.00 ms" in latency["measured"]
    streams = targets["streams"]
    assert streams["ratio"] == pytest.approx(1.05) and streams["met"] is True
    assert "raw frames 0.60x tensor c16" in streams["measured"]


def test_window_counts_only_answers_inside_it() -> None:
    window = Window(warmup_s=0.0, duration_s=1000.0, max_count=2)
    opens = window.opens
    window.record(opens - 1.0, opens - 0.5)  # warm-up answer: not counted
    window.record(opens + 0.1, opens + 0.2)
    window.record(opens + 0.1, opens + 0.3)  # reaches max_count: the window closes here
    window.record(opens + 0.1, opens + 0.4)  # drained after the close: not counted
    assert window.count == 2
    assert window.stopping
    assert window.seconds() == pytest.approx(0.3)
    assert len(window.latencies) == 2


def test_target_is_missed_when_batching_on_is_slower() -> None:
    def level(batching: str, rate: float) -> dict[str, Any]:
        return {
            "mode": "unary",
            "kind": "tensor",
            "batching": batching,
            "concurrency": 4,
            "images_per_s": rate,
            "latency_ms": {"p50": 5.0},
        }

    results = {
        "limit": {
            "raw_ort": {"best": {"images_per_s": 200.0}, "batch1_latency_ms": {"p50": 4.0}},
            "pipeline": [],
        },
        "server": {"levels": [level("on", 90.0), level("off", 100.0)]},
    }
    target = next(t for t in report.evaluate_targets(results) if t["name"].startswith("batching on"))
    assert target["met"] is False
    assert target["ratio"] == pytest.approx(0.9)


def test_overhead_mode_reports_server_cpu_beside_raw_and_records_a_flame_graph(tmp_path: Path) -> None:
    """benchmarks.overhead: one row per door and input kind, with the raw figure it compares against; --flame
    leaves a py-spy SVG of the server's own Python under that load."""
    out = tmp_path / "overhead.json"
    completed = run_module(
        "overhead",
        "--doors",
        "imgcls.v1,hf-http",
        "--kinds",
        "tensor,jpeg_small",
        "--seconds",
        "1",
        "--concurrency",
        "2",
        "--flame",
        str(tmp_path / "flames"),
        "--out",
        str(out),
        "--images",
        str(IMAGES),
        timeout=240,
    )
    result = json.loads(out.read_text())
    rows = {(r["door"], r["kind"]): r for r in result["rows"]}
    # hf-http carries images only: its tensor row is skipped, said so on stderr.
    assert set(rows) == {("imgcls.v1", "tensor"), ("imgcls.v1", "jpeg_small"), ("hf-http", "jpeg_small")}
    assert "skipping hf-http tensor" in completed.stderr
    for row in rows.values():
        assert row["images_per_s"] > 0 and not row["errors"]
        assert row["server_cpu_ms_per_image"] > 0 and row["raw_cpu_ms_per_image"] > 0
        assert math.isclose(row["overhead_ms_per_image"], row["server_cpu_ms_per_image"] - row["raw_cpu_ms_per_image"])
        svg = Path(row["flame"]).read_text()
        assert svg.startswith("<?xml") and "imgcls" in svg
        # The window's CPU per image split by thread group: every group, none negative, adding up to the whole.
        threads = row["threads_ms_per_image"]
        assert set(threads) == {"event_loop", "grpc_core", "model_and_workers"}, threads
        assert all(ms >= 0 for ms in threads.values()), threads
        assert math.isclose(sum(threads.values()), row["server_cpu_ms_per_image"], rel_tol=1e-6), threads
    # A tensor needs no decoding: ONNX Runtime's runs, on the batchers' worker threads, are most of its CPU.
    tensor = rows[("imgcls.v1", "tensor")]["threads_ms_per_image"]
    assert max(tensor, key=tensor.__getitem__) == "model_and_workers", tensor
    assert "| imgcls.v1 | tensor |" in completed.stdout
    assert "event loop / gRPC core / model threads ms/img" in completed.stdout


PR_SET_NAME = 15  # prctl(2): set the calling thread's comm, the name /proc/<pid>/task/<tid>/comm shows
BURN_S = 0.3  # CPU seconds each burner spends; /proc counts in 1/CLK_TCK (10 ms) ticks
COUNTED_S = 0.1  # what a burner's group must have gained at least, far below BURN_S for slack


def burn(seconds: float) -> None:
    """Spin until the calling thread itself has run ``seconds`` of CPU (its own clock: contention only delays it)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def burn_on_a_thread(os_name: str | None) -> dict[str, float]:
    """thread_cpu's gain per group while a thread, given ``os_name`` as its OS name (comm) first, burns CPU.

    Both readings are taken on that thread while it is alive: an ended thread leaves /proc/<pid>/task."""
    gained: dict[str, float] = {}

    def run() -> None:
        if os_name is not None:
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.prctl(PR_SET_NAME, os_name.encode(), 0, 0, 0) == 0, os.strerror(ctypes.get_errno())
        before = thread_cpu(os.getpid())
        burn(BURN_S)
        after = thread_cpu(os.getpid())
        gained.update({group: after[group] - before[group] for group in before})

    # A Python-level name that is no gRPC prefix: Python 3.14 and later give it to the OS thread too.
    worker = threading.Thread(target=run, name="bench-burner")
    worker.start()
    worker.join()
    assert gained, "the burner thread failed"
    return gained


@pytest.mark.parametrize(
    ("os_name", "group"),
    [("grpc_test", "grpc_core"), ("event_engine", "grpc_core"), (None, "model_and_workers")],
)
def test_thread_cpu_groups_a_thread_by_its_os_name(os_name: str | None, group: str) -> None:
    """benchmarks.overhead.thread_cpu counts a thread whose OS name starts as gRPC core names its threads under
    grpc_core, and any other thread but the main one under model_and_workers."""
    gained = burn_on_a_thread(os_name)
    assert set(gained) == {"event_loop", "grpc_core", "model_and_workers"}
    assert gained[group] >= COUNTED_S, gained
    assert max(gained, key=gained.__getitem__) == group, gained


def test_thread_cpu_counts_the_main_thread_as_the_event_loop() -> None:
    """thread_cpu counts the process's main thread (tid == pid: the server's asyncio loop) under event_loop."""
    assert threading.get_native_id() == os.getpid(), "pytest runs this test on the main thread"
    before = thread_cpu(os.getpid())
    burn(BURN_S)
    after = thread_cpu(os.getpid())
    gained = {group: after[group] - before[group] for group in before}
    assert gained["event_loop"] >= COUNTED_S, gained
    assert max(gained, key=gained.__getitem__) == "event_loop", gained


def test_grpc_floor_reports_every_handler_over_every_round(tmp_path: Path) -> None:
    """benchmarks.grpc_floor: a bare grpc.aio (or grpcio synchronous) server per handler and round, its JSON (the
    message size, every round, their medians) and its markdown table, one row per handler."""
    out = tmp_path / "floor.json"
    rounds = 2
    size = 10_000
    completed = run_module(
        "grpc_floor",
        "--calls",
        "400",  # server CPU is read in 10 ms ticks: 64 calls (about 20 ms) could read as none
        "--rounds",
        str(rounds),
        "--concurrency",
        "4",
        "--bytes",
        str(size),
        "--no-bdp-probe",
        "--out",
        str(out),
        timeout=120,
    )
    result = json.loads(out.read_text())
    assert result["bytes"] == size
    assert result["bdp_probe"] is False
    handlers = ("unary", "stream_unary", "sync_unary")
    assert set(result["rounds"]) == set(handlers) == set(result["medians"])
    for handler in handlers:
        measured = result["rounds"][handler]
        assert len(measured) == rounds, measured
        median = result["medians"][handler]
        assert set(median) == {"calls_per_s", "server_cpu_ms_per_call"}, median
        for key, value in median.items():
            assert value > 0 and math.isfinite(value), (handler, key, value)
            assert value == statistics.median(r[key] for r in measured), (handler, key)
        assert f"| {handler} | " in completed.stdout, completed.stdout


def test_loop_profile_counts_python_calls_per_request_and_lists_where_they_go(tmp_path: Path) -> None:
    """benchmarks.loop_profile: the event loop's Python calls per Classify (the machine-independent figure two
    versions are compared by), and its top functions, with imgcls's own handler among them."""
    out = tmp_path / "profile.json"
    completed = run_module(
        "loop_profile",
        "--calls",
        "64",
        "--warmup",
        "16",
        "--concurrency",
        "4",
        "--top",
        "40",
        "--out",
        str(out),
        timeout=180,
    )
    result = json.loads(out.read_text())
    assert result["calls"] == 64
    # A Classify call runs hundreds of Python functions on the loop (grpc.aio's, asyncio's, imgcls's).
    assert 100 < result["python_calls_per_request"] < 5000
    assert result["profiled_cpu_ms_per_request"] > 0
    assert len(result["by_own_time"]) == 40 and len(result["by_cumulative_time"]) == 40
    cumulative = [row["function"] for row in result["by_cumulative_time"]]
    assert any("servicer.py" in name and "(Classify)" in name for name in cumulative), cumulative
    handler = next(row for row in result["by_cumulative_time"] if "(Classify)" in row["function"])
    assert handler["calls_per_request"] >= 1  # each call's coroutine, resumed at least once
    assert "Python calls per request on the event loop" in completed.stdout
    assert "| by cumulative time |" in completed.stdout


def test_jpeg_stream_frames_are_the_unary_jpeg_s_own_bytes(tmp_path: Path) -> None:
    # "streams >= unary" compares per-image work: the frames must be the very image the unary calls send.
    class NoModel:
        def tensor_for(self, path: Path) -> Any:
            return np.zeros((3, 2, 2), dtype=np.float32)

    images = {"jpeg_small": IMAGES / "coffee.jpg", "jpeg_large": IMAGES / "coffee_1920x1280.jpg"}
    payloads = write_payloads(NoModel(), images, tmp_path)  # type: ignore[arg-type]
    assert Path(payloads["stream_jpeg"]["path"]).read_bytes() == Path(payloads["jpeg_small"]["path"]).read_bytes()
    labels = describe_inputs(images)
    assert labels["stream_jpeg"] == f"stream, {labels['jpeg_small']}" == "stream, JPEG 600x400"


LATEST = ROOT / "benchmarks" / "results" / "latest" / "results.json"


def test_readme_performance_table_is_the_latest_run_s() -> None:
    """After a run into results/latest, `python -m benchmarks.report --readme README.md` rewrites the table."""
    readme = (ROOT / "README.md").read_text()
    start, stop = report.readme_block(readme)
    latest = json.loads(LATEST.read_text())
    assert readme[start:stop].strip() == report.readme_table(latest)
    assert len(latest["targets"]) >= 7 and all(t["name"] in readme for t in latest["targets"])


def test_update_readme_rewrites_only_the_marked_block(tmp_path: Path) -> None:
    latest = json.loads(LATEST.read_text())
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{report.README_BEGIN}\nstale | table\n{report.README_END}\n\nafter\n")
    assert report.main(["--readme", str(readme), "--results", str(LATEST)]) == 0
    text = readme.read_text()
    assert "stale" not in text and text.startswith("# x\n\nbefore\n") and text.endswith("\n\nafter\n")
    assert report.readme_table(latest) in text
    report.update_readme(readme, latest)  # again: the same text, not a second table
    assert readme.read_text() == text


def test_update_readme_refuses_a_readme_without_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no table here\n")
    with pytest.raises(ValueError, match=r"no .* block"):
        report.update_readme(readme, json.loads(LATEST.read_text()))
    assert readme.read_text() == "# no table here\n"
