"""Hostile raw images, tensors, parameters and request shapes through the real server.

Each is sent while good callers run; it must be refused with INVALID_ARGUMENT (or
RESOURCE_EXHAUSTED for size limits) naming the input and the cause, never INTERNAL, and the good
callers beside it must get their correct answers.
"""

from __future__ import annotations

import io
import math

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from PIL import Image
from reliability.helpers import answered, refused, request_of
from support.inputs import COFFEE, ESPRESSO
from support.reference import embedded_model_ranking
from support.servers import connect, running_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

INVALID = grpc.StatusCode.INVALID_ARGUMENT
SAMPLE = (3, 224, 224)
SAMPLE_VALUES = math.prod(SAMPLE)


def after_good(item: pb.Input, **fields: object) -> pb.ClassifyRequest:
    """A good image first and the hostile input second, so the error must name inputs[1]."""
    return request_of(pb.Input(image=COFFEE), item, **fields)  # type: ignore[arg-type]


def raw(width: int, height: int, fmt: int, data: bytes) -> pb.Input:
    return pb.Input(raw=pb.RawImage(width=width, height=height, format=fmt, data=data))


def tensor(
    dims: list[int], *, dtype: int = pb.DATA_TYPE_FLOAT32, raw_data: bytes = b"", float_data: list[float] | None = None
) -> pb.Input:
    return pb.Input(tensor=pb.Tensor(dims=dims, dtype=dtype, raw_data=raw_data, float_data=float_data or []))


def zeros_f32(count: int) -> bytes:
    return np.zeros(count, dtype="<f4").tobytes()


def coffee_with(**fields: object) -> pb.ClassifyRequest:
    return request_of(pb.Input(image=COFFEE), **fields)  # type: ignore[arg-type]


def overrides(value: dict[str, object]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


# --- raw images ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "cause"),
    [
        pytest.param(
            raw(10, 10, pb.PIXEL_FORMAT_RGB8, b"\0" * 299),
            "data has 299 bytes but 10x10 RGB8 needs 300",
            id="length-mismatch",
        ),
        pytest.param(raw(10, 10, pb.PIXEL_FORMAT_RGBA8, b"\0" * 300), "needs 400", id="rgba-given-rgb-length"),
        pytest.param(
            raw(0, 10, pb.PIXEL_FORMAT_RGB8, b""), "width and height must be positive, got 0x10", id="zero-width"
        ),
        pytest.param(raw(0, 0, pb.PIXEL_FORMAT_GRAY8, b""), "must be positive", id="zero-dims"),
        pytest.param(
            raw(100_000, 100_000, pb.PIXEL_FORMAT_RGB8, b"\0" * 12),
            "100000x100000 = 10000000000 pixels, over the limit of 40000000",
            id="huge-dims-tiny-data",
        ),
        pytest.param(raw(2**32 - 1, 2**32 - 1, pb.PIXEL_FORMAT_RGB8, b""), "over the limit", id="max-uint32-dims"),
        pytest.param(raw(2, 2, 99, b"\0" * 12), "raw.format 99 is not a known PixelFormat", id="unknown-format"),
        pytest.param(raw(2, 2, pb.PIXEL_FORMAT_UNSPECIFIED, b"\0" * 12), "raw.format 0", id="unspecified-format"),
    ],
)
async def test_bad_raw_image_is_refused(
    module_stub: pb_grpc.ImageClassifierServiceStub, item: pb.Input, cause: str
) -> None:
    await refused(module_stub, after_good(item), INVALID, "inputs[1]", cause)


# --- tensors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "cause"),
    [
        pytest.param(
            tensor([1, *SAMPLE], raw_data=b"\0" * 10),
            "raw_data has 10 bytes but dims [1, 3, 224, 224]",
            id="raw-length-mismatch",
        ),
        pytest.param(tensor([1, *SAMPLE], float_data=[0.5] * 7), "float_data has 7 values", id="float-length-mismatch"),
        pytest.param(
            tensor([1, 3, -224, 224], raw_data=zeros_f32(10)),
            "dims must be positive, got [1, 3, -224, 224]",
            id="negative-dim",
        ),
        pytest.param(tensor([0, *SAMPLE]), "dims must be positive", id="zero-dim"),
        pytest.param(
            tensor([2**40, 2**40, 3, 3], raw_data=zeros_f32(9)),
            "do not match the model input 3x224x224",
            id="overflowing-dims",
        ),
        pytest.param(tensor([2**40, *SAMPLE], raw_data=zeros_f32(9)), "over the limit of", id="overflowing-batch"),
        pytest.param(tensor([2**63 - 1, *SAMPLE]), "over the limit of", id="int64-max-batch"),
        pytest.param(tensor([224, 224], raw_data=zeros_f32(224 * 224)), "have rank 2", id="wrong-rank-2"),
        pytest.param(tensor([1, 1, *SAMPLE], raw_data=zeros_f32(SAMPLE_VALUES)), "have rank 5", id="wrong-rank-5"),
        pytest.param(tensor([]), "have rank 0", id="no-dims"),
        pytest.param(
            tensor([1, 4, 224, 224], raw_data=zeros_f32(4 * 224 * 224)),
            "do not match the model input",
            id="wrong-channels",
        ),
        pytest.param(
            tensor([1, 224, 224, 3], raw_data=zeros_f32(SAMPLE_VALUES)),
            "do not match the model input",
            id="nhwc-for-nchw",
        ),
        pytest.param(
            tensor([1, *SAMPLE], raw_data=zeros_f32(SAMPLE_VALUES), float_data=[0.0]),
            "set raw_data or float_data, not both",
            id="raw-and-float-data",
        ),
        pytest.param(
            tensor([1, *SAMPLE], dtype=99, raw_data=zeros_f32(SAMPLE_VALUES)),
            "tensor.dtype 99 is not",
            id="unknown-dtype",
        ),
        pytest.param(
            tensor([1, *SAMPLE], dtype=pb.DATA_TYPE_UNSPECIFIED, raw_data=zeros_f32(SAMPLE_VALUES)),
            "tensor.dtype 0 is not",
            id="unspecified-dtype",
        ),
        pytest.param(
            tensor([1, *SAMPLE], dtype=pb.DATA_TYPE_FLOAT16, raw_data=zeros_f32(SAMPLE_VALUES)),
            "of float16 need 301056",
            id="float32-bytes-labelled-float16",
        ),
    ],
)
async def test_bad_tensor_is_refused(
    module_stub: pb_grpc.ImageClassifierServiceStub, item: pb.Input, cause: str
) -> None:
    await refused(module_stub, after_good(item), INVALID, "inputs[1]", cause)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
async def test_non_finite_tensor_values_are_answered_with_the_model_scores(
    module_stub: pb_grpc.ImageClassifierServiceStub, value: float
) -> None:
    # The README: NaN and Inf are passed to the model and answered with whatever scores it gives: those
    # ONNX Runtime gives for the same tensor run on its own, ranked as every answer is.
    values = np.zeros(SAMPLE_VALUES, dtype="<f4")
    values[::997] = value
    response = await answered(module_stub, after_good(tensor([1, *SAMPLE], raw_data=values.tobytes())))
    assert len(response.results) == 2
    assert response.results[0].labels[0].index == ESPRESSO
    want = embedded_model_ranking(values.reshape(SAMPLE))
    got = response.results[1].labels
    assert [(label.index, label.label) for label in got] == [(label.index, label.label) for label in want]
    assert [label.score for label in got] == pytest.approx([label.score for label in want], abs=1e-6, nan_ok=True)


# --- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "cause"),
    [
        pytest.param(pb.Parameters(top_k=-1), "parameters.top_k must be >= 0, got -1", id="top_k--1"),
        pytest.param(pb.Parameters(top_k=-(2**31)), "parameters.top_k must be >= 0", id="top_k-int32-min"),
        pytest.param(
            pb.Parameters(threshold=math.nan),
            "parameters.threshold must be between 0 and 1, got nan",
            id="threshold-nan",
        ),
        pytest.param(
            pb.Parameters(threshold=-0.1), "parameters.threshold must be between 0 and 1", id="threshold--0.1"
        ),
        pytest.param(pb.Parameters(threshold=1.1), "parameters.threshold must be between 0 and 1", id="threshold-1.1"),
        pytest.param(
            pb.Parameters(threshold=math.inf),
            "parameters.threshold must be between 0 and 1, got inf",
            id="threshold-inf",
        ),
        pytest.param(
            pb.Parameters(function_to_apply=99), "parameters.function_to_apply 99 is not a known", id="function-99"
        ),  # type: ignore[arg-type]
    ],
)
async def test_bad_parameters_are_refused(
    module_stub: pb_grpc.ImageClassifierServiceStub, parameters: pb.Parameters, cause: str
) -> None:
    await refused(module_stub, coffee_with(parameters=parameters), INVALID, cause)


async def test_huge_top_k_is_clipped_to_every_label(module_stub: pb_grpc.ImageClassifierServiceStub) -> None:
    response = await answered(module_stub, coffee_with(parameters=pb.Parameters(top_k=2**31 - 1)))
    labels = response.results[0].labels
    assert len(labels) == 1000
    assert labels[0].index == ESPRESSO
    assert len({label.index for label in labels}) == 1000


@pytest.mark.parametrize(
    ("value", "causes"),
    [
        pytest.param({"size": "big"}, ["preprocessor_overrides: size must be dict/int/float, got str"], id="size-str"),
        pytest.param({"do_resize": "yes"}, ["do_resize must be bool"], id="bool-as-str"),
        pytest.param(
            {"image_mean": [0.5, 0.5]}, ["image_mean must be a number or a list of 3 numbers"], id="mean-two-values"
        ),
        pytest.param({"image_std": 0}, ["image_std must not contain 0"], id="std-zero"),
        pytest.param({"resample": 99}, ["resample must be a Pillow filter code 0-5"], id="resample-99"),
        pytest.param({"evil": 1}, ["unknown key 'evil'"], id="unknown-key"),
        pytest.param(
            {"size": {"height": 100_000, "width": 100_000}},
            ["size: sides must be between 1 and 2048, got 100000"],
            id="size-100000-square",
        ),
        pytest.param({"size": {"shortest_edge": 10**12}}, ["between 1 and 2048"], id="shortest-edge-10^12"),
        pytest.param({"size": 1e308}, ["between 1 and 2048"], id="size-1e308"),
        pytest.param({"size": 2.5}, ["sides must be whole numbers"], id="size-fraction"),
    ],
)
async def test_bad_preprocessor_overrides_are_refused(
    module_stub: pb_grpc.ImageClassifierServiceStub, value: dict[str, object], causes: list[str]
) -> None:
    await refused(module_stub, coffee_with(preprocessor_overrides=overrides(value)), INVALID, *causes)


# --- request shapes and sizes --------------------------------------------------------------


async def test_request_with_5000_inputs_is_refused_over_the_per_request_maximum(
    module_stub: pb_grpc.ImageClassifierServiceStub,
) -> None:
    request = request_of(*[pb.Input(image=b"x") for _ in range(5000)])
    await refused(module_stub, request, INVALID, "request has 5000 inputs, over the limit of 64")


async def test_request_with_no_inputs_is_refused(module_stub: pb_grpc.ImageClassifierServiceStub) -> None:
    await refused(module_stub, request_of(), INVALID, "request has no inputs")


async def test_tensor_batch_over_the_per_request_maximum_is_refused(
    module_stub: pb_grpc.ImageClassifierServiceStub,
) -> None:
    # 65 samples in one tensor: each input is fine, the batch dimension takes it over 64 samples.
    item = tensor([65, *SAMPLE], dtype=pb.DATA_TYPE_FLOAT16, raw_data=np.zeros(65 * SAMPLE_VALUES, "<f2").tobytes())
    await refused(module_stub, request_of(item), INVALID, "65 samples", "over the limit of 64")


async def test_message_over_the_size_limit_is_resource_exhausted() -> None:
    async with running_server(max_message_bytes=1 << 20) as small, connect(small) as module_stub:
        request = request_of(pb.Input(image=bytes(2 << 20)))
        error = await refused(module_stub, request, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max")
        assert str(1 << 20) in (error.details() or "")


async def test_no_resize_override_on_a_fixed_size_model_is_refused(
    module_stub: pb_grpc.ImageClassifierServiceStub,
) -> None:
    # coffee.jpg is 600x400 (width x height); the graph takes 224x224. Refused before ONNX Runtime
    # sees it, so the other callers in the batch are not failed with it.
    # The overrides apply to every input: the first already has the graph's size and passes.
    request = request_of(
        pb.Input(image=coffee_224_png()),
        pb.Input(image=COFFEE),
        preprocessor_overrides=overrides({"do_resize": False}),
    )
    await refused(
        module_stub,
        request,
        INVALID,
        "inputs[1]: preprocessing made a 400x600 (height x width) image but model efficientnet-lite0 takes 224x224",
    )


async def test_no_resize_override_is_answered_for_an_image_of_the_model_size(
    module_stub: pb_grpc.ImageClassifierServiceStub,
) -> None:
    # The check is on what preprocessing makes, not on the override: an image that already has
    # the graph's size still works with do_resize off (the crop keeps 224x224).
    response = await answered(
        module_stub,
        request_of(pb.Input(image=coffee_224_png()), preprocessor_overrides=overrides({"do_resize": False})),
    )
    assert len(response.results[0].labels) == 5


def coffee_224_png() -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(COFFEE)).convert("RGB").resize((224, 224)).save(buffer, "PNG")
    return buffer.getvalue()


async def test_no_resize_override_in_a_stream_refuses_only_that_frame(
    module_stub: pb_grpc.ImageClassifierServiceStub,
) -> None:
    frames = [
        pb.ClassifyStreamRequest(inputs=[pb.Input(image=COFFEE)], request_id="good-1"),
        pb.ClassifyStreamRequest(
            inputs=[pb.Input(image=COFFEE)],
            request_id="bad",
            preprocessor_overrides=overrides({"do_resize": False}),
        ),
    ]
    responses = [r async for r in module_stub.ClassifyStream(iter(frames), timeout=60)]
    assert [r.request_id for r in responses] == ["good-1", "bad"]
    assert responses[0].results[0].labels[0].index == ESPRESSO
    assert responses[1].status.code == INVALID.value[0]
    assert "takes 224x224" in responses[1].status.message
