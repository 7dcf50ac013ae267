"""Results -> results.json, results.md (every figure beside its ratio to the limit), throughput.png, latency.png.

The limit ("raw") is the best raw ONNX Runtime throughput over batch sizes, the higher of the
measurement before and after the server runs (the machine is shared: noise only lowers it).
Latencies are compared with the raw batch-1 run time (the lower p50 of the two measurements),
decode/preprocess costs too. JPEG rows are also compared with the straightforward in-process
path (decode without draft + preprocess + batch-1 run, one image after another).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks import protocols

KIND_COLORS = {"tensor": "tab:blue", "jpeg_small": "tab:orange", "jpeg_large": "tab:green"}


def label(results: dict[str, Any], kind: str) -> str:
    return str(results["meta"].get("inputs", {}).get(kind, kind))


# -- reference figures ---------------------------------------------------------------------------
def references(results: dict[str, Any]) -> dict[str, Any]:
    limit = results["limit"]
    recheck = limit.get("recheck") or {}
    raw_best = max(limit["raw_ort"]["best"]["images_per_s"], recheck.get("best", {}).get("images_per_s", 0.0))
    b1 = [limit["raw_ort"]["batch1_latency_ms"]["p50"]]
    if recheck.get("batch1_latency_ms"):
        b1.append(recheck["batch1_latency_ms"]["p50"])
    straightforward = {row["image"]: row["images_per_s"] for row in limit["pipeline"] if not row["jpeg_draft"]}
    return {"raw_best": raw_best, "raw_b1_ms": min(b1), "straightforward": straightforward}


def unary_levels(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [lv for lv in results["server"]["levels"] if lv["mode"] == "unary"]


def stream_levels(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [lv for lv in results["server"]["levels"] if lv["mode"] == "stream"]


def find_level(results: dict[str, Any], kind: str, concurrency: int | None, batching: str) -> dict[str, Any] | None:
    for level in results["server"]["levels"]:
        if (
            level["kind"] == kind
            and level["batching"] == batching
            and (concurrency is None or level["concurrency"] == concurrency)
        ):
            return level
    return None


# -- formatting ----------------------------------------------------------------------------------
def _ratio(value: float, ref: float) -> float:
    return value / ref if ref and math.isfinite(value) else float("nan")


def rate(value: float, ref: float, unit: str = "img/s", label: str = "raw") -> str:
    return f"{value:.1f} {unit} ({_ratio(value, ref):.2f}x {label})"


def ms(value: float, ref: float, label: str = "raw b1") -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.1f} ms ({_ratio(value, ref):.2f}x {label})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


# -- targets -------------------------------------------------------------------------------------
def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets; met is None when this run did not measure the figure (e.g. --quick)."""
    ref = references(results)
    targets: list[dict[str, Any]] = []

    c16 = find_level(results, "tensor", 16, "on")
    targets.append(
        {
            "name": "tensor inputs at concurrency 16 >= 0.92x raw ORT best",
            "measured": f"{c16['images_per_s']:.1f} img/s = {_ratio(c16['images_per_s'], ref['raw_best']):.2f}x raw"
            if c16
            else "not measured",
            "ratio": _ratio(c16["images_per_s"], ref["raw_best"]) if c16 else None,
            "goal": 0.92,
            "met": _ratio(c16["images_per_s"], ref["raw_best"]) >= 0.92 if c16 else None,
        }
    )
    targets.append(_server_cpu_target(results, c16))

    c1 = find_level(results, "tensor", 1, "on")
    overhead = c1["latency_ms"]["p50"] - ref["raw_b1_ms"] if c1 else None
    raw_p99 = results["limit"]["raw_ort"]["batch1_latency_ms"].get("p99")
    p99 = (
        f"; p99 {c1['latency_ms']['p99']:.2f} vs {raw_p99:.2f} ms"
        if c1 and raw_p99 is not None and "p99" in c1["latency_ms"]
        else ""
    )
    targets.append(
        {
            "name": "concurrency-1 tensor p50 <= raw batch-1 time + 1 ms",
            "measured": f"p50 {c1['latency_ms']['p50']:.2f} ms vs raw b1 {ref['raw_b1_ms']:.2f} ms: +{overhead:.2f} ms"
            + p99
            if c1 and overhead is not None
            else "not measured",
            "ratio": _ratio(c1["latency_ms"]["p50"], ref["raw_b1_ms"]) if c1 else None,
            "goal": "+1 ms",
            "met": overhead <= 1.0 if overhead is not None else None,
        }
    )
    raw_b1_rate = _raw_batch1_rate(results)
    c1_ratio = _ratio(c1["images_per_s"], raw_b1_rate) if c1 and raw_b1_rate else None
    targets.append(
        {
            "name": "concurrency-1 tensor throughput >= 0.9x raw batch-1 (one run at a time)",
            "measured": f"{c1['images_per_s']:.1f} img/s vs raw b1 {raw_b1_rate:.1f} img/s: {c1_ratio:.2f}x"
            if c1 and raw_b1_rate and c1_ratio is not None
            else "not measured",
            "ratio": c1_ratio,
            "goal": 0.9,
            "met": c1_ratio >= 0.9 if c1_ratio is not None else None,
        }
    )

    pairs = []
    for on in unary_levels(results):
        if on["batching"] != "on":
            continue
        off = find_level(results, on["kind"], on["concurrency"], "off")
        if off and off["images_per_s"] > 0:
            pairs.append((on["images_per_s"] / off["images_per_s"], on["kind"], on["concurrency"]))
    worst = min(pairs) if pairs else None
    targets.append(
        {
            "name": "batching on >= 0.95x batching off at every concurrency",
            "measured": f"worst {worst[0]:.2f}x ({worst[1]} c{worst[2]}); "
            + ", ".join(f"{k} c{c}: {r:.2f}x" for r, k, c in pairs if r < 0.95)
            if worst
            else "not measured",
            "ratio": worst[0] if worst else None,
            "goal": 0.95,
            "met": all(r >= 0.95 for r, _, _ in pairs) if pairs else None,
            "pairs": [{"kind": k, "concurrency": c, "on_over_off": r} for r, k, c in pairs],
        }
    )

    big = [lv for lv in unary_levels(results) if lv["kind"] == "jpeg_large" and lv["batching"] == "on"]
    plain = ref["straightforward"].get("jpeg_large")
    if big and plain:
        best = max(big, key=lambda lv: lv["images_per_s"])
        ratio = best["images_per_s"] / plain
        measured = (
            f"{best['images_per_s']:.1f} img/s (c{best['concurrency']}) vs straightforward {plain:.1f} img/s: "
            f"{ratio:.2f}x"
        )
    else:
        ratio, measured = None, "not measured"
    targets.append(
        {
            "name": "1920x1280 JPEG >= 3x the straightforward path",
            "measured": measured,
            "ratio": ratio,
            "goal": 3.0,
            "met": ratio >= 3.0 if ratio is not None else None,
        }
    )

    # Like with like: the same JPEG as stream frames and as unary calls (decoded and preprocessed alike); raw
    # frames are resized and normalized, which tensor inputs are not, so their ratio to tensors is shown, not
    # judged.
    stream = find_level(results, "stream_jpeg", None, "on")
    unary = find_level(results, "jpeg_small", 16, "on")
    raw_frames = find_level(results, "stream_raw", None, "on")
    if stream and unary and unary["images_per_s"] > 0:
        ratio = stream["images_per_s"] / unary["images_per_s"]
        measured = (
            f"JPEG frames {stream['images_per_s']:.1f} frames/s vs unary JPEG c16 {unary['images_per_s']:.1f} "
            f"img/s: {ratio:.2f}x"
        )
        if raw_frames and c16 and c16["images_per_s"] > 0:
            measured += f"; raw frames {raw_frames['images_per_s'] / c16['images_per_s']:.2f}x tensor c16"
    else:
        ratio, measured = None, "not measured (needs JPEG frames and unary JPEG at c16)"
    targets.append(
        {
            "name": "streams >= unary (JPEG frames against unary JPEG at concurrency 16)",
            "measured": measured,
            "ratio": ratio,
            "goal": 1.0,
            "met": ratio >= 1.0 if ratio is not None else None,
        }
    )
    return targets


def _raw_batch1_rate(results: dict[str, Any]) -> float | None:
    """Raw images/s at batch 1, one run at a time (the lone request's session; the server's when it has one)."""
    rows = [r for r in results["limit"]["raw_ort"].get("batches", []) if r["batch_size"] == 1]
    if not rows:
        return None
    alone = [r for r in rows if r.get("instances") == 1]
    return max(r["images_per_s"] for r in alone or rows)


def _server_cpu_target(results: dict[str, Any], c16: dict[str, Any] | None) -> dict[str, Any]:
    """Server CPU per image at concurrency 16 against raw ORT's at the batch size the server ran, measured as
    the server runs (its instances side by side, its session options)."""
    raw = results["limit"]["raw_ort"]
    rows = [
        r for r in raw.get("batches", []) if r.get("cpu_ms_per_image") and r.get("instances") == raw.get("instances")
    ]
    name = "server CPU per image at concurrency 16 <= 1.05x raw ORT's at the same batch size"
    if not (c16 and rows and c16.get("server_cpu_util") and c16["images_per_s"] > 0):
        return {"name": name, "measured": "not measured", "ratio": None, "goal": 1.05, "met": None}
    server_ms = 1e3 * c16["server_cpu_util"] / c16["images_per_s"]
    mean_batch = (c16.get("server_batches") or {}).get("avg_batch_size") or 1.0
    nearest = min(rows, key=lambda r: abs(r["batch_size"] - mean_batch))
    ratio = server_ms / nearest["cpu_ms_per_image"]
    return {
        "name": name,
        "measured": f"{server_ms:.2f} vs raw {nearest['cpu_ms_per_image']:.2f} CPU-ms/img at batch "
        f"{nearest['batch_size']} (server's mean batch {mean_batch:.1f}): {ratio:.2f}x",
        "ratio": ratio,
        "goal": 1.05,
        "met": ratio <= 1.05,
    }


# -- flat rows (every figure with its ratio) ---------------------------------------------------------
def build_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    ref = references(results)
    raw, b1 = ref["raw_best"], ref["raw_b1_ms"]
    rows: list[dict[str, Any]] = []

    def add(section: str, name: str, value: float, unit: str, reference: float, **extra: Any) -> None:
        rows.append(
            {"section": section, "name": name, "value": value, "unit": unit, "ratio": _ratio(value, reference), **extra}
        )

    for row in results["limit"]["raw_ort"]["batches"]:
        mode = row.get("mode", "")
        add("limit", f"raw ORT batch {row['batch_size']} {mode}".strip(), row["images_per_s"], "img/s", raw)
    add("limit", "raw ORT batch-1 p50", results["limit"]["raw_ort"]["batch1_latency_ms"]["p50"], "ms", b1)
    for row in results["limit"]["preprocess"]:
        draft = row.get("jpeg_draft_mode") or ("on" if row["jpeg_draft"] else "off")
        add("preprocess", f"decode+preprocess {row['image']} draft {draft}", row["ms_per_image"], "ms", b1)
    for row in results["limit"]["pipeline"]:
        add("pipeline", f"{row['path']} {row['image']}", row["images_per_s"], "img/s", raw)
    for lv in results["server"]["levels"]:
        section = "unary" if lv["mode"] == "unary" else "stream"
        name = f"{lv['kind']} c{lv['concurrency']} batching {lv['batching']}"
        extra: dict[str, Any] = {"latency_ratio_p50": _ratio(lv["latency_ms"]["p50"], b1)}
        plain = ref["straightforward"].get(lv["kind"])
        if plain:
            extra["ratio_straightforward"] = _ratio(lv["images_per_s"], plain)
        add(section, name, lv["images_per_s"], "img/s", raw, **extra)
    for peer, data in results["peers"].items():
        for row in data.get("results", []):
            add("peer", f"{peer} {row['image']} c{row['concurrency']}", row["images_per_s"], "img/s", raw)
    rows += protocols.rows(results)  # ratios to imgcls.v1, not to raw
    return rows


# -- markdown ------------------------------------------------------------------------------------
def markdown(results: dict[str, Any]) -> str:
    ref = references(results)
    raw, b1 = ref["raw_best"], ref["raw_b1_ms"]
    meta, machine, limit = results["meta"], results["meta"]["machine"], results["limit"]
    out = [
        "# imgcls benchmark",
        "",
        f"- date: {meta['date']}, profile: {meta['profile']}, run time {meta['duration_s']:.0f} s, "
        f"git {machine['git']}",
        f"- machine: {machine['cpu_model']}, {machine['logical_cpus']} logical CPUs "
        f"({machine['physical_cores']} physical cores), {machine['memory_gb']} GB; load average at start "
        f"{machine['load_average_start'][0]:.2f}, at end {machine['load_average_end'][0]:.2f}",
        f"- software: Python {machine['python']}, onnxruntime {machine['onnxruntime']}, grpcio {machine['grpcio']}, "
        f"numpy {machine['numpy']}, Pillow {machine['pillow']}",
        f"- model: {meta['model']}",
        f"- server: batching on = {meta['server_settings']['batching_on']}; batching off = "
        f"{meta['server_settings']['batching_off']}; jpeg_draft {meta['server_settings']['jpeg_draft']}; "
        f"stream_max_in_flight {meta['server_settings']['stream_max_in_flight']}",
        f"- **the limit (raw)**: {raw:.1f} img/s, the best raw ONNX Runtime batch "
        f"(batch {limit['raw_ort']['best']['batch_size']}); **raw b1** = batch-1 run p50 {b1:.2f} ms. "
        "Every figure is followed by its ratio to one of them.",
        "",
        "## Targets",
        "",
    ]
    out += _table(
        ["target", "measured", "met"],
        [[t["name"], t["measured"], MET[t["met"]]] for t in results["targets"]],
    )

    out += ["## The limit: raw ONNX Runtime session.run on pre-processed tensors", ""]
    raw_ort = limit["raw_ort"]
    out += [
        f"The server runs {raw_ort.get('instances', 1)} ONNX Runtime run(s) side by side per model with "
        f"{raw_ort.get('intra_op_threads', 0) or 'default'} intra-op thread(s) each, and a batch that runs alone "
        "(nothing else running or queued) on a session using every core; the raw runs are measured both ways.",
        "",
    ]
    rows = [
        [
            str(r["batch_size"]),
            r.get("mode", "-"),
            rate(r["images_per_s"], raw),
            f"{r['ms_per_batch']:.1f} ms",
            str(r["runs"]),
        ]
        for r in raw_ort["batches"]
    ]
    out += _table(["batch", "runs at once", "throughput", "time per run", "runs"], rows)
    lat = raw_ort["batch1_latency_ms"]
    out += [
        f"Batch-1 latency (one run at a time, every core: what a lone request gets): p50 {ms(lat['p50'], b1)}, "
        f"p90 {ms(lat['p90'], b1)}, p99 {ms(lat['p99'], b1)} ({raw_ort['batch1_runs']} runs).",
        "",
    ]
    if raw_ort.get("batch1_latency_one_instance_ms"):
        narrow = raw_ort["batch1_latency_one_instance_ms"]
        out += [
            f"Batch-1 latency on one instance's share of the cores (for reference): p50 {ms(narrow['p50'], b1)}, "
            f"p90 {ms(narrow['p90'], b1)}.",
            "",
        ]
    if limit.get("recheck"):
        again = limit["recheck"]
        out += [
            f"Re-check after the server runs: best {rate(again['best']['images_per_s'], raw)} at batch "
            f"{again['best']['batch_size']}, batch-1 p50 {ms(again['batch1_latency_ms']['p50'], b1)}.",
            "",
        ]

    out += ["## Decode + preprocess per image (the server's open_image + Preprocessor, one thread)", ""]

    def draft_mode(row: dict[str, Any]) -> str:
        mode = row.get("jpeg_draft_mode") or ("on" if row["jpeg_draft"] else "off")
        return f"{mode} (straightforward)" if mode == "off" else mode

    def fidelity(row: dict[str, Any]) -> str:
        change = row.get("largest_score_change")
        return "" if change is None else f"{change:.4f}"

    rows = [
        [
            f"{r['image']} ({r['size']}, {r['bytes'] // 1024} KiB)",
            draft_mode(r),
            ms(r["ms_per_image"], b1),
            fidelity(r),
            ms(r["full_decode_ms"], b1),
        ]
        for r in limit["preprocess"]
    ]
    headers = ["image", "jpeg_draft", "decode + preprocess", "largest score change", "full-size decode alone"]
    out += _table(headers, rows)

    out += ["## In-process pipeline (decode + preprocess + batch-1 run, one image after another)", ""]
    rows = [[r["image"], r["path"], rate(r["images_per_s"], raw), ms(r["ms_per_image"], b1)] for r in limit["pipeline"]]
    out += _table(["image", "path", "throughput", "per image"], rows)

    out += [
        "## Server: unary Classify (one image per request), separate load-generator process",
        "",
        "Throughput in img/s with its ratio to raw (JPEG rows also to the straightforward path, 'sf'); "
        "latencies with their ratio to raw b1. CPU: share of one core used (server / load generator).",
        "",
    ]
    rows = []
    for lv in unary_levels(results):
        plain = ref["straightforward"].get(lv["kind"])
        through = rate(lv["images_per_s"], raw)
        if plain:
            through += f" ({_ratio(lv['images_per_s'], plain):.2f}x sf)"
        batches = lv["server_batches"]
        rows.append(
            [
                label(results, lv["kind"]),
                lv["batching"],
                str(lv["concurrency"]),
                through,
                ms(lv["latency_ms"]["p50"], b1),
                ms(lv["latency_ms"]["p90"], b1),
                ms(lv["latency_ms"]["p99"], b1),
                f"{batches['avg_batch_size']:.2f}",
                f"{lv['server_cpu_util']:.2f} / {lv['loadgen_cpu_util']:.2f}",
                f"{lv['peak_rss_mb']:.0f} MB",
                _errors(lv),
            ]
        )
    out += _table(
        [
            "input",
            "batching",
            "conc",
            "throughput",
            "p50",
            "p90",
            "p99",
            "avg batch",
            "CPU srv/gen",
            "peak RSS",
            "errors",
        ],
        rows,
    )

    streams = stream_levels(results)
    if streams:
        c16 = find_level(results, "tensor", 16, "on")
        out += ["## Server: ClassifyStream (one stream, frames sent as fast as flow control allows)", ""]
        rows = []
        for lv in streams:
            through = rate(lv["images_per_s"], raw, unit="frames/s")
            if c16:
                through += f" ({_ratio(lv['images_per_s'], c16['images_per_s']):.2f}x tensor c16)"
            rows.append(
                [
                    label(results, lv["kind"]),
                    str(lv["concurrency"]),
                    str(lv["requests"]),
                    through,
                    ms(lv["latency_ms"]["p50"], b1),
                    ms(lv["latency_ms"]["p90"], b1),
                    ms(lv["latency_ms"]["p99"], b1),
                    f"{lv['server_batches']['avg_batch_size']:.2f}",
                    f"{lv['server_cpu_util']:.2f} / {lv['loadgen_cpu_util']:.2f}",
                    f"{lv['peak_rss_mb']:.0f} MB",
                    _errors(lv),
                ]
            )
        out += _table(
            [
                "stream",
                "in flight",
                "answered",
                "throughput",
                "p50",
                "p90",
                "p99",
                "avg batch",
                "CPU srv/gen",
                "peak RSS",
                "errors",
            ],
            rows,
        )

    memory = results["server"]["memory"]
    out += [
        "Server memory: "
        + "; ".join(
            f"batching {name}: {m['start_rss_mb']:.0f} MB idle, peak {m['peak_rss_mb']:.0f} MB"
            for name, m in memory.items()
        ),
        "",
    ]

    out += protocols.markdown(results)

    out += ["## Peers", ""]
    rows = []
    for peer, data in results["peers"].items():
        if data.get("skipped"):
            rows.append([peer, "-", "-", f"skipped: {data['skipped']}", "-"])
            continue
        version = data.get("version", "")
        for row in data["results"]:
            rows.append(
                [
                    f"{peer} {version}".strip(),
                    label(results, row["image"]),
                    str(row["concurrency"]),
                    rate(row["images_per_s"], raw),
                    ms(row["latency_ms"]["p50"], b1),
                ]
            )
    out += _table(["peer", "input", "conc", "throughput", "p50"], rows)
    return "\n".join(out)


def _errors(level: dict[str, Any]) -> str:
    errors = level.get("errors") or {}
    return ", ".join(f"{k} {v}" for k, v in errors.items()) if errors else "0"


# -- plots ---------------------------------------------------------------------------------------
def plot_throughput(results: dict[str, Any], path: Path) -> None:
    ref = references(results)
    fig, ax = plt.subplots(figsize=(8, 5))
    for kind, color in KIND_COLORS.items():
        for batching, style in (("on", "-"), ("off", "--")):
            levels = sorted(
                (lv for lv in unary_levels(results) if lv["kind"] == kind and lv["batching"] == batching),
                key=lambda lv: lv["concurrency"],
            )
            if levels:
                ax.plot(
                    [lv["concurrency"] for lv in levels],
                    [lv["images_per_s"] for lv in levels],
                    style,
                    marker="o",
                    color=color,
                    label=f"{label(results, kind)}, batching {batching}",
                )
        plain = ref["straightforward"].get(kind)
        if plain:
            ax.axhline(
                plain, color=color, linestyle=":", linewidth=1, label=f"straightforward path, {label(results, kind)}"
            )
    ax.axhline(ref["raw_best"], color="black", linestyle=":", label=f"raw ORT best ({ref['raw_best']:.0f} img/s)")
    for lv in stream_levels(results):
        ax.scatter([lv["concurrency"]], [lv["images_per_s"]], marker="*", s=120, label=label(results, lv["kind"]))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (requests in flight; streams: frames in flight)")
    ax.set_ylabel("images/s")
    ax.set_ylim(bottom=0)
    ax.set_title("imgcls throughput vs concurrency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(results: dict[str, Any], path: Path) -> None:
    ref = references(results)
    kinds = [k for k in KIND_COLORS if any(lv["kind"] == k for lv in unary_levels(results))]
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(5 * max(len(kinds), 1), 4.5), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=False):
        for batching, style in (("on", "-"), ("off", "--")):
            levels = sorted(
                (lv for lv in unary_levels(results) if lv["kind"] == kind and lv["batching"] == batching),
                key=lambda lv: lv["concurrency"],
            )
            if not levels:
                continue
            for pct, marker in (("p50", "o"), ("p90", "s"), ("p99", "^")):
                ax.plot(
                    [lv["concurrency"] for lv in levels],
                    [lv["latency_ms"][pct] for lv in levels],
                    style,
                    marker=marker,
                    label=f"{pct}, batching {batching}",
                )
        ax.axhline(ref["raw_b1_ms"], color="black", linestyle=":", label=f"raw b1 ({ref['raw_b1_ms']:.1f} ms)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrency")
        ax.set_ylabel("latency (ms)")
        ax.set_title(label(results, kind))
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _finite(value: Any) -> Any:
    """NaN/inf (e.g. a percentile of no samples) -> null, so results.json is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


README_BEGIN = "<!-- benchmark targets: begin (python -m benchmarks.report --readme README.md) -->"
README_END = "<!-- benchmark targets: end -->"
MET = {True: "yes", False: "**no**", None: "n/a"}


def readme_table(results: dict[str, Any]) -> str:
    """The README's performance table: the run's targets, where and when they were measured."""
    meta, machine = results["meta"], results["meta"]["machine"]
    lines = [
        "The server's cost on top of raw ONNX Runtime (same model, same cores), measured by "
        f"`python -m benchmarks.run` on {meta['date'][:10]} (git {machine['git']}, {machine['cpu_model']}, "
        f"{machine['logical_cpus']} CPUs, onnxruntime {machine['onnxruntime']}; ratios within one run):",
        "",
        *_table(["target", "measured", "met"], [[t["name"], t["measured"], MET[t["met"]]] for t in results["targets"]]),
    ]
    return "\n".join(lines).rstrip("\n")


def readme_block(text: str) -> tuple[int, int]:
    """Where the table sits in the README text: the span between its two markers."""
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError(f"the README has no {README_BEGIN!r} ... {README_END!r} block")
    return begin + len(README_BEGIN), end


def update_readme(readme: Path, results: dict[str, Any]) -> None:
    text = readme.read_text()
    start, stop = readme_block(text)
    readme.write_text(text[:start] + "\n" + readme_table(results) + "\n" + text[stop:])


def write_all(results: dict[str, Any], out: Path) -> None:
    results["targets"] = evaluate_targets(results)
    results["rows"] = build_rows(results)
    (out / "results.json").write_text(json.dumps(_finite(results), indent=1, allow_nan=False) + "\n")
    (out / "results.md").write_text(markdown(results) + "\n")
    plot_throughput(results, out / "throughput.png")
    plot_latency(results, out / "latency.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rewrite the README's performance table from a run's results.json.")
    parser.add_argument("--readme", type=Path, required=True, help="the README to update (its marked block)")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "latest" / "results.json")
    args = parser.parse_args(argv)
    update_readme(args.readme, json.loads(args.results.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
