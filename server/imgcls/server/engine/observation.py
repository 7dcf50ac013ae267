"""What the engine reports about every request, to any number of listeners (metrics, the debug log, ...)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from imgcls.server.domain.errors import ErrorKind
from imgcls.server.images.decoding import brief

log = logging.getLogger("imgcls.requests")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One answered request (a unary call, or one frame of a stream)."""

    protocol: str  # the front door: "imgcls.v1", "v2-grpc", "v2-http", "hf-http", ...
    method: str  # the protocol's own name for it: Classify, ClassifyStream, ModelInfer, ...
    model: str  # a served model's name, or "_unknown": callers must not be able to grow a label set
    request_id: str
    inputs: int
    results: int
    outcome: ErrorKind | None  # None: answered with a result
    seconds: float
    skipped: bool = False

    @property
    def outcome_name(self) -> str:
        return "ok" if self.outcome is None else self.outcome.value


RequestListener = Callable[[RequestRecord], None]
ReadinessListener = Callable[[bool], None]


def log_request(record: RequestRecord) -> None:
    """The per-request debug line; never image bytes, and ids cut short (they come from callers)."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "%s %s request_id=%s model=%s inputs=%d results=%d outcome=%s%s %.1fms",
            record.protocol,
            record.method,
            brief(record.request_id),
            record.model,
            record.inputs,
            record.results,
            record.outcome_name,
            " skipped" if record.skipped else "",
            record.seconds * 1e3,
        )
