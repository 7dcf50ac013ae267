"""Fixtures only: the helpers behind them live in tests/support/ (import them from there, never from conftest).

Servers are real, on 127.0.0.1 port 0. `server`/`stub` are one per test; `module_server`/`module_stub` are
shared by a module's tests (which then run on the module's event loop: `pytest.mark.asyncio(loop_scope="module")`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from imgcls.server.engine.engine import Engine
from imgcls.server.server import RunningServer
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from support.environment import remove_server_variables
from support.fake_backend import fake_engine
from support.inputs import write_open_nsfw_spec
from support.memory import give_back_freed_memory
from support.paths import IMAGES, SHARED
from support.servers import connect, running_server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not SHARED.is_dir():
        raise pytest.UsageError(f"shared data not found at {SHARED}; set SHARED_DIR")


@pytest.fixture(autouse=True)
def _give_back_memory() -> Iterator[None]:
    """After every test (and its servers' teardown): glibc keeps freed memory unless asked (support.memory)."""
    yield
    give_back_freed_memory()


@pytest.fixture(scope="session")
def reference() -> dict[str, list[dict[str, Any]]]:
    return json.loads((IMAGES / "reference-efficientnet-lite0.json").read_text())


@pytest.fixture(scope="session")
def image_bytes() -> Callable[[str], bytes]:
    return lambda name: (IMAGES / name).read_bytes()


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the test runner's IMGCLS_*, HF_* or HUGGING_FACE_* variables are seen by the code under test."""
    remove_server_variables(monkeypatch)


@pytest.fixture
def open_nsfw_spec(tmp_path: Path) -> Path:
    """examples/open-nsfw.yaml beside the shared open-nsfw model, in a folder of its own."""
    return write_open_nsfw_spec(tmp_path)


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    """The embedded default model with default settings, for one test."""
    async with running_server() as running:
        yield running


@pytest.fixture
async def stub(server: RunningServer) -> AsyncIterator[pb_grpc.ImageClassifierServiceStub]:
    async with connect(server) as s:
        yield s


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_server() -> AsyncIterator[RunningServer]:
    """The embedded default model with default settings, shared by a module's tests (refusals leave it serving)."""
    async with running_server() as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_stub(module_server: RunningServer) -> AsyncIterator[pb_grpc.ImageClassifierServiceStub]:
    async with connect(module_server) as s:
        yield s


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    """An engine over one fake model ("fake": labels a, b, c; see support/fake_backend.py), started on
    the test's loop, with no front door: engine tests run without any transport."""
    running, _ = fake_engine()
    running.start(asyncio.get_running_loop())
    try:
        yield running
    finally:
        await running.stop(drain=False)
