"""One server per test module for the hostile-input suites: refusals must leave it serving, so tests share it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from conftest import connect, running_server
from imgcls.server.server import RunningServer
from imgcls.v1 import classifier_pb2_grpc as pb_grpc


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[RunningServer]:
    async with running_server() as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub(server: RunningServer) -> AsyncIterator[pb_grpc.ImageClassifierServiceStub]:
    async with connect(server) as s:
        yield s
