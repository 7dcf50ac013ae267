"""What a model's graph and its runtime say about themselves, as the engine needs it (whatever runtime runs it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class GraphInfo:
    """Input name, shape (None = dynamic), dtype, the output read as scores, and the class count."""

    input_name: str
    input_shape: tuple[int | None, ...]
    input_dtype: np.dtype  # type: ignore[type-arg]
    output_name: str
    num_classes: int | None

    @property
    def fixed_batch(self) -> int | None:
        return self.input_shape[0]

    @property
    def sample_shape(self) -> tuple[int | None, ...]:
        return self.input_shape[1:]

    def guess_layout(self) -> str:
        """NHWC when the last dim is 1 or 3 and the second is not; NCHW otherwise (the HF norm)."""
        if len(self.input_shape) == 4 and self.input_shape[3] in (1, 3) and self.input_shape[1] not in (1, 3):
            return "NHWC"
        return "NCHW"


@dataclass(frozen=True, slots=True)
class RuntimeDescription:
    """How the backend runs, for the start-up summary and model descriptions."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    solo_intra_op_threads: int | None = None
    extra: dict[str, str] = field(default_factory=dict)
