"""A short atheris (libFuzzer) run over image decoding and preprocessing.

fuzz_decoding.py feeds mutated files to decoding.open_image and the embedded model's
preprocessing; any exception but InvalidInputError is a crash. The seeds are written here from
the shared images (reliability.corpus), never downloaded. The run is bounded in time and count so
it fits a test; run the script by hand for longer (see its docstring).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from reliability import corpus
from support.paths import IMAGES

pytest.importorskip("atheris", reason="atheris (libFuzzer for Python) cannot be imported on this Python")

TARGET = Path(__file__).with_name("fuzz_decoding.py")
MAX_SECONDS = 15
MAX_RUNS = 50_000


def run_fuzzer(folder: Path, *args: str, self_test: bool = False) -> subprocess.CompletedProcess[str]:
    """libFuzzer flags: an input that takes over 10 s or makes the process grow past 2 GB (a
    decoder allocating for a size the file only claims) fails the run like an exception does."""
    # A fixed hash seed as well as a fixed -seed: the same inputs on every run, so the suite (and CI)
    # is deterministic; longer, exploratory runs are the by-hand command in fuzz_decoding.py.
    env = {**os.environ, "IMGCLS_FUZZ_SELF_TEST": "1" if self_test else "0", "PYTHONHASHSEED": "0"}
    return subprocess.run(
        [
            sys.executable,
            str(TARGET),
            *args,
            f"-artifact_prefix={folder}/",
            "-timeout=10",
            "-rss_limit_mb=2048",
            "-seed=1",
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=MAX_SECONDS + 60,
    )


def test_fuzzing_decoding_and_preprocessing_finds_no_crash(tmp_path: Path) -> None:
    seeds = corpus.write_corpus(tmp_path / "corpus", corpus.load_rgb(IMAGES / "coffee.jpg"))
    assert len(seeds) >= 10
    result = run_fuzzer(tmp_path, str(tmp_path / "corpus"), f"-runs={MAX_RUNS}", f"-max_total_time={MAX_SECONDS}")
    output = result.stdout + result.stderr
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "oom-", "timeout-")))
    assert result.returncode == 0 and not crashes, f"exit {result.returncode}, artifacts {crashes}:\n{output[-6000:]}"
    assert "Done " in output, output[-3000:]  # libFuzzer finished its runs, not just started
    # The seeds were read (the corpus only grows: it also holds what the fuzzer found new).
    assert len(list((tmp_path / "corpus").iterdir())) >= len(seeds)


def test_fuzz_harness_reports_a_crash(tmp_path: Path) -> None:
    # Guards the test above: an exception in the target must fail the run, with its traceback.
    (tmp_path / "seed").write_bytes(corpus.solid(4, 4))
    result = run_fuzzer(tmp_path, str(tmp_path / "seed"), self_test=True)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "RuntimeError: fuzz self-test" in output, output[-3000:]
