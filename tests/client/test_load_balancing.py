"""Scale-out: one client over several servers spreads its calls round-robin over all of them, and carries
on over the rest when one of them shuts down.

Each server's share is read back over the public API (GetModel stats on a channel of its own), so the
test proves what an operator would see, not only an internal counter. The servers run on the test's
event loop, so the blocking Client is always driven from a worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
import numpy as np
import pytest
from imgcls.client import AsyncClient, Client, ClientError
from imgcls.client.client import channel_options, channel_target
from imgcls.server.server import RunningServer, start_server
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from PIL import Image
from support.servers import connect, make_settings, running_server

CALLS = 20
# After a server has stopped, this many calls in a row must all succeed on the survivor.
CALLS_AFTER_STOP = 20


def small_jpeg() -> bytes:
    # Small, so the calls are cheap: balancing, not inference, is under test.
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 120, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


IMAGE = small_jpeg()


@asynccontextmanager
async def two_servers() -> AsyncIterator[list[RunningServer]]:
    """Two servers on loopback port 0. A test that stops one itself takes it out of the list first
    (``stop``); the ones still listed are stopped here."""
    servers: list[RunningServer] = []
    try:
        for _ in range(2):
            servers.append(await start_server(make_settings()))
        yield servers
    finally:
        for server in servers:
            await server.stop(grace=1.0)


async def stop(servers: list[RunningServer], server: RunningServer) -> None:
    servers.remove(server)
    await server.stop(grace=1.0)


def targets(servers: list[RunningServer]) -> list[str]:
    return [f"127.0.0.1:{s.port}" for s in servers]


async def served_requests(server: RunningServer) -> int:
    """The server's own count of Classify requests, over a channel to it alone."""
    async with connect(server) as stub:
        response = await stub.GetModel(pb.GetModelRequest())
    return response.model.stats.requests


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except ClientError as exc:
        return exc.code
    return grpc.StatusCode.OK


# -- target strings -------------------------------------------------------------------------------


def test_target_strings() -> None:
    # A dns:/// target goes to gRPC unchanged: gRPC resolves it to every address (a headless Service's
    # pods) and the round_robin policy spreads calls over them.
    dns = "dns:///imgcls.imgcls.svc.cluster.local:50051"
    assert channel_target(dns) == dns
    assert channel_target([dns]) == dns
    assert channel_target("127.0.0.1:50051") == "127.0.0.1:50051"
    assert channel_target(["10.0.0.1:50051", "10.0.0.2:50051"]) == "ipv4:10.0.0.1:50051,10.0.0.2:50051"
    with Client(dns) as client:  # creating the channel resolves nothing yet
        assert client.target == dns
    options = dict(channel_options(1 << 20))
    config = json.loads(options["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    # Refused (UNAVAILABLE) and reset at a server's stop (CANCELLED): retried, on another server.
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE", "CANCELLED"]
    assert "healthCheckConfig" not in config
    # Calls up to the largest message stay retryable (gRPC's default keeps only 256 KiB of a call).
    assert options["grpc.per_rpc_retry_buffer_size"] == 1 << 20


def test_health_checking_is_on_where_the_target_may_name_several_servers() -> None:
    def checked(client: Client) -> bool:
        with client:
            config = json.loads(dict(client.options)["grpc.service_config"])
        return config.get("healthCheckConfig") == {"serviceName": "imgcls.v1.ImageClassifierService"}

    assert checked(Client(["127.0.0.1:50051", "127.0.0.1:50052"]))
    assert checked(Client("dns:///imgcls.default.svc.cluster.local:50051"))
    assert not checked(Client("127.0.0.1:50051"))
    assert not checked(Client(["127.0.0.1:50051"]))
    assert not checked(Client(["127.0.0.1:50051", "127.0.0.1:50052"], health_check=False))
    assert checked(Client("127.0.0.1:50051", health_check=True))


def test_target_lists_refuse_what_grpc_cannot_balance() -> None:
    with pytest.raises(ValueError, match="host:port entries"):
        channel_target(["dns:///a.example:50051", "dns:///b.example:50051"])
    with pytest.raises(ValueError, match="mix IPv4-only and IPv6-only"):
        channel_target(["127.0.0.1:50051", "[::1]:50052"])
    assert channel_target(["[::1]:50051", "[::1]:50052"]) == "ipv6:[::1]:50051,[::1]:50052"
    with pytest.raises(ValueError, match="needs a port"):
        channel_target(["127.0.0.1", "127.0.0.2:50051"])


async def test_large_calls_refused_by_a_draining_server_are_retried_on_the_other() -> None:
    # A 600 KB tensor (a 224x224 float32 input): over gRPC's default 256 KiB retry buffer.
    tensor = np.zeros((1, 3, 224, 224), dtype=np.float32)
    async with two_servers() as servers:
        servers[1].engine.begin_shutdown()  # as during its shutdown: every call answered UNAVAILABLE
        async with AsyncClient(targets(servers), timeout=30) as client:
            for _ in range(6):  # round robin sends every other first attempt to the refusing server
                assert len(await client.classify(tensor, top_k=1)) == 1
        assert await served_requests(servers[0]) == 6


async def test_several_host_names() -> None:
    async with running_server() as server:

        def call() -> grpc.StatusCode:
            with Client([f"localhost:{server.port}", f"127.0.0.1:{server.port}"], timeout=5) as client:
                return code_of(client.health)

        assert await asyncio.to_thread(call) == grpc.StatusCode.OK


async def test_dns_target_reaches_the_server() -> None:
    async with running_server() as server:

        def call() -> grpc.StatusCode:
            with Client(f"dns:///127.0.0.1:{server.port}", timeout=10) as client:
                return code_of(lambda: client.classify(IMAGE))

        assert await asyncio.to_thread(call) == grpc.StatusCode.OK


# -- spreading and failover -----------------------------------------------------------------------


async def test_client_spreads_calls_and_survives_a_server_stopping() -> None:
    async with two_servers() as servers:
        first, second = servers
        client = Client(targets(servers), timeout=10)
        try:
            # Spread: both servers took part of the calls, and between them all of them.
            codes = await asyncio.to_thread(lambda: [code_of(lambda: client.classify(IMAGE)) for _ in range(CALLS)])
            assert codes == [grpc.StatusCode.OK] * CALLS
            served = [await served_requests(s) for s in servers]
            assert sum(served) == CALLS
            assert min(served) > 0, served

            # Failover: keep calling while the second server shuts down.
            calling = threading.Event()
            done_stopping = threading.Event()
            during: list[grpc.StatusCode] = []
            after: list[grpc.StatusCode] = []

            def keep_calling() -> None:
                while not done_stopping.is_set():
                    during.append(code_of(lambda: client.classify(IMAGE)))
                    calling.set()
                after.extend(code_of(lambda: client.classify(IMAGE)) for _ in range(CALLS_AFTER_STOP))

            caller = asyncio.ensure_future(asyncio.to_thread(keep_calling))
            try:
                assert await asyncio.to_thread(calling.wait, 30), "the client made no call"
                served_before_stop = await served_requests(first)
                await stop(servers, second)
            finally:
                done_stopping.set()  # also on failure, or the calling thread never ends
                await caller
        finally:
            client.close()
        # A call that reached the stopping server while it drained is refused there with UNAVAILABLE,
        # and the client's retry policy sends it to the survivor: no caller sees the stop.
        assert during and set(during) == {grpc.StatusCode.OK}, during
        # Once it has stopped, every call succeeds on the survivor.
        assert after == [grpc.StatusCode.OK] * CALLS_AFTER_STOP
        assert await served_requests(first) >= served_before_stop + CALLS_AFTER_STOP


async def test_concurrent_callers_survive_a_server_stopping() -> None:
    # Several callers at once: round_robin's picks interleave, so a call refused by the draining server
    # had the same chance of landing there again on every retry. Measured before health checking: about
    # three calls in each stop failed with all five attempts refused (UNAVAILABLE, "shutting down").
    callers = 4
    async with two_servers() as servers:
        second = servers[1]
        client = Client(targets(servers), timeout=10)
        stopped = threading.Event()
        started = threading.Barrier(callers + 1)
        outcomes: list[grpc.StatusCode] = []
        during_stop: list[int] = []  # per caller: calls made while the server stopped

        def keep_calling() -> None:
            outcomes.append(code_of(lambda: client.classify(IMAGE)))
            started.wait(30)
            made = 0
            while not stopped.is_set():
                outcomes.append(code_of(lambda: client.classify(IMAGE)))
                made += 1
            during_stop.append(made)
            outcomes.extend(code_of(lambda: client.classify(IMAGE)) for _ in range(5))

        threads = [asyncio.ensure_future(asyncio.to_thread(keep_calling)) for _ in range(callers)]
        try:
            await asyncio.to_thread(started.wait, 30)  # every caller has made a call: calls are in flight
            for _ in range(400):  # until the server to stop has its share of the calls
                if served_before_stop := await served_requests(second):
                    break
                await asyncio.sleep(0.025)
            await stop(servers, second)
        finally:
            stopped.set()
            await asyncio.gather(*threads)
            client.close()
        assert len(during_stop) == callers and min(during_stop) > 0, during_stop  # the stop was under load
        assert served_before_stop > 0  # the stopping server had its share
        assert set(outcomes) == {grpc.StatusCode.OK}, collections.Counter(outcomes)


async def test_health_over_several_servers_none_serving_is_false_not_an_error() -> None:
    # The balanced channel picks only SERVING servers; health() asks over one that does not, so it answers.
    async with two_servers() as servers:
        with Client(targets(servers), timeout=10) as client:
            assert await asyncio.to_thread(client.health)
            for server in servers:
                await server.set_serving(False)
            assert not await asyncio.to_thread(client.health)
        async with AsyncClient(targets(servers), timeout=10) as aclient:
            assert not await aclient.health()


async def test_health_checking_off_against_servers_that_close_health() -> None:
    # gRPC's own Watch calls carry no token, so against --auth-close-health servers they are refused and
    # the channel would take every server for unhealthy; health_check=False balances without them.
    overrides = {"auth_tokens": ("secret",), "auth_open_health": False}
    async with running_server(**overrides) as one, running_server(**overrides) as two:

        def call(health_check: bool | None) -> grpc.StatusCode:
            with Client(targets([one, two]), token="secret", timeout=5, health_check=health_check) as client:
                return code_of(lambda: client.classify(IMAGE))

        assert await asyncio.to_thread(call, False) == grpc.StatusCode.OK
        assert await asyncio.to_thread(call, None) == grpc.StatusCode.UNAVAILABLE


async def test_async_client_spreads_calls_and_survives_a_server_stopping() -> None:
    async with two_servers() as servers:
        first, second = servers
        async with AsyncClient(targets(servers), timeout=10) as client:
            for _ in range(CALLS):
                await client.classify(IMAGE)
            served = [await served_requests(s) for s in servers]
            assert sum(served) == CALLS
            assert min(served) > 0, served

            # Calls in flight while the second server shuts down: answered there, or retried on the first.
            async def outcome() -> grpc.StatusCode:
                try:
                    await client.classify(IMAGE)
                except ClientError as exc:
                    return exc.code
                return grpc.StatusCode.OK

            in_flight = [asyncio.ensure_future(outcome()) for _ in range(8)]
            await stop(servers, second)
            during = await asyncio.gather(*in_flight)
            assert during == [grpc.StatusCode.OK] * len(in_flight), during

            served_before = await served_requests(first)
            after = [await outcome() for _ in range(CALLS_AFTER_STOP)]
        assert after == [grpc.StatusCode.OK] * CALLS_AFTER_STOP
        assert await served_requests(first) == served_before + CALLS_AFTER_STOP


# -- connection age -------------------------------------------------------------------------------


async def test_max_connection_age_recycles_the_connection() -> None:
    """With max_connection_age_s the server ends each connection after that age (a GOAWAY), so a client
    reconnects, re-resolving a dns:/// name on the way; without it a connection stays up."""
    ready = grpc.ChannelConnectivity.READY
    async with (
        running_server(max_connection_age_s=0.2) as aged,
        running_server() as unlimited,
        grpc.aio.insecure_channel(f"127.0.0.1:{aged.port}") as aged_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{unlimited.port}") as unlimited_channel,
    ):
        for channel in (aged_channel, unlimited_channel):
            await pb_grpc.ImageClassifierServiceStub(channel).GetModel(pb.GetModelRequest())
            assert channel.get_state() == ready
        # The aged connection is closed by the server, with no call from the client: 0.2 s +- 10 % jitter.
        await asyncio.wait_for(aged_channel.wait_for_state_change(ready), timeout=10)
        # Over the same stretch the other one stays up.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(unlimited_channel.wait_for_state_change(ready), timeout=0.5)
        # The client reconnects by itself on its next call.
        response = await pb_grpc.ImageClassifierServiceStub(aged_channel).GetModel(pb.GetModelRequest())
        assert response.model.name == "efficientnet-lite0"
        assert aged_channel.get_state() == ready
