"""Server reflection, grpc.health.v1 and the model-describing RPCs (ListModels, GetModel)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import descriptor_pb2, json_format
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from imgcls.server.grpc.health import HealthServicer
from imgcls.server.server import RunningServer, start_server
from imgcls.server.settings import EMBEDDED_MODEL_DIR
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from support.paths import EFFICIENTNET, IMAGES
from support.servers import connect, make_settings, running_server
from support.waiting import poll_until

SERVICE = "imgcls.v1.ImageClassifierService"
HEALTH = "grpc.health.v1.Health"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def reflect(port: int) -> tuple[list[str], dict[str, list[tuple[str, str, str]]], bytes]:
    """Over a sync channel (run it in a thread): services, their (method, input, output), the proto file."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        pool = DescriptorPool(database)
        methods = {}
        for name in (SERVICE, HEALTH):
            service = pool.FindServiceByName(name)
            methods[name] = [(m.name, m.input_type.full_name, m.output_type.full_name) for m in service.methods]
        file_proto = database.FindFileContainingSymbol(SERVICE)
    return services, methods, file_proto.SerializeToString()


@pytest.fixture
async def health_stub(server: RunningServer) -> AsyncIterator[health_pb2_grpc.HealthStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield health_pb2_grpc.HealthStub(channel)


async def check(stub: health_pb2_grpc.HealthStub, service: str) -> int:
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return response.status


# --- reflection ------------------------------------------------------------------------


async def test_reflection_lists_services_and_methods(server: RunningServer) -> None:
    services, methods, file_bytes = await asyncio.to_thread(reflect, server.port)
    assert SERVICE in services
    assert HEALTH in services
    assert "grpc.reflection.v1alpha.ServerReflection" in services
    assert methods[SERVICE] == [
        ("Classify", "imgcls.v1.ClassifyRequest", "imgcls.v1.ClassifyResponse"),
        ("ClassifyStream", "imgcls.v1.ClassifyStreamRequest", "imgcls.v1.ClassifyStreamResponse"),
        ("ListModels", "imgcls.v1.ListModelsRequest", "imgcls.v1.ListModelsResponse"),
        ("GetModel", "imgcls.v1.GetModelRequest", "imgcls.v1.GetModelResponse"),
    ]
    assert ("Check", "grpc.health.v1.HealthCheckRequest", "grpc.health.v1.HealthCheckResponse") in methods[HEALTH]
    # The server reflects exactly the contract the stubs were generated from.
    reflected = descriptor_pb2.FileDescriptorProto.FromString(file_bytes)
    compiled = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(compiled)
    assert reflected.name == "imgcls/v1/classifier.proto"
    assert reflected == compiled


# --- health ----------------------------------------------------------------------------


async def test_health_serving_for_server_and_service(health_stub: health_pb2_grpc.HealthStub) -> None:
    assert await check(health_stub, "") == SERVING
    assert await check(health_stub, SERVICE) == SERVING


async def test_health_unknown_service_is_not_found(health_stub: health_pb2_grpc.HealthStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await check(health_stub, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_set_serving_false_reports_not_serving(
    server: RunningServer, health_stub: health_pb2_grpc.HealthStub
) -> None:
    await server.set_serving(False)
    assert await check(health_stub, "") == NOT_SERVING
    assert await check(health_stub, SERVICE) == NOT_SERVING
    await server.set_serving(True)
    assert await check(health_stub, "") == SERVING
    assert await check(health_stub, SERVICE) == SERVING


async def test_stop_reports_not_serving_to_watchers_then_goes_away() -> None:
    server = await start_server(make_settings())
    stopped = False
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
            updates = aiter(watch)
            assert (await anext(updates)).status == SERVING
            stopping = asyncio.create_task(server.stop(grace=0.5))
            # Graceful stop: NOT_SERVING first, so load balancers drain before the port closes.
            assert (await asyncio.wait_for(anext(updates), 10)).status == NOT_SERVING
            await stopping
            stopped = True
            watch.cancel()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await check(stub, "")
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if not stopped:
            await server.stop(grace=0)


@pytest.mark.parametrize("quiet", [False, True], ids=["under-calls", "after-quiet"])
async def test_stop_ends_open_watches_after_not_serving_instead_of_waiting_the_grace(quiet: bool) -> None:
    # Clients balancing over several servers hold a Watch on each; gRPC's stop waits for every call in
    # flight, so the door ends them: a stop with a long grace and an open Watch returns once the rest is done.
    # After a quiet spell the shutdown settle ends at once: the Watch must still get the NOT_SERVING that
    # begin_shutdown scheduled before it ends.
    server = await start_server(make_settings())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
            assert (await watch.read()).status == SERVING
            if quiet:
                server.engine.last_call_at -= 10  # as after ten quiet seconds
            await asyncio.wait_for(server.stop(grace=300), 60)  # before: it waited the whole 300 s
            assert (await watch.read()).status == NOT_SERVING
            assert await watch.read() is grpc.aio.EOF
            assert await watch.code() == grpc.StatusCode.OK  # ended by the server, not cancelled
    finally:
        await server.stop(grace=0)


class Written:
    """A Watch's context: what it wrote."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    async def write(self, message: health_pb2.HealthCheckResponse) -> None:
        self.statuses.append(message.status)


async def test_closing_ends_each_watch_after_its_latest_status() -> None:
    servicer = HealthServicer()
    await servicer.set(SERVICE, SERVING)
    context = Written()
    watching = asyncio.create_task(servicer.Watch(health_pb2.HealthCheckRequest(service=SERVICE), context))
    assert await poll_until(lambda: context.statuses == [SERVING])
    # The status changes and the watches close before the watcher runs again: it sends the change, then ends.
    await servicer.set(SERVICE, NOT_SERVING)
    await servicer.close_watches()
    await asyncio.wait_for(watching, 10)
    assert context.statuses == [SERVING, NOT_SERVING]
    # A Watch begun after that gets the status and ends at once.
    late = Written()
    await asyncio.wait_for(servicer.Watch(health_pb2.HealthCheckRequest(service=SERVICE), late), 10)
    assert late.statuses == [NOT_SERVING]


# --- ListModels / GetModel ---------------------------------------------------------------


def assert_efficientnet_info(info: pb.ModelInfo) -> None:
    assert info.input_name == "pixel_values"
    assert list(info.input_shape) == [-1, 3, 224, 224]
    assert info.input_layout == "NCHW"
    assert info.num_labels == 1000
    assert len(info.labels) == 1000
    assert info.labels[967] == "espresso"
    assert info.labels[285] == "Egyptian cat"
    assert info.default_function_to_apply == pb.FUNCTION_TO_APPLY_SOFTMAX
    assert info.ready
    preprocessing = json_format.MessageToDict(info.preprocessing)
    assert preprocessing["image_processor_type"] == "ConvNextImageProcessor"
    assert preprocessing["size"] == {"shortest_edge": 224}
    assert preprocessing["crop_pct"] == pytest.approx(0.875)
    assert preprocessing["input_layout"] == "NCHW"


async def test_list_models_describes_the_default_model(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    response = await stub.ListModels(pb.ListModelsRequest())
    assert len(response.models) == 1
    info = response.models[0]
    assert info.name == "efficientnet-lite0"
    # The folder's name, not the server's install path (callers must not learn the filesystem layout).
    assert info.source == EMBEDDED_MODEL_DIR.name
    assert str(EMBEDDED_MODEL_DIR.parent) not in str(response)
    assert info.variant == "fp32"
    assert info.input_dtype == pb.DATA_TYPE_FLOAT32
    assert info.is_default
    assert info.max_batch_size == 4  # the default
    assert_efficientnet_info(info)


async def test_get_model_by_name_and_default(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    by_name = (await stub.GetModel(pb.GetModelRequest(name="efficientnet-lite0"))).model
    by_default = (await stub.GetModel(pb.GetModelRequest())).model
    listed = (await stub.ListModels(pb.ListModelsRequest())).models[0]
    assert by_name == by_default == listed


async def test_get_model_unknown_is_not_found(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetModel(pb.GetModelRequest(name="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'nope' is not served" in (info.value.details() or "")
    assert "efficientnet-lite0" in (info.value.details() or "")


async def test_several_models_variants_and_default() -> None:
    models = [
        {"name": "full", "source": str(EFFICIENTNET)},
        {"name": "half", "source": str(EFFICIENTNET), "dtype": "fp16"},
    ]
    async with running_server(models=models, default_model="half") as server, connect(server) as stub:
        listed = (await stub.ListModels(pb.ListModelsRequest())).models
        default = (await stub.GetModel(pb.GetModelRequest())).model
    assert [m.name for m in listed] == ["full", "half"]
    full, half = listed
    assert (full.is_default, half.is_default) == (False, True)
    assert default.name == "half"
    assert full.source == half.source == EFFICIENTNET.name
    assert (full.variant, half.variant) == ("fp32", "fp16")
    assert (full.input_dtype, half.input_dtype) == (pb.DATA_TYPE_FLOAT32, pb.DATA_TYPE_FLOAT16)
    for info in listed:
        assert_efficientnet_info(info)


async def test_model_stats_count_requests() -> None:
    image = pb.Input(image=(IMAGES / "cat.jpg").read_bytes())
    # One instance: the request's three inputs, queued together, run as one batch.
    async with running_server(runtime={"instances": 1}) as server, connect(server) as stub:
        before = (await stub.GetModel(pb.GetModelRequest())).model.stats
        await stub.Classify(pb.ClassifyRequest(inputs=[image, image, image]))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Classify(pb.ClassifyRequest(inputs=[pb.Input(image=b"bad")]))
        after = (await stub.GetModel(pb.GetModelRequest())).model.stats
    assert after.requests - before.requests == 2
    assert after.inputs - before.inputs == 3
    assert after.failed_requests - before.failed_requests == 1
    assert after.batches - before.batches == 1
    assert dict(after.batch_size_counts) == {**before.batch_size_counts, 3: before.batch_size_counts.get(3, 0) + 1}


async def test_a_crashed_batcher_turns_health_not_serving() -> None:
    async with (
        running_server() as server,
        connect(server) as stub,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        batcher = server.engine.get("").batcher

        def crash(*_: object) -> None:
            raise RuntimeError("bug in the batcher")

        batcher._execute = crash  # type: ignore[method-assign]  # the next batch kills its thread
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Classify(pb.ClassifyRequest(inputs=[pb.Input(image=(IMAGES / "cat.jpg").read_bytes())]))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "batcher stopped" in (caught.value.details() or "")
        # The watch sees the change as it is published: no polling, no sleep.
        assert (await asyncio.wait_for(watch.read(), 30)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
