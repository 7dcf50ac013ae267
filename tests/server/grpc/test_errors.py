"""Every way a Classify request can be wrong is answered with the right status code and a message that
says what is wrong (and which input); bad requests never disturb good ones."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import zlib
from typing import Any

import grpc
import numpy as np
import pytest
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from PIL import Image
from support.paths import IMAGES
from support.servers import connect, running_server

TENSOR_VALUES = 3 * 224 * 224


def good() -> pb.Input:
    return pb.Input(image=(IMAGES / "coffee.jpg").read_bytes())


def tensor(dims: list[int], **fields: Any) -> pb.Input:
    return pb.Input(tensor=pb.Tensor(dims=dims, **fields))


def zeros_f32(count: int) -> bytes:
    return np.zeros(count, np.float32).tobytes()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny valid PNG whose IHDR claims width x height (with a correct CRC, so decoders trust it)."""
    out = io.BytesIO()
    Image.new("RGB", (1, 1)).save(out, "PNG")
    data = bytearray(out.getvalue())
    # signature (8) | length (4) | b"IHDR" (4) | width (4) | height (4) | depth, colour, ... (5) | CRC (4)
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def truncated_jpeg() -> bytes:
    data = (IMAGES / "coffee.jpg").read_bytes()
    return data[: len(data) // 2]


# (inputs[1] is the bad one, inputs[0] is good), expected message fragments.
BAD_INPUTS: dict[str, tuple[pb.Input, list[str]]] = {
    "empty image": (pb.Input(image=b""), ["empty image"]),
    "random bytes": (
        pb.Input(image=np.random.default_rng(0).bytes(4096)),
        ["not a decodable image"],
    ),
    "truncated jpeg": (pb.Input(image=truncated_jpeg()), ["truncated or corrupt"]),
    "bad base64": (pb.Input(image_base64="this is *not* base64!"), ["not valid base64"]),
    "base64 of garbage": (
        pb.Input(image_base64=base64.b64encode(b"hello world").decode()),
        ["not a decodable image"],
    ),
    "data url without base64": (
        pb.Input(image_base64="data:image/png,%89PNG"),
        ["data: URL must be base64-encoded"],
    ),
    "raw wrong length": (
        pb.Input(raw=pb.RawImage(width=4, height=4, format=pb.PIXEL_FORMAT_RGB8, data=bytes(47))),
        ["raw: data has 47 bytes", "needs 48"],
    ),
    "raw zero width": (
        pb.Input(raw=pb.RawImage(width=0, height=4, format=pb.PIXEL_FORMAT_RGB8, data=b"")),
        ["width and height must be positive", "0x4"],
    ),
    "raw unknown format": (
        pb.Input(raw=pb.RawImage(width=1, height=1, format=99, data=bytes(3))),  # type: ignore[arg-type]
        ["raw.format 99 is not a known PixelFormat"],
    ),
    "raw unspecified format": (
        pb.Input(raw=pb.RawImage(width=1, height=1, data=bytes(3))),
        ["raw.format 0 is not a known PixelFormat"],
    ),
    "tensor wrong byte length": (
        tensor([3, 224, 224], dtype=pb.DATA_TYPE_FLOAT32, raw_data=zeros_f32(TENSOR_VALUES - 1)),
        [f"raw_data has {(TENSOR_VALUES - 1) * 4} bytes", f"need {TENSOR_VALUES * 4}"],
    ),
    "tensor float_data wrong count": (
        tensor([3, 224, 224], dtype=pb.DATA_TYPE_FLOAT32, float_data=[0.0] * 10),
        ["float_data has 10 values", f"need {TENSOR_VALUES}"],
    ),
    "tensor 4 channels": (
        tensor([1, 4, 224, 224], dtype=pb.DATA_TYPE_FLOAT32, raw_data=zeros_f32(4 * 224 * 224)),
        ["dims [1, 4, 224, 224] do not match the model input 3x224x224"],
    ),
    "tensor wrong rank": (
        tensor([224, 224], dtype=pb.DATA_TYPE_FLOAT32, raw_data=zeros_f32(224 * 224)),
        ["dims [224, 224] have rank 2"],
    ),
    "tensor negative dim": (
        tensor([-1, 3, 224, 224], dtype=pb.DATA_TYPE_FLOAT32, raw_data=zeros_f32(TENSOR_VALUES)),
        ["dims must be positive", "[-1, 3, 224, 224]"],
    ),
    "tensor zero dim": (
        tensor([0, 3, 224, 224], dtype=pb.DATA_TYPE_FLOAT32),
        ["dims must be positive"],
    ),
    "tensor raw_data and float_data": (
        tensor(
            [3, 224, 224],
            dtype=pb.DATA_TYPE_FLOAT32,
            raw_data=zeros_f32(TENSOR_VALUES),
            float_data=[0.0] * TENSOR_VALUES,
        ),
        ["set raw_data or float_data, not both"],
    ),
    "tensor unknown dtype": (
        tensor([3, 224, 224], dtype=99, raw_data=zeros_f32(TENSOR_VALUES)),  # type: ignore[arg-type]
        ["tensor.dtype 99 is not DATA_TYPE_FLOAT32 or DATA_TYPE_FLOAT16"],
    ),
    "tensor unspecified dtype": (
        tensor([3, 224, 224], raw_data=zeros_f32(TENSOR_VALUES)),
        ["tensor.dtype 0 is not"],
    ),
    "no input kind": (pb.Input(), ["set one of image, image_base64, raw or tensor"]),
    "decompression bomb": (
        pb.Input(image=bomb_png()),
        ["100000x100000", "over the limit of 40000000"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
async def test_bad_input_names_its_index(stub: pb_grpc.ImageClassifierServiceAsyncStub, case: str) -> None:
    bad, fragments = BAD_INPUTS[case]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Classify(pb.ClassifyRequest(inputs=[good(), bad]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert details.startswith("inputs[1]: "), details
    for fragment in fragments:
        assert fragment in details, details


def test_bomb_png_header_really_claims_the_size() -> None:
    # The bomb test relies on a header Pillow believes; check that, and that the CRC was fixed up.
    with Image.open(io.BytesIO(bomb_png())) as image:
        assert image.size == (100_000, 100_000)


async def test_errors_never_echo_large_inputs(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    # A long garbage base64 string must not come back in the message.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Classify(pb.ClassifyRequest(inputs=[pb.Input(image_base64="*" * 100_000)]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not valid base64" in (info.value.details() or "")
    assert len(info.value.details() or "") < 1000


async def test_bad_input_at_index_0(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Classify(pb.ClassifyRequest(inputs=[pb.Input(image=b"nope"), good()]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith("inputs[0]: not a decodable image")


async def test_no_inputs(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Classify(pb.ClassifyRequest())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request has no inputs" in (info.value.details() or "")


@pytest.mark.parametrize(
    ("parameters", "fragment"),
    [
        (pb.Parameters(top_k=-1), "parameters.top_k must be >= 0, got -1"),
        (pb.Parameters(threshold=1.5), "parameters.threshold must be between 0 and 1, got 1.5"),
        (pb.Parameters(threshold=-0.1), "parameters.threshold must be between 0 and 1"),
        (pb.Parameters(threshold=float("nan")), "parameters.threshold must be between 0 and 1, got nan"),
        (pb.Parameters(threshold=float("inf")), "parameters.threshold must be between 0 and 1"),
        (
            pb.Parameters(function_to_apply=99),  # type: ignore[arg-type]
            "parameters.function_to_apply 99 is not a known FunctionToApply",
        ),
    ],
    ids=["top_k<0", "threshold>1", "threshold<0", "threshold nan", "threshold inf", "function 99"],
)
async def test_bad_parameters(
    stub: pb_grpc.ImageClassifierServiceAsyncStub, parameters: pb.Parameters, fragment: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Classify(pb.ClassifyRequest(inputs=[good()], parameters=parameters))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (info.value.details() or "")


async def test_unknown_model_is_not_found_and_lists_served_models(
    stub: pb_grpc.ImageClassifierServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Classify(pb.ClassifyRequest(model="no-such-model", inputs=[good()]))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    details = info.value.details() or ""
    assert "'no-such-model' is not served" in details
    assert "served models: efficientnet-lite0" in details


async def test_too_many_inputs() -> None:
    async with running_server(max_inputs_per_request=2) as server, connect(server) as stub:
        ok = await stub.Classify(pb.ClassifyRequest(inputs=[good(), good()]))
        assert len(ok.results) == 2
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Classify(pb.ClassifyRequest(inputs=[good(), good(), good()]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request has 3 inputs, over the limit of 2" in (info.value.details() or "")


async def test_tensor_batch_rows_count_against_the_input_limit() -> None:
    # One input, but a tensor batch of 3 rows: 3 samples, over a limit of 2.
    rows = tensor([3, 3, 224, 224], dtype=pb.DATA_TYPE_FLOAT32, raw_data=zeros_f32(3 * TENSOR_VALUES))
    async with running_server(max_inputs_per_request=2) as server, connect(server) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Classify(pb.ClassifyRequest(inputs=[rows]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request has 3 samples" in (info.value.details() or "")
    assert "over the limit of 2" in (info.value.details() or "")


async def test_image_over_max_image_pixels() -> None:
    # coffee.jpg is 600x400 = 240000 pixels.
    async with running_server(max_image_pixels=100_000) as server, connect(server) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Classify(pb.ClassifyRequest(inputs=[good()]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[0]: image is 600x400 = 240000 pixels, over the limit of 100000" in (info.value.details() or "")


async def test_raw_image_over_max_image_pixels() -> None:
    raw = pb.RawImage(width=400, height=300, format=pb.PIXEL_FORMAT_GRAY8, data=bytes(400 * 300))
    async with running_server(max_image_pixels=100_000) as server, connect(server) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Classify(pb.ClassifyRequest(inputs=[pb.Input(raw=raw)]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[0]: raw: 400x300 = 120000 pixels, over the limit of 100000" in (info.value.details() or "")


async def test_message_over_max_message_bytes_is_refused_by_grpc() -> None:
    async with running_server(max_message_bytes=4096) as server, connect(server) as stub:
        tiny = io.BytesIO()
        Image.new("RGB", (8, 8), "red").save(tiny, "PNG")
        small = await stub.Classify(pb.ClassifyRequest(inputs=[pb.Input(image=tiny.getvalue())]))
        assert len(small.results) == 1  # a message under the limit is fine ...
        with pytest.raises(grpc.aio.AioRpcError) as info:  # ... coffee.jpg (80 kB) is not
            await stub.Classify(pb.ClassifyRequest(inputs=[good()]))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (info.value.details() or "")


async def test_bad_requests_do_not_disturb_concurrent_good_ones(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    bad_requests = [pb.ClassifyRequest(inputs=[good(), bad]) for bad, _ in BAD_INPUTS.values()]
    bad_requests += [
        pb.ClassifyRequest(),
        pb.ClassifyRequest(model="nope", inputs=[good()]),
        pb.ClassifyRequest(inputs=[good()], parameters=pb.Parameters(top_k=-1)),
    ]
    good_requests = [pb.ClassifyRequest(inputs=[good()], request_id=f"good-{i}") for i in range(len(bad_requests))]
    # Interleave them so bad and good requests are in flight together.
    mixed = [r for pair in zip(bad_requests, good_requests, strict=True) for r in pair]
    outcomes = await asyncio.gather(*(stub.Classify(r) for r in mixed), return_exceptions=True)
    for message, outcome in zip(mixed, outcomes, strict=True):
        if message.request_id.startswith("good-"):
            assert isinstance(outcome, pb.ClassifyResponse), outcome
            assert outcome.request_id == message.request_id
            assert outcome.results[0].labels[0].label == "espresso"
        else:
            assert isinstance(outcome, grpc.aio.AioRpcError), outcome
            assert outcome.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    # And the server is still healthy afterwards.
    after = await stub.Classify(pb.ClassifyRequest(inputs=[good()]))
    assert after.results[0].labels[0].label == "espresso"


async def test_a_bug_is_internal_with_the_type_only_for_unary_calls_and_stream_frames(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def bug(*_: Any, **__: Any) -> Any:
        raise RuntimeError("secret detail of a bug")

    image = pb.Input(image=(IMAGES / "cat.jpg").read_bytes())
    async with running_server() as server, connect(server) as stub:
        monkeypatch.setattr(server.engine.get(""), "classify", bug)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Classify(pb.ClassifyRequest(inputs=[image]))

        async def frames() -> Any:
            yield pb.ClassifyStreamRequest(inputs=[image], request_id="0")

        answers = [a async for a in stub.ClassifyStream(frames())]
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error: RuntimeError"
    assert answers[0].status.code == grpc.StatusCode.INTERNAL.value[0]
    assert answers[0].status.message == "internal error: RuntimeError"


async def test_overrides_over_their_size_limit_are_refused_before_conversion(
    stub: pb_grpc.ImageClassifierServiceAsyncStub,
) -> None:
    """A Struct of a million values took seconds of the event loop to convert; its size is checked first (one
    of a million is refused before the parse, for its fields)."""
    request = pb.ClassifyRequest(inputs=[good()])
    request.preprocessor_overrides.update({"crop_pct": 1.0})
    # 10k values: under the fields a message may have (wire_cost), over the 16 KiB a Struct may be.
    request.preprocessor_overrides.get_or_create_list("image_mean").extend([0.5] * 10_000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Classify(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "over the limit of 16384; an image processor has a few settings" in (info.value.details() or "")
    assert loop.time() - started < 5  # converted, it took ~10 s here


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"image_mean": [[0.5] * 100] * 3}, "preprocessor_overrides holds more than 256 values"),
        ({"image_std": [1e-320, 1.0, 1.0]}, "make pixel values that are not finite"),
        ({"rescale_factor": 1e308}, "make pixel values that are not finite"),
    ],
    ids=["values", "tiny std", "huge rescale"],
)
async def test_overrides_no_image_processor_takes_are_invalid(
    stub: pb_grpc.ImageClassifierServiceAsyncStub, overrides: dict[str, Any], fragment: str
) -> None:
    request = pb.ClassifyRequest(inputs=[good()])
    request.preprocessor_overrides.update(overrides)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Classify(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (info.value.details() or "")


async def test_millions_of_empty_inputs_are_refused_before_any_is_converted(
    stub: pb_grpc.ImageClassifierServiceAsyncStub,
) -> None:
    """2 bytes each on the wire: a 2 MB message of them took seconds of the event loop to convert, and its
    parse alone 50x its size. Past 65536 fields it is refused before the parse (wire_cost); under that,
    before any input is converted."""
    loop = asyncio.get_running_loop()
    for count, details in [
        (1_000_000, "request message has more than 65536 fields; no /imgcls.v1.ImageClassifierService/Classify"),
        (60_000, "request has 60000 inputs, over the limit of 64"),
    ]:
        request = pb.ClassifyRequest()
        request.inputs.extend([pb.Input()] * count)
        started = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Classify(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith(details)
        assert loop.time() - started < 5


async def test_a_tensor_of_more_dims_than_any_model_takes_is_refused_before_they_are_read(
    stub: pb_grpc.ImageClassifierServiceAsyncStub,
) -> None:
    """Counted before they become Python ints: 60M packed dims (60 MB) took 2 GB that way."""
    request = pb.ClassifyRequest(inputs=[tensor([1] * 20_000, dtype=pb.DATA_TYPE_FLOAT32)])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Classify(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "inputs[0]: tensor: 20000 dims, over the limit of 16"
