"""Answers in the order their messages came, with a bounded number read and not yet answered.

Both streaming RPCs (imgcls.v1 ClassifyStream through FrameStream, the Open Inference Protocol's
ModelStreamInfer) run their messages concurrently, so a stream fills batches, and answer them in
order. The reader takes the next message only when a place is free: a client that sends faster than
the server answers, or never reads its answers, is held back by flow control, and what one stream
holds stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class InOrder(Generic[T, R]):
    """One stream's ordering: ``start(message)`` returns the message's answer-to-be (a task or a future) and
    ``run(messages)`` yields the answers in message order.

    ``start`` is called on the reader, one message at a time; it must not block, and an exception it raises
    ends the stream after the answers before it (a message that fails on its own is answered, not raised).
    ``on_close`` runs once when the stream ends, however it ends, after what is still pending was cancelled.
    """

    def __init__(
        self,
        limit: int,
        start: Callable[[T], asyncio.Future[R]],
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._start = start
        self._on_close = on_close
        self._places = asyncio.Semaphore(limit)
        self._unanswered = 0  # read and not yet answered, each holding a place
        self._answers: asyncio.Queue[asyncio.Future[R] | BaseException | None] = asyncio.Queue()

    def widen(self, limit: int) -> None:
        """From now on, up to ``limit`` messages read and not yet answered (drop_stale streams read ahead, so a
        newer frame can replace a stale one). Called from ``start``, while the reader is not waiting."""
        self._places = asyncio.Semaphore(max(0, limit - self._unanswered))

    async def run(self, messages: AsyncIterator[T]) -> AsyncIterator[R]:
        reader = asyncio.create_task(self._read_ahead(messages))
        current: asyncio.Future[R] | None = None
        try:
            while (entry := await self._answers.get()) is not None:
                if isinstance(entry, BaseException):
                    raise entry
                current = entry
                answer = await entry
                current = None
                yield answer
                self._unanswered -= 1
                self._places.release()
        finally:
            reader.cancel()
            if current is not None:
                current.cancel()
            while not self._answers.empty():
                leftover = self._answers.get_nowait()
                if isinstance(leftover, asyncio.Future):
                    leftover.cancel()
            if self._on_close is not None:
                self._on_close()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read_ahead(self, messages: AsyncIterator[T]) -> None:
        try:
            iterator = aiter(messages)
            while True:
                # A place first, then the next message: at most `limit` messages in memory.
                await self._places.acquire()
                self._unanswered += 1
                try:
                    message = await anext(iterator)
                except StopAsyncIteration:
                    break
                self._answers.put_nowait(self._start(message))
                del message  # not kept here while the stream waits for the next one
            self._answers.put_nowait(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the stream itself failed (a bad message, the client gone): answered last
            self._answers.put_nowait(exc)
