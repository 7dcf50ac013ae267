"""The gRPC front door's own wiring: how its services are registered with grpc.aio."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imgcls.server.grpc.door import GenericOnly
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from support.inputs import image_input
from support.servers import running_server
from tritonclient.grpc import service_pb2, service_pb2_grpc


async def test_each_accepted_call_waits_on_one_request_future_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """grpc.aio's server loop runs asyncio.wait, for every call it accepts, over one pending future per
    registered method; with imgcls.v1, v2, health and reflection registered that was 29 futures, whose
    done-callbacks were added and removed on every call. Registered as generic handlers only, it is one."""
    sizes: list[int] = []
    wait = asyncio.wait

    async def counting(futures: Iterable[Any], **kwargs: Any) -> Any:
        futures = list(futures)
        sizes.append(len(futures))
        return await wait(futures, **kwargs)

    monkeypatch.setattr(asyncio, "wait", counting)
    async with running_server() as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ImageClassifierServiceStub(channel)
        answer = await stub.Classify(pb.ClassifyRequest(inputs=[image_input("coffee.jpg")]), timeout=30)
        assert answer.results[0].labels[0].label == "espresso"
        await stub.ListModels(pb.ListModelsRequest(), timeout=10)
        live = await service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(service_pb2.ServerLiveRequest())
        assert live.live
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert sizes, "grpc.aio no longer waits with asyncio.wait: see GenericOnly's reason"
    assert set(sizes) == {1}


def test_generic_only_passes_generic_handlers_and_leaves_out_the_registered_copies() -> None:
    calls: list[tuple[str, Any]] = []

    class Server:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            calls.append(("generic", handlers))

        def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
            calls.append(("registered", service))

    registrar = GenericOnly(Server())  # type: ignore[arg-type]
    registrar.add_generic_rpc_handlers(("handler",))
    registrar.add_registered_method_handlers("imgcls.v1.ImageClassifierService", {"Classify": "handler"})
    assert calls == [("generic", ("handler",))]
