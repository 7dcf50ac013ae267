"""Admission before bytes: how many request messages are being received at once, shared fairly.

A message being received is held in memory whole (up to the message size limit) before anything can
look at it, so the number received at once is bounded: `slots` in all, at most `per_owner` for one
owner (a connection). Callers waiting for a slot cost nothing (their bytes stay with the sender: flow
control), and a free slot goes to the waiting owner holding the fewest, so a caller on its own
connection is not stuck behind a flood on another. Past `max_waiting` waiting calls (or `max_waiting_per_owner`
for one owner) a call is refused at once (OverloadedError), never queued without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator

from imgcls.server.domain.errors import OverloadedError


class ReadGate:
    """Event-loop only (no locks)."""

    def __init__(self, slots: int, *, per_owner: int, max_waiting: int, max_waiting_per_owner: int) -> None:
        self.slots = slots
        self.per_owner = per_owner
        self.max_waiting = max_waiting
        self.max_waiting_per_owner = max_waiting_per_owner
        self._active: dict[str, int] = {}
        self._busy = 0
        # owner -> its waiters, in the order owners get their next turn
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._waiting_count = 0

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def waiting(self) -> int:
        return self._waiting_count

    @contextlib.asynccontextmanager
    async def slot(self, owner: str) -> AsyncIterator[None]:
        await self._acquire(owner)
        try:
            yield
        finally:
            self._release(owner)

    async def _acquire(self, owner: str) -> None:
        if self._busy < self.slots and self._active.get(owner, 0) < self.per_owner and not self._waiting:
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
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self._release(owner)  # granted just as the caller gave up: hand it on
            else:
                self._forget(owner, future)
            raise

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

    def _forget(self, owner: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(owner)
        if queue is not None and future in queue:
            queue.remove(future)
            self._waiting_count -= 1
            if not queue:
                del self._waiting[owner]

    def _grant(self) -> None:
        """Free slots go to the waiting owner holding the fewest (ties: the one waiting longest), which
        then goes to the back of the line: a connection with nothing being received comes first."""
        while self._busy < self.slots and self._waiting:
            eligible = [o for o in self._waiting if self._active.get(o, 0) < self.per_owner]
            if not eligible:
                return
            owner = min(eligible, key=lambda o: self._active.get(o, 0))  # min() keeps the first of equals
            queue = self._waiting[owner]
            future = queue.popleft()
            self._waiting_count -= 1
            if queue:
                self._waiting.move_to_end(owner)
            else:
                del self._waiting[owner]
            self._take(owner)
            future.set_result(None)
