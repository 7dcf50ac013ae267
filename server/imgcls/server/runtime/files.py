"""The process's open-file limit: every connection, HTTP or gRPC, holds a file descriptor.

Shells and service managers often start a process with a soft limit of 1024 although its hard limit is far
higher; at the soft limit accept() fails (EMFILE) and asyncio stops accepting for a second at a time, which
shuts out every new caller. ``imgcls serve`` raises the soft limit to the hard limit at start (as Go's
runtime does for every program: gRPC connections are not capped by count, so they need the room too), and
the HTTP door holds no more connections than the limit leaves room for (connection_room).
"""

from __future__ import annotations

import contextlib
import resource

# Descriptors kept for everything but HTTP connections: model files, pipes, threads' eventfds, gRPC
# connections and its own listeners.
RESERVED_FDS = 1024
# The most a serving process asks for: the kernel's usual per-process ceiling (fs.nr_open).
MOST_FDS = 1 << 20


def open_file_limit() -> tuple[int, int]:
    """(soft, hard); RLIM_INFINITY as a large number."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    return (1 << 31 if soft == infinite else soft), (1 << 31 if hard == infinite else hard)


def raise_open_file_limit(wanted: int) -> tuple[int, int]:
    """Raise the soft limit to wanted (at most the hard limit); never lowers it. The (soft, hard) then.

    An unprivileged process may raise its soft limit up to its hard limit; a refusal (some sandboxes) leaves
    the limit as it was.
    """
    soft, hard = open_file_limit()
    target = min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    return open_file_limit()


def connection_room(wanted: int) -> int:
    """How many connections the open-file limit leaves room for, at most wanted (and at least 64)."""
    soft, _ = open_file_limit()
    return max(64, min(wanted, soft - RESERVED_FDS))
