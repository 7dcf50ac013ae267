"""TLS, mutual TLS and bearer tokens, through real servers and the real client, with a throwaway CA."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from imgcls.cli import build_parser, serve_settings_from_args
from imgcls.client import AsyncClient, ClientError, Prediction
from imgcls.server.domain.errors import ConfigError
from imgcls.server.server import RunningServer, start_server
from imgcls.server.settings import load_settings
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from support.paths import IMAGES
from support.servers import make_settings, running_server

TOKEN = "s3cret-token-7f1c9a"  # distinctive, so finding it in a log is no accident
OTHER_TOKEN = "other-token-b2d4"
COFFEE = (IMAGES / "coffee.jpg").read_bytes()
# How grpcio words "the channel could not connect" (1.85; older versions said "failed to connect").
CONNECT_FAILED = ("connections to all backends failing", "failed to connect to all addresses")


@dataclass(frozen=True)
class Pki:
    """A CA with a server certificate for 127.0.0.1, client certificates, and an unrelated CA."""

    ca_pem: bytes
    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    client: tuple[bytes, bytes]  # (certificate chain, key), signed by the CA
    other_ca_pem: bytes
    stranger: tuple[bytes, bytes]  # signed by the other CA


def _pair(cert: trustme.LeafCert) -> tuple[bytes, bytes]:
    return b"".join(blob.bytes() for blob in cert.cert_chain_pems), cert.private_key_pem.bytes()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = _pair(server_cert)
    (folder / "server.pem").write_bytes(chain)
    (folder / "server.key").write_bytes(key)
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return Pki(
        ca_pem=ca.cert_pem.bytes(),
        ca_file=folder / "ca.pem",
        server_cert_file=folder / "server.pem",
        server_key_file=folder / "server.key",
        client=_pair(ca.issue_cert("client@example.com")),
        other_ca_pem=other_ca.cert_pem.bytes(),
        stranger=_pair(other_ca.issue_cert("stranger@example.com")),
    )


def tls_settings(pki: Pki, *, mutual: bool = False) -> dict[str, Any]:
    tls: dict[str, Any] = {"cert_file": str(pki.server_cert_file), "key_file": str(pki.server_key_file)}
    if mutual:
        tls["client_ca_file"] = str(pki.ca_file)
    return {"tls": tls}


async def classify(server: RunningServer, **client_options: Any) -> list[Prediction]:
    async with AsyncClient(f"127.0.0.1:{server.port}", timeout=30, **client_options) as client:
        return await client.classify(COFFEE)


async def refused(server: RunningServer, **client_options: Any) -> ClientError:
    with pytest.raises(ClientError) as caught:
        await classify(server, **client_options)
    return caught.value


def assert_connect_failed(error: ClientError) -> None:
    # The handshake fails, so the call never reaches the server: UNAVAILABLE, not a server status.
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert any(words in error.message for words in CONNECT_FAILED), error.message


def assert_espresso(predictions: list[Prediction]) -> None:
    assert predictions[0].label == "espresso"


# -- TLS ------------------------------------------------------------------------------------


async def test_plain_server_accepts_plain_client() -> None:
    async with running_server() as server:
        assert_espresso(await classify(server))


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[RunningServer]:
    async with running_server(**tls_settings(pki)) as server:
        yield server


@pytest.fixture
async def mtls_server(pki: Pki) -> AsyncIterator[RunningServer]:
    async with running_server(**tls_settings(pki, mutual=True)) as server:
        yield server


async def test_tls_server_accepts_client_trusting_its_ca(tls_server: RunningServer, pki: Pki) -> None:
    assert_espresso(await classify(tls_server, tls=True, root_certificates=pki.ca_pem))


async def test_tls_server_refuses_plain_client(tls_server: RunningServer) -> None:
    assert_connect_failed(await refused(tls_server))


async def test_tls_client_refuses_server_signed_by_another_ca(tls_server: RunningServer, pki: Pki) -> None:
    error = await refused(tls_server, tls=True, root_certificates=pki.other_ca_pem)
    assert_connect_failed(error)
    assert "CERTIFICATE_VERIFY_FAILED" in error.message


async def test_mtls_server_accepts_client_certificate_signed_by_its_ca(mtls_server: RunningServer, pki: Pki) -> None:
    assert_espresso(await classify(mtls_server, root_certificates=pki.ca_pem, client_cert=pki.client))


async def test_mtls_server_refuses_tls_client_without_certificate(mtls_server: RunningServer, pki: Pki) -> None:
    assert_connect_failed(await refused(mtls_server, root_certificates=pki.ca_pem))


async def test_mtls_server_refuses_certificate_from_another_ca(mtls_server: RunningServer, pki: Pki) -> None:
    assert_connect_failed(await refused(mtls_server, root_certificates=pki.ca_pem, client_cert=pki.stranger))


async def test_unreadable_tls_file_is_a_config_error(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    settings = make_settings(tls={"cert_file": str(pki.server_cert_file), "key_file": str(missing)})
    with pytest.raises(ConfigError) as caught:
        running = await start_server(settings)
        await running.stop(grace=0)  # only reached if the bad file were accepted
    assert "tls: cannot read" in caught.value.message
    assert "missing.key" in caught.value.message


async def test_failed_start_leaves_no_batcher_thread(pki: Pki, tmp_path: Path) -> None:
    settings = make_settings(tls={"cert_file": str(pki.server_cert_file), "key_file": str(tmp_path / "no.key")})
    before = set(threading.enumerate())
    with pytest.raises(ConfigError):
        await start_server(settings)
    leaked = [t.name for t in set(threading.enumerate()) - before if t.name.startswith("batcher-")]
    assert leaked == []


@pytest.mark.usefixtures("clean_environ")
def test_tls_flags_build_tls_settings(pki: Pki) -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--tls-cert",
            str(pki.server_cert_file),
            "--tls-key",
            str(pki.server_key_file),
            "--tls-client-ca",
            str(pki.ca_file),
        ]
    )
    tls = serve_settings_from_args(args).tls
    assert tls is not None
    assert (tls.cert_file, tls.key_file, tls.client_ca_file) == (
        pki.server_cert_file,
        pki.server_key_file,
        pki.ca_file,
    )


# -- bearer tokens ---------------------------------------------------------------------------


@pytest.fixture
async def token_server() -> AsyncIterator[RunningServer]:
    async with running_server(auth_tokens=[TOKEN, OTHER_TOKEN]) as server:
        yield server


@pytest.fixture
async def closed_health_server() -> AsyncIterator[RunningServer]:
    async with running_server(auth_tokens=[TOKEN], auth_open_health=False) as server:
        yield server


def assert_unauthenticated(error: ClientError | grpc.aio.AioRpcError) -> None:
    if isinstance(error, ClientError):
        code, message = error.code, error.message
    else:
        code, message = error.code(), error.details() or ""
    assert code == grpc.StatusCode.UNAUTHENTICATED, (code, message)
    assert "bearer token" in message


async def test_missing_token_is_unauthenticated(token_server: RunningServer) -> None:
    error = await refused(token_server)
    assert_unauthenticated(error)
    assert "authorization: Bearer" in error.message  # tells the caller what to send


async def test_wrong_token_is_unauthenticated(token_server: RunningServer) -> None:
    assert_unauthenticated(await refused(token_server, token="not-" + TOKEN))


async def test_token_needs_the_bearer_scheme(token_server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
        stub = pb_grpc.ImageClassifierServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListModels(pb.ListModelsRequest(), metadata=(("authorization", f"Basic {TOKEN}"),))
    assert_unauthenticated(caught.value)


@pytest.mark.parametrize("token", [TOKEN, OTHER_TOKEN])
async def test_right_token_is_served(token_server: RunningServer, token: str) -> None:
    assert_espresso(await classify(token_server, token=token))


async def test_right_token_lists_and_gets_models(token_server: RunningServer) -> None:
    async with AsyncClient(f"127.0.0.1:{token_server.port}", token=TOKEN, timeout=30) as client:
        assert [m.name for m in await client.list_models()] == ["efficientnet-lite0"]
        assert (await client.get_model()).name == "efficientnet-lite0"


async def test_stream_with_right_token(token_server: RunningServer) -> None:
    async with AsyncClient(f"127.0.0.1:{token_server.port}", token=TOKEN, timeout=30) as client:
        results = [r async for r in client.classify_stream([COFFEE, COFFEE])]
    assert [r.ok for r in results] == [True, True]
    assert results[0].predictions[0][0].label == "espresso"


async def test_stream_with_wrong_token_is_unauthenticated(token_server: RunningServer) -> None:
    async with AsyncClient(f"127.0.0.1:{token_server.port}", token="wrong", timeout=30) as client:
        with pytest.raises(ClientError) as caught:
            _ = [r async for r in client.classify_stream([COFFEE, COFFEE])]
    assert_unauthenticated(caught.value)


async def test_health_and_reflection_open_without_token_by_default(token_server: RunningServer) -> None:
    async with AsyncClient(f"127.0.0.1:{token_server.port}", timeout=30) as client:
        assert await client.health() is True
        assert await client.health("imgcls.v1.ImageClassifierService") is True
    # Load balancers use the bare grpc.health.v1 stub, with no metadata at all.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert "imgcls.v1.ImageClassifierService" in await reflection_services(token_server)


async def test_closed_health_needs_token(closed_health_server: RunningServer) -> None:
    async with AsyncClient(f"127.0.0.1:{closed_health_server.port}", timeout=30) as client:
        with pytest.raises(ClientError) as caught:
            await client.health()
    assert_unauthenticated(caught.value)
    async with AsyncClient(f"127.0.0.1:{closed_health_server.port}", token=TOKEN, timeout=30) as client:
        assert await client.health() is True


async def test_closed_reflection_needs_token(closed_health_server: RunningServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await reflection_services(closed_health_server)
    assert_unauthenticated(caught.value)
    assert "imgcls.v1.ImageClassifierService" in await reflection_services(closed_health_server, token=TOKEN)


async def reflection_services(server: RunningServer, token: str | None = None) -> list[str]:
    """The service names grpc reflection lists (a bidirectional stream, like grpcurl's)."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for response in stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=30):
            return [s.name for s in response.list_services_response.service]
    raise AssertionError("reflection answered nothing")


# -- where tokens come from ------------------------------------------------------------------


def write_token_file(folder: Path) -> Path:
    path = folder / "tokens.txt"
    path.write_text(f"# accepted tokens\n\n{TOKEN}\n   {OTHER_TOKEN}   \n")
    return path


def test_token_file_lines_are_tokens(tmp_path: Path) -> None:
    settings = load_settings({"auth_token_file": str(write_token_file(tmp_path))}, environ={})
    # Comments and blank lines are not tokens; surrounding spaces are trimmed.
    assert settings.auth_tokens == (TOKEN, OTHER_TOKEN)


def test_missing_token_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"auth_token_file": str(tmp_path / "nope.txt")}, environ={})
    assert "auth_token_file" in caught.value.message
    assert "nope.txt" in caught.value.message


@pytest.mark.usefixtures("clean_environ")
def test_token_file_flag(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["serve", "--auth-token-file", str(write_token_file(tmp_path)), "--auth-close-health"]
    )
    settings = serve_settings_from_args(args)
    assert settings.auth_tokens == (TOKEN, OTHER_TOKEN)
    assert settings.auth_open_health is False


async def test_server_from_token_file_accepts_its_tokens(tmp_path: Path) -> None:
    async with running_server(auth_token_file=str(write_token_file(tmp_path))) as server:
        assert_espresso(await classify(server, token=OTHER_TOKEN))
        assert_unauthenticated(await refused(server, token="# accepted tokens"))


def test_tokens_from_environment() -> None:
    settings = load_settings({}, environ={"IMGCLS_AUTH_TOKENS": f"{TOKEN}, {OTHER_TOKEN}"})
    assert settings.auth_tokens == (TOKEN, OTHER_TOKEN)


async def test_server_from_environment_tokens_accepts_them() -> None:
    settings = load_settings({"host": "127.0.0.1", "port": 0}, environ={"IMGCLS_AUTH_TOKENS": f"a-token {TOKEN}"})
    server = await start_server(settings)
    try:
        assert_espresso(await classify(server, token=TOKEN))
        assert_unauthenticated(await refused(server))
    finally:
        await server.stop(grace=1.0)


# -- tokens stay secret ----------------------------------------------------------------------


def test_token_not_in_settings_repr() -> None:
    settings = make_settings(auth_tokens=[TOKEN])
    assert settings.auth_tokens == (TOKEN,)  # it is there ...
    assert TOKEN not in repr(settings)  # ... but never printed
    assert TOKEN not in str(settings)


async def test_token_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_server(auth_tokens=[TOKEN], log_level="debug") as server:
        assert_espresso(await classify(server, token=TOKEN))
        assert_unauthenticated(await refused(server, token="wrong-" + TOKEN))
    # Something was logged at DEBUG (the request line), so the check below looks at real output.
    assert any(r.levelno == logging.DEBUG and r.name.startswith("imgcls") for r in caplog.records)
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
    assert TOKEN not in caplog.text
