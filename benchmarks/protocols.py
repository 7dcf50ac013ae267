"""Every front door with the same work, side by side: imgcls.v1 against the Open Inference Protocol (gRPC, HTTP)
and the Hugging Face Inference API (HTTP).

The levels run against the batching-on server, in short rounds; within a round each protocol runs once on
the same payload at the same concurrency, back to back (the order alternates between rounds, against
drift). The ratio of a door is its mean images/s over the rounds divided by imgcls.v1's.

- ``jpeg_large`` (1920x1280 JPEG): imgcls.v1 Classify ``image`` vs v2 ModelInfer on ``NAME_image``
  (one BYTES element), goal 0.95x;
- ``tensor`` (pre-processed float32 tensor): imgcls.v1 ``tensor.raw_data`` vs v2 ModelInfer on ``NAME``
  (raw_input_contents), goal 0.95x;
- ``jpeg_large`` over HTTP, goal 0.9x: ``hf-http``, the Hugging Face Inference API (``POST /models/NAME`` with
  the JPEG as the body, answered with the top-5 as JSON), and ``v2-http``, the Open Inference Protocol's REST
  API on ``NAME_image`` with Triton's binary tensor data extension (as tritonclient.http sends it).

Both answer the top-5 labels (v2: the classification extension, 5 strings). Results land in
``results["protocols"]``: the levels, one comparison per kind, and the targets (judged at concurrency 16
only, so --quick reports but does not judge them).
"""

from __future__ import annotations

import math
from statistics import mean
from typing import Any

SECTION = "protocols"
BASELINE = "imgcls.v1"
# Door -> (what it is, the goal as a fraction of imgcls.v1's throughput).
DOORS: dict[str, tuple[str, float]] = {
    "v2-grpc": ("Open Inference Protocol over gRPC (inference.GRPCInferenceService, same port)", 0.95),
    "hf-http": ("Hugging Face Inference API over HTTP (POST /models/NAME, the image as the body)", 0.9),
    "v2-http": ("Open Inference Protocol over HTTP (POST /v2/models/NAME_image/infer, binary tensor data)", 0.9),
}
KINDS = ("jpeg_large", "tensor")
# The inputs each door is measured on (the baseline runs every kind); HTTP: the 1920x1280 JPEG.
DOOR_KINDS: dict[str, tuple[str, ...]] = {"hf-http": ("jpeg_large",), "v2-http": ("jpeg_large",)}
JUDGED_CONCURRENCY = 16


def build_levels(profile: Any) -> list[dict[str, Any]]:
    """Paired levels: concurrency 16, four rounds of 3 s (full run); the highest concurrency, one round (--quick)."""
    full = profile.name == "full"
    concurrency = JUDGED_CONCURRENCY if full else max(profile.concurrencies)
    rounds = 4 if full else 1  # short rounds, interleaved: others' load on a shared machine hits both doors
    duration_s = min(profile.duration_s, 3.0)
    doors = [BASELINE, *DOORS]
    levels = []
    for round_index in range(rounds):
        for kind in KINDS:
            order = doors if round_index % 2 == 0 else list(reversed(doors))
            for protocol in order:
                if kind not in DOOR_KINDS.get(protocol, KINDS):
                    continue
                levels.append(
                    {
                        "id": f"{SECTION}-{kind}-c{concurrency}-{protocol}-r{round_index + 1}",
                        "section": SECTION,
                        "protocol": protocol,
                        "round": round_index + 1,
                        "mode": "unary",
                        "kind": kind,
                        "payload": kind,
                        "batching": "on",
                        "target": "on",
                        "concurrency": concurrency,
                        "warmup_s": profile.warmup_s,
                        "duration_s": duration_s,
                        "max_requests": profile.max_requests,
                    }
                )
    return levels


def split(levels: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the server's own levels, the protocol levels) from the load generator's results."""
    return [lv for lv in levels if lv.get("section") != SECTION], [lv for lv in levels if lv.get("section") == SECTION]


def summarize(levels: list[dict[str, Any]]) -> dict[str, Any]:
    comparisons = []
    for kind in KINDS:
        mine = [lv for lv in levels if lv["kind"] == kind]
        if not mine:
            continue
        base = [lv["images_per_s"] for lv in mine if lv["protocol"] == BASELINE]
        for door, (_description, goal) in DOORS.items():
            rates = [lv["images_per_s"] for lv in mine if lv["protocol"] == door]
            if not base or not rates:
                continue
            per_round = []
            for round_index in sorted({lv["round"] for lv in mine}):
                pair = {lv["protocol"]: lv["images_per_s"] for lv in mine if lv["round"] == round_index}
                if pair.get(BASELINE) and door in pair:
                    per_round.append(pair[door] / pair[BASELINE])
            ratio = mean(rates) / mean(base) if mean(base) else float("nan")
            concurrency = mine[0]["concurrency"]
            base_cpu = [cpu_ms_per_image(lv) for lv in mine if lv["protocol"] == BASELINE]
            door_cpu = [cpu_ms_per_image(lv) for lv in mine if lv["protocol"] == door]
            comparisons.append(
                {
                    "kind": kind,
                    "door": door,
                    "concurrency": concurrency,
                    "baseline_images_per_s": mean(base),
                    "images_per_s": mean(rates),
                    "ratio": ratio,
                    "round_ratios": per_round,
                    # Server CPU per image: steadier than throughput on a shared machine (others' load cuts both).
                    "baseline_cpu_ms_per_image": _mean_finite(base_cpu),
                    "cpu_ms_per_image": _mean_finite(door_cpu),
                    "goal": goal,
                    "met": (ratio >= goal) if concurrency == JUDGED_CONCURRENCY and math.isfinite(ratio) else None,
                }
            )
    targets = [
        {
            "name": f"{c['door']} {c['kind']} at concurrency {JUDGED_CONCURRENCY} >= {c['goal']}x {BASELINE}",
            "measured": f"{c['images_per_s']:.1f} vs {c['baseline_images_per_s']:.1f} img/s = {c['ratio']:.2f}x "
            f"(rounds: {', '.join(f'{r:.2f}x' for r in c['round_ratios'])}) at concurrency {c['concurrency']}",
            "ratio": c["ratio"],
            "goal": c["goal"],
            "met": c["met"],
        }
        for c in comparisons
    ]
    return {"levels": levels, "comparisons": comparisons, "targets": targets}


def cpu_ms_per_image(level: dict[str, Any]) -> float:
    """Server CPU (cores busy over the level) per image answered per second."""
    rate = level.get("images_per_s", 0.0)
    return 1e3 * level.get("server_cpu_util", float("nan")) / rate if rate else float("nan")


def _mean_finite(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return mean(finite) if finite else float("nan")


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows for results.json: each door's throughput with its ratio to imgcls.v1's."""
    return [
        {
            "section": SECTION,
            "name": f"{c['door']} {c['kind']} c{c['concurrency']}",
            "value": c["images_per_s"],
            "unit": "img/s",
            "ratio": c["ratio"],
            "baseline": BASELINE,
        }
        for c in results.get(SECTION, {}).get("comparisons", [])
    ]


def markdown(results: dict[str, Any]) -> list[str]:
    summary = results.get(SECTION)
    if not summary or not summary["levels"]:
        return []
    labels = results["meta"].get("inputs", {})
    out = [
        "## Protocols: the same work through every door (batching on, paired levels in rounds)",
        "",
        "Doors: "
        + "; ".join(f"**{door}**: {description}" for door, (description, _goal) in DOORS.items())
        + f"; the baseline is {BASELINE} Classify. Every answer is the top-5 labels.",
        "",
        "| door, input | concurrency | imgcls.v1 | door | ratio | rounds | goal | server CPU per image, v1 / door |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in summary["comparisons"]:
        met = {True: "met", False: "**missed**", None: "not judged"}[c["met"]]
        out.append(
            f"| {c['door']}, {labels.get(c['kind'], c['kind'])} | {c['concurrency']} | "
            f"{c['baseline_images_per_s']:.1f} img/s | {c['images_per_s']:.1f} img/s | {c['ratio']:.2f}x | "
            f"{', '.join(f'{r:.2f}x' for r in c['round_ratios'])} | >= {c['goal']}x: {met} | "
            f"{c['baseline_cpu_ms_per_image']:.1f} / {c['cpu_ms_per_image']:.1f} ms |"
        )
    out += ["", "| level | img/s | p50 | p99 | avg batch | CPU srv/gen | errors |", "|---|---|---|---|---|---|---|"]
    for lv in summary["levels"]:
        errors = ", ".join(f"{k} {v}" for k, v in lv["errors"].items()) or "-"
        out.append(
            f"| {lv['protocol']}, {labels.get(lv['kind'], lv['kind'])}, round {lv['round']} | "
            f"{lv['images_per_s']:.1f} | {lv['latency_ms']['p50']:.1f} ms | {lv['latency_ms']['p99']:.1f} ms | "
            f"{lv['server_batches']['avg_batch_size']:.2f} | "
            f"{lv.get('server_cpu_util', 0.0):.2f} / {lv['loadgen_cpu_util']:.2f} | {errors} |"
        )
    return [*out, ""]
