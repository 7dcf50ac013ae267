"""The memory budget for work in flight: bytes held from a request's admission until it is answered.

Every request (and every stream frame) takes a lease for what it will hold: its payload as received and
converted, decoded pixels while an image is preprocessed, model inputs until its batch has run. A lease
that does not fit is refused at once (OverloadedError: RESOURCE_EXHAUSTED, HTTP 429), never queued, so
memory stays bounded whatever callers do.

Fairness, so heavy callers cannot starve light ones:
- one owner (a connection) may hold at most `owner_share` of the budget;
- the last `small_reserve` of the budget is only for small requests (at most `small_request_bytes`), so a
  caller sending one ordinary image is still admitted while large requests fill the rest; and the last
  quarter of that only for owners holding at most `small_request_bytes` besides, so a flood of small
  requests over a few connections cannot fill it either.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass

from imgcls.server.domain.errors import OverloadedError, TooLargeError

MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class BudgetSnapshot:
    limit: int
    used: int
    peak: int
    refused: int


class MemoryBudget:
    """Thread-safe: leases grow on preprocessing threads and are released on the event loop."""

    def __init__(
        self,
        limit: int,
        *,
        owner_share: float = 0.5,
        small_reserve: float = 0.125,
        small_request_bytes: int = 4 * MIB,
    ) -> None:
        self.limit = limit
        self.owner_limit = max(1, int(limit * owner_share))
        self.large_limit = max(1, limit - int(limit * small_reserve))
        self.small_request_bytes = small_request_bytes
        self._used = 0
        self._peak = 0
        self._refused = 0
        self.released = 0  # bytes given back, ever: the engine trims the heap after large releases
        self._by_owner: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def lease(self, nbytes: int, owner: str = "") -> Lease:
        """A lease of nbytes for one request; OverloadedError when it does not fit."""
        lease = Lease(self, owner)
        lease.grow(nbytes)
        return lease

    def _take(self, lease: Lease, nbytes: int) -> None:
        with self._lock:
            total = lease.held + nbytes
            # Small requests may use the reserve, large ones stop short of it; the reserve's last quarter is
            # for connections holding little else, so many small requests over a few connections cannot take
            # the place an ordinary caller's one image needs.
            if total > self.small_request_bytes:
                ceiling = self.large_limit
            elif lease.owner and self._by_owner[lease.owner] - lease.held > self.small_request_bytes:
                ceiling = self.limit - (self.limit - self.large_limit) // 4
            else:
                ceiling = self.limit
            owner_total = self._by_owner[lease.owner] + nbytes if lease.owner else 0
            if total > (self.owner_limit if lease.owner else ceiling):
                # Never fits, however idle the server: not worth retrying.
                self._refused += 1
                raise TooLargeError(
                    f"request needs {total // MIB} MiB of memory in flight, more than one caller may hold "
                    f"({(self.owner_limit if lease.owner else ceiling) // MIB} MiB); send fewer or smaller inputs"
                )
            if self._used + nbytes > ceiling or owner_total > self.owner_limit:
                self._refused += 1
                if owner_total > self.owner_limit:
                    why = f"this connection holds {self._by_owner[lease.owner] // MIB} MiB of work in flight"
                else:
                    why = f"{self._used // MIB} MiB of work in flight, budget {self.limit // MIB} MiB"
                raise OverloadedError(f"server busy: {why}; retry later")
            self._used += nbytes
            self._peak = max(self._peak, self._used)
            if lease.owner:
                self._by_owner[lease.owner] = owner_total
            lease.held = total

    def _give(self, lease: Lease, nbytes: int) -> None:
        with self._lock:
            nbytes = min(nbytes, lease.held)
            self._used -= nbytes
            self.released += nbytes
            lease.held -= nbytes
            if lease.owner:
                left = self._by_owner[lease.owner] - nbytes
                if left > 0:
                    self._by_owner[lease.owner] = left
                else:
                    del self._by_owner[lease.owner]

    @property
    def used(self) -> int:
        return self._used

    def snapshot(self) -> BudgetSnapshot:
        with self._lock:
            return BudgetSnapshot(self.limit, self._used, self._peak, self._refused)


class Lease:
    """Bytes one request holds; grow() may refuse (OverloadedError), release() gives everything back."""

    __slots__ = ("_budget", "held", "owner")

    def __init__(self, budget: MemoryBudget, owner: str) -> None:
        self._budget = budget
        self.owner = owner
        self.held = 0

    def grow(self, nbytes: int) -> None:
        if nbytes > 0:
            self._budget._take(self, nbytes)

    def shrink(self, nbytes: int) -> None:
        if nbytes > 0:
            self._budget._give(self, nbytes)

    def release(self) -> None:
        self._budget._give(self, self.held)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
