"""Loopback ports for tests, without the bind-close-reuse race: servers bind port 0 and report the port
they got; a port where nothing listens stays bound (never listening) for as long as it is needed."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port that refuses connections until exit: bound by this socket, which never listens, so no
    other process can start listening there meanwhile (a port bound and closed again could be taken)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
