"""HTTP bodies are admitted as gRPC messages are: received in a read-gate slot, counted in the memory budget."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import httpx2 as httpx
from imgcls.client import AsyncClient
from imgcls.server.engine.admission import ReadGate
from server.http.helpers import MODEL, url
from support.inputs import COFFEE
from support.servers import running_server


async def until_waiting(gate: ReadGate) -> None:
    async with asyncio.timeout(10):
        while gate.waiting == 0:
            await asyncio.sleep(0.005)


def in_two_parts(data: bytes) -> tuple[AsyncIterator[bytes], dict[str, str], asyncio.Event]:
    """data as a body whose rest is sent only once `go` is set: a body still arriving when the server takes it
    up (one that came whole with its headers needs no turn). With its Content-Length."""
    go = asyncio.Event()

    async def parts() -> AsyncIterator[bytes]:
        yield data[:10]
        await go.wait()
        yield data[10:]

    return parts(), {"content-type": "image/jpeg", "content-length": str(len(data))}, go


async def test_a_body_larger_than_one_connections_share_is_413_while_it_arrives() -> None:
    # 32 MiB budget: one connection may hold 16 MiB; a 20 MB body can never fit.
    async with (
        running_server(http_port="auto", memory_budget_bytes=32 << 20) as server,
        httpx.AsyncClient(base_url=url(server), timeout=60) as client,
    ):
        response = await client.post(
            f"/models/{MODEL}", content=bytes(20_000_000), headers={"content-type": "application/octet-stream"}
        )
        assert server.engine.budget.used == 0
    assert response.status_code == 413, response.text
    assert "more than one caller may hold (16 MiB)" in response.json()["error"]


async def test_bodies_wait_for_a_read_slot_and_are_then_answered() -> None:
    async with running_server(http_port="auto") as server:
        gate = server.engine.small_body_gate  # a small body's slots
        async with httpx.AsyncClient(base_url=url(server), timeout=60) as client:
            # Every slot taken (as by slow senders): a request waits, holding nothing, until one frees.
            holders = [gate.slot(f"other-{i}") for i in range(gate.slots)]
            for holder in holders:
                await holder.__aenter__()
            pending = asyncio.create_task(client.get("/v1/models"))  # no body: never waits
            body, headers, go = in_two_parts(b"not an image at all")
            posted = asyncio.create_task(client.post(f"/models/{MODEL}", content=body, headers=headers))
            await until_waiting(gate)
            go.set()
            assert (await pending).status_code == 200 and not posted.done()
            for holder in holders:
                await holder.__aexit__(None, None, None)
            response = await posted
    assert response.status_code == 400 and "inputs[0]" in response.json()["error"]


async def test_a_body_with_no_turn_to_be_received_within_the_read_wait_is_429() -> None:
    async with running_server(http_port="auto", read_wait_s=0.3) as server:
        gate = server.engine.small_body_gate
        async with httpx.AsyncClient(base_url=url(server), timeout=60) as client:
            holders = [gate.slot(f"other-{i}") for i in range(gate.slots)]
            for holder in holders:
                await holder.__aenter__()
            try:
                body, headers, go = in_two_parts(COFFEE)
                posted = asyncio.create_task(client.post(f"/models/{MODEL}", content=body, headers=headers))
                await until_waiting(gate)
                go.set()
                response = await posted
                assert gate.waiting == 0
            finally:
                for holder in holders:
                    await holder.__aexit__(None, None, None)
            answered = await client.post(f"/models/{MODEL}", content=COFFEE, headers={"content-type": "image/jpeg"})
    assert response.status_code == 429, response.text
    assert "no turn to send the request within 0.3s" in response.json()["error"]
    assert response.headers["retry-after"]
    assert answered.status_code == 200, answered.text


async def test_a_small_body_never_waits_behind_large_ones() -> None:
    async with running_server(http_port="auto") as server:
        gate = server.engine.body_gate
        async with httpx.AsyncClient(base_url=url(server), timeout=60) as client:
            # Every slot for large bodies taken (as by slow senders of big ones): a small body is still answered
            # at once; a large one waits for a large slot.
            holders = [gate.slot(f"other-{i}") for i in range(gate.slots)]
            for holder in holders:
                await holder.__aenter__()
            try:
                large = asyncio.create_task(
                    client.post(f"/models/{MODEL}", content=bytes(2 << 20), headers={"content-type": "image/jpeg"})
                )
                small = await client.post(f"/models/{MODEL}", content=COFFEE, headers={"content-type": "image/jpeg"})
                async with asyncio.timeout(10):
                    while gate.waiting == 0:
                        await asyncio.sleep(0.005)
                assert not large.done()
            finally:
                for holder in holders:
                    await holder.__aexit__(None, None, None)
            refused = await large
    assert small.status_code == 200, small.text
    assert refused.status_code == 400 and "inputs[0]" in refused.json()["error"]


async def test_http_bodies_waiting_for_a_slot_never_delay_a_grpc_message() -> None:
    async with running_server(http_port="auto") as server:
        engine = server.engine
        gates = (engine.body_gate, engine.small_body_gate)
        holders = [gate.slot(f"other-{i}") for gate in gates for i in range(gate.slots)]
        for holder in holders:
            await holder.__aenter__()
        try:
            async with (
                httpx.AsyncClient(base_url=url(server), timeout=60) as http,
                AsyncClient(f"127.0.0.1:{server.port}", timeout=10) as grpc_client,
            ):
                body, headers, go = in_two_parts(COFFEE)
                waiting = asyncio.create_task(http.post(f"/models/{MODEL}", content=body, headers=headers))
                await until_waiting(engine.small_body_gate)
                go.set()
                prediction = await grpc_client.classify(COFFEE)
                assert not waiting.done() and engine.read_gate.waiting == 0
                for holder in holders:
                    await holder.__aexit__(None, None, None)
                holders = []
                answered = await waiting
        finally:
            for holder in holders:
                await holder.__aexit__(None, None, None)
    assert prediction[0].label == "espresso" and answered.status_code == 200


async def test_a_small_body_that_came_whole_with_its_headers_takes_no_turn() -> None:
    async with running_server(http_port="auto") as server:
        gate = server.engine.small_body_gate
        holders = [gate.slot(f"other-{i}") for i in range(gate.slots)]
        for holder in holders:
            await holder.__aenter__()
        try:
            async with httpx.AsyncClient(base_url=url(server), timeout=60) as client:
                # A fresh connection each time, as a short-lived client's: answered though every slot is held.
                for _ in range(3):
                    response = await client.post(
                        f"/models/{MODEL}",
                        content=COFFEE,
                        headers={"content-type": "image/jpeg", "connection": "close"},
                    )
                    assert response.status_code == 200, response.text
            assert gate.waiting == 0 and server.engine.budget.used == 0
        finally:
            for holder in holders:
                await holder.__aexit__(None, None, None)


async def test_a_huge_request_id_is_400_and_never_echoed_on_every_http_protocol() -> None:
    huge = "r" * 100_000
    image = base64.b64encode(COFFEE).decode()
    async with (
        running_server(http_port="auto") as server,
        httpx.AsyncClient(base_url=url(server), timeout=60) as client,
    ):
        v1 = await client.post("/v1/classify", json={"request_id": huge, "inputs": [{"image_base64": image}]})
        v2 = await client.post(
            f"/v2/models/{MODEL}_image/infer",
            json={"id": huge, "inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": [image]}]},
        )
        # A header: under the 64 KiB header bound, over the id's limit.
        hf = await client.post(f"/models/{MODEL}", content=COFFEE, headers={"x-request-id": huge[:10_000]})
    for response, length in ((v1, 100_000), (v2, 100_000), (hf, 10_000)):
        assert response.status_code == 400, response.text
        assert response.json() == {"error": f"request_id: {length} characters, over the limit of 256"}


async def test_json_tensor_data_is_charged_for_the_python_objects_it_becomes() -> None:
    # 3 MB of JSON numbers become ~24 MB of Python floats: over a 16 MiB share of a 32 MiB budget.
    data = [0.5] * (3 * 224 * 224 * 5)
    body = {"inputs": [{"name": "pixel_values", "shape": [5, 3, 224, 224], "datatype": "FP32", "data": data}]}
    async with (
        running_server(http_port="auto", memory_budget_bytes=32 << 20) as server,
        httpx.AsyncClient(base_url=url(server), timeout=60) as client,
    ):
        response = await client.post(f"/v2/models/{MODEL}/infer", json=body)
        one = {"name": "pixel_values", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": data[: 3 * 224 * 224]}
        small = await client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [one]})
        assert server.engine.budget.used == 0
    assert response.status_code == 413, response.text
    assert "more than one caller may hold (16 MiB)" in response.json()["error"]
    assert small.status_code == 200, small.text  # one sample's worth fits its share
