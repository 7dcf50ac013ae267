"""Real servers in the test process, on 127.0.0.1 port 0, and channels to them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from imgcls.server.engine.engine import Engine
from imgcls.server.server import RunningServer, start_server
from imgcls.server.settings import ServerSettings, load_settings
from imgcls.v1 import classifier_pb2_grpc as pb_grpc

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def make_settings(**overrides: Any) -> ServerSettings:
    """Settings for a test server: port 0 on loopback, HTTP off (http_port="auto" turns it on), no environment,
    overrides on top."""
    return load_settings({"host": "127.0.0.1", "port": 0, "http_port": 0, **overrides}, environ={})


@asynccontextmanager
async def running_server(*, engine: Engine | None = None, **overrides: Any) -> AsyncIterator[RunningServer]:
    """A started server (with `engine` if given, else one loaded from the settings); stopped on exit."""
    server = await start_server(make_settings(**overrides), engine=engine)
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


@asynccontextmanager
async def connect(server: RunningServer) -> AsyncIterator[pb_grpc.ImageClassifierServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=CHANNEL_OPTIONS) as channel:
        yield pb_grpc.ImageClassifierServiceStub(channel)
