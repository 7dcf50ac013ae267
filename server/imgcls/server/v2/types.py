"""The Open Inference Protocol's requests, responses and metadata as plain dataclasses.

No protobuf and no HTTP here: the gRPC door builds these from ``inference.ModelInferRequest`` and the
REST door from JSON (plus the binary tensor data extension); both turn the answers back into their own
form. Dict forms (``to_dict``) are the protocol's REST JSON, which is also the protobuf JSON mapping of
the gRPC messages with their field names kept (so ``json_format.ParseDict`` reads them).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# BYTES elements in binary form: each a 4-byte little-endian length, then its bytes.
BYTES_LENGTH = struct.Struct("<I")


def encode_bytes_elements(elements: Sequence[bytes]) -> bytes:
    """BYTES elements in binary form: each a 4-byte little-endian length, then its bytes."""
    parts = []
    for element in elements:
        parts.append(BYTES_LENGTH.pack(len(element)))
        parts.append(element)
    return b"".join(parts)


# Datatypes the protocol names (the tensor data types table); imgcls reads FP32, FP16 and BYTES.
DATATYPES: tuple[str, ...] = (
    *("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"),
    *("FP16", "FP32", "FP64", "BYTES", "BF16"),
)

NUMPY_OF_DATATYPE: dict[str, np.dtype] = {  # type: ignore[type-arg]
    "FP32": np.dtype("<f4"),
    "FP16": np.dtype("<f2"),
}
DATATYPE_OF_NUMPY = {"float32": "FP32", "float16": "FP16"}


@dataclass(frozen=True, slots=True)
class InputTensor:
    """One request input, as the caller sent it.

    The values travel either in ``raw`` (the protocol's binary form: little-endian numbers, or for BYTES
    each element as a 4-byte little-endian length then its bytes; gRPC ``raw_input_contents``, REST
    binary tensor data) or in ``data`` (gRPC typed ``contents``, REST JSON ``data``: numbers, flat or
    nested in the tensor's shape; for BYTES, ``bytes`` elements or ``str`` elements, which the image view
    reads as base64 or ``data:`` URLs since JSON cannot carry raw bytes; a numpy array is taken too).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | memoryview | None = None
    data: Sequence[Any] | np.ndarray | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the caller asked for; ``classification`` N > 0 asks for Triton's classification extension."""

    name: str
    classification: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)  # the rest (binary_data, ...): the door's business


@dataclass(frozen=True, slots=True)
class InferRequest:
    """ModelInfer / POST .../infer. ``parameters`` are plain values (int, float, bool, str; REST may nest)."""

    model_name: str
    inputs: tuple[InputTensor, ...]
    model_version: str = ""
    id: str = ""
    outputs: tuple[RequestedOutput, ...] = ()  # empty: every output of the model
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutputTensor:
    """One response output: numbers as a numpy array of ``shape``, BYTES as a flat list of elements."""

    name: str
    datatype: str  # FP32, FP16 or BYTES
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]

    def raw_bytes(self) -> bytes:
        """The protocol's binary form: little-endian values, or length-prefixed BYTES elements."""
        if isinstance(self.data, np.ndarray):
            return np.ascontiguousarray(self.data, dtype=NUMPY_OF_DATATYPE[self.datatype]).tobytes()
        return encode_bytes_elements(self.data)

    def json_data(self) -> list[Any]:
        """The values flattened in row-major order, as JSON takes them (BYTES as UTF-8 text)."""
        if isinstance(self.data, np.ndarray):
            return self.data.reshape(-1).tolist()  # type: ignore[no-any-return]
        return [element.decode("utf-8", errors="replace") for element in self.data]

    def to_dict(self) -> dict[str, Any]:
        """The REST JSON form, values inline."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape), "data": self.json_data()}


@dataclass(frozen=True, slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: tuple[OutputTensor, ...]
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The REST JSON form with every value inline (a REST door sends binary outputs itself)."""
        answer: dict[str, Any] = {"model_name": self.model_name, "model_version": self.model_version}
        if self.id:
            answer["id"] = self.id
        if self.parameters:
            answer["parameters"] = dict(self.parameters)
        answer["outputs"] = [output.to_dict() for output in self.outputs]
        return answer


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size (the batch dimension is always -1)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": list(self.versions),
            "platform": self.platform,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "extensions": list(self.extensions)}
