"""The preprocessing pool: bounded, fair across connections, and the cheapest work first.

Decoding and preprocessing run on a few threads. Its queue is bounded (past `queue_limit` waiting
jobs a request is refused at once, not queued), and waiting jobs run cheapest first, so one caller's
ordinary photo is not stuck behind another's queue of 4K frames.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, NamedTuple, ParamSpec, TypeVar

from imgcls.server.domain.errors import OverloadedError

P = ParamSpec("P")

AGING_BYTES = 256 * 1024
SMALL_REQUEST_IMAGES = 4
T = TypeVar("T")


class _Job(NamedTuple):
    # Compared as a tuple: (key, order) is unique, so the heap never compares the fields after it.
    key: int
    order: int
    future: Future[Any]
    call: Callable[[], Any]
    owner: str  # charged a waiting job until a worker takes it; "" for none


class PriorityPool(Executor):
    def __init__(self, workers: int, *, queue_limit: int, thread_name_prefix: str = "preprocess") -> None:
        self.queue_limit = queue_limit
        self._heap: list[_Job] = []
        self._waiting_by_owner: dict[str, int] = {}
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._shutdown = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{thread_name_prefix}-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def workers(self) -> int:
        """Jobs run at once: what one request's images may hold at once while they are decoded."""
        return len(self._threads)

    @property
    def waiting(self) -> int:
        return len(self._heap)

    def reserve(self, jobs: int, owner: str = "") -> None:
        """Refuse (OverloadedError) when jobs more would not fit: all or nothing, before any runs.

        One owner (a connection) with images already waiting may add up to half the queue, and the last
        eighth is kept for small requests from owners with nothing waiting: a flood cannot take a lone
        caller's place.
        """
        waiting = len(self._heap)
        mine = self._waiting_by_owner.get(owner, 0) if owner else 0
        # The last eighth: only for a small request from a connection with nothing waiting (many attacking
        # connections each sending its first large request must not fill it).
        small = not mine and jobs <= SMALL_REQUEST_IMAGES
        ceiling = self.queue_limit if small else self.queue_limit - self.queue_limit // 8
        if mine and mine + jobs > max(1, self.queue_limit // 2):
            raise OverloadedError(
                f"server busy: this connection has {mine} images waiting to be decoded (limit "
                f"{max(1, self.queue_limit // 2)}); retry later"
            )
        if waiting + jobs > ceiling:
            raise OverloadedError(
                f"server busy: decode queue full ({len(self._heap)} images waiting, limit {self.queue_limit}); "
                "retry later"
            )

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self.submit_with_cost(0, functools.partial(fn, *args, **kwargs))

    def submit_with_cost(self, cost: int, fn: Callable[..., T], /, *args: Any, owner: str = "") -> Future[T]:
        future: Future[T] = Future()
        with self._cond:
            if self._shutdown:
                raise RuntimeError("the preprocessing pool is shut down")
            order = next(self._order)
            # Cheapest first, but each later job counts AGING_BYTES more, so a large image is passed over by
            # at most (its cost / AGING_BYTES) jobs that came after it: it waits, it is never starved. A job
            # from an owner with nothing else waiting goes ahead of the queue's backlog (a lone caller's photo
            # does not wait behind another connection's flood).
            key = cost + order * AGING_BYTES
            if owner and not self._waiting_by_owner.get(owner):
                key -= self.queue_limit * AGING_BYTES
            if owner:
                self._waiting_by_owner[owner] = self._waiting_by_owner.get(owner, 0) + 1
            heapq.heappush(self._heap, _Job(key, order, future, functools.partial(fn, *args), owner))
            self._cond.notify()
        return future

    def _done_waiting(self, owner: str) -> None:
        # Under self._cond: the job left the heap.
        left = self._waiting_by_owner.get(owner, 0) - 1
        if left > 0:
            self._waiting_by_owner[owner] = left
        else:
            self._waiting_by_owner.pop(owner, None)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._shutdown:
                    self._cond.wait()
                if not self._heap:
                    return
                job = heapq.heappop(self._heap)
                if job.owner:
                    self._done_waiting(job.owner)
            future = job.future
            if not future.set_running_or_notify_cancel():
                continue  # the caller gave up while it waited
            try:
                future.set_result(job.call())
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cond:
            self._shutdown = True
            if cancel_futures:
                for job in self._heap:
                    job.future.cancel()
                self._heap.clear()
                self._waiting_by_owner.clear()
            self._cond.notify_all()
        if wait:
            for thread in self._threads:
                thread.join()
