"""The dynamic batcher: one per served model.

Callers on the event loop submit samples and await one future per sample.
Dedicated inference threads ("instances", Triton's instance count) form batches
and run them, so the session stays busy however busy the event loop is; with
several instances, several batches run at once on one thread-safe session:

- a batch closes when it holds max_batch_size samples, or when
  max_queue_delay has passed since its *oldest* sample was queued;
- only samples of the same shape and dtype share a run;
- cancelled and past-deadline samples are dropped while forming a batch;
- a failed run fails every future in that batch, and the thread goes on;
- if an inference thread itself dies, every pending future (running or
  queued) is failed and the batcher reports not ready, so no caller waits
  forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from imgcls.server.domain.errors import (
    DeadlineExceededError,
    InferenceError,
    QueueFullError,
    RequestError,
    UnavailableError,
)

log = logging.getLogger(__name__)

RunFn = Callable[[np.ndarray], np.ndarray]
BatchListener = Callable[[int, float, float], None]  # batch size, mean queue seconds, compute seconds
CrashListener = Callable[[BaseException], None]


@dataclass(slots=True)
class _Pending:
    sample: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float
    deadline: float | None
    dropped: bool = False  # set on the loop when the caller gives up

    @property
    def key(self) -> tuple[tuple[int, ...], str]:
        return self.sample.shape, self.sample.dtype.str


@dataclass
class BatcherStats:
    """Updated by the inference threads under the batcher's lock; read as plain ints (may be a batch behind)."""

    inputs: int = 0
    batches: int = 0
    batch_size_counts: dict[int, int] = field(default_factory=dict)
    queue_time_s: float = 0.0
    compute_time_s: float = 0.0
    dropped_inputs: int = 0


class DynamicBatcher:
    def __init__(
        self,
        run: RunFn,
        *,
        name: str,
        max_batch_size: int,
        max_queue_delay_s: float,
        queue_limit: int,
        fixed_batch: int | None = None,
        instances: int = 1,
        run_alone: RunFn | None = None,
    ) -> None:
        if instances < 1:
            raise ValueError("instances must be at least 1")
        self._run = run
        # For a batch that starts with no other instance running and nothing queued (a lone caller):
        # the backend can then give it every core instead of one instance's share.
        self._run_alone = run_alone
        self._busy = 0  # instances inside a run; guarded by _cond
        self.name = name
        # A model with a fixed batch dimension runs at exactly that size (padded when short).
        self.max_batch_size = fixed_batch or max_batch_size
        self._fixed_batch = fixed_batch
        self._max_delay = max_queue_delay_s
        self.queue_limit = queue_limit
        # Listeners, called on the inference thread: a batch ran (size, mean queue s, compute s); the
        # batcher crashed, so the server can stop reporting itself healthy (every later call would fail).
        self._batch_listeners: list[BatchListener] = []
        self._crash_listeners: list[CrashListener] = []
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.instances = instances
        self._threads: list[threading.Thread] = []
        self._running: dict[int, list[_Pending]] = {}  # thread id -> the batch it is running
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = BatcherStats()
        self.crashed: BaseException | None = None

    def add_batch_listener(self, listener: BatchListener) -> None:
        self._batch_listeners.append(listener)

    def add_crash_listener(self, listener: CrashListener) -> None:
        self._crash_listeners.append(listener)

    # -- lifecycle -------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for index in range(self.instances):
            suffix = f"-{index}" if self.instances > 1 else ""
            thread = threading.Thread(target=self._worker, name=f"batcher-{self.name}{suffix}", daemon=True)
            self._threads.append(thread)
            thread.start()

    @property
    def ready(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads) and not self._stopping

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    async def stop(self, drain: bool = True) -> None:
        """Stop taking work; finish what is queued (drain) or fail it with UNAVAILABLE."""
        with self._cond:
            self._stopping = True
            if not drain:
                pending = list(self._queue)
                self._queue.clear()
            else:
                pending = []
            self._cond.notify_all()
        self._fail(pending, UnavailableError(f"model {self.name} is shutting down"))
        for thread in self._threads:
            await asyncio.to_thread(thread.join)

    def count_dropped(self, inputs: int) -> None:
        """Inputs answered without running (a stream's skipped frames), counted with the batcher's own."""
        with self._cond:
            self.stats.dropped_inputs += inputs

    # -- submitting (event loop) ---------------------------------------------
    def submit(self, samples: list[np.ndarray], deadline: float | None = None) -> list[asyncio.Future[np.ndarray]]:
        """Queue samples (each one model input without batch dim); one future per sample, in order.

        All or nothing: QueueFullError when they do not all fit under the queue limit.
        deadline is a time.monotonic() value after which the samples are not worth running.
        """
        loop = self._loop
        if loop is None or self.crashed is not None:
            raise UnavailableError(f"model {self.name} is not serving")
        now = time.monotonic()
        pending = [_Pending(s, loop.create_future(), now, deadline) for s in samples]
        with self._cond:
            if self._stopping:
                raise UnavailableError(f"model {self.name} is shutting down")
            if len(self._queue) + len(pending) > self.queue_limit:
                raise QueueFullError(
                    f"model {self.name}: queue full ({len(self._queue)} queued, limit {self.queue_limit}); retry later"
                )
            self._queue.extend(pending)
            self._cond.notify()
        for item in pending:
            item.future.add_done_callback(functools.partial(self._mark_dropped, item=item))
        return [item.future for item in pending]

    @staticmethod
    def _mark_dropped(future: asyncio.Future[np.ndarray], *, item: _Pending) -> None:
        if future.cancelled():
            item.dropped = True

    # -- the inference thread ------------------------------------------------
    def _worker(self) -> None:
        me = threading.get_ident()
        try:
            while True:
                taken = self._next_batch()
                if taken is None:
                    return
                batch, alone = taken
                self._running[me] = batch
                try:
                    self._execute(batch, alone)
                finally:
                    with self._cond:
                        self._busy -= 1
                self._running[me] = []
        except BaseException as exc:  # a bug: fail everyone rather than leave them hanging
            log.exception("batcher for model %s crashed; failing all pending requests", self.name)
            self.crashed = exc
            with self._cond:
                # Every batch still running on any instance, and the queue: the other instances
                # stop after their current batch, whose futures are already failed here.
                pending = [p for batch in self._running.values() for p in batch] + list(self._queue)
                self._queue.clear()
                self._stopping = True
                self._cond.notify_all()
            self._fail(pending, UnavailableError(f"model {self.name}: batcher stopped ({exc})"))
            for listener in self._crash_listeners:
                try:
                    listener(exc)
                except Exception:
                    log.exception("model %s: crash listener failed", self.name)

    def _next_batch(self) -> tuple[list[_Pending], bool] | None:
        """The next batch to run, and whether it runs alone (no other run, nothing queued)."""
        with self._cond:
            while True:
                self._drop_stale_head()
                if not self._queue:
                    if self._stopping:
                        return None
                    self._cond.wait()
                    continue
                oldest = self._queue[0]
                close_at = oldest.enqueued + self._max_delay
                key = oldest.key
                matching = sum(1 for p in self._queue if p.key == key)
                now = time.monotonic()
                if matching >= self.max_batch_size or now >= close_at or self._stopping:
                    batch = self._take(key, self._share(matching))
                    if self._queue:
                        self._cond.notify()  # another idle instance can take what is left
                    alone = self._busy == 0 and not self._queue
                    self._busy += 1
                    return batch, alone
                self._cond.wait(timeout=close_at - now)

    def _drop_stale_head(self) -> None:
        now = time.monotonic()
        expired: list[_Pending] = []
        while self._queue and (
            self._queue[0].dropped or (self._queue[0].deadline is not None and self._queue[0].deadline <= now)
        ):
            item = self._queue.popleft()
            if not item.dropped:
                expired.append(item)
            self.stats.dropped_inputs += 1
        if expired:
            self._fail(expired, DeadlineExceededError("deadline passed before the input could run"))

    def _share(self, matching: int) -> int:
        """How many of the matching queued samples this instance takes: its fair share among all
        instances, up to max_batch_size.

        Two instances and two queued samples run as two batches of one side by side, not one batch
        of two beside an instance that frees up a moment later and finds nothing left; batches grow
        only once the queue is longer than the instances can take one by one. A fixed batch
        dimension is padded anyway: fill it.
        """
        if self._fixed_batch:
            return self.max_batch_size
        return max(1, min(self.max_batch_size, -(-matching // self.instances)))

    def _take(self, key: tuple[tuple[int, ...], str], limit: int) -> list[_Pending]:
        """Up to limit live samples with this key, oldest first; the rest stay queued in order."""
        now = time.monotonic()
        batch: list[_Pending] = []
        keep: deque[_Pending] = deque()
        expired: list[_Pending] = []
        for item in self._queue:
            if len(batch) < limit and item.key == key:
                if item.dropped:
                    self.stats.dropped_inputs += 1
                elif item.deadline is not None and item.deadline <= now:
                    self.stats.dropped_inputs += 1
                    expired.append(item)
                else:
                    batch.append(item)
            else:
                keep.append(item)
        self._queue = keep
        if expired:
            self._fail(expired, DeadlineExceededError("deadline passed before the input could run"))
        return batch

    def _execute(self, batch: list[_Pending], alone: bool = False) -> None:
        if not batch:
            return
        started = time.monotonic()
        samples = [p.sample for p in batch]
        if self._fixed_batch and len(samples) < self._fixed_batch:
            samples += [np.zeros_like(samples[0])] * (self._fixed_batch - len(samples))
        run = self._run_alone if alone and self._run_alone is not None else self._run
        try:
            # One sample: a view, not a copy (ONNX Runtime only reads its input).
            outputs = run(samples[0][None] if len(samples) == 1 else np.stack(samples))
        except RequestError as exc:
            self._fail(batch, exc)
            return
        except Exception as exc:
            log.exception("model %s: inference failed for a batch of %d", self.name, len(batch))
            self._fail(batch, InferenceError(f"model {self.name}: inference failed: {exc}"))
            return
        finished = time.monotonic()
        queue_time = sum(started - p.enqueued for p in batch)
        with self._cond:  # several instances update them (and dropped_inputs is counted under it too)
            stats = self.stats
            stats.batches += 1
            stats.inputs += len(batch)
            stats.batch_size_counts[len(batch)] = stats.batch_size_counts.get(len(batch), 0) + 1
            stats.queue_time_s += queue_time
            stats.compute_time_s += finished - started
        for listener in self._batch_listeners:
            try:
                listener(len(batch), queue_time / len(batch), finished - started)
            except Exception:  # an observer's bug must not fail the callers whose batch just ran
                log.exception("model %s: batch listener failed", self.name)
        self._deliver(batch, outputs)

    def _deliver(self, batch: list[_Pending], outputs: np.ndarray) -> None:
        def resolve() -> None:
            for item, row in zip(batch, outputs, strict=False):
                if not item.future.done():
                    item.future.set_result(row)

        self._call_soon(resolve)

    def _fail(self, items: list[_Pending], error: BaseException) -> None:
        if not items:
            return

        def reject() -> None:
            for item in items:
                if not item.future.done():
                    item.future.set_exception(error)

        self._call_soon(reject)

    def _call_soon(self, callback: Callable[[], None]) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(callback)
