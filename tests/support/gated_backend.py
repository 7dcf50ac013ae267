"""A model whose runs wait on a gate the test opens: tests that need work held in flight (queued behind a
run, a deadline passing while queued, a stream held back, a shutdown draining) hold it there on purpose
instead of racing the clock on a loaded machine.

    gate = Gate()
    async with gated_server(gate, batching={"max_batch_size": 8}) as server:
        ...                               # calls reach the model and wait there
        await gate.wait_for_runs(1)       # the first batch is running (held)
        gate.open()                       # every held and later run goes through

The real backend (ONNX Runtime) runs behind the gate, so answers are the model's own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from imgcls.server.domain.graph import RuntimeDescription
from imgcls.server.engine.backend import Backend
from imgcls.server.engine.engine import Engine, onnx_backend
from imgcls.server.runtime.onnx import RuntimeOptions
from imgcls.server.server import RunningServer
from imgcls.server.sources.local import ModelFiles

from support.servers import make_settings, running_server

HELD_FOR_AT_MOST_S = 120.0  # a run still held after this fails (a test that forgot to open the gate)


class Gate:
    """Where a gated backend's runs wait. Closed until open(); counts every run that reaches it."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._changed = threading.Condition()
        self.batch_sizes: list[int] = []  # of every run that reached the gate, in order
        self.passed = 0  # runs that went through to the real backend

    @property
    def runs(self) -> int:
        """Runs that reached the gate (held or through)."""
        with self._changed:
            return len(self.batch_sizes)

    @property
    def held(self) -> int:
        with self._changed:
            return len(self.batch_sizes) - self.passed

    def open(self) -> None:
        self._open.set()

    def close(self) -> None:
        """Hold the runs that come from now on (runs already through are not called back)."""
        self._open.clear()

    def enter(self, batch_size: int) -> None:
        """Called by the backend on its inference thread: record the run, then wait until the gate opens."""
        with self._changed:
            self.batch_sizes.append(batch_size)
            self._changed.notify_all()
        if not self._open.wait(HELD_FOR_AT_MOST_S):
            raise TimeoutError(f"gate held a run for {HELD_FOR_AT_MOST_S:.0f} s: the test never opened it")
        with self._changed:
            self.passed += 1
            self._changed.notify_all()

    def _wait(self, predicate: Any, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    async def wait_for_runs(self, count: int, timeout: float = 60.0) -> None:
        """Until at least count runs have reached the gate; AssertionError after timeout."""
        if not await asyncio.to_thread(self._wait, lambda: len(self.batch_sizes) >= count, timeout):
            raise AssertionError(f"{self.runs} runs reached the gate in {timeout:.0f} s, {count} expected")

    async def wait_for_passed(self, count: int, timeout: float = 60.0) -> None:
        """Until at least count runs have gone through the gate."""
        if not await asyncio.to_thread(self._wait, lambda: self.passed >= count, timeout):
            raise AssertionError(f"{self.passed} runs went through the gate in {timeout:.0f} s, {count} expected")


class GatedBackend:
    """A Backend that waits at the gate before every run, then runs the real backend."""

    def __init__(self, inner: Backend, gate: Gate) -> None:
        self.inner = inner
        self.gate = gate
        self.graph = inner.graph

    @property
    def has_solo_session(self) -> bool:
        return self.inner.has_solo_session

    def describe(self) -> RuntimeDescription:
        return self.inner.describe()

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.gate.enter(len(batch))
        return self.inner.run(batch)

    def run_alone(self, batch: np.ndarray) -> np.ndarray:
        self.gate.enter(len(batch))
        return self.inner.run_alone(batch)

    def __getattr__(self, name: str) -> Any:  # anything else a Backend may grow (providers, options, ...)
        return getattr(self.inner, name)


def gated_engine(gate: Gate, **overrides: Any) -> Engine:
    """An engine for make_settings(**overrides) whose every model runs behind the gate."""

    def factory(files: ModelFiles, options: RuntimeOptions) -> Backend:
        return GatedBackend(onnx_backend(files, options), gate)

    return Engine.load(make_settings(**overrides), backend_factory=factory)


@asynccontextmanager
async def gated_server(gate: Gate, **overrides: Any) -> AsyncIterator[RunningServer]:
    """running_server(**overrides) with every model behind the gate. The gate opens before the server stops,
    so a test that fails while runs are held still stops its server."""
    engine = await asyncio.to_thread(gated_engine, gate, **overrides)
    try:
        async with running_server(engine=engine, **overrides) as server:
            try:
                yield server
            finally:
                gate.open()
    finally:
        gate.open()
