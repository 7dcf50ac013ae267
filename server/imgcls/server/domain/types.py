"""Domain types of the engine: what a request carries once the protobuf is gone."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

# Dims a tensor may have (a model input has four or so): refused beyond, before they are read one by one.
MAX_TENSOR_RANK = 16


class FunctionToApply(enum.Enum):
    """Applied to the model outputs before ranking (Hugging Face pipeline semantics)."""

    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"
    NONE = "none"


class PixelFormat(enum.Enum):
    RGB8 = "RGB8"
    RGBA8 = "RGBA8"
    BGR8 = "BGR8"
    GRAY8 = "GRAY8"

    @property
    def channels(self) -> int:
        return {"RGB8": 3, "RGBA8": 4, "BGR8": 3, "GRAY8": 1}[self.value]


class TensorDType(enum.Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"


@dataclass(frozen=True, slots=True)
class EncodedImage:
    """An image file (JPEG, PNG, ...)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Base64Image:
    """An image file as base64 text or a data: URL."""

    text: str


@dataclass(frozen=True, slots=True)
class RawImage:
    """A decoded bitmap: height rows of width pixels."""

    width: int
    height: int
    format: PixelFormat
    data: bytes


@dataclass(frozen=True, slots=True)
class TensorInput:
    """An already pre-processed tensor; a leading batch dimension of N yields N results."""

    dims: tuple[int, ...]
    dtype: TensorDType
    raw_data: bytes = b""
    float_data: tuple[float, ...] | list[float] = ()


ImageInput = EncodedImage | Base64Image | RawImage | TensorInput


@dataclass(frozen=True, slots=True)
class ClassifyOptions:
    """Postprocessing options; None means the default."""

    top_k: int | None = None
    threshold: float | None = None
    function_to_apply: FunctionToApply | None = None


@dataclass(frozen=True, slots=True)
class ClassifyRequest:
    model: str
    inputs: tuple[ImageInput, ...]
    options: ClassifyOptions = ClassifyOptions()
    request_id: str = ""
    preprocessor_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LabelScore:
    label: str
    score: float
    index: int


Ranking = list[LabelScore]
