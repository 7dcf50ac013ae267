"""imgcls.v1 converters without a server: protobuf <-> engine types, statuses inside messages."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format
from imgcls.server.domain.errors import ErrorKind, InvalidInputError, OverloadedError
from imgcls.server.domain.graph import RuntimeDescription
from imgcls.server.domain.types import (
    Base64Image,
    EncodedImage,
    FunctionToApply,
    LabelScore,
    PixelFormat,
    RawImage,
    TensorDType,
    TensorInput,
)
from imgcls.server.engine.description import BatchingDescription, ModelDescription, ModelStats
from imgcls.server.engine.streams import FrameResult
from imgcls.server.v1 import converters
from imgcls.v1 import classifier_pb2 as pb


def test_every_input_kind_converts_to_its_engine_type() -> None:
    message = pb.ClassifyRequest(
        model="m",
        request_id="r",
        inputs=[
            pb.Input(image=b"\xff\xd8"),
            pb.Input(image_base64="aGk="),
            pb.Input(raw=pb.RawImage(width=2, height=1, format=pb.PIXEL_FORMAT_BGR8, data=b"\0" * 6)),
            pb.Input(tensor=pb.Tensor(dims=[1, 3], dtype=pb.DATA_TYPE_FLOAT16, float_data=[1, 2, 3])),
        ],
        parameters=pb.Parameters(top_k=2, threshold=0.5, function_to_apply=pb.FUNCTION_TO_APPLY_SIGMOID),
    )
    message.preprocessor_overrides.update({"crop_pct": 1.0})
    request = converters.request_from_pb(message)
    assert request.inputs == (
        EncodedImage(b"\xff\xd8"),
        Base64Image("aGk="),
        RawImage(2, 1, PixelFormat.BGR8, b"\0" * 6),
        TensorInput((1, 3), TensorDType.FLOAT16, b"", [1.0, 2.0, 3.0]),
    )
    assert (request.options.top_k, request.options.threshold) == (2, 0.5)
    assert request.options.function_to_apply is FunctionToApply.SIGMOID
    assert request.preprocessor_overrides == {"crop_pct": 1.0}
    assert (request.model, request.request_id) == ("m", "r")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (pb.Input(), "inputs[0]: set one of image, image_base64, raw or tensor"),
        (pb.Input(raw=pb.RawImage(format=99)), "inputs[0]: raw.format 99 is not a known PixelFormat"),
        (pb.Input(tensor=pb.Tensor(dtype=7)), "inputs[0]: tensor.dtype 7 is not DATA_TYPE_FLOAT32"),
    ],
)
def test_bad_inputs_are_invalid_and_named(item: pb.Input, message: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        converters.request_from_pb(pb.ClassifyRequest(inputs=[item]))
    assert caught.value.message.startswith(message)


def test_a_bad_stream_frame_carries_its_error_and_keeps_its_valid_settings() -> None:
    frame = converters.frame_from_pb(
        pb.ClassifyStreamRequest(inputs=[pb.Input()], request_id="f", parameters=pb.Parameters(top_k=1))
    )
    assert frame.error is not None and frame.error.kind is ErrorKind.INVALID_INPUT
    assert frame.options is not None and frame.options.top_k == 1
    assert frame.inputs == () and frame.request_id == "f"


def test_frame_results_carry_the_status_of_their_error_kind() -> None:
    ok = converters.frame_result_to_pb(FrameResult("a", "m", rankings=[[LabelScore("x", 0.9, 3)]]))
    assert ok.status.code == 0 and ok.results[0].labels[0].index == 3
    busy = converters.frame_result_to_pb(FrameResult("b", "m", error=OverloadedError("queue full")))
    assert busy.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert busy.status.message == "queue full"


def test_every_error_kind_has_one_code() -> None:
    assert set(converters.RPC_CODE_OF_KIND) == set(ErrorKind)


def test_model_info_maps_the_description_field_by_field() -> None:
    described = ModelDescription(
        name="m",
        source="owner/repo",
        variant="q8",
        input_name="pixel_values",
        input_shape=(None, 3, 224, 224),
        input_dtype="float16",
        layout="NCHW",
        output_name="logits",
        labels=("a", "b"),
        preprocessing={"image_processor_type": "ViTImageProcessor", "size": {"height": 224, "width": 224}},
        default_function=FunctionToApply.SIGMOID,
        batching=BatchingDescription(max_batch_size=4, max_queue_delay_us=0, queue_limit=256, instances=2),
        runtime=RuntimeDescription(),
        ready=True,
        load_seconds=0.1,
    )
    stats = ModelStats(requests=3, failed_requests=1, inputs=5, batches=2, batch_size_counts={2: 1, 3: 1})
    info = converters.model_info_to_pb(described, stats, is_default=True)
    assert (info.name, info.source, info.variant, info.input_name) == ("m", "owner/repo", "q8", "pixel_values")
    assert list(info.input_shape) == [-1, 3, 224, 224] and info.input_dtype == pb.DATA_TYPE_FLOAT16
    assert (info.num_labels, list(info.labels), info.input_layout) == (2, ["a", "b"], "NCHW")
    assert info.default_function_to_apply == pb.FUNCTION_TO_APPLY_SIGMOID
    assert (info.is_default, info.ready, info.max_batch_size) == (True, True, 4)
    assert (info.stats.requests, info.stats.failed_requests, info.stats.inputs, info.stats.batches) == (3, 1, 5, 2)
    assert dict(info.stats.batch_size_counts) == {2: 1, 3: 1}
    assert json_format.MessageToDict(info.preprocessing) == {
        "image_processor_type": "ViTImageProcessor",
        "size": {"height": 224, "width": 224},
    }


def test_more_inputs_than_the_bound_are_refused_before_conversion() -> None:
    request = pb.ClassifyRequest(inputs=[pb.Input(image=b"x")] * 5)
    with pytest.raises(InvalidInputError, match="request has 5 inputs, over the limit of 4"):
        converters.request_from_pb(request, max_inputs=4)
    assert len(converters.request_from_pb(request, max_inputs=5).inputs) == 5
    frame = converters.frame_from_pb(pb.ClassifyStreamRequest(inputs=[pb.Input()] * 5, request_id="f"), max_inputs=4)
    assert frame.error is not None and frame.error.message == "request has 5 inputs, over the limit of 4"
    assert frame.inputs == () and frame.request_id == "f"
