"""TLS credentials and bearer-token authentication for the gRPC server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from imgcls.server.domain.errors import ConfigError
from imgcls.server.engine.tokens import TokenCheck
from imgcls.server.settings import TlsSettings

# Health and reflection stay reachable without a token unless the settings close them,
# so load balancers and grpcurl users can see the server is up.
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
    # The Open Inference Protocol's own health RPCs (KServe and Triton clients probe with these).
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ModelReady",
)


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    try:
        key = tls.key_file.read_bytes()
        cert = tls.cert_file.read_bytes()
        client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    except OSError as exc:
        raise ConfigError(f"tls: cannot read {exc.filename}: {exc.strerror}") from exc
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` for an accepted token (UNAUTHENTICATED).

    Tokens are compared in constant time and never logged.
    """

    def __init__(self, tokens: Sequence[str], *, open_health: bool) -> None:
        self._tokens = TokenCheck(tokens)
        self._open_prefixes = OPEN_SERVICES if open_health else ()

    def _authorized(self, metadata: Sequence[tuple[str, Any]] | None) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                return self._tokens.authorized(value)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method or ""
        if method.startswith(self._open_prefixes) or self._authorized(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        return _REFUSING


async def _refuse(request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token (send 'authorization: Bearer <token>')"
    )


# Whatever the method's own shape, a refused call gets a request-streaming handler with no
# deserializer that never reads its request: the message is not received, decompressed or parsed,
# so a caller without a token costs no more than its headers (tokens before bytes).
_REFUSING = grpc.stream_unary_rpc_method_handler(_refuse)
