"""atheris fuzz target: any bytes through decoding.open_image and the embedded model's preprocessing.

The only exception allowed out is InvalidInputError (the server answers it INVALID_ARGUMENT);
anything else is a crash, which the server would answer INTERNAL. Run by test_fuzz.py in a
subprocess, or by hand for longer:

    .venv/bin/python tests/reliability/fuzz_decoding.py CORPUS_DIR -max_total_time=600

(CORPUS_DIR: e.g. a folder written by ``reliability.corpus.write_corpus``; libFuzzer flags follow.)
The target polices memory itself from /proc/self/status (an input that raises resident memory by over
512 MB fails; resident memory over IMGCLS_FUZZ_RSS_LIMIT_MB, default 2048, aborts the run); add
``-rss_limit_mb=0`` when a large process starts the fuzzer, whose peak libFuzzer would count as its own.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

import atheris
import grpc  # noqa: F401  (imported uninstrumented: only imgcls and Pillow are worth the cost)
import numpy as np

with atheris.instrument_imports(include=["imgcls", "PIL"]):
    from imgcls.server.domain.errors import InvalidInputError
    from imgcls.server.images import decoding, preprocessing
    from PIL import Image

    # Pillow imports its format plugins on the first open; import them here so they are
    # instrumented too and the fuzzer sees its way into each format's parser.
    Image.init()

# The embedded model's folder (imgcls.server.settings names it too, but imports pydantic).
EMBEDDED_MODEL_DIR = Path(preprocessing.__file__).parent.parent / "models" / "efficientnet-lite0"

# Small, so one input decodes in milliseconds and the run covers many; the limit itself is
# tested in test_hostile_images.
MAX_PIXELS = 1 << 20

_CONFIG = json.loads((EMBEDDED_MODEL_DIR / "preprocessor_config.json").read_text())
# Both decode paths: JPEG draft (reduced-size decode) as served by default, and the exact one.
_PREPROCESSORS = [
    preprocessing.compile_preprocessor(_CONFIG, dtype=np.dtype(np.float32), jpeg_draft=draft) for draft in (True, False)
]


# Set by test_fuzz to prove the harness reports what it must, not swallowed: "crash" raises; "grow"
# allocates and frees GROW_MB (only the input's peak shows it); "hold" keeps GROW_MB until the watchdog ends it.
_SELF_TEST = os.environ.get("IMGCLS_FUZZ_SELF_TEST", "")
GROW_MB = 600

# Memory is measured here, not by libFuzzer (test_fuzz passes -rss_limit_mb=0): libFuzzer's RSS watchdog
# reads getrusage's ru_maxrss, which exec inherits from the parent process, so a fuzzer started by a
# pytest process that once held 2 GB would be "out of memory" from its first input. /proc/self/status
# describes this process's own address space only: VmRSS now, VmHWM its peak (reset by clear_refs).

# An input whose decoding raises the process's resident memory by this much above where it began is a
# crash: the input that did it, not whichever input a watchdog happens to catch running later.
MAX_PEAK_GROWTH_MB = 512
# The process's own resident memory must never pass this (a decoder allocating for a size the file only
# claims): the watchdog aborts the run, and libFuzzer saves the input that was running.
RSS_LIMIT_MB = int(os.environ.get("IMGCLS_FUZZ_RSS_LIMIT_MB", "2048"))
WATCHDOG_INTERVAL_S = 0.05


# Opened once: the target reads them around every input, and reopening costs a tenth of the run rate.
_STATUS = os.open("/proc/self/status", os.O_RDONLY)
try:
    _CLEAR_REFS: int | None = os.open("/proc/self/clear_refs", os.O_WRONLY)
except OSError:
    _CLEAR_REFS = None


def _status_mb(field: bytes) -> float:
    """VmRSS or VmHWM of this process, in MB (the kernel reports kB)."""
    status = os.pread(_STATUS, 8192, 0)
    start = status.index(field + b":") + len(field) + 1
    return int(status[start : status.index(b"kB", start)]) / 1024


def _reset_peak() -> bool:
    """Set VmHWM to the current VmRSS (Linux 4.0+); False where the kernel refuses."""
    if _CLEAR_REFS is None:
        return False
    try:
        os.write(_CLEAR_REFS, b"5")
    except OSError:
        return False
    return True


_PEAK_RESETS = _reset_peak()


def test_one_input(data: bytes) -> None:
    # With resets, VmHWM is the input's own peak (freed memory counts too); without, the process's peak
    # so far, which only shows growth past earlier peaks (never more than the input's own growth).
    before = _status_mb(b"VmRSS") if _PEAK_RESETS and _reset_peak() else _status_mb(b"VmHWM")
    _decode_and_preprocess(data)
    grown = _status_mb(b"VmHWM") - before
    if grown > MAX_PEAK_GROWTH_MB:
        raise MemoryError(f"decoding this input raised resident memory by {grown:.0f} MB at its peak")


def _watchdog() -> None:
    while True:
        rss = _status_mb(b"VmRSS")
        if rss > RSS_LIMIT_MB:
            sys.stderr.write(f"imgcls fuzz: out of memory: resident {rss:.0f} MB, over the {RSS_LIMIT_MB} MB limit\n")
            sys.stderr.flush()
            os.abort()  # libFuzzer's SIGABRT handler saves the running input as a crash-* artifact
        time.sleep(WATCHDOG_INTERVAL_S)


def _self_test() -> None:
    if _SELF_TEST == "crash":
        raise RuntimeError("fuzz self-test: a crash the harness must report")
    if _SELF_TEST in ("grow", "hold"):
        ballast = np.ones(GROW_MB << 20, np.uint8)  # written, so resident
        if _SELF_TEST == "hold":
            time.sleep(10)  # the watchdog ends the run well before this
        del ballast


def _decode_and_preprocess(data: bytes) -> None:
    if _SELF_TEST:
        _self_test()
    for preprocessor in _PREPROCESSORS:
        try:
            image = decoding.open_image(data, max_pixels=MAX_PIXELS)
            array = preprocessor(image)
        except InvalidInputError:
            return  # refused as documented: the same for the other preprocessor
        if array.shape != (3, 224, 224) or array.dtype != np.float32:
            raise AssertionError(f"preprocessing made {array.shape} {array.dtype}, not (3, 224, 224) float32")


def main() -> None:
    # What getrusage says at start is the parent's peak, inherited across exec; test_fuzz checks it.
    inherited = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    own = _status_mb(b"VmRSS")
    print(f"imgcls fuzz: own resident {own:.0f} MB; getrusage peak {inherited:.0f} MB", file=sys.stderr, flush=True)
    threading.Thread(target=_watchdog, name="rss-watchdog", daemon=True).start()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
