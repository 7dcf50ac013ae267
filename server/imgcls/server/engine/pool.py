"""The preprocessing pool: bounded, and the cheapest work first.

Decoding and preprocessing run on a few threads. Its queue is bounded (past `queue_limit` waiting
jobs a request is refused at once, not queued), and waiting jobs run cheapest first, so one caller's
ordinary photo is not stuck behind another's queue of 4K frames.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

from imgcls.server.domain.errors import OverloadedError

P = ParamSpec("P")

AGING_BYTES = 256 * 1024
T = TypeVar("T")


class PriorityPool(Executor):
    def __init__(self, workers: int, *, queue_limit: int, thread_name_prefix: str = "preprocess") -> None:
        self.queue_limit = queue_limit
        self._heap: list[tuple[int, int, Future[Any], Callable[[], Any]]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._shutdown = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{thread_name_prefix}-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def waiting(self) -> int:
        return len(self._heap)

    def reserve(self, jobs: int) -> None:
        """Refuse (OverloadedError) when jobs more would not fit in the queue: all or nothing, before any runs."""
        if len(self._heap) + jobs > self.queue_limit:
            raise OverloadedError(
                f"server busy: decode queue full ({len(self._heap)} images waiting, limit {self.queue_limit}); "
                "retry later"
            )

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self.submit_with_cost(0, fn, *args, **kwargs)

    def submit_with_cost(self, cost: int, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        with self._cond:
            if self._shutdown:
                raise RuntimeError("the preprocessing pool is shut down")
            order = next(self._order)
            # Cheapest first, but each later job counts AGING_BYTES more, so a large image is passed over by
            # at most (its cost / AGING_BYTES) jobs that came after it: it waits, it is never starved.
            heapq.heappush(self._heap, (cost + order * AGING_BYTES, order, future, lambda: fn(*args, **kwargs)))
            self._cond.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._shutdown:
                    self._cond.wait()
                if not self._heap:
                    return
                _, _, future, call = heapq.heappop(self._heap)
            if not future.set_running_or_notify_cancel():
                continue  # the caller gave up while it waited
            try:
                future.set_result(call())
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cond:
            self._shutdown = True
            if cancel_futures:
                for _, _, future, _ in self._heap:
                    future.cancel()
                self._heap.clear()
            self._cond.notify_all()
        if wait:
            for thread in self._threads:
                thread.join()
