"""engine.ordering: answers in message order, a bounded read-ahead, stream-level failures last, cleanup on close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from imgcls.server.engine.ordering import InOrder


async def numbers(count: int, read: list[int]) -> AsyncIterator[int]:
    for number in range(count):
        read.append(number)
        yield number


async def test_answers_come_in_message_order_whatever_order_they_finish_in() -> None:
    gates = {n: asyncio.Event() for n in range(5)}

    async def answer(n: int) -> str:
        await gates[n].wait()
        return f"answer {n}"

    order: InOrder[int, str] = InOrder(5, lambda n: asyncio.ensure_future(answer(n)))
    results = order.run(numbers(5, []))
    first = asyncio.ensure_future(anext(results))
    for n in (4, 2, 3, 1):  # every later answer ready before the first
        gates[n].set()
    await asyncio.sleep(0)
    assert not first.done()
    gates[0].set()
    assert await first == "answer 0"
    assert [r async for r in results] == ["answer 1", "answer 2", "answer 3", "answer 4"]


async def test_no_more_than_the_limit_is_read_before_answers_are_taken() -> None:
    read: list[int] = []
    loop = asyncio.get_running_loop()

    def done(n: int) -> asyncio.Future[int]:
        future: asyncio.Future[int] = loop.create_future()
        future.set_result(n)
        return future

    order: InOrder[int, int] = InOrder(3, done)
    results = order.run(numbers(100, read))
    assert await anext(results) == 0
    for _ in range(20):  # the reader gets every chance to read on
        await asyncio.sleep(0)
    # 0 is answered, but its place comes back only when the next answer is asked for: the caller took it.
    assert read == [0, 1, 2]
    assert [r async for r in results] == list(range(1, 100))


async def test_widen_lets_more_be_read_ahead() -> None:
    read: list[int] = []
    loop = asyncio.get_running_loop()
    never: list[asyncio.Future[int]] = []
    order: InOrder[int, int]

    def start(n: int) -> asyncio.Future[int]:
        if n == 0:
            order.widen(6)
        never.append(loop.create_future())
        return never[-1]

    order = InOrder(2, start)
    results = order.run(numbers(100, read))
    waiting = asyncio.ensure_future(anext(results))
    for _ in range(20):
        await asyncio.sleep(0)
    assert read == list(range(6))
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_failure_of_the_stream_is_raised_after_the_answers_before_it() -> None:
    loop = asyncio.get_running_loop()

    def start(n: int) -> asyncio.Future[int]:
        if n == 2:
            raise LookupError("no such model")
        future: asyncio.Future[int] = loop.create_future()
        loop.call_soon(future.set_result, n)
        return future

    answers = []
    with pytest.raises(LookupError, match="no such model"):
        async for answer in InOrder(4, start).run(numbers(5, [])):
            answers.append(answer)
    assert answers == [0, 1]


async def test_closing_early_cancels_what_is_pending_and_calls_on_close_once() -> None:
    tasks: list[asyncio.Task[int]] = []
    closed: list[bool] = []

    async def slow(n: int) -> int:
        if n == 0:
            return 0
        await asyncio.Event().wait()
        return n

    def start(n: int) -> asyncio.Future[int]:
        tasks.append(asyncio.ensure_future(slow(n)))
        return tasks[-1]

    results = InOrder(4, start, on_close=lambda: closed.append(True)).run(numbers(10, []))
    assert await anext(results) == 0
    for _ in range(5):
        await asyncio.sleep(0)
    await results.aclose()
    await asyncio.sleep(0)
    assert closed == [True]
    assert len(tasks) == 4 and all(t.cancelled() for t in tasks[1:])
