"""A short atheris (libFuzzer) run over image decoding and preprocessing.

fuzz_decoding.py feeds mutated files to decoding.open_image and the embedded model's
preprocessing; any exception but InvalidInputError is a crash. The seeds are written here from
the shared images (reliability.corpus), never downloaded. The run is bounded in time and count so
it fits a test; run the script by hand for longer (see its docstring).

Memory is the target's to measure (libFuzzer's watchdog is off): the fuzzer is started from this
large pytest process, and getrusage's peak, which libFuzzer reads, is inherited across exec.
"""

from __future__ import annotations

import os
import re
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
LARGE_PARENT_MB = 2200  # more than the 2048 MB libFuzzer limit this suite used to pass

# Run as `python -c LARGE_PARENT MB PROGRAM ARGS...`: write MB of memory (so it is resident), then exec
# PROGRAM in the same process, which inherits the peak in getrusage as a fuzzer started by a big pytest does.
LARGE_PARENT = "import os, sys; ballast = b'\\1' * (int(sys.argv[1]) << 20); os.execv(sys.argv[2], sys.argv[2:])"


def run_fuzzer(
    folder: Path,
    *args: str,
    self_test: str = "",
    parent_mb: int = 0,
    rss_limit_mb: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """libFuzzer flags: an input that takes over 10 s fails the run like an exception does; so does one
    that raises the target's resident memory by over 512 MB, or takes it past 2 GB (the target checks
    both from /proc/self/status: a decoder allocating for a size the file only claims).

    parent_mb: start the fuzzer from a process that first holds that much memory."""
    # A fixed hash seed as well as a fixed -seed: the same inputs on every run, so the suite (and CI)
    # is deterministic; longer, exploratory runs are the by-hand command in fuzz_decoding.py.
    env = {**os.environ, "IMGCLS_FUZZ_SELF_TEST": self_test, "PYTHONHASHSEED": "0"}
    if rss_limit_mb is not None:
        env["IMGCLS_FUZZ_RSS_LIMIT_MB"] = str(rss_limit_mb)
    # -rss_limit_mb=0: libFuzzer's own watchdog would see the parent's inherited peak as the fuzzer's.
    flags = [f"-artifact_prefix={folder}/", "-timeout=10", "-rss_limit_mb=0", "-seed=1"]
    command = [sys.executable, str(TARGET), *args, *flags]
    if parent_mb:
        command = [sys.executable, "-c", LARGE_PARENT, str(parent_mb), *command]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=MAX_SECONDS + 60)


def artifacts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(("crash-", "oom-", "timeout-")))


def one_seed(folder: Path) -> str:
    """A corpus folder of one small image: fuzzing mode, so libFuzzer saves an input that fails."""
    (folder / "corpus").mkdir()
    (folder / "corpus" / "seed").write_bytes(corpus.solid(4, 4))
    return str(folder / "corpus")


def getrusage_peak_mb(output: str) -> int:
    """The getrusage peak the target saw at start (its first line of output)."""
    found = re.search(r"imgcls fuzz: own resident \d+ MB; getrusage peak (\d+) MB", output)
    assert found, output[-3000:]
    return int(found.group(1))


def test_fuzzing_decoding_and_preprocessing_finds_no_crash(tmp_path: Path) -> None:
    seeds = corpus.write_corpus(tmp_path / "corpus", corpus.load_rgb(IMAGES / "coffee.jpg"))
    assert len(seeds) >= 10
    result = run_fuzzer(tmp_path, str(tmp_path / "corpus"), f"-runs={MAX_RUNS}", f"-max_total_time={MAX_SECONDS}")
    output = result.stdout + result.stderr
    crashes = artifacts(tmp_path)
    assert result.returncode == 0 and not crashes, f"exit {result.returncode}, artifacts {crashes}:\n{output[-6000:]}"
    assert "Done " in output, output[-3000:]  # libFuzzer finished its runs, not just started
    # The seeds were read (the corpus only grows: it also holds what the fuzzer found new).
    assert len(list((tmp_path / "corpus").iterdir())) >= len(seeds)


def test_fuzz_harness_reports_a_crash(tmp_path: Path) -> None:
    # Guards the test above: an exception in the target must fail the run, with its traceback.
    (tmp_path / "seed").write_bytes(corpus.solid(4, 4))
    result = run_fuzzer(tmp_path, str(tmp_path / "seed"), self_test="crash")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "RuntimeError: fuzz self-test" in output, output[-3000:]


def test_fuzzer_started_by_a_large_process_measures_only_its_own_memory(tmp_path: Path) -> None:
    # The parent's 2.2 GB peak is inherited (getrusage says so), yet a few seconds of fuzzing see no
    # out-of-memory: neither libFuzzer nor the target counts memory the fuzzer never had.
    seeds = corpus.write_corpus(tmp_path / "corpus", corpus.load_rgb(IMAGES / "coffee.jpg"))
    result = run_fuzzer(tmp_path, str(tmp_path / "corpus"), "-max_total_time=3", parent_mb=LARGE_PARENT_MB)
    output = result.stdout + result.stderr
    assert getrusage_peak_mb(output) >= LARGE_PARENT_MB  # the scenario holds: the peak was inherited
    crashes = artifacts(tmp_path)
    assert result.returncode == 0 and not crashes, f"exit {result.returncode}, artifacts {crashes}:\n{output[-6000:]}"
    assert "Done " in output and len(seeds) >= 10, output[-3000:]


def test_an_input_that_grows_memory_600_mb_is_reported_even_under_a_large_parent(tmp_path: Path) -> None:
    # The self-test input allocates 600 MB and frees it before returning: only its peak shows it. A check
    # reading getrusage would be blind here (the inherited 2.2 GB peak hides the target's ~700 MB).
    result = run_fuzzer(tmp_path, one_seed(tmp_path), "-runs=10", self_test="grow", parent_mb=LARGE_PARENT_MB)
    output = result.stdout + result.stderr
    assert getrusage_peak_mb(output) >= LARGE_PARENT_MB
    assert result.returncode != 0, output[-3000:]
    found = re.search(r"MemoryError: decoding this input raised resident memory by (\d+) MB at its peak", output)
    assert found, output[-3000:]
    assert 590 <= int(found.group(1)) <= 700, found.group(0)  # the input's own growth, not the parent's
    assert artifacts(tmp_path), output[-3000:]  # the input is saved for replay


def test_resident_memory_over_the_limit_ends_the_run_while_the_input_runs(tmp_path: Path) -> None:
    # The watchdog, for an input that never returns with its memory: a limit below the 600 MB it holds.
    result = run_fuzzer(tmp_path, one_seed(tmp_path), "-runs=10", self_test="hold", rss_limit_mb=400)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert re.search(r"imgcls fuzz: out of memory: resident \d+ MB, over the 400 MB limit", output), output[-3000:]
    assert "deadly signal" in output and artifacts(tmp_path), output[-3000:]  # libFuzzer saved the input
