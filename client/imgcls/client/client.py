"""Sync and async clients over the generated stubs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imgcls.client.inputs import ImageLike, to_input
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class _ClientTimeout:
    """The default of a call's ``timeout``: the one the client was made with."""

    def __repr__(self) -> str:
        return "CLIENT_TIMEOUT"


CLIENT_TIMEOUT: Any = _ClientTimeout()
FunctionName = Literal["softmax", "sigmoid", "none"]

_FUNCTIONS = {
    None: pb.FUNCTION_TO_APPLY_UNSPECIFIED,
    "softmax": pb.FUNCTION_TO_APPLY_SOFTMAX,
    "sigmoid": pb.FUNCTION_TO_APPLY_SIGMOID,
    "none": pb.FUNCTION_TO_APPLY_NONE,
}


@dataclass(frozen=True, slots=True)
class Prediction:
    """One ranked class: its label, score and index in the model's outputs (config.json's id2label key)."""

    label: str
    score: float
    index: int


@dataclass(frozen=True)
class StreamResult:
    """One frame's answer: predictions per input, or the frame's error code and message."""

    request_id: str
    predictions: list[list[Prediction]]
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK and not self.skipped


class ClientError(Exception):
    """A call failed; code is the grpc.StatusCode."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


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


# Calls the server refused without doing any work (it is shutting down, or a replica is gone) are
# retried, and round_robin sends the retry to another replica; Classify is idempotent. No retry
# throttling: it counts every refused attempt, so a replica draining under load (refusing for up to
# a second) would switch retries off for everyone; overload is RESOURCE_EXHAUSTED, never retried.
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.01s",
    "maxBackoff": "0.2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    service_config: dict[str, Any] = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{"name": [{"service": "imgcls.v1.ImageClassifierService"}], "retryPolicy": RETRY_POLICY}],
    }
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


def build_request(
    images: Sequence[ImageLike],
    *,
    model: str = "",
    top_k: int | None = None,
    threshold: float | None = None,
    function_to_apply: FunctionName | None = None,
    preprocessor_overrides: dict[str, Any] | None = None,
    request_id: str = "",
) -> pb.ClassifyRequest:
    """A ClassifyRequest: top_k (None: the server's 5, 0: all), threshold (0..1), function_to_apply
    (softmax, sigmoid, none; None: the model's default), preprocessor_overrides (merged over the
    model's preprocessor_config.json)."""
    if function_to_apply not in _FUNCTIONS:
        raise ValueError(f"function_to_apply must be softmax, sigmoid, none or None, got {function_to_apply!r}")
    request = pb.ClassifyRequest(model=model, inputs=[to_input(i) for i in images], request_id=request_id)
    if top_k is not None:
        request.parameters.top_k = top_k
    if threshold is not None:
        request.parameters.threshold = threshold
    request.parameters.function_to_apply = _FUNCTIONS[function_to_apply]
    if preprocessor_overrides:
        request.preprocessor_overrides.update(preprocessor_overrides)
    return request


def predictions(result: pb.Result) -> list[Prediction]:
    return [Prediction(label.label, label.score, label.index) for label in result.labels]


def stream_result(response: pb.ClassifyStreamResponse) -> StreamResult:
    return StreamResult(
        request_id=response.request_id,
        predictions=[predictions(r) for r in response.results],
        code=grpc.StatusCode.OK if response.status.code == 0 else _status_code(response.status.code),
        message=response.status.message,
        skipped=response.skipped,
    )


def _status_code(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


def _frame_request(frame: ImageLike | pb.ClassifyStreamRequest, index: int) -> pb.ClassifyStreamRequest:
    if isinstance(frame, pb.ClassifyStreamRequest):
        return frame
    try:
        return pb.ClassifyStreamRequest(inputs=[to_input(frame)], request_id=str(index))
    except Exception as exc:
        exc.add_note(f"(frame {index} of the stream)")
        raise


def _stream_defaults(
    *,
    model: str,
    top_k: int | None,
    threshold: float | None,
    function_to_apply: FunctionName | None,
    preprocessor_overrides: dict[str, Any] | None,
    drop_stale: bool,
) -> pb.ClassifyStreamRequest:
    """What the first frame carries for every later one that leaves it empty."""
    first = build_request(
        [],
        model=model,
        top_k=top_k,
        threshold=threshold,
        function_to_apply=function_to_apply,
        preprocessor_overrides=preprocessor_overrides,
    )
    return pb.ClassifyStreamRequest(
        model=first.model,
        parameters=first.parameters,
        preprocessor_overrides=first.preprocessor_overrides if preprocessor_overrides else None,
        drop_stale=drop_stale,
    )


def _first_frame(request: pb.ClassifyStreamRequest, first: pb.ClassifyStreamRequest) -> pb.ClassifyStreamRequest:
    merged = pb.ClassifyStreamRequest()
    merged.CopyFrom(first)
    merged.MergeFrom(request)
    return merged


class _Options:
    """Shared constructor arguments of Client and AsyncClient."""

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
    ) -> None:
        self.target = channel_target(target)
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.credentials = _credentials(tls, root_certificates, client_cert)
        self.options = channel_options(max_message_bytes)

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is CLIENT_TIMEOUT else timeout


class Client(_Options):
    """Blocking client. ``classify`` one image -> [Prediction]; ``classify_batch`` several -> [[Prediction]].

    ``timeout`` (seconds, None: no deadline) applies to every unary call; each method takes its own
    ``timeout`` too. Streams have no deadline unless given one.
    """

    def __init__(
        self,
        target: str | Sequence[str] = DEFAULT_TARGET,
        *,
        timeout: float | None = 60.0,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        client_cert: tuple[bytes, bytes] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        super().__init__(
            target,
            timeout=timeout,
            token=token,
            tls=tls,
            root_certificates=root_certificates,
            client_cert=client_cert,
            max_message_bytes=max_message_bytes,
        )
        if self.credentials is None:
            self.channel = grpc.insecure_channel(self.target, options=self.options)
        else:
            self.channel = grpc.secure_channel(self.target, self.credentials, options=self.options)
        self.stub = pb_grpc.ImageClassifierServiceStub(self.channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None = CLIENT_TIMEOUT) -> Any:
        try:
            return method(request, timeout=self._timeout(timeout), metadata=self.metadata)
        except grpc.RpcError as exc:
            raise ClientError(exc.code(), exc.details() or "") from None

    def classify(
        self,
        image: ImageLike,
        *,
        model: str = "",
        top_k: int | None = None,
        threshold: float | None = None,
        function_to_apply: FunctionName | None = None,
        preprocessor_overrides: dict[str, Any] | None = None,
        request_id: str = "",
        timeout: float | None = CLIENT_TIMEOUT,
    ) -> list[Prediction]:
        """One image's ranked predictions (top_k None: the server's 5, 0: all)."""
        return self.classify_batch(
            [image],
            model=model,
            top_k=top_k,
            threshold=threshold,
            function_to_apply=function_to_apply,
            preprocessor_overrides=preprocessor_overrides,
            request_id=request_id,
            timeout=timeout,
        )[0]

    def classify_batch(
        self,
        images: Sequence[ImageLike],
        *,
        model: str = "",
        top_k: int | None = None,
        threshold: float | None = None,
        function_to_apply: FunctionName | None = None,
        preprocessor_overrides: dict[str, Any] | None = None,
        request_id: str = "",
        timeout: float | None = CLIENT_TIMEOUT,
    ) -> list[list[Prediction]]:
        """Several images in one request; one list of predictions per input, in order."""
        request = build_request(
            images,
            model=model,
            top_k=top_k,
            threshold=threshold,
            function_to_apply=function_to_apply,
            preprocessor_overrides=preprocessor_overrides,
            request_id=request_id,
        )
        response = self.classify_request(request, timeout=timeout)
        return [predictions(r) for r in response.results]

    def classify_request(
        self, request: pb.ClassifyRequest, *, timeout: float | None = CLIENT_TIMEOUT
    ) -> pb.ClassifyResponse:
        """A ClassifyRequest as it is (see build_request) -> the ClassifyResponse."""
        response: pb.ClassifyResponse = self._call(self.stub.Classify, request, timeout)
        return response

    def classify_stream(
        self,
        frames: Iterable[ImageLike | pb.ClassifyStreamRequest],
        *,
        model: str = "",
        top_k: int | None = None,
        threshold: float | None = None,
        function_to_apply: FunctionName | None = None,
        preprocessor_overrides: dict[str, Any] | None = None,
        drop_stale: bool = False,
        timeout: float | None = None,
    ) -> Iterator[StreamResult]:
        """Yield one StreamResult per frame, in order, as they come back.

        A frame that cannot be sent (a missing file, an unsupported value) or an exception of the frames
        iterator itself ends the stream: the frames before it are answered, then that exception is raised
        here, in the caller's thread.
        """
        defaults = _stream_defaults(
            model=model,
            top_k=top_k,
            threshold=threshold,
            function_to_apply=function_to_apply,
            preprocessor_overrides=preprocessor_overrides,
            drop_stale=drop_stale,
        )
        failure: list[Exception] = []

        def requests() -> Iterator[pb.ClassifyStreamRequest]:
            # gRPC iterates this on a thread of its own, where an exception would only be logged and the
            # call failed as UNKNOWN "Exception iterating requests!": keep it and end the stream instead.
            try:
                for index, frame in enumerate(frames):
                    request = _frame_request(frame, index)
                    yield _first_frame(request, defaults) if index == 0 else request
            except Exception as exc:
                failure.append(exc)

        try:
            for response in self.stub.ClassifyStream(requests(), timeout=timeout, metadata=self.metadata):
                yield stream_result(response)
        except grpc.RpcError as exc:
            if failure:
                raise failure[0] from None
            raise ClientError(exc.code(), exc.details() or "") from None
        if failure:
            raise failure[0]

    def list_models(self, *, timeout: float | None = CLIENT_TIMEOUT) -> list[pb.ModelInfo]:
        return list(self._call(self.stub.ListModels, pb.ListModelsRequest(), timeout).models)

    def get_model(self, name: str = "", *, timeout: float | None = CLIENT_TIMEOUT) -> pb.ModelInfo:
        model: pb.ModelInfo = self._call(self.stub.GetModel, pb.GetModelRequest(name=name), timeout).model
        return model

    def health(self, service: str = "", *, timeout: float | None = CLIENT_TIMEOUT) -> bool:
        stub = health_pb2_grpc.HealthStub(self.channel)
        response = self._call(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


class AsyncClient(_Options):
    """The asyncio twin of Client: the same methods, as coroutines (classify_stream an async iterator)."""

    def __init__(
        self,
        target: str | Sequence[str] = DEFAULT_TARGET,
        *,
        timeout: float | None = 60.0,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        client_cert: tuple[bytes, bytes] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        super().__init__(
            target,
            timeout=timeout,
            token=token,
            tls=tls,
            root_certificates=root_certificates,
            client_cert=client_cert,
            max_message_bytes=max_message_bytes,
        )
        if self.credentials is None:
            self.channel = grpc.aio.insecure_channel(self.target, options=self.options)
        else:
            self.channel = grpc.aio.secure_channel(self.target, self.credentials, options=self.options)
        self.stub = pb_grpc.ImageClassifierServiceStub(self.channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close(None)

    async def _call(self, method: Any, request: Any, timeout: float | None = CLIENT_TIMEOUT) -> Any:
        try:
            return await method(request, timeout=self._timeout(timeout), metadata=self.metadata)
        except grpc.RpcError as exc:
            raise ClientError(exc.code(), exc.details() or "") from None

    async def classify(
        self,
        image: ImageLike,
        *,
        model: str = "",
        top_k: int | None = None,
        threshold: float | None = None,
        function_to_apply: FunctionName | None = None,
        preprocessor_overrides: dict[str, Any] | None = None,
        request_id: str = "",
        timeout: float | None = CLIENT_TIMEOUT,
    ) -> list[Prediction]:
        results = await self.classify_batch(
            [image],
            model=model,
            top_k=top_k,
            threshold=threshold,
            function_to_apply=function_to_apply,
            preprocessor_overrides=preprocessor_overrides,
            request_id=request_id,
            timeout=timeout,
        )
        return results[0]

    async def classify_batch(
        self,
        images: Sequence[ImageLike],
        *,
        model: str = "",
        top_k: int | None = None,
        threshold: float | None = None,
        function_to_apply: FunctionName | None = None,
        preprocessor_overrides: dict[str, Any] | None = None,
        request_id: str = "",
        timeout: float | None = CLIENT_TIMEOUT,
    ) -> list[list[Prediction]]:
        request = build_request(
            images,
            model=model,
            top_k=top_k,
            threshold=threshold,
            function_to_apply=function_to_apply,
            preprocessor_overrides=preprocessor_overrides,
            request_id=request_id,
        )
        response = await self.classify_request(request, timeout=timeout)
        return [predictions(r) for r in response.results]

    async def classify_request(
        self, request: pb.ClassifyRequest, *, timeout: float | None = CLIENT_TIMEOUT
    ) -> pb.ClassifyResponse:
        """A ClassifyRequest as it is (see build_request) -> the ClassifyResponse."""
        response: pb.ClassifyResponse = await self._call(self.stub.Classify, request, timeout)
        return response

    async def classify_stream(
        self,
        frames: AsyncIterable[ImageLike | pb.ClassifyStreamRequest] | Iterable[ImageLike | pb.ClassifyStreamRequest],
        *,
        model: str = "",
        top_k: int | None = None,
        threshold: float | None = None,
        function_to_apply: FunctionName | None = None,
        preprocessor_overrides: dict[str, Any] | None = None,
        drop_stale: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamResult]:
        """Yield one StreamResult per frame, in order; a frame that cannot be sent ends the stream as in Client."""
        defaults = _stream_defaults(
            model=model,
            top_k=top_k,
            threshold=threshold,
            function_to_apply=function_to_apply,
            preprocessor_overrides=preprocessor_overrides,
            drop_stale=drop_stale,
        )
        failure: list[Exception] = []

        # grpc-stubs types the sync stub; the aio call object is untyped there.
        call: Any = self.stub.ClassifyStream(timeout=timeout, metadata=self.metadata)  # type: ignore[call-arg]

        async def send() -> None:
            index = 0
            try:
                # The server sends its headers as soon as it accepts a stream; a refused stream
                # (auth, shutdown) gets its status instead. Writing before knowing races that status,
                # and grpc.aio then reports the failed write as INTERNAL (grpc/grpc#36066).
                await call.initial_metadata()
                if call.done():
                    return
                async for frame in _aiter(frames):
                    try:
                        request = _frame_request(frame, index)
                    except Exception as exc:
                        # The frames before it are answered, then the reader raises this.
                        failure.append(exc)
                        break
                    await call.write(_first_frame(request, defaults) if index == 0 else request)
                    index += 1
                await call.done_writing()
            except (grpc.RpcError, asyncio.InvalidStateError):
                # The server ended the call (an error status, or shutdown) while frames were still
                # being written; the reader below reports the call's real status, not this write's.
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the caller's frames iterator failed: end the call, the reader raises it
                failure.append(exc)
                call.cancel()

        writer = asyncio.ensure_future(send())
        try:
            while (response := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
                yield stream_result(response)
            code = await call.code()
            if failure:
                raise failure[0]
            if code != grpc.StatusCode.OK:
                raise ClientError(code, await call.details() or "")
        except grpc.RpcError as exc:
            if failure:
                raise failure[0] from None
            raise ClientError(exc.code(), exc.details() or "") from None
        except asyncio.CancelledError:
            if failure:  # the writer cancelled the call: its exception, not the cancellation
                raise failure[0] from None
            raise
        finally:
            if not writer.done():
                writer.cancel()
                call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def list_models(self, *, timeout: float | None = CLIENT_TIMEOUT) -> list[pb.ModelInfo]:
        return list((await self._call(self.stub.ListModels, pb.ListModelsRequest(), timeout)).models)

    async def get_model(self, name: str = "", *, timeout: float | None = CLIENT_TIMEOUT) -> pb.ModelInfo:
        model: pb.ModelInfo = (await self._call(self.stub.GetModel, pb.GetModelRequest(name=name), timeout)).model
        return model

    async def health(self, service: str = "", *, timeout: float | None = CLIENT_TIMEOUT) -> bool:
        stub = health_pb2_grpc.HealthStub(self.channel)
        response = await self._call(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


async def _aiter(items: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


__all__ = ["AsyncClient", "Client", "ClientError", "Prediction", "StreamResult", "struct_pb2"]
