"""Fairness under hostile load, unit by unit (the hostile-load suite proves it end to end): the read gate cuts a
slot held without its message arriving while others wait, serves prompt connections first, and takes back what
gone callers hold; the budget keeps the end of its reserve for connections holding little."""

from __future__ import annotations

import asyncio

import pytest
from imgcls.server.domain.errors import OverloadedError
from imgcls.server.engine.admission import ReadGate
from imgcls.server.engine.budget import MIB, MemoryBudget

pytestmark = pytest.mark.timeout(30)


async def until(condition: object, timeout_s: float = 5.0) -> None:
    async def wait() -> None:
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)

    await asyncio.wait_for(wait(), timeout_s)


async def test_a_slot_held_without_its_message_is_cut_while_another_caller_waits() -> None:
    gate = ReadGate(1, per_owner=1, max_waiting=10, max_waiting_per_owner=10, patience_s=0.2)
    never = asyncio.get_running_loop().create_future()

    async def stall() -> None:
        async with gate.slot("stalls"):
            await never  # its message never arrives

    staller = asyncio.create_task(stall())
    await until(lambda: gate.busy == 1)
    async with gate.slot("normal"):  # waits its turn, then gets the slot
        pass
    with pytest.raises(OverloadedError, match=r"did not arrive within 0\.2s"):
        await staller
    assert gate.busy == 0 and gate.cut_count == 1
    assert not gate.in_good_standing("stalls") and gate.in_good_standing("normal")


async def test_nobody_is_cut_when_nobody_waits() -> None:
    gate = ReadGate(1, per_owner=1, max_waiting=10, max_waiting_per_owner=10, patience_s=0.05)
    async with gate.slot("slow"):
        await asyncio.sleep(0.2)  # slow, but alone
    assert gate.cut_count == 0


async def test_a_prompt_connection_is_served_before_new_and_struck_ones() -> None:
    gate = ReadGate(1, per_owner=1, max_waiting=10, max_waiting_per_owner=10, patience_s=10)
    async with gate.slot("prompt"):
        pass  # its message arrived at once: in good standing, first in line
    gate.strike("struck")
    release = asyncio.Event()
    order: list[str] = []

    async def take(owner: str) -> None:
        async with gate.slot(owner):
            order.append(owner)
            if owner == "holder":
                await release.wait()

    holder = asyncio.create_task(take("holder"))
    await until(lambda: gate.busy == 1)
    waiters = [asyncio.create_task(take(owner)) for owner in ("struck", "new", "prompt")]
    await until(lambda: gate.waiting == 3)
    release.set()
    await asyncio.gather(holder, *waiters)
    assert order == ["holder", "prompt", "new", "struck"]


async def test_slots_of_tasks_that_ended_without_unwinding_are_taken_back() -> None:
    gate = ReadGate(1, per_owner=1, max_waiting=10, max_waiting_per_owner=10, patience_s=10)

    # A task that ends while its slot is still entered, its exit never run: as a stream's task that ended while
    # its request iterator (an async generator) was suspended mid-read, which is then never closed.
    entered = gate.slot("gone")

    async def enter_and_end() -> None:
        await entered.__aenter__()

    await asyncio.create_task(enter_and_end())
    assert gate.busy == 1
    async with asyncio.timeout(5):
        async with gate.slot("next"):  # given back by the reaper within about a second
            assert gate.busy == 1


def test_the_end_of_the_reserve_is_for_connections_holding_little() -> None:
    budget = MemoryBudget(64 * MIB, owner_share=1.0, small_reserve=0.25, small_request_bytes=4 * MIB)
    budget.lease(48 * MIB, owner="large")  # everything up to the reserve
    flood = [budget.lease(2 * MIB, owner="flood") for _ in range(6)]  # small requests over one connection
    assert budget.used == 60 * MIB
    with pytest.raises(OverloadedError):
        budget.lease(2 * MIB, owner="flood")  # the reserve's last quarter is not for it
    budget.lease(2 * MIB, owner="normal")  # one ordinary image from a connection holding nothing
    for lease in flood:
        lease.release()
