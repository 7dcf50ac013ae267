"""The seam between the engine and a runtime: what a served model needs from whatever runs its graph.

ONNX Runtime (``imgcls.server.runtime.onnx.OnnxBackend``) is one implementation; engine tests use
fakes. Runs happen on the batcher's inference threads, several at once, so run() must be thread-safe.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from imgcls.server.domain.graph import GraphInfo, RuntimeDescription


class Backend(Protocol):
    graph: GraphInfo

    @property
    def has_solo_session(self) -> bool:
        """Whether run_alone() uses more of the machine than run() (then the batcher calls it for lone batches)."""
        ...

    def describe(self) -> RuntimeDescription: ...

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, *sample_shape) inputs -> (N, classes) raw model outputs."""
        ...

    def run_alone(self, batch: np.ndarray) -> np.ndarray:
        """As run(), for a batch that has the machine to itself."""
        ...
