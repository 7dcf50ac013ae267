"""Helpers shared by the reliability tests: good callers that run beside a hostile one, and
counters of the server process's tasks, threads and file descriptors."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from support.inputs import ESPRESSO, good_request

GOOD_CALLERS = 3


async def good_call(stub: pb_grpc.ImageClassifierServiceStub) -> None:
    response = await stub.Classify(good_request(), timeout=60)
    assert response.results[0].labels[0].index == ESPRESSO, response


async def _outcome(call: Awaitable[Any]) -> Any:
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        return exc


async def beside_good_callers(
    stub: pb_grpc.ImageClassifierServiceStub, request: pb.ClassifyRequest, *, timeout: float = 120
) -> pb.ClassifyResponse | grpc.aio.AioRpcError:
    """Send `request` while GOOD_CALLERS ordinary requests run; every good one must be answered right.

    Returns the hostile request's response, or its error.
    """
    hostile, *good = await asyncio.gather(
        _outcome(stub.Classify(request, timeout=timeout)),
        *(_outcome(stub.Classify(good_request(), timeout=timeout)) for _ in range(GOOD_CALLERS)),
    )
    for answer in good:
        assert isinstance(answer, pb.ClassifyResponse), f"a good caller beside the hostile one failed: {answer}"
        assert answer.results[0].labels[0].index == ESPRESSO, answer
    return hostile


async def refused(
    stub: pb_grpc.ImageClassifierServiceStub,
    request: pb.ClassifyRequest,
    code: grpc.StatusCode,
    *fragments: str,
) -> grpc.aio.AioRpcError:
    """The request is refused with `code` and a message holding every fragment; good callers unaffected."""
    outcome = await beside_good_callers(stub, request)
    assert isinstance(outcome, grpc.aio.AioRpcError), f"expected {code.name}, got an answer: {outcome}"
    assert outcome.code() == code, f"{outcome.code().name}: {outcome.details()}"
    for fragment in fragments:
        assert fragment in (outcome.details() or ""), f"{fragment!r} not in {outcome.details()!r}"
    return outcome


async def answered(stub: pb_grpc.ImageClassifierServiceStub, request: pb.ClassifyRequest) -> pb.ClassifyResponse:
    """The request is answered (OK) with one result per input; good callers unaffected."""
    outcome = await beside_good_callers(stub, request)
    assert isinstance(outcome, pb.ClassifyResponse), f"{outcome.code().name}: {outcome.details()}"
    return outcome


def top(response: pb.ClassifyResponse | pb.Result) -> list[tuple[int, float]]:
    result = response.results[0] if isinstance(response, pb.ClassifyResponse) else response
    return [(label.index, label.score) for label in result.labels]


def assert_same_ranking(got: pb.ClassifyResponse, want: pb.ClassifyResponse, atol: float = 1e-4) -> None:
    got_top, want_top = top(got), top(want)
    assert [i for i, _ in got_top] == [i for i, _ in want_top], (got_top, want_top)
    for (_, a), (_, b) in zip(got_top, want_top, strict=True):
        assert abs(a - b) <= atol, (got_top, want_top)


def request_of(*inputs: pb.Input, **fields: Any) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(inputs=list(inputs), **fields)


# --- resource counters -----------------------------------------------------------------------


def _is_grpc_task(task: asyncio.Task[Any]) -> bool:
    """gRPC's own long-lived tasks (server loop, pollers), which come and go on their own schedule."""
    coro = task.get_coro()
    code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
    filename = code.co_filename if code is not None else ""
    return "grpc" in filename or "grpc" in repr(coro)


@dataclass(frozen=True)
class Resources:
    tasks: int
    threads: int
    fds: int

    @classmethod
    def now(cls) -> Resources:
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current and not t.done() and not _is_grpc_task(t)]
        return cls(len(tasks), threading.active_count(), len(os.listdir("/proc/self/fd")))

    def within(self, baseline: Resources, *, threads: int, fds: int) -> bool:
        return (
            self.tasks <= baseline.tasks
            and self.threads <= baseline.threads + threads
            and self.fds <= baseline.fds + fds
        )


async def settle(
    baseline: Resources, *, threads: int = 2, fds: int = 4, attempts: int = 200, step: float = 0.05
) -> Resources:
    """Poll (bounded) until the counts are back within tolerance of the baseline; return the last counts."""
    current = Resources.now()
    for _ in range(attempts):
        if current.within(baseline, threads=threads, fds=fds):
            break
        await asyncio.sleep(step)
        current = Resources.now()
    return current


def leftover_tasks() -> Sequence[str]:
    current = asyncio.current_task()
    return [
        repr(t.get_coro()) for t in asyncio.all_tasks() if t is not current and not t.done() and not _is_grpc_task(t)
    ]
