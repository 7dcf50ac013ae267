"""Where and how a client connects: targets, channel options and retries, credentials, the shared constructor."""

from __future__ import annotations

import abc
import json
import socket
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc
from imgcls.client._core import Stubs, Unary

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class _ClientTimeout:
    """The default of a call's ``timeout``: the one the client was made with."""

    def __repr__(self) -> str:
        return "CLIENT_TIMEOUT"


CLIENT_TIMEOUT: Any = _ClientTimeout()


def channel_target(target: str | Sequence[str]) -> str:
    """One address, a dns:/// target, or several addresses (balanced round-robin).

    gRPC's multi-address targets (ipv4:a,b / ipv6:[a],[b]) take literal addresses only, so host
    names in a list are resolved here, once; a dns:/// target re-resolves by itself and suits
    a Kubernetes headless Service better.
    """
    if isinstance(target, str):
        return target
    if len(target) == 1:
        return target[0]
    v4: list[str] = []
    v6: list[str] = []
    for address in target:
        if "://" in address or address.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
            raise ValueError(f"a list of servers takes host:port entries, not {address!r}; pass a dns:/// target alone")
        host, port = _split_host_port(address)
        ips = {str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
        ipv4 = sorted(ip for ip in ips if ":" not in ip)
        if ipv4:  # a name with both families: its IPv4 addresses, so that lists of names stay ipv4:
            v4.extend(e for e in (f"{ip}:{port}" for ip in ipv4) if e not in v4)
        else:
            v6.extend(e for e in (f"[{ip}]:{port}" for ip in sorted(ips)) if e not in v6)
    # gRPC takes one address family per target.
    if v4 and v6:
        raise ValueError(f"servers {list(target)} mix IPv4-only and IPv6-only addresses; give one family")
    return "ipv4:" + ",".join(v4) if v4 else "ipv6:" + ",".join(v6)


def _split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"server address {address!r} needs a port, e.g. host:50051")
    return host.strip("[]"), int(port)


SERVICE_NAME = "imgcls.v1.ImageClassifierService"

# Calls the server refused without doing any work (it is shutting down, or a replica is gone) are
# retried, and round_robin sends the retry to another replica; every method is idempotent (a stream is
# retried only before its first answer). CANCELLED too: imgcls never answers it itself, but gRPC core
# does for a call it had accepted and not yet handed over when the server stops, for one still running
# when the stop's grace runs out (its work is then done again elsewhere), and past its pending-call
# bound (set far above any burst the server's own admission leaves waiting). A call the caller cancels
# is not retried. No retry throttling: it counts every refused attempt, so a replica draining under load
# would switch retries off for everyone; the server's own overload answer is RESOURCE_EXHAUSTED, never
# retried.
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.01s",
    "maxBackoff": "0.2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
}


def balances(target: str) -> bool:
    """Whether a channel target may name several servers: a list of addresses, or a dns:/// name."""
    return target.startswith("dns:") or (target.startswith(("ipv4:", "ipv6:")) and "," in target)


def channel_options(max_message_bytes: int, *, health_checked: bool = False) -> list[tuple[str, Any]]:
    """health_checked: round_robin picks only servers whose grpc.health.v1 Watch says SERVING.

    Over several servers, a stopping one leaves the picks the moment it turns NOT_SERVING; without it,
    round_robin kept picking it while it drained, and each refused call's retries had the same chance of
    landing on it again (measured: 4 callers over 2 servers, about 3 calls failed per stop, all 5
    attempts refused). Not for one server: every call on the channel would wait for its health, and
    the server's own answer ("shutting down", "not ready") says more than the channel's.
    """
    service_config: dict[str, Any] = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{"name": [{"service": SERVICE_NAME}], "retryPolicy": RETRY_POLICY}],
    }
    if health_checked:
        service_config["healthCheckConfig"] = {"serviceName": SERVICE_NAME}
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.service_config", json.dumps(service_config)),
        ("grpc.enable_retries", 1),
        # gRPC keeps only 256 KiB of a call for retrying it; a 224x224 float tensor is 600 KB.
        ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
    ]


def _credentials(
    tls: bool, root_certificates: bytes | None, client_cert: tuple[bytes, bytes] | None
) -> grpc.ChannelCredentials | None:
    if not tls and root_certificates is None and client_cert is None:
        return None
    key, cert = (client_cert[1], client_cert[0]) if client_cert else (None, None)
    return grpc.ssl_channel_credentials(root_certificates, key, cert)


class _Options(abc.ABC):
    """Shared constructor arguments of Client and AsyncClient; each opens its own kind of channel."""

    def __init__(
        self,
        target: str | Sequence[str] = DEFAULT_TARGET,
        *,
        timeout: float | None = 60.0,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        client_cert: tuple[bytes, bytes] | None = None,  # (certificate chain PEM, private key PEM)
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        health_check: bool | None = None,
    ) -> None:
        """health_check: pick only SERVING servers (see channel_options); None: when the target may name several.

        The channel's own health checks carry no token: against servers started with --auth-close-health,
        pass False.
        """
        self.target = channel_target(target)
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.credentials = _credentials(tls, root_certificates, client_cert)
        checked = balances(self.target) if health_check is None else health_check
        self.options = channel_options(max_message_bytes, health_checked=checked)
        self.channel, self.stub = self._connect(self.options)
        # health() asks the servers whatever their health says: over a channel that does not pick by it (on the
        # health-checked one, with no server SERVING, the call would fail instead of answering NOT_SERVING).
        # gRPC connects it only when health() is first called.
        self._probe = self._connect(channel_options(max_message_bytes))[0] if checked else None
        self._stubs = Stubs(self.stub, health_pb2_grpc.HealthStub(self._probe or self.channel))

    @abc.abstractmethod
    def _connect(self, options: list[tuple[str, Any]]) -> tuple[Any, Any]:
        """A channel to self.target with self.credentials and these options, and the classifier's stub on it."""

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is CLIENT_TIMEOUT else timeout

    def _send(self, call: Unary[Any], timeout: float | None) -> Any:
        """Starts call: its response on a blocking channel, an awaitable of it on an asyncio one."""
        return call.method(self._stubs)(call.request, timeout=self._timeout(timeout), metadata=self.metadata)
