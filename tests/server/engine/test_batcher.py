"""Unit tests of the DynamicBatcher with a fake run function (no ONNX Runtime).

Timing is controlled by synchronisation, never by sleeping: the fake run can block on a
"gate" (a threading.Event) so samples queue up while a batch is running, and a fake clock
stands in for time.monotonic where the test needs a sample to be old without waiting.
Every await on a result is wrapped in a generous wait_for: that bounds a hang, it does not
assert speed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from imgcls.server.domain.errors import (
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    QueueFullError,
    UnavailableError,
)
from imgcls.server.engine import batcher as batcher_module
from imgcls.server.engine.batcher import DynamicBatcher

HANG = 2.0  # seconds: a bound on a hang, never a speed assertion


class FakeRun:
    """A run function that records every batch and answers out[i] = batch[i].sum().

    With gated=True every run first signals `entered` and then waits for `gate`, so the test
    can queue samples while a batch is running.
    """

    def __init__(self, *, gated: bool = False, fail: Callable[[np.ndarray], None] | None = None) -> None:
        self.batches: list[np.ndarray] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.batches.append(batch.copy())
        self.entered.set()
        if not self.gate.wait(timeout=30):
            raise RuntimeError("test gate never opened")
        if self.fail is not None:
            self.fail(batch)
        return batch.reshape(batch.shape[0], -1).sum(axis=1)

    @property
    def sizes(self) -> list[int]:
        return [b.shape[0] for b in self.batches]

    def seen_values(self) -> set[float]:
        """The first element of every sample run so far (tests make samples identifiable by it)."""
        return {float(b.reshape(b.shape[0], -1)[i, 0]) for b in self.batches for i in range(b.shape[0])}

    async def wait_entered(self) -> None:
        """Until a run has started (the worker is then blocked on the gate)."""
        assert await asyncio.to_thread(self.entered.wait, HANG), "the run never started"


def sample(value: float, shape: tuple[int, ...] = (3,), dtype: Any = np.float32) -> np.ndarray:
    return np.full(shape, value, dtype=dtype)


@asynccontextmanager
async def make_batcher(run: FakeRun, **kwargs: Any) -> AsyncIterator[DynamicBatcher]:
    options: dict[str, Any] = {"max_batch_size": 8, "max_queue_delay_s": 0.0, "queue_limit": 64, **kwargs}
    batcher = DynamicBatcher(run, name="fake", **options)
    batcher.start(asyncio.get_running_loop())
    try:
        yield batcher
    finally:
        run.gate.set()  # never leave the worker blocked
        if batcher.ready:
            await asyncio.wait_for(batcher.stop(drain=False), HANG)


async def results(futures: list[asyncio.Future[np.ndarray]]) -> list[float]:
    rows = await asyncio.wait_for(asyncio.gather(*futures), HANG)
    return [float(r) for r in rows]


class FakeClock:
    """Stands in for the batcher's time module: real monotonic time plus an offset the test advances."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(batcher_module, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


# -- merging and closing ------------------------------------------------------------------


async def test_samples_queued_while_busy_merge_into_one_run() -> None:
    run = FakeRun(gated=True)
    async with make_batcher(run, max_batch_size=8) as batcher:
        first = batcher.submit([sample(1)])
        await run.wait_entered()
        # Five separate callers queue while the session is busy: they must share the next run.
        later = [batcher.submit([sample(10 + i)])[0] for i in range(5)]
        run.gate.set()
        assert await results(first) == [3.0]
        assert await results(later) == [30.0, 33.0, 36.0, 39.0, 42.0]
        assert run.sizes == [1, 5]
        assert batcher.stats.batches == 2
        assert batcher.stats.inputs == 6
        assert batcher.stats.batch_size_counts == {1: 1, 5: 1}


async def test_batch_closes_when_full_without_waiting_for_the_delay() -> None:
    run = FakeRun()
    # A 10 s delay: only reaching max_batch_size can close this batch within the hang bound.
    async with make_batcher(run, max_batch_size=4, max_queue_delay_s=10.0) as batcher:
        futures = [batcher.submit([sample(i)])[0] for i in range(4)]
        assert await results(futures) == [0.0, 3.0, 6.0, 9.0]
        assert run.sizes == [4]


async def test_partial_batch_closes_after_the_delay() -> None:
    run = FakeRun()
    async with make_batcher(run, max_batch_size=8, max_queue_delay_s=0.02) as batcher:
        # Two samples never fill a batch of 8: only the queue delay can close it.
        futures = batcher.submit([sample(1), sample(2)])
        assert await results(futures) == [3.0, 6.0]
        assert run.sizes == [2]


async def test_delay_counts_from_the_oldest_sample_not_the_newest(clock: FakeClock) -> None:
    run = FakeRun()
    async with make_batcher(run, max_batch_size=8, max_queue_delay_s=5.0) as batcher:
        a = batcher.submit([sample(1)])
        clock.offset += 6.0  # B arrives when A is already past the 5 s delay
        b = batcher.submit([sample(2)])
        # A's age closes the batch at once and B rides along; a timer counted from B (the newest)
        # or from the worker's latest wake-up would hold both for a real 5 s, past the hang bound.
        assert await results(a + b) == [3.0, 6.0]
        assert run.sizes == [2]


async def test_sample_queued_during_a_run_is_not_held_a_full_delay_after_it(clock: FakeClock) -> None:
    run = FakeRun(gated=True)
    async with make_batcher(run, max_batch_size=2, max_queue_delay_s=5.0) as batcher:
        first = batcher.submit([sample(1), sample(1)])  # a full batch: runs at once
        await run.wait_entered()
        a = batcher.submit([sample(2)])  # queued while batch 1 runs
        clock.offset += 10.0  # batch 1 ran "long": A's age already exceeds the delay
        run.gate.set()
        # A must run as soon as the worker is free; a timer started when the worker wakes would
        # make it wait another real 5 s.
        assert await results(first) == [3.0, 3.0]
        assert await results(a) == [6.0]
        assert run.sizes == [2, 1]


# -- results and splitting -----------------------------------------------------------------


async def test_each_caller_gets_its_own_results_in_order() -> None:
    run = FakeRun(gated=True)
    async with make_batcher(run, max_batch_size=16) as batcher:
        blocker = batcher.submit([sample(0)])
        await run.wait_entered()
        callers = [batcher.submit([sample(100 * c + i) for i in range(3)]) for c in range(4)]
        run.gate.set()
        await results(blocker)
        for c, futures in enumerate(callers):
            assert await results(futures) == [3.0 * (100 * c + i) for i in range(3)]
        assert run.sizes == [1, 12]


async def test_request_larger_than_max_batch_size_is_split_over_runs() -> None:
    run = FakeRun()
    async with make_batcher(run, max_batch_size=4) as batcher:
        futures = batcher.submit([sample(i) for i in range(10)])
        assert await results(futures) == [3.0 * i for i in range(10)]
        assert run.sizes == [4, 4, 2]
        assert batcher.stats.batch_size_counts == {4: 2, 2: 1}
        assert batcher.stats.inputs == 10


async def test_different_shapes_and_dtypes_never_share_a_run() -> None:
    run = FakeRun(gated=True)
    async with make_batcher(run, max_batch_size=16) as batcher:
        blocker = batcher.submit([sample(0)])
        await run.wait_entered()
        small = batcher.submit([sample(1, (3,)), sample(2, (3,))])
        big = batcher.submit([sample(3, (2, 2))])
        doubles = batcher.submit([sample(4, (3,), np.float64)])
        more_small = batcher.submit([sample(5, (3,))])
        run.gate.set()
        assert await results(blocker) == [0.0]
        assert await results(small) == [3.0, 6.0]
        assert await results(big) == [12.0]
        assert await results(doubles) == [12.0]
        assert await results(more_small) == [15.0]
        # After the blocker: one run per (shape, dtype), in the order each key's oldest sample queued.
        keys = [(b.shape, b.dtype.str) for b in run.batches[1:]]
        assert keys == [((3, 3), "<f4"), ((1, 2, 2), "<f4"), ((1, 3), "<f8")]
        # The float32 (3,) samples queued apart still ran together, oldest first.
        assert run.batches[1][:, 0].tolist() == [1.0, 2.0, 5.0]


# -- refusing and dropping -----------------------------------------------------------------


async def test_queue_limit_refuses_the_whole_request() -> None:
    run = FakeRun(gated=True)
    async with make_batcher(run, queue_limit=4, max_batch_size=1) as batcher:
        running = batcher.submit([sample(0)])
        await run.wait_entered()
        queued = batcher.submit([sample(1), sample(2), sample(3)])
        with pytest.raises(QueueFullError, match="queue full") as caught:
            batcher.submit([sample(4), sample(5)])  # 3 + 2 > 4: all or nothing
        assert "limit 4" in caught.value.message
        assert batcher.queue_depth == 3
        run.gate.set()
        assert await results(running + queued) == [0.0, 3.0, 6.0, 9.0]
        assert {4.0, 5.0}.isdisjoint(run.seen_values())  # the refused samples never ran


async def test_cancelled_sample_is_never_run() -> None:
    run = FakeRun(gated=True)
    async with make_batcher(run) as batcher:
        running = batcher.submit([sample(0)])
        await run.wait_entered()
        # One cancelled caller at the head of the queue, one between live callers.
        (cancelled_head,) = batcher.submit([sample(7)])
        (kept,) = batcher.submit([sample(8)])
        (cancelled_mid,) = batcher.submit([sample(9)])
        (kept_too,) = batcher.submit([sample(10)])
        cancelled_head.cancel()
        cancelled_mid.cancel()
        await asyncio.sleep(0)  # one loop turn: the futures' done-callbacks (marking them dropped) run
        run.gate.set()
        assert await results(running) == [0.0]
        assert await results([kept, kept_too]) == [24.0, 30.0]
        assert {7.0, 9.0}.isdisjoint(run.seen_values())
        assert run.sizes == [1, 2]
        assert batcher.stats.dropped_inputs == 2
        assert batcher.stats.inputs == 3


async def test_expired_deadline_fails_with_deadline_exceeded_and_is_not_run() -> None:
    run = FakeRun()
    async with make_batcher(run) as batcher:
        (expired,) = batcher.submit([sample(7)], deadline=time.monotonic() - 1.0)
        (live,) = batcher.submit([sample(8)], deadline=time.monotonic() + 60.0)
        with pytest.raises(DeadlineExceededError, match="deadline"):
            await asyncio.wait_for(expired, HANG)
        assert await results([live]) == [24.0]
        assert 7.0 not in run.seen_values()
        assert batcher.stats.dropped_inputs == 1


async def test_expired_sample_behind_the_head_is_dropped_too() -> None:
    run = FakeRun(gated=True)
    async with make_batcher(run) as batcher:
        running = batcher.submit([sample(0)])
        await run.wait_entered()
        (live,) = batcher.submit([sample(1)])
        (expired,) = batcher.submit([sample(7)], deadline=time.monotonic() - 1.0)
        run.gate.set()
        await results(running)
        assert await results([live]) == [3.0]
        with pytest.raises(DeadlineExceededError, match="deadline"):
            await asyncio.wait_for(expired, HANG)
        assert 7.0 not in run.seen_values()


# -- failures ------------------------------------------------------------------------------


async def test_failed_run_fails_its_whole_batch_and_the_next_batch_succeeds() -> None:
    def fail_on_seven(batch: np.ndarray) -> None:
        if (batch == 7).any():
            raise ValueError("bad batch")

    run = FakeRun(gated=True, fail=fail_on_seven)
    async with make_batcher(run) as batcher:
        blocker = batcher.submit([sample(0)])
        await run.wait_entered()
        doomed = batcher.submit([sample(6)]) + batcher.submit([sample(7)])  # one batch, two callers
        run.gate.set()
        await results(blocker)
        for future in doomed:
            with pytest.raises(InferenceError, match="inference failed: bad batch"):
                await asyncio.wait_for(future, HANG)
        assert await results(batcher.submit([sample(2)])) == [6.0]
        assert batcher.ready
        assert batcher.stats.batches == 2  # failed runs are not counted as batches


async def test_imgcls_error_from_run_reaches_callers_unchanged() -> None:
    def refuse(batch: np.ndarray) -> None:
        raise InvalidInputError("tensor has NaNs")

    run = FakeRun(fail=refuse)
    async with make_batcher(run) as batcher:
        (future,) = batcher.submit([sample(1)])
        with pytest.raises(InvalidInputError, match="tensor has NaNs"):
            await asyncio.wait_for(future, HANG)
        assert batcher.ready


async def test_worker_crash_fails_queued_futures_and_stops_serving() -> None:
    run = FakeRun(gated=True)
    async with make_batcher(run) as batcher:
        running = batcher.submit([sample(1)])
        await run.wait_entered()
        queued = batcher.submit([sample(2), sample(3)])

        def crash() -> None:
            raise RuntimeError("bug in the batcher")

        batcher._next_batch = crash  # type: ignore[method-assign]  # the worker's next step dies
        run.gate.set()
        assert await results(running) == [3.0]  # the batch in progress still completes
        for future in queued:
            with pytest.raises(UnavailableError, match="batcher stopped"):
                await asyncio.wait_for(future, HANG)
        assert isinstance(batcher.crashed, RuntimeError)
        assert not batcher.ready
        with pytest.raises(UnavailableError, match="not serving"):
            batcher.submit([sample(4)])


class _Fatal(BaseException):
    """Not an Exception: escapes the per-batch error handling and kills the worker thread."""


async def test_worker_crash_during_a_run_fails_the_running_batch_too() -> None:
    def die(batch: np.ndarray) -> None:
        raise _Fatal("worker killed")

    run = FakeRun(gated=True, fail=die)
    async with make_batcher(run) as batcher:
        running = batcher.submit([sample(1)])
        await run.wait_entered()
        queued = batcher.submit([sample(2)])
        run.gate.set()
        for future in queued + running:
            with pytest.raises(UnavailableError, match="batcher stopped"):
                await asyncio.wait_for(future, HANG)
        assert not batcher.ready
        with pytest.raises(UnavailableError):
            batcher.submit([sample(3)])


# -- fixed batch dimension -----------------------------------------------------------------


async def test_fixed_batch_of_one_runs_one_sample_at_a_time() -> None:
    run = FakeRun()
    async with make_batcher(run, max_batch_size=8, fixed_batch=1) as batcher:
        assert batcher.max_batch_size == 1
        futures = batcher.submit([sample(1), sample(2), sample(3)])
        assert await results(futures) == [3.0, 6.0, 9.0]
        assert run.sizes == [1, 1, 1]


async def test_fixed_batch_pads_short_batches_and_delivers_only_real_results() -> None:
    run = FakeRun()
    async with make_batcher(run, max_batch_size=8, fixed_batch=4) as batcher:
        futures = batcher.submit([sample(1), sample(2)])
        assert await results(futures) == [3.0, 6.0]
        assert run.sizes == [4]
        assert run.batches[0][2:].tolist() == np.zeros((2, 3)).tolist()  # zero padding
        assert batcher.stats.inputs == 2


# -- stopping ------------------------------------------------------------------------------


async def test_stop_with_drain_finishes_queued_work() -> None:
    run = FakeRun()
    # A 10 s delay: the partial batch closes within the hang bound only because of the stop.
    async with make_batcher(run, max_queue_delay_s=10.0) as batcher:
        futures = batcher.submit([sample(1), sample(2), sample(3)])
        await asyncio.wait_for(batcher.stop(drain=True), HANG)
        assert await results(futures) == [3.0, 6.0, 9.0]
        assert not batcher.ready
        with pytest.raises(UnavailableError, match="shutting down"):
            batcher.submit([sample(4)])


async def test_stop_without_drain_fails_queued_work_with_unavailable() -> None:
    run = FakeRun()
    async with make_batcher(run, max_queue_delay_s=10.0) as batcher:
        futures = batcher.submit([sample(1), sample(2)])
        await asyncio.wait_for(batcher.stop(drain=False), HANG)
        for future in futures:
            with pytest.raises(UnavailableError, match="shutting down"):
                await asyncio.wait_for(future, HANG)
        assert run.batches == []
        assert not batcher.ready


# -- several instances -----------------------------------------------------------------------


class CountingRun(FakeRun):
    """Gated runs that count how many are inside the session at once."""

    def __init__(self, *, inside_target: int) -> None:
        super().__init__(gated=True)
        self.inside = 0
        self.peak = 0
        self.all_inside = threading.Event()
        self._target = inside_target
        self._count_lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._count_lock:
            self.inside += 1
            self.peak = max(self.peak, self.inside)
            if self.inside >= self._target:
                self.all_inside.set()
        try:
            return super().__call__(batch)
        finally:
            with self._count_lock:
                self.inside -= 1


async def test_instances_run_batches_side_by_side() -> None:
    run = CountingRun(inside_target=2)
    async with make_batcher(run, max_batch_size=1, instances=2) as batcher:
        futures = batcher.submit([sample(1), sample(2), sample(3)])
        # Two runs are inside the (gated) session at the same time: one per instance.
        assert await asyncio.to_thread(run.all_inside.wait, HANG), "the second instance never ran"
        run.gate.set()
        assert await results(futures) == [3.0, 6.0, 9.0]  # each caller still gets its own row, in order
        assert run.peak == 2
        assert batcher.stats.inputs == 3 and batcher.stats.batches == 3


async def test_one_instance_runs_one_batch_at_a_time() -> None:
    run = CountingRun(inside_target=2)
    async with make_batcher(run, max_batch_size=1, instances=1) as batcher:
        futures = batcher.submit([sample(1), sample(2)])
        await run.wait_entered()
        assert not await asyncio.to_thread(run.all_inside.wait, 0.2)  # bounded check that it stays at one
        run.gate.set()
        assert await results(futures) == [3.0, 6.0]
        assert run.peak == 1


async def test_crash_of_one_instance_fails_the_batches_running_on_the_others() -> None:
    def die_on_two(batch: np.ndarray) -> None:
        if float(batch[0, 0]) == 2.0:
            raise _Fatal("worker killed")

    run = CountingRun(inside_target=2)
    run.fail = die_on_two
    async with make_batcher(run, max_batch_size=1, instances=2) as batcher:
        futures = batcher.submit([sample(1), sample(2)])
        assert await asyncio.to_thread(run.all_inside.wait, HANG)
        queued = batcher.submit([sample(3)])
        run.gate.set()
        # Samples 1 and 3 may run on the other instance before the crash is seen (then they are
        # answered correctly) or be failed with it; none is left hanging, none gets a wrong answer.
        outcomes = await asyncio.wait_for(asyncio.gather(*futures, *queued, return_exceptions=True), HANG)
        assert isinstance(outcomes[1], UnavailableError) and "batcher stopped" in outcomes[1].message, outcomes
        for outcome, expected in ((outcomes[0], 3.0), (outcomes[2], 9.0)):
            assert isinstance(outcome, UnavailableError) or float(outcome) == expected, outcomes
        assert not batcher.ready


def test_instances_must_be_positive() -> None:
    with pytest.raises(ValueError, match="instances"):
        DynamicBatcher(FakeRun(), name="x", max_batch_size=1, max_queue_delay_s=0, queue_limit=1, instances=0)


async def test_a_lone_batch_runs_on_run_alone_and_batches_side_by_side_do_not() -> None:
    shared = CountingRun(inside_target=2)
    alone_batches: list[float] = []

    def run_alone(batch: np.ndarray) -> np.ndarray:
        alone_batches.append(float(batch[0, 0]))
        return shared(batch)

    async with make_batcher(shared, max_batch_size=1, instances=2, run_alone=run_alone) as batcher:
        # Nothing else running or queued: the lone caller gets run_alone (every core).
        shared.gate.set()
        assert await results(batcher.submit([sample(1)])) == [3.0]
        assert alone_batches == [1.0]
        # Two at once: the first taken still had the second queued, so neither ran alone.
        shared.gate.clear()
        shared.all_inside.clear()
        futures = batcher.submit([sample(2), sample(3)])
        assert await asyncio.to_thread(shared.all_inside.wait, HANG)
        shared.gate.set()
        assert await results(futures) == [6.0, 9.0]
        assert alone_batches == [1.0]


async def test_instances_take_fair_shares_of_the_queue() -> None:
    run = CountingRun(inside_target=2)
    async with make_batcher(run, max_batch_size=8, instances=2) as batcher:
        blocker = batcher.submit([sample(0)])
        await run.wait_entered()  # one instance is busy; the other takes what is queued next
        futures = batcher.submit([sample(v) for v in range(1, 7)])
        assert await asyncio.to_thread(run.all_inside.wait, HANG)
        run.gate.set()
        assert await results(blocker + futures) == [3.0 * v for v in range(7)]
    # Six queued for two instances: batches of ceil(6 / 2) = 3, not one batch of six.
    assert run.sizes[0] == 1 and run.sizes[1] == 3, run.sizes
    assert sorted(run.sizes) == [1, 1, 2, 3] or sorted(run.sizes) == [1, 3, 3], run.sizes


async def test_one_instance_takes_up_to_max_batch_size() -> None:
    run = FakeRun(gated=True)
    async with make_batcher(run, max_batch_size=4, instances=1) as batcher:
        blocker = batcher.submit([sample(0)])
        await run.wait_entered()
        futures = batcher.submit([sample(v) for v in range(1, 7)])
        run.gate.set()
        assert await results(blocker + futures) == [3.0 * v for v in range(7)]
    assert run.sizes == [1, 4, 2]
