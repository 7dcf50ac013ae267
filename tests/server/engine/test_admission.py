"""The read gate: bounded messages received at once, fair across connections, refusal past the waiting cap."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from imgcls.server.domain.errors import OverloadedError
from imgcls.server.engine.admission import ReadGate


async def hold(gate: ReadGate, owner: str, release: asyncio.Event, order: list[str]) -> None:
    async with gate.slot(owner):
        order.append(owner)
        await release.wait()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_freed_slot_goes_to_the_connection_holding_the_fewest() -> None:
    gate = ReadGate(2, per_owner=2, max_waiting=100, max_waiting_per_owner=100)
    order: list[str] = []
    # A flood from one connection takes both slots and queues five more; then one call from another.
    releases = [asyncio.Event() for _ in range(7)]
    flood = [asyncio.create_task(hold(gate, "flood", release, order)) for release in releases]
    await settle()
    normal_release = asyncio.Event()
    normal = asyncio.create_task(hold(gate, "normal", normal_release, order))
    await settle()
    assert gate.busy == 2 and gate.waiting == 6 and order == ["flood", "flood"]
    # One flood call finishes: its slot goes to the other connection, not to the flood's next call.
    releases[0].set()
    await asyncio.wait_for(flood[0], 5)
    await settle()
    assert order == ["flood", "flood", "normal"]
    normal_release.set()
    for release in releases:
        release.set()
    await asyncio.gather(normal, *flood)
    assert gate.busy == 0 and gate.waiting == 0 and len(order) == 8


async def test_one_connection_is_capped_even_with_free_slots() -> None:
    gate = ReadGate(4, per_owner=1, max_waiting=100, max_waiting_per_owner=100)
    release = asyncio.Event()
    order: list[str] = []
    tasks = [asyncio.create_task(hold(gate, "a", release, order)) for _ in range(3)]
    await settle()
    assert gate.busy == 1 and gate.waiting == 2
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["a", "a", "a"] and gate.busy == 0


async def test_too_many_waiting_is_refused_at_once() -> None:
    gate = ReadGate(1, per_owner=1, max_waiting=2, max_waiting_per_owner=2)
    release = asyncio.Event()
    order: list[str] = []
    tasks = [asyncio.create_task(hold(gate, "a", release, order)) for _ in range(3)]
    await settle()
    with pytest.raises(OverloadedError, match="too many requests waiting"):
        async with gate.slot("a"):
            pass
    with pytest.raises(OverloadedError):
        async with gate.slot("b"):  # the total waiting cap holds for every connection
            pass
    release.set()
    await asyncio.gather(*tasks)


async def test_a_waiter_that_gives_up_leaves_no_trace() -> None:
    gate = ReadGate(1, per_owner=1, max_waiting=10, max_waiting_per_owner=10)
    release = asyncio.Event()
    order: list[str] = []
    holder = asyncio.create_task(hold(gate, "a", release, order))
    await settle()
    waiter = asyncio.create_task(hold(gate, "b", asyncio.Event(), order))
    await settle()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert gate.waiting == 0
    release.set()
    await holder
    assert gate.busy == 0
    async with gate.slot("c"):
        assert gate.busy == 1


async def test_a_new_connection_takes_a_free_slot_while_another_waits_on_its_own_cap() -> None:
    """Calls queued behind their own connection's cap must not make others wait while slots are free."""
    gate = ReadGate(3, per_owner=1, max_waiting=100, max_waiting_per_owner=100)
    release = asyncio.Event()
    order: list[str] = []
    flood = [asyncio.create_task(hold(gate, "a", release, order)) for _ in range(2)]
    await settle()
    assert gate.busy == 1 and gate.waiting == 1  # a's second call waits on a's cap, two slots free
    async with asyncio.timeout(5), gate.slot("b"):
        assert order == ["a"] and gate.busy == 2
    release.set()
    await asyncio.gather(*flood)


async def test_a_waiter_past_its_max_wait_is_refused_and_leaves_no_trace() -> None:
    gate = ReadGate(1, per_owner=1, max_waiting=10, max_waiting_per_owner=10, max_wait_s=0.05)
    release = asyncio.Event()
    order: list[str] = []
    holder = asyncio.create_task(hold(gate, "a", release, order))
    await settle()
    with pytest.raises(OverloadedError, match=r"no turn to send the request within 0.05s \(1 requests waiting"):
        async with gate.slot("b"):
            order.append("b")
    assert gate.waiting == 0 and gate.busy == 1 and order == ["a"]
    release.set()
    await holder
    # The holder's slot comes back; a caller finding it free is not timed at all.
    async with gate.slot("b"):
        assert gate.busy == 1
    assert gate.busy == 0 and gate.waiting == 0


async def test_a_waiters_timer_is_cancelled_when_it_is_granted_refused_or_gives_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = ReadGate(1, per_owner=1, max_waiting=10, max_waiting_per_owner=10, max_wait_s=0.2)
    timers: list[asyncio.TimerHandle] = []
    loop = asyncio.get_running_loop()
    real_call_at = loop.call_at

    def recording_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        handle = real_call_at(when, callback, *args, **kwargs)
        if getattr(callback, "__name__", "") == "_too_long":
            timers.append(handle)
        return handle

    monkeypatch.setattr(loop, "call_at", recording_call_at)
    release = asyncio.Event()
    order: list[str] = []
    holder = asyncio.create_task(hold(gate, "a", release, order))
    await settle()
    # Granted in time.
    granted_release = asyncio.Event()
    granted = asyncio.create_task(hold(gate, "b", granted_release, order))
    await settle()
    release.set()
    await holder
    await settle()
    assert order == ["a", "b"] and len(timers) == 1 and timers[0].cancelled()
    # Refused at its deadline (its timer fired; nothing left to cancel).
    with pytest.raises(OverloadedError, match="no turn to send"):
        async with gate.slot("c"):
            pass
    # Gives up while waiting.
    quitter = asyncio.create_task(hold(gate, "d", asyncio.Event(), order))
    await settle()
    quitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter
    assert len(timers) == 3 and timers[2].cancelled()
    granted_release.set()
    await granted
    assert gate.busy == 0 and gate.waiting == 0 and order == ["a", "b"]


async def test_free_slots_go_to_light_and_new_owners_before_heavy_ones_and_struck_ones_last() -> None:
    gate = ReadGate(1, per_owner=1, max_waiting=100, max_waiting_per_owner=100)
    # Standing earned the way callers earn it: a prompt message of 2 MiB, a prompt small one, a strike.
    for owner, nbytes in (("heavy", 2 << 20), ("light", 1000)):
        async with gate.slot(owner) as ticket:
            ticket.nbytes = nbytes
    gate.strike("struck")
    holder = asyncio.Event()
    order: list[str] = []
    first = asyncio.create_task(hold(gate, "holder", holder, order))
    await settle()
    releases = {owner: asyncio.Event() for owner in ("struck", "heavy", "new", "light")}
    waiters = [asyncio.create_task(hold(gate, owner, release, order)) for owner, release in releases.items()]
    await settle()
    assert gate.waiting == 4
    holder.set()
    for owner in ("light", "new", "heavy", "struck"):
        await settle()
        assert order[-1] == owner, order
        releases[owner].set()
    await asyncio.gather(first, *waiters)
    assert order == ["holder", "light", "new", "heavy", "struck"]


async def test_without_a_cap_per_owner_an_owner_s_idle_holder_is_cut_for_its_own_waiter() -> None:
    """Streams: one client's cameras over one connection, three paused in every slot, the fourth sending; the
    fourth waited for good (nobody else waited, so nobody was cut). Its own longest idle holder is cut, not
    struck for it; with a cap per owner (unary calls) the connection's own waiter still waits its turn."""
    gate = ReadGate(3, per_owner=3, max_waiting=100, max_waiting_per_owner=100, patience_s=0.2)
    release = asyncio.Event()
    order: list[str] = []
    idle = [asyncio.create_task(hold(gate, "cameras", release, order)) for _ in range(3)]
    await settle()
    sending = asyncio.create_task(hold(gate, "cameras", asyncio.Event(), order))
    await settle()
    assert gate.busy == 3 and gate.waiting == 1
    await asyncio.wait_for(asyncio.wait(idle, return_when=asyncio.FIRST_COMPLETED), 5)
    await settle()
    cut = [t for t in idle if t.done()]
    assert len(cut) == 1 and isinstance(cut[0].exception(), OverloadedError)
    assert len(order) == 4 and gate.cut_count == 1 and gate.in_good_standing("cameras")
    sending.cancel()
    release.set()
    await asyncio.gather(*[t for t in idle if not t.done()])

    capped = ReadGate(3, per_owner=1, max_waiting=100, max_waiting_per_owner=100, patience_s=0.05)
    held = asyncio.create_task(hold(capped, "a", release := asyncio.Event(), []))
    await settle()
    waiter = asyncio.create_task(hold(capped, "a", asyncio.Event(), []))
    await asyncio.sleep(0.3)  # past the patience: with a cap per owner, nothing is cut
    assert capped.cut_count == 0 and not held.done() and capped.waiting == 1
    waiter.cancel()
    release.set()
    await held
