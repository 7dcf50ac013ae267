"""atheris fuzz target: any bytes through decoding.open_image and the embedded model's preprocessing.

The only exception allowed out is InvalidInputError (the server answers it INVALID_ARGUMENT);
anything else is a crash, which the server would answer INTERNAL. Run by test_fuzz.py in a
subprocess, or by hand for longer:

    .venv/bin/python tests/reliability/fuzz_decoding.py CORPUS_DIR -max_total_time=600

(CORPUS_DIR: e.g. a folder written by ``reliability.corpus.write_corpus``; libFuzzer flags follow.)
"""

from __future__ import annotations

import json
import os
import resource
import sys
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


# Set by test_fuzz to prove a crash is reported (non-zero exit), not swallowed by the harness.
_SELF_TEST = os.environ.get("IMGCLS_FUZZ_SELF_TEST") == "1"


# An input whose decoding raises the process's peak memory by this much is a crash: the input that
# did it, not whichever input libFuzzer's RSS watchdog happens to catch running later.
MAX_PEAK_GROWTH_MB = 512


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_one_input(data: bytes) -> None:
    before = _peak_rss_mb()
    _decode_and_preprocess(data)
    grown = _peak_rss_mb() - before
    if grown > MAX_PEAK_GROWTH_MB:
        raise MemoryError(f"decoding this input raised peak memory by {grown:.0f} MB")


def _decode_and_preprocess(data: bytes) -> None:
    if _SELF_TEST:
        raise RuntimeError("fuzz self-test: a crash the harness must report")
    for preprocessor in _PREPROCESSORS:
        try:
            image = decoding.open_image(data, max_pixels=MAX_PIXELS)
            array = preprocessor(image)
        except InvalidInputError:
            return  # refused as documented: the same for the other preprocessor
        if array.shape != (3, 224, 224) or array.dtype != np.float32:
            raise AssertionError(f"preprocessing made {array.shape} {array.dtype}, not (3, 224, 224) float32")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
