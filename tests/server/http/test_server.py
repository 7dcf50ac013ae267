"""The HTTP door as part of the server: same event loop, graceful shutdown, TLS, metrics and the debug line,
the OpenAPI document, and how it is turned on and off."""

from __future__ import annotations

import asyncio
import base64
import logging
import signal
import socket
import ssl
import threading
from pathlib import Path

import httpx2 as httpx
import pytest
import trustme
from imgcls.server.server import RunningServer
from imgcls.v1 import classifier_pb2 as pb
from server.http.helpers import MODEL, url
from support.fake_backend import fake_engine
from support.inputs import COFFEE
from support.servers import connect, running_server

HF = f"/models/{MODEL}"


async def test_http_is_off_unless_asked_for_and_on_the_grpc_servers_loop() -> None:
    async with running_server() as plain:
        assert plain.http_port is None
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    async with running_server(http_port="auto") as server:
        assert server.http_port and server.http_port != server.port
        http = server.http
        assert http is not None and http._ticks is not None
        assert http._ticks.get_loop() is asyncio.get_running_loop()  # one loop for gRPC and HTTP
        # uvicorn installs no signal handlers of its own: the server's SIGTERM handling stays in charge.
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
        async with httpx.AsyncClient(base_url=url(server), timeout=60) as session:
            assert (await session.get("/v2/health/live")).json() == {"live": True}


async def test_a_taken_http_port_fails_the_start_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{port} for HTTP"):
            async with running_server(http_port=port):
                pass


async def test_shutdown_answers_accepted_requests_then_refuses() -> None:
    engine, backends = fake_engine()
    gate = threading.Event()
    backends["fake"].gate = gate
    async with running_server(engine=engine, http_port="auto") as server:
        base = url(server)
        async with httpx.AsyncClient(base_url=base, timeout=60) as session:
            accepted = asyncio.create_task(session.post("/models/fake", content=COFFEE))
            while backends["fake"].runs_started == 0:
                await asyncio.sleep(0.01)
            stopping = asyncio.create_task(server.stop(grace=10))
            await asyncio.sleep(0.2)
            assert not accepted.done()
            # A new request: refused 503 while the server settles, or not let in at all once the door stops
            # accepting (a new connection is refused).
            try:
                late = await session.post("/models/fake", content=COFFEE)
                assert late.status_code == 503 and late.headers["retry-after"] == "1"
            except httpx.ConnectError:
                pass
            gate.set()
            answer = await accepted
            await stopping
    assert answer.status_code == 200 and [x["label"] for x in answer.json()] == ["c", "b", "a"]
    async with httpx.AsyncClient(base_url=base, timeout=5) as session:
        with pytest.raises(httpx.ConnectError):
            await session.get("/v2/health/live")


async def test_metrics_and_debug_line_name_the_http_protocols(caplog: pytest.LogCaptureFixture) -> None:
    async with running_server(http_port="auto") as server:
        async with httpx.AsyncClient(base_url=url(server), timeout=60) as session:
            with caplog.at_level(logging.DEBUG, logger="imgcls.requests"):
                await session.post(HF, content=COFFEE, headers={"x-request-id": "hf-1"})
                await session.post("/v1/classify", json={"inputs": [{"image": "AAAA"}], "request_id": "v1-1"})
                await session.get(f"/v2/models/{MODEL}_image")
        registry = server.metrics.registry

        def requests(protocol: str, method: str, outcome: str) -> float | None:
            labels = {"model": MODEL, "protocol": protocol, "method": method, "outcome": outcome}
            return registry.get_sample_value("imgcls_requests_total", labels)

        assert requests("hf-http", "ImageClassification", "ok") == 1
        assert requests("v1-http", "Classify", "invalid_input") == 1
        assert requests("v2-http", "ModelMetadata", "ok") == 1
    text = caplog.text
    assert (
        "hf-http ImageClassification request_id='hf-1' model=efficientnet-lite0 inputs=1 results=1 outcome=ok" in text
    )
    assert "v1-http Classify request_id='v1-1'" in text


async def test_openapi_document_lists_every_route_and_docs_are_served() -> None:
    async with (
        running_server(http_port="auto") as server,
        httpx.AsyncClient(base_url=url(server), timeout=60) as session,
    ):
        document = (await session.get("/openapi.json")).json()
        docs = await session.get("/docs")
    paths = document["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/config",
        "/v2/models/{name}/stats",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/models/{model}",
        "/v1/classify",
        "/v1/models",
        "/v1/models/{name}",
    ):
        assert path in paths, path
    assert "application/json" in paths["/models/{model}"]["post"]["requestBody"]["content"]
    assert "image/*" in paths["/models/{model}"]["post"]["requestBody"]["content"]
    assert paths["/v2/models/{name}/infer"]["post"]["requestBody"]["required"] is True
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


# -- TLS and mutual TLS: the gRPC door's certificate and client CA ----------------------------------------
@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_files(ca: trustme.CA, folder: Path, *, mutual: bool) -> dict[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(str(folder / "server.pem"), append=True)
    cert.private_key_pem.write_to_path(str(folder / "server.key"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    files = {"cert_file": str(folder / "server.pem"), "key_file": str(folder / "server.key")}
    if mutual:
        files["client_ca_file"] = str(folder / "ca.pem")
    return files


def client_context(ca: trustme.CA, *, certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if certificate:
        ca.issue_cert("client@example.com").configure_cert(context)
    return context


async def https_get(server: RunningServer, context: ssl.SSLContext) -> httpx.Response:
    async with httpx.AsyncClient(verify=context, timeout=30) as session:
        return await session.post(f"https://127.0.0.1:{server.http_port}{HF}", content=COFFEE)


async def test_tls_serves_https_only(ca: trustme.CA, tmp_path: Path) -> None:
    async with running_server(http_port="auto", tls=tls_files(ca, tmp_path, mutual=False)) as server:
        answer = await https_get(server, client_context(ca, certificate=False))
        assert answer.status_code == 200 and answer.json()[0]["label"] == "espresso"
        async with httpx.AsyncClient(timeout=10) as plain:
            with pytest.raises(httpx.TransportError):
                await plain.get(f"http://127.0.0.1:{server.http_port}/v2/health/live")


async def test_mutual_tls_requires_a_client_certificate(ca: trustme.CA, tmp_path: Path) -> None:
    async with running_server(http_port="auto", tls=tls_files(ca, tmp_path, mutual=True)) as server:
        answer = await https_get(server, client_context(ca, certificate=True))
        assert answer.status_code == 200
        with pytest.raises(httpx.TransportError):
            await https_get(server, client_context(ca, certificate=False))


async def test_http_and_grpc_requests_share_one_run() -> None:
    """Requests of every door queued together run as one ONNX Runtime batch (the engine's one batcher)."""
    engine, backends = fake_engine()
    gate = threading.Event()
    backend = backends["fake"]
    backend.gate = gate
    async with (
        running_server(engine=engine, http_port="auto") as server,
        connect(server) as stub,
        httpx.AsyncClient(base_url=url(server), timeout=60) as session,
    ):
        first = asyncio.create_task(session.post("/models/fake", content=COFFEE))  # holds the one instance
        while backend.runs_started == 0:
            await asyncio.sleep(0.01)
        image = [base64.b64encode(COFFEE).decode()]
        queued = [
            asyncio.create_task(session.post("/models/fake", content=COFFEE)),
            asyncio.create_task(
                session.post(
                    "/v2/models/fake_image/infer",
                    json={"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": [image]}]},
                )
            ),
            asyncio.ensure_future(stub.Classify(pb.ClassifyRequest(model="fake", inputs=[pb.Input(image=COFFEE)]))),
        ]
        while server.engine.get("fake").queue_depth < 3:
            await asyncio.sleep(0.01)
        gate.set()
        answers = await asyncio.gather(first, *queued)
    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    assert answers[3].results[0].labels[0].label == "c"
    assert backend.batches == [1, 3]  # the HF, v2 REST and imgcls.v1 inputs in one run
