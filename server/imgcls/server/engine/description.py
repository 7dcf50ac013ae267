"""Models describe themselves as domain objects; every front door maps these fields to its protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls.server.domain.graph import RuntimeDescription
from imgcls.server.domain.types import FunctionToApply


@dataclass(frozen=True, slots=True)
class BatchingDescription:
    max_batch_size: int  # a graph with a fixed batch dimension overrides the setting
    max_queue_delay_us: int
    queue_limit: int
    instances: int


@dataclass(frozen=True, slots=True)
class ModelStats:
    """A snapshot of a model's counters (may be a batch behind)."""

    requests: int = 0
    failed_requests: int = 0
    inputs: int = 0
    batches: int = 0
    batch_size_counts: dict[int, int] = field(default_factory=dict)
    queue_time_s: float = 0.0
    compute_time_s: float = 0.0
    dropped_inputs: int = 0


@dataclass(frozen=True, slots=True)
class ModelDescription:
    name: str
    # Where the model came from, as callers may see it: a repo id, or a folder or file *name*; never the
    # server's filesystem layout.
    source: str
    variant: str  # "" when the source has no variants
    input_name: str
    input_shape: tuple[int | None, ...]  # None: dynamic
    input_dtype: str  # numpy name: float32, float16
    layout: str  # NCHW or NHWC
    output_name: str
    labels: tuple[str, ...]
    preprocessing: dict[str, Any]
    default_function: FunctionToApply
    batching: BatchingDescription
    runtime: RuntimeDescription
    ready: bool
    load_seconds: float

    @property
    def num_labels(self) -> int:
        return len(self.labels)


def public_source(source: str) -> str:
    """A local path becomes its last component; anything else (a repo id) is shown as given."""
    path = Path(source)
    if path.is_absolute() or path.exists():
        return path.name or source
    return source
