"""Waiting for a condition another party makes true: bounded polling, never a fixed sleep as synchronisation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def poll_until(predicate: Callable[[], bool], *, attempts: int = 400, step: float = 0.025) -> bool:
    """True as soon as predicate() is; False if it still is not after attempts x step seconds."""
    for _ in range(attempts):
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()
