"""The preprocessing pool: bounded queue (refused at once), cheapest first."""

from __future__ import annotations

import threading

import pytest
from imgcls.server.domain.errors import OverloadedError
from imgcls.server.engine.pool import AGING_BYTES, PriorityPool

MIB = 1 << 20


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
        futures = [pool.submit_with_cost(cost * MIB, ran.append, cost) for cost in (3, 1, 2)]
        gate.set()
        blocker.result(5)  # type: ignore[attr-defined]
        for future in futures:
            future.result(5)
        assert ran == [1, 2, 3]
    finally:
        gate.set()
        pool.shutdown()


def test_a_large_job_is_passed_over_by_a_bounded_number_of_later_small_ones() -> None:
    pool = PriorityPool(1, queue_limit=200)
    gate, _ = occupy(pool)
    ran: list[str] = []
    try:
        futures = [pool.submit_with_cost(10 * MIB, ran.append, "large")]
        futures += [pool.submit_with_cost(1024, ran.append, f"small-{i}") for i in range(100)]
        gate.set()
        for future in futures:
            future.result(5)
        # 10 MiB of cost ages away within 40 later jobs (AGING_BYTES = 256 KiB each: the 40th costs as much
        # as it does, counting its own 1 KiB): never starved.
        assert ran.index("large") == 10 * MIB // AGING_BYTES - 1
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


def test_one_connection_may_fill_half_the_queue_and_the_last_eighth_is_for_newcomers() -> None:
    pool = PriorityPool(1, queue_limit=16)
    gate, _ = occupy(pool)
    try:
        pool.reserve(8, "flood")
        for _ in range(8):
            pool.submit_with_cost(MIB, lambda: None, owner="flood")
        with pytest.raises(OverloadedError, match="this connection has 8 images waiting to be decoded"):
            pool.reserve(1, "flood")
        with pytest.raises(OverloadedError, match="decode queue full"):
            pool.reserve(7, "another")  # a large first request stops short of the last eighth too
        pool.reserve(6, "busy")
        for _ in range(6):
            pool.submit_with_cost(MIB, lambda: None, owner="busy")
        with pytest.raises(OverloadedError, match="decode queue full"):
            pool.reserve(1, "busy")  # 14 waiting: the last 2 places are for connections with none waiting
        pool.reserve(1, "newcomer")
        assert pool.waiting == 14
    finally:
        gate.set()
        pool.shutdown()


def test_a_lone_connections_image_goes_ahead_of_another_connections_backlog() -> None:
    pool = PriorityPool(1, queue_limit=64)
    gate, _ = occupy(pool)
    ran: list[str] = []
    try:
        futures = [pool.submit_with_cost(1024, ran.append, f"flood-{i}", owner="flood") for i in range(20)]
        futures.append(pool.submit_with_cost(400 * 1024, ran.append, "lone", owner="lone"))
        gate.set()
        for future in futures:
            future.result(5)
        assert ran[:2] == ["flood-0", "lone"]  # the flood's first job had nothing ahead of it either
    finally:
        gate.set()
        pool.shutdown()


def test_an_owners_waiting_jobs_stop_counting_once_workers_take_them() -> None:
    pool = PriorityPool(1, queue_limit=16)
    gate, _ = occupy(pool)
    try:
        futures = [pool.submit_with_cost(MIB, lambda: None, owner="flood") for _ in range(8)]
        with pytest.raises(OverloadedError, match="this connection has 8 images waiting"):
            pool.reserve(1, "flood")
        gate.set()
        for future in futures:
            future.result(5)
        pool.reserve(8, "flood")  # nothing of its own waits any more: half the queue again
    finally:
        gate.set()
        pool.shutdown()
