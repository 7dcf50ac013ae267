"""The open-file limit is raised towards the hard limit at start; the HTTP door holds what fits in it."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest
from imgcls.server.runtime import files


@pytest.fixture
def low_soft_limit() -> Iterator[int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"hard open-file limit {hard}: too low to raise anything")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        yield 1024
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_limit_is_raised_to_what_is_wanted_and_never_lowered(low_soft_limit: int) -> None:
    assert files.connection_room(10_000) == 64  # 1024 descriptors, all reserved: the floor
    soft, hard = files.raise_open_file_limit(4096)
    assert soft == 4096 and resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 4096
    assert files.connection_room(10_000) == 4096 - files.RESERVED_FDS
    assert files.connection_room(100) == 100
    assert files.raise_open_file_limit(2000) == (4096, hard)  # never lowered


def test_the_soft_limit_stops_at_the_hard_limit(low_soft_limit: int) -> None:
    _, hard = files.open_file_limit()
    if hard >= 1 << 20:
        pytest.skip(f"hard open-file limit {hard}: past what the kernel lets a process hold")
    soft, _ = files.raise_open_file_limit(hard + 1_000_000)
    assert soft == hard
