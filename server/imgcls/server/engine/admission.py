"""Admission before bytes: how many request messages are being received at once, shared fairly.

A message being received is held in memory whole (up to the message size limit) before anything can
look at it, so the number received at once is bounded: `slots` in all, at most `per_owner` for one
owner (a connection). Callers waiting for a slot cost nothing (their bytes stay with the sender: flow
control), and a free slot goes to the waiting owner holding the fewest, so a caller on its own
connection is not stuck behind a flood on another. Past `max_waiting` waiting calls (or `max_waiting_per_owner`
for one owner) a call is refused at once (OverloadedError), never queued without bound; and one that has
waited `max_wait_s` for its slot is refused then, so the line is bounded in time as well as in length.

A slot is for receiving, not for waiting: while an owner in good standing waits and every slot is
busy, a holder whose message has not arrived `patience_s` after it got its slot is cut
(OverloadedError, retry later), so a caller that sends slowly (or claims a large message and stalls)
cannot keep others out for longer than that. Free slots go first to owners whose last message arrived
within its patience (a caller that keeps its connection and sends promptly), then to owners not seen yet
(a new connection), last to owners that were cut or whose message timed out (``strike``), for `STRIKE_S`
after that: so a caller that has been sending ordinary messages is not stuck behind a flood of new
connections that stall, which would each hold a slot for `patience_s`. Before standing comes size: owners
whose last message was small (LIGHT_MESSAGE_BYTES), and new ones (nothing known: a short-lived client, a
health check, a caller on a fresh connection per request), go before those sending large ones, so a
caller with one ordinary image is not refused after waiting behind a few connections streaming large
messages promptly (seen: a fresh connection per call refused after --read-wait during the large-frames
attack). Owners struck stay last whatever they send.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from imgcls.server.domain.errors import OverloadedError

# How long an owner's standing is remembered: prompt (first in line) or struck (last in line).
STRIKE_S = 30.0
# Owners remembered at most (the oldest are forgotten first): connections come and go.
_MAX_REMEMBERED = 4096
# Among owners of the same standing, those whose last message was at most this come first: an ordinary image
# (in the connection's first flow-control window already) is not queued behind connections sending 4K frames.
LIGHT_MESSAGE_BYTES = 1 << 20
# How often slots and places held by callers that are gone are taken back (see ReadGate._reap).
_REAP_EVERY_S = 1.0
# Standing, in the order free slots are handed out.
_PROMPT, _UNKNOWN, _STRUCK = 0, 1, 2


@dataclass(slots=True, eq=False)
class Ticket:
    """One slot held: by whom, since when, and the task receiving in it (cut by cancelling it)."""

    owner: str
    since: float
    task: asyncio.Task[object] | None
    cut: bool = False
    nbytes: int = 0  # the size of the message received in it, when the reader tells


class ReadGate:
    """Event-loop only (no locks)."""

    def __init__(
        self,
        slots: int,
        *,
        per_owner: int,
        max_waiting: int,
        max_waiting_per_owner: int,
        patience_s: float = 2.0,
        max_wait_s: float | None = None,
    ) -> None:
        self.slots = slots
        self.per_owner = per_owner
        self.max_waiting = max_waiting
        self.max_waiting_per_owner = max_waiting_per_owner
        self.patience_s = patience_s
        self.max_wait_s = max_wait_s
        self._active: dict[str, int] = {}
        self._busy = 0
        # owner -> its waiters, in the order owners get their next turn
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._waiting_count = 0
        self._holders: set[Ticket] = set()
        # owner -> (standing, when it was last set): _PROMPT or _STRUCK; anyone else is _UNKNOWN
        self._standing: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._timer: asyncio.TimerHandle | None = None
        # future -> (owner, its task): every queued waiter, and the granted ones not yet back in slot()
        self._waiters: dict[asyncio.Future[None], tuple[str, asyncio.Task[Any]]] = {}
        self._granted: dict[asyncio.Future[None], tuple[str, asyncio.Task[Any] | None]] = {}
        self._reaper: asyncio.TimerHandle | None = None
        # owner -> whether its last message was over LIGHT_MESSAGE_BYTES: light senders are served first
        self._heavy: OrderedDict[str, bool] = OrderedDict()
        self.cut_count = 0

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def waiting(self) -> int:
        return self._waiting_count

    @contextlib.asynccontextmanager
    async def slot(self, owner: str) -> AsyncIterator[Ticket]:
        """A slot to receive one message in; OverloadedError when too many wait, or when cut (see above)."""
        await self._acquire(owner)
        ticket = Ticket(owner, time.monotonic(), asyncio.current_task())
        self._holders.add(ticket)
        self._check()
        self._arm_reaper()
        unwound = False
        try:
            yield ticket
        except asyncio.CancelledError:
            if not ticket.cut:
                raise
            unwound = True
            if ticket.task is not None:
                ticket.task.uncancel()
            raise OverloadedError(
                f"server busy: the message did not arrive within {self.patience_s:g}s of its turn while other "
                "callers waited to send theirs; send it faster, or retry later"
            ) from None
        else:
            if not ticket.cut and time.monotonic() - ticket.since <= self.patience_s:
                self._remember(owner, _PROMPT)
            self._heavy[owner] = ticket.nbytes > LIGHT_MESSAGE_BYTES
            self._heavy.move_to_end(owner)
            while len(self._heavy) > _MAX_REMEMBERED:
                self._heavy.popitem(last=False)
        finally:
            if ticket.cut and not unwound and ticket.task is not None and ticket.task.cancelling():
                ticket.task.uncancel()  # cut just as the message arrived (the cancellation was swallowed)
            if ticket in self._holders:  # not reaped meanwhile (see _reap)
                self._holders.discard(ticket)
                self._release(owner)

    def strike(self, owner: str) -> None:
        """The owner's message timed out: it is served after every other owner for a while."""
        self._remember(owner, _STRUCK)

    def _remember(self, owner: str, standing: int) -> None:
        if standing == _PROMPT and self.standing(owner) == _STRUCK:
            return  # a strike lasts its time, whatever the owner sends meanwhile
        self._standing[owner] = (standing, time.monotonic())
        self._standing.move_to_end(owner)
        while len(self._standing) > _MAX_REMEMBERED:
            self._standing.popitem(last=False)

    def standing(self, owner: str) -> int:
        remembered = self._standing.get(owner)
        if remembered is None:
            return _UNKNOWN
        if time.monotonic() - remembered[1] > STRIKE_S:
            del self._standing[owner]
            return _UNKNOWN
        return remembered[0]

    def in_good_standing(self, owner: str) -> bool:
        return self.standing(owner) != _STRUCK

    async def _acquire(self, owner: str, deadline: float | None = None) -> None:
        if self._busy < self.slots and self._below_cap(owner) and not self._eligible_waiting():
            # A free slot nobody waiting may take (those waiting are at their own connection's cap).
            self._take(owner)
            return
        queue = self._waiting.get(owner)
        if self._waiting_count >= self.max_waiting or (queue is not None and len(queue) >= self.max_waiting_per_owner):
            raise OverloadedError("server busy: too many requests waiting to be received; retry later")
        if queue is None:
            queue = self._waiting[owner] = deque()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(future)
        self._waiting_count += 1
        task = asyncio.current_task()
        if task is not None:
            self._waiters[future] = (owner, task)
        self._check()
        self._arm_reaper()
        loop = asyncio.get_running_loop()
        if deadline is None and self.max_wait_s is not None:
            deadline = loop.time() + self.max_wait_s  # once: a wait begun again (below) keeps its deadline
        timer = None if deadline is None else loop.call_at(deadline, self._too_long, future)
        try:
            await future
        except BaseException:
            self._waiters.pop(future, None)
            if self._granted.pop(future, None) is not None:
                self._release(owner)  # granted just as the caller gave up: hand it on
            else:
                self._forget(owner, future)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        self._waiters.pop(future, None)
        if self._granted.pop(future, None) is None:
            await self._acquire(owner, deadline)  # the grant was taken back (see _reap): wait again

    def _too_long(self, future: asyncio.Future[None]) -> None:
        """A waiter past max_wait_s is refused: the waiting line is bounded in time, not only in length, so a
        caller behind many others sending large messages (or struck, behind everyone) hears at once, not after
        tens of seconds."""
        if not future.done():
            future.set_exception(
                OverloadedError(
                    f"server busy: no turn to send the request within {self.max_wait_s:g}s "
                    f"({self._waiting_count} requests waiting to be received); retry later"
                )
            )

    def _below_cap(self, owner: str) -> bool:
        """Under its own per-owner cap; whether a slot is free is for the caller to check."""
        return self._active.get(owner, 0) < self.per_owner

    def _eligible_waiting(self) -> bool:
        return any(self._below_cap(o) for o in self._waiting)

    def _take(self, owner: str) -> None:
        self._busy += 1
        self._active[owner] = self._active.get(owner, 0) + 1

    def _release(self, owner: str) -> None:
        self._busy -= 1
        left = self._active[owner] - 1
        if left:
            self._active[owner] = left
        else:
            del self._active[owner]
        self._grant()
        self._check()

    def _forget(self, owner: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(owner)
        if queue is not None and future in queue:
            queue.remove(future)
            self._waiting_count -= 1
            if not queue:
                del self._waiting[owner]

    def _grant(self) -> None:
        """Free slots go to the waiting owner holding the fewest, then of the best standing (see the module's
        doc), then waiting longest; it then goes to the back of the line."""
        while self._busy < self.slots and self._waiting:
            eligible = [o for o in self._waiting if self._below_cap(o)]
            if not eligible:
                return
            # min() keeps the first of equals: the owner waiting longest
            owner = min(eligible, key=self._turn)
            queue = self._waiting[owner]
            future = queue.popleft()
            self._waiting_count -= 1
            if queue:
                self._waiting.move_to_end(owner)
            else:
                del self._waiting[owner]
            waiter = self._waiters.get(future)
            if future.done() or (waiter is not None and waiter[1].done()):
                self._waiters.pop(future, None)  # its caller gave up (or is gone) and has not left the queue itself
                continue
            self._take(owner)
            self._granted[future] = (owner, waiter[1] if waiter is not None else None)
            future.set_result(None)

    def _turn(self, owner: str) -> tuple[int, bool, bool, int]:
        """Who gets a free slot first (the least): see the module's doc."""
        standing = self.standing(owner)
        return (self._active.get(owner, 0), standing == _STRUCK, self._heavy.get(owner, False), standing)

    def _arm_reaper(self) -> None:
        if self._reaper is None and (self._busy or self._waiting_count):
            self._reaper = asyncio.get_running_loop().call_later(_REAP_EVERY_S, self._reap)

    def _reap(self) -> None:
        """Take back what callers that are gone still hold.

        A caller's task can end without unwinding through slot() or _acquire(): grpc's request iterator is
        an async generator iterated by another task than the one that made it, and closing a task that awaits
        an async generator does not close the generator, so its finally never runs (seen: holders and
        granted slots of streams whose client had gone, kept for good, every later stream message waiting).
        The gate holds each waiter's and holder's task, so none is collected unseen, and every second while
        anything is held gives back the slots and places of tasks that are done.
        """
        self._reaper = None
        for ticket in [t for t in self._holders if t.task is not None and t.task.done()]:
            self._holders.discard(ticket)
            self._release(ticket.owner)
        for future, (owner, task) in list(self._granted.items()):
            if task is not None and task.done():
                del self._granted[future]
                self._release(owner)
        for future, (owner, task) in list(self._waiters.items()):
            if task.done():
                del self._waiters[future]
                self._forget(owner, future)
        self._arm_reaper()

    def _check(self) -> None:
        """Cut the longest holder once it is past its patience, while an owner in good standing waits for it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._busy < self.slots or not self._holders:
            return  # a free slot: whoever waits is held back by its own per-connection cap, not by others
        waiting_good = any(self._below_cap(o) and self.in_good_standing(o) for o in self._waiting)
        candidates = [t for t in self._holders if not t.cut and t.task is not None]
        own = False
        if not waiting_good and self.per_owner >= self.slots:
            # A gate without a cap per owner (streams): an owner holding every slot, idle in them, while
            # another of its own calls waits (one client's cameras over one connection, some paused) would
            # wait for good. Its own longest idle holder is cut instead, and it is not struck for it.
            candidates = [t for t in candidates if t.owner in self._waiting and self._active.get(t.owner) == self._busy]
            own = True
        if not (waiting_good or own) or not candidates:
            return
        oldest = min(candidates, key=lambda t: t.since)
        due = oldest.since + self.patience_s
        now = time.monotonic()
        if due > now:
            self._timer = asyncio.get_running_loop().call_later(due - now, self._check)
            return
        oldest.cut = True
        self.cut_count += 1
        if not own:
            self.strike(oldest.owner)
        assert oldest.task is not None
        oldest.task.cancel()  # the holder's slot comes back when its task unwinds (slot() above)
