"""What calls return and raise: Prediction, StreamResult, ClientError, and the conversions from responses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from imgcls.v1 import classifier_pb2 as pb


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


def client_error(exc: grpc.RpcError) -> ClientError:
    return ClientError(exc.code(), exc.details() or "")


@contextlib.contextmanager
def client_errors() -> Iterator[None]:
    """A failed call as ClientError; a plain context manager, so that sync and async calls share it."""
    try:
        yield
    except grpc.RpcError as exc:
        raise client_error(exc) from None


def predictions(result: pb.Result) -> list[Prediction]:
    return [Prediction(label.label, label.score, label.index) for label in result.labels]


def batch_predictions(response: pb.ClassifyResponse) -> list[list[Prediction]]:
    return [predictions(r) for r in response.results]


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
