"""Bidirectional frame streams: one result per frame, in frame order, with bounded frames in flight.

Frames are classified concurrently (they share the model's batcher with everyone else) and
answered in order (engine.ordering, which the Open Inference stream shares). The reader takes a new
frame only when a slot is free, so a client that sends faster than the server classifies, or never
reads its responses, is held back by gRPC flow control and server memory stays bounded.

In drop_stale mode the reader keeps reading, and a frame still waiting for a slot when a newer
frame arrives is answered as skipped, so results stay close to real time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from imgcls.server.domain.errors import InferenceError, InvalidInputError, RequestError
from imgcls.server.domain.types import ClassifyOptions, ImageInput, Ranking
from imgcls.server.engine.ordering import InOrder

if TYPE_CHECKING:
    from imgcls.server.engine.budget import Lease, MemoryBudget
    from imgcls.server.engine.model import RequestCost, ServedModel


class StreamEngine(Protocol):
    """What a stream needs of the engine (engine.Engine is one): its models and its memory budget. A protocol,
    not the Engine, so this module does not import the one that imports it."""

    budget: MemoryBudget

    def get(self, name: str) -> ServedModel: ...


log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamFrame:
    """One stream message; None fields were left empty and take the stream's defaults."""

    inputs: tuple[ImageInput, ...]
    request_id: str = ""
    model: str = ""
    options: ClassifyOptions | None = None
    overrides: dict[str, Any] | None = None
    drop_stale: bool = False
    error: RequestError | None = None  # the message itself was invalid: answered with this, stream goes on


@dataclass(slots=True)
class FrameResult:
    request_id: str
    model: str
    rankings: list[Ranking] = field(default_factory=list)
    error: RequestError | None = None
    skipped: bool = False
    seconds: float = 0.0  # from the frame's start to its answer
    inputs: int = 0  # how many inputs the frame carried


@dataclass(slots=True)
class _Defaults:
    model: str
    options: ClassifyOptions
    overrides: dict[str, Any]
    drop_stale: bool


@dataclass(slots=True)
class _Job:
    """A frame read and charged to the budget, running or waiting to run."""

    frame: StreamFrame
    future: asyncio.Future[FrameResult]
    model: ServedModel  # looked up once, when the frame was read; answers carry its name
    options: ClassifyOptions
    overrides: dict[str, Any]
    lease: Lease
    cost: RequestCost


class FrameStream:
    """One ClassifyStream call. Iterate run(frames) to get results in order."""

    def __init__(
        self,
        engine: StreamEngine,
        max_in_flight: int,
        on_result: Callable[[FrameResult, int], None] | None = None,
        owner: str = "",
    ) -> None:
        self._engine = engine
        self._on_result = on_result
        self._owner = owner  # whose share of the memory budget the frames are charged to
        self._max_in_flight = max_in_flight
        self._defaults: _Defaults | None = None
        # Frames read but not yet answered are bounded by the ordering; memory stays bounded whatever the client does.
        self._order: InOrder[StreamFrame, FrameResult] = InOrder(max_in_flight, self._read, on_close=self._close)
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = 0
        self._waiting: _Job | None = None
        self._closed = False

    async def run(self, frames: AsyncIterator[StreamFrame]) -> AsyncIterator[FrameResult]:
        async for result in self._order.run(frames):
            if self._on_result is not None:
                self._on_result(result, result.inputs)
            yield result

    def _close(self) -> None:
        self._closed = True  # a frame task finishing from here on must not start a waiting frame
        if self._waiting is not None:
            self._waiting.lease.release()
            self._waiting = None
        for task in list(self._tasks):
            task.cancel()

    def _resolve(self, frame: StreamFrame) -> tuple[ServedModel, ClassifyOptions, dict[str, Any]]:
        if self._defaults is None:
            self._defaults = _Defaults(
                model=frame.model,
                options=frame.options or ClassifyOptions(),
                overrides=frame.overrides or {},
                drop_stale=frame.drop_stale,
            )
            if frame.drop_stale:
                # Keep reading while frames run, so newer frames can replace stale ones.
                self._order.widen(self._max_in_flight * 4)
        defaults = self._defaults
        # An unknown model ends the stream (NOT_FOUND); answers name the model that served them.
        model = self._engine.get(frame.model or defaults.model)
        options = frame.options if frame.options is not None else defaults.options
        overrides = frame.overrides if frame.overrides is not None else defaults.overrides
        return model, options, overrides

    def _read(self, frame: StreamFrame) -> asyncio.Future[FrameResult]:
        """A frame just read: its answer-to-be, running, waiting to run (drop_stale) or answered already."""
        model, options, overrides = self._resolve(frame)
        future: asyncio.Future[FrameResult] = asyncio.get_running_loop().create_future()
        try:
            if frame.error is None:
                model.check_request(frame.inputs, options)  # before the lease: invalid, not busy
            # Held from here until the frame is answered: read frames count, not only running ones.
            # Decoding is charged as each frame is decoded, not here: frames wait their turn in their
            # stream (at most max_in_flight run) and one the budget cannot take then is answered busy on
            # its own, the stream goes on. Charged here, a flood of streams that never read their answers
            # left RSS ~200 MB over idle after it ended (full-scale unread-streams row: 340-490 MB after,
            # 250-280 MB this way, idle 240-290; cause not pinned down).
            cost = model.request_cost(frame.inputs, decoding=False)
            lease = self._engine.budget.lease(cost.nbytes, self._owner)
        except RequestError as exc:
            future.set_result(FrameResult(frame.request_id, model.name, error=exc, inputs=len(frame.inputs)))
            return future
        job = _Job(frame, future, model, options, overrides, lease, cost)
        assert self._defaults is not None
        if not self._defaults.drop_stale or self._running < self._max_in_flight:
            self._start(job)
        else:
            if self._waiting is not None:
                stale = self._waiting
                inputs = len(stale.frame.inputs)
                stale.lease.release()
                stale.future.set_result(
                    FrameResult(stale.frame.request_id, stale.model.name, skipped=True, inputs=inputs)
                )
                stale.model.count_dropped(inputs)
            self._waiting = job
        return future

    def _start(self, job: _Job) -> None:
        self._running += 1
        task = asyncio.create_task(self._classify(job))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._running -= 1
        if self._waiting is not None and not task.cancelled() and not self._closed:
            waiting, self._waiting = self._waiting, None
            self._start(waiting)

    async def _classify(self, job: _Job) -> None:
        frame, future = job.frame, job.future
        result = FrameResult(frame.request_id, job.model.name, inputs=len(frame.inputs))
        started = time.perf_counter()
        try:
            if frame.error is not None:
                raise frame.error
            result.rankings = await job.model.classify(
                frame.inputs, job.options, job.overrides, lease=job.lease, cost=job.cost, checked=True
            )
        except RequestError as exc:
            result.error = exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("stream frame %r failed unexpectedly", frame.request_id)
            # As the unary path answers: the type only; the details are in the log, not sent to callers.
            result.error = InferenceError(f"internal error: {type(exc).__name__}")
        finally:
            job.lease.release()
        result.seconds = time.perf_counter() - started
        if not future.done():
            future.set_result(result)


__all__ = ["FrameResult", "FrameStream", "InvalidInputError", "StreamFrame"]
