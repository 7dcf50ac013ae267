"""The soak script, run briefly: it must start a server, drive it, judge every answer and report.

The real soak (10 minutes, 64 callers, 8 streams) is run by hand when the machine is quiet; this
only proves the command works end to end and that its checks can fail. No speed is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from imgcls.v1 import classifier_pb2 as pb
from soak import soak
from support.paths import SHARED

SCRIPT = Path(soak.__file__)


def test_short_soak_passes_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    command = [sys.executable, str(SCRIPT), "--duration", "18", "--callers", "16", "--streams", "2"]
    command += ["--frames-per-stream", "40", "--out", str(out), "--server-log", str(tmp_path / "server.log")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert result.stdout.startswith("# imgcls soak: PASS"), result.stdout[:2000]

    report = json.loads(out.read_text())
    assert report["passed"] is True and report["problems"] == []
    assert report["server"]["exit_code"] == 0
    assert report["config"] | {"duration_s": 18.0, "callers": 16, "streams": 2} == report["config"]
    for kind in ("unary", "stream_frames"):
        part = report[kind]
        # Both good and bad inputs were sent, and each got what it must.
        assert part["good"] > 0 and part["bad"] > 0, part
        assert part["total"] == part["good"] + part["bad"]
        assert part["failures"] == 0 and part["failure_examples"] == []
        assert part["by_status"] == {"bad/INVALID_ARGUMENT": part["bad"], "good/OK": part["good"]}
        for window in ("first", "last"):
            latency = part["latency"][window]
            assert latency["n"] > 0 and 0 < latency["p50_ms"] <= latency["p99_ms"], latency
    assert report["streams_opened"] > 2 and report["streams_failed"] == 0  # streams were reopened
    resources = report["resources"]
    assert resources["samples"] >= 10
    assert set(resources["rss_mb"]) == {
        "start",
        "after_warmup",
        "end",
        "max",
        "growth_after_warmup",
        "growth_after_warmup_pct",
        "slope_after_warmup_mb_per_min",
    }
    assert 0 < resources["fds"]["min"] <= resources["fds"]["max"]
    assert 0 < resources["threads"]["min"] <= resources["threads"]["max"]
    assert len(resources["series"]) >= 10 and all(len(point) == 4 for point in resources["series"])
    assert "| unary |" in result.stdout and "| stream_frames |" in result.stdout


# --- the judging, without a server: a wrong answer must count as a failure ----------------------

GOOD = soak.good_items(SHARED)
BAD = soak.bad_items(SHARED, seed=1)
COFFEE = next(item for item in GOOD if item.name == "coffee.jpg")
NOISE = next(item for item in BAD if item.name == "random bytes")


@pytest.mark.parametrize(
    ("plan", "code", "message", "top1s", "verdict"),
    [
        pytest.param(soak.Plan((COFFEE,)), grpc.StatusCode.OK, "", [COFFEE.top1], None, id="good-right"),
        pytest.param(soak.Plan((COFFEE,)), grpc.StatusCode.OK, "", [1], "top-1 [1], want [967]", id="good-wrong-top1"),
        pytest.param(
            soak.Plan((COFFEE, COFFEE)),
            grpc.StatusCode.OK,
            "",
            [COFFEE.top1],
            "want [967, 967]",
            id="good-missing-result",
        ),
        pytest.param(
            soak.Plan((COFFEE,)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "queue full",
            None,
            "RESOURCE_EXHAUSTED",
            id="good-shed",
        ),
        pytest.param(
            soak.Plan((COFFEE, NOISE)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inputs[1]: not a decodable image",
            None,
            None,
            id="bad-right",
        ),
        pytest.param(soak.Plan((NOISE,)), grpc.StatusCode.OK, "", [3], "OK (want INVALID_ARGUMENT)", id="bad-answered"),
        pytest.param(
            soak.Plan((NOISE,)),
            grpc.StatusCode.INTERNAL,
            "boom",
            None,
            "INTERNAL (want INVALID_ARGUMENT)",
            id="bad-internal",
        ),
        pytest.param(
            soak.Plan((COFFEE, NOISE)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inputs[0]: not a decodable image",
            None,
            "does not name inputs[1]",
            id="bad-wrong-input-named",
        ),
    ],
)
def test_judge(plan: soak.Plan, code: grpc.StatusCode, message: str, top1s: Any, verdict: str | None) -> None:
    got = soak.judge(plan, code, message, top1s)
    if verdict is None:
        assert got is None
    else:
        assert got is not None and verdict in got, got


def test_tally_counts_failures_and_statuses() -> None:
    tally = soak.Tally()
    tally.record(soak.Plan((COFFEE,)), grpc.StatusCode.OK, "", [COFFEE.top1], started=0.0)
    tally.record(soak.Plan((NOISE,)), grpc.StatusCode.OK, "", [3], started=0.0)
    assert (tally.good, tally.bad, tally.failure_count) == (1, 1, 1)
    assert tally.codes == {"good/OK": 1, "bad/OK": 1}
    assert "random bytes" in tally.failures[0]


def test_inputs_are_what_they_claim() -> None:
    # Every good input has a reference top-1; every bad one is really bad in the way it is named.
    assert {item.name for item in GOOD} >= {"coffee.jpg", "cat.jpg", "coffee.jpg as base64", "coffee.jpg as raw RGB8"}
    assert all(item.good for item in GOOD) and not any(item.good for item in BAD)
    kinds = {item.name: item.input.WhichOneof("kind") for item in BAD}
    assert kinds == {
        "random bytes": "image",
        "truncated JPEG": "image",
        "empty image": "image",
        "raw RGB8 of the wrong length": "raw",
        "tensor of the wrong shape": "tensor",
    }
    raw = next(item for item in BAD if item.name == "raw RGB8 of the wrong length").input.raw
    assert raw.format == pb.PIXEL_FORMAT_RGB8 and len(raw.data) != raw.width * raw.height * 3
