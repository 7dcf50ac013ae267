"""The preprocessing pool: bounded queue (refused at once), cheapest first."""

from __future__ import annotations

import threading

import pytest
from imgcls.server.domain.errors import OverloadedError
from imgcls.server.engine.pool import PriorityPool


def occupy(pool: PriorityPool) -> tuple[threading.Event, object]:
    """Holds the pool's one worker on a gate (returned), once the job is surely running."""
    started, gate = threading.Event(), threading.Event()

    def block() -> bool:
        started.set()
        return gate.wait(10)

    future = pool.submit(block)
    assert started.wait(10)
    return gate, future


def test_waiting_jobs_run_cheapest_first() -> None:
    pool = PriorityPool(1, queue_limit=10)
    gate, blocker = occupy(pool)
    ran: list[int] = []
    try:
        futures = [pool.submit_with_cost(cost, ran.append, cost) for cost in (30, 10, 20)]
        gate.set()
        blocker.result(5)  # type: ignore[attr-defined]
        for future in futures:
            future.result(5)
        assert ran == [10, 20, 30]
    finally:
        gate.set()
        pool.shutdown()


def test_the_queue_is_bounded_before_anything_runs() -> None:
    pool = PriorityPool(1, queue_limit=2)
    gate, _ = occupy(pool)
    try:
        pool.reserve(2)
        pool.submit(lambda: None)
        pool.submit(lambda: None)
        with pytest.raises(OverloadedError, match="decode queue full"):
            pool.reserve(1)
    finally:
        gate.set()
        pool.shutdown()


def test_shutdown_cancels_what_waits() -> None:
    pool = PriorityPool(1, queue_limit=5)
    gate, running = occupy(pool)
    waiting = pool.submit(lambda: 1)
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert running.result(5) is True and waiting.cancelled()  # type: ignore[attr-defined]
