"""The HTTP page's examples (docs/doors/http.md) paste and run from the clone root, and give the answers it shows."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from typing import Any

import pytest
from server.http.helpers import needs_curl
from support import docs
from support.paths import ROOT
from support.servers import running_server

SECTION = docs.page("doors/http.md")
DOCUMENTED = "127.0.0.1:8000"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.+?)\n```", SECTION, re.S)


def assert_same_json(got: Any, want: Any) -> None:
    """Equal, floats to the digits the README shows."""
    if isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-6)
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            assert_same_json(got[key], want[key])
    elif isinstance(want, list):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_same_json(g, w)
    else:
        assert got == want


async def run(command: list[str], port: int, script: str) -> str:
    done = await asyncio.to_thread(
        subprocess.run,
        [*command, script.replace(DOCUMENTED, f"127.0.0.1:{port}")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_curl
async def test_curl_examples_give_the_answers_shown() -> None:
    sh, answers = blocks("sh"), [blocks("json")[0], *blocks("text")[0].splitlines()]
    async with running_server(http_port="auto") as server:
        assert server.http_port is not None
        # curl prints bodies without a newline: one answer a line, as the README shows them.
        outputs = [
            await run(["bash", "-c"], server.http_port, 'curl() { command curl -sS "$@"; echo; }\n' + s) for s in sh
        ]
    got = "".join(outputs).splitlines()
    assert len(got) == len(answers)
    for line, shown in zip(got, answers, strict=True):
        assert_same_json(json.loads(line), json.loads(shown))


async def test_python_example_prints_what_it_shows() -> None:
    (python,) = blocks("python")
    shown = [line.split("# ", 1)[1] for line in python.splitlines() if line.startswith("# ")]
    async with running_server(http_port="auto") as server:
        assert server.http_port is not None
        printed = (await run([sys.executable, "-c"], server.http_port, python)).splitlines()
    assert printed[0].startswith(shown[0].removesuffix("...]").rstrip(", "))
    assert " ".join(" ".join(printed[1:]).split()) == shown[1]  # numpy wraps long arrays
