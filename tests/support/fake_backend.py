"""A backend without ONNX Runtime, for engine tests: scores are a known function of the input.

Implements the engine's Backend protocol (server/imgcls/server/engine/backend.py). Each sample of shape
(3, 4, 4) scores [sum, 2 * sum, 3 * sum] over labels a, b, c, so a test knows the answer in advance.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from imgcls.server.domain.graph import GraphInfo, RuntimeDescription
from imgcls.server.engine.engine import Engine
from imgcls.server.engine.model import ModelLimits, ServedModel
from imgcls.server.engine.pool import PriorityPool
from imgcls.server.settings import BatchingSettings, ServerSettings, load_settings
from imgcls.server.sources.local import ModelFiles

LABELS = ("a", "b", "c")
SAMPLE_SHAPE = (3, 4, 4)
WEIGHTS = np.array([1.0, 2.0, 3.0], dtype=np.float32)


def expected_scores(batch: np.ndarray) -> np.ndarray:
    return batch.reshape(batch.shape[0], -1).sum(axis=1, keepdims=True) * WEIGHTS


class FakeBackend:
    """Thread-safe like ONNX Runtime; `fail` makes run() raise it (an Exception fails the batch, a
    BaseException kills the inference thread as a bug would); `gate` holds every run until set."""

    def __init__(self) -> None:
        self.graph = GraphInfo("pixel_values", (None, *SAMPLE_SHAPE), np.dtype(np.float32), "logits", len(LABELS))
        self.fail: BaseException | None = None
        self.gate: threading.Event | None = None
        self.batches: list[int] = []  # sizes of the runs that finished waiting at the gate
        self.runs_started = 0
        self._lock = threading.Lock()

    @property
    def has_solo_session(self) -> bool:
        return False

    def describe(self) -> RuntimeDescription:
        return RuntimeDescription(providers=("FakeExecutionProvider",), intra_op_threads=1)

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.runs_started += 1
        if self.gate is not None:
            self.gate.wait(timeout=30)
        with self._lock:
            self.batches.append(len(batch))
        if self.fail is not None:
            raise self.fail
        return expected_scores(batch)

    run_alone = run


def fake_files(name: str = "fake") -> ModelFiles:
    return ModelFiles(
        onnx_path=Path("/nonexistent/models") / name / "model.onnx",
        source=str(Path("/nonexistent/models") / name),
        variant="",
        labels=LABELS,
        # Images are resized to the graph's 4x4 and rescaled to 0..1, no normalization.
        preprocessing={
            "image_processor_type": "ViTImageProcessor",
            "do_resize": True,
            "size": {"height": 4, "width": 4},
            "do_normalize": False,
        },
    )


def fake_engine(
    *names: str,
    settings: dict[str, Any] | None = None,
    backend: Callable[[], FakeBackend] = FakeBackend,
) -> tuple[Engine, dict[str, FakeBackend]]:
    """An engine over fake models (not started): the engine and each model's backend by name."""
    names = names or ("fake",)
    server_settings: ServerSettings = load_settings(
        {"models": [{"name": n, "source": f"/nonexistent/{n}"} for n in names], **(settings or {})}, environ={}
    )
    # The server's own kind of pool (bounded, cheapest first), with two threads whatever the machine has.
    pool = PriorityPool(2, queue_limit=server_settings.batching.queue_limit)
    limits = ModelLimits(
        max_inputs_per_request=server_settings.max_inputs_per_request,
        max_image_pixels=server_settings.max_image_pixels,
        max_tensor_elements=server_settings.max_tensor_elements,
        jpeg_draft=server_settings.jpeg_draft,
    )
    backends = {n: backend() for n in names}
    models = [
        ServedModel(
            n,
            fake_files(n),
            backends[n],
            batching=BatchingSettings(),
            instances=1,
            limits=limits,
            preprocess_pool=pool,
        )
        for n in names
    ]
    return Engine(server_settings, models, pool), backends
