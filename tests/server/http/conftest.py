"""Fixtures of the HTTP front door tests: real servers with HTTP on a free port (http_port "auto")."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from imgcls.server.server import RunningServer
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from support.servers import connect, running_server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http_server() -> AsyncIterator[RunningServer]:
    """The embedded model on the exact decode path (jpeg_draft off, as the reference top-5 were made), gRPC
    and HTTP, shared by a module's tests."""
    async with running_server(http_port="auto", jpeg_draft=False) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http_stub(http_server: RunningServer) -> AsyncIterator[pb_grpc.ImageClassifierServiceStub]:
    """imgcls.v1 over gRPC on the same server: what every HTTP answer is compared with."""
    async with connect(http_server) as stub:
        yield stub
