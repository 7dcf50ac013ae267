"""The memory budget: leases, refusal at once, per-connection shares, the reserve for small requests."""

from __future__ import annotations

import threading

import pytest
from imgcls.server.domain.errors import ErrorKind, OverloadedError, TooLargeError
from imgcls.server.engine.budget import MIB, MemoryBudget


def test_leases_count_until_released_and_refuse_past_the_limit() -> None:
    budget = MemoryBudget(100 * MIB, owner_share=1.0, small_reserve=0.0)
    first = budget.lease(60 * MIB)
    with pytest.raises(OverloadedError) as caught:
        budget.lease(50 * MIB)
    assert caught.value.kind is ErrorKind.OVERLOADED
    assert "60 MiB of work in flight, budget 100 MiB; retry later" in caught.value.message
    assert budget.used == 60 * MIB  # a refused lease holds nothing
    first.release()
    assert budget.used == 0
    with budget.lease(90 * MIB):
        assert budget.used == 90 * MIB
    assert budget.used == 0
    snapshot = budget.snapshot()
    assert (snapshot.peak, snapshot.refused) == (90 * MIB, 1)


def test_a_lease_grows_and_shrinks_and_release_is_idempotent() -> None:
    budget = MemoryBudget(100 * MIB, owner_share=1.0, small_reserve=0.0)
    lease = budget.lease(10 * MIB)
    lease.grow(30 * MIB)
    assert budget.used == lease.held == 40 * MIB
    with pytest.raises(TooLargeError):
        lease.grow(61 * MIB)  # more than the whole budget: it could never fit
    other = budget.lease(50 * MIB)
    with pytest.raises(OverloadedError):
        lease.grow(11 * MIB)  # would fit on an idle server: busy, retry later
    other.release()
    assert lease.held == 40 * MIB
    lease.shrink(15 * MIB)
    assert budget.used == 25 * MIB
    lease.release()
    lease.release()
    assert budget.used == 0 and budget.released == 90 * MIB  # every byte ever given back, the other lease too


def test_one_connection_holds_at_most_its_share() -> None:
    budget = MemoryBudget(100 * MIB, owner_share=0.5, small_reserve=0.0)
    budget.lease(40 * MIB, owner="conn-a")
    with pytest.raises(OverloadedError, match="this connection holds 40 MiB"):
        budget.lease(20 * MIB, owner="conn-a")
    budget.lease(50 * MIB, owner="conn-b")  # another connection still gets its share


def test_small_requests_keep_a_reserve_large_ones_cannot_take() -> None:
    budget = MemoryBudget(100 * MIB, owner_share=1.0, small_reserve=0.25, small_request_bytes=4 * MIB)
    budget.lease(70 * MIB, owner="big")
    with pytest.raises(OverloadedError):
        budget.lease(10 * MIB, owner="other-big")  # would reach into the last quarter
    for _ in range(7):
        budget.lease(3 * MIB, owner="small")  # ordinary images still fit
    assert budget.used == 91 * MIB


def test_leases_are_thread_safe() -> None:
    budget = MemoryBudget(1 << 40)

    def churn() -> None:
        for _ in range(2000):
            lease = budget.lease(1000)
            lease.grow(10)
            lease.release()

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert budget.used == 0


def test_a_request_that_can_never_fit_is_too_large_not_busy() -> None:
    budget = MemoryBudget(100 * MIB, owner_share=0.5, small_reserve=0.0)
    with pytest.raises(TooLargeError, match=r"request needs 60 MiB .* more than one caller may hold \(50 MiB\)"):
        budget.lease(60 * MIB, owner="conn")
    assert budget.used == 0
