"""Shared fixtures: real servers on 127.0.0.1 port 0, stubs, and the shared data beside the checkout."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from imgcls.server.server import RunningServer, start_server
from imgcls.server.settings import ServerSettings, load_settings
from imgcls.v1 import classifier_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))
IMAGES = SHARED / "images"
EFFICIENTNET = SHARED / "models" / "efficientnet-lite0"
OPEN_NSFW = SHARED / "models" / "open-nsfw"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not SHARED.is_dir():
        raise pytest.UsageError(f"shared data not found at {SHARED}; set SHARED_DIR")


@pytest.fixture(scope="session")
def reference() -> dict[str, list[dict[str, Any]]]:
    return json.loads((IMAGES / "reference-efficientnet-lite0.json").read_text())


@pytest.fixture(scope="session")
def image_bytes() -> Callable[[str], bytes]:
    return lambda name: (IMAGES / name).read_bytes()


def make_settings(**overrides: Any) -> ServerSettings:
    """Settings for a test server: port 0 on loopback, no environment, overrides on top."""
    return load_settings({"host": "127.0.0.1", "port": 0, **overrides}, environ={})


@asynccontextmanager
async def running_server(**overrides: Any) -> AsyncIterator[RunningServer]:
    server = await start_server(make_settings(**overrides))
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


@asynccontextmanager
async def connect(server: RunningServer) -> AsyncIterator[pb_grpc.ImageClassifierServiceStub]:
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=options) as channel:
        yield pb_grpc.ImageClassifierServiceStub(channel)


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    """The embedded default model with default settings."""
    async with running_server() as running:
        yield running


@pytest.fixture
async def stub(server: RunningServer) -> AsyncIterator[pb_grpc.ImageClassifierServiceStub]:
    async with connect(server) as s:
        yield s
