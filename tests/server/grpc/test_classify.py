"""Unary Classify end to end through the real server and the generated stubs: parity with the
transformers reference, every input kind, batches, parameters and preprocessor overrides."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from imgcls.server.images.preprocessing import compile_preprocessor
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from PIL import Image
from support.inputs import image_input
from support.paths import EFFICIENTNET, IMAGES
from support.servers import connect, running_server

REFERENCE: dict[str, list[dict[str, Any]]] = json.loads((IMAGES / "reference-efficientnet-lite0.json").read_text())
PREPROCESSOR_CONFIG: dict[str, Any] = json.loads((EFFICIENTNET / "preprocessor_config.json").read_text())
NUM_LABELS = 1000


# --- helpers -----------------------------------------------------------------------------


def decoded(name: str) -> Image.Image:
    """The image's pixels, decoded in full (no draft), as RGB."""
    with Image.open(IMAGES / name) as image:
        return image.convert("RGB")


def preprocessed(name: str) -> np.ndarray:
    """The model input for an image, as the server's exact (no draft) path computes it: 3x224x224 float32."""
    preprocessor = compile_preprocessor(PREPROCESSOR_CONFIG, dtype=np.dtype(np.float32), jpeg_draft=False)
    with Image.open(IMAGES / name) as image:
        return preprocessor(image)


def tensor_input(array: np.ndarray) -> pb.Input:
    dtype = pb.DATA_TYPE_FLOAT16 if array.dtype == np.float16 else pb.DATA_TYPE_FLOAT32
    return pb.Input(
        tensor=pb.Tensor(dims=list(array.shape), dtype=dtype, raw_data=array.astype(f"<{array.dtype.char}").tobytes())
    )


def raw_input(pixels: np.ndarray, pixel_format: pb.PixelFormat) -> pb.Input:
    height, width = pixels.shape[:2]
    return pb.Input(raw=pb.RawImage(width=width, height=height, format=pixel_format, data=pixels.tobytes()))


def request(*inputs: pb.Input, **fields: Any) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(inputs=list(inputs), **fields)


def pairs(result: pb.Result) -> list[tuple[str, float]]:
    return [(label.label, label.score) for label in result.labels]


def assert_same_result(got: pb.Result, want: pb.Result, atol: float = 1e-5) -> None:
    assert [label.index for label in got.labels] == [label.index for label in want.labels]
    np.testing.assert_allclose([x.score for x in got.labels], [x.score for x in want.labels], atol=atol)


async def classify(
    stub: pb_grpc.ImageClassifierServiceAsyncStub, *inputs: pb.Input, **fields: Any
) -> pb.ClassifyResponse:
    return await stub.Classify(request(*inputs, **fields))


async def all_scores(
    stub: pb_grpc.ImageClassifierServiceAsyncStub, item: pb.Input, function: pb.FunctionToApply
) -> np.ndarray:
    """Every label's score, indexed by label index."""
    response = await classify(stub, item, parameters=pb.Parameters(top_k=0, function_to_apply=function))
    scores = np.full(NUM_LABELS, np.nan)
    for label in response.results[0].labels:
        scores[label.index] = label.score
    return scores


@pytest.fixture
async def exact_stub() -> Any:
    """A server on the exact decode path (jpeg_draft off): the one that matches transformers."""
    async with running_server(jpeg_draft=False) as server, connect(server) as stub:
        yield stub


# --- parity with the transformers reference ----------------------------------------------


@pytest.mark.parametrize("name", sorted(REFERENCE))
async def test_exact_path_matches_reference_top5(
    exact_stub: pb_grpc.ImageClassifierServiceAsyncStub, name: str
) -> None:
    response = await classify(exact_stub, image_input(name))
    got = response.results[0].labels
    want = REFERENCE[name]
    assert [label.label for label in got] == [w["label"] for w in want]
    assert [label.index for label in got] == [w["index"] for w in want]
    for label, expected in zip(got, want, strict=True):
        assert label.score == pytest.approx(expected["score"], abs=0.01), label.label


@pytest.mark.parametrize("name", sorted(REFERENCE))
async def test_default_settings_close_to_reference(stub: pb_grpc.ImageClassifierServiceAsyncStub, name: str) -> None:
    # jpeg_draft (on by default) may decode large JPEGs at reduced scale: same answer, scores a little off.
    response = await classify(stub, image_input(name))
    got = {label.label: label.score for label in response.results[0].labels}
    want = REFERENCE[name]
    assert response.results[0].labels[0].label == want[0]["label"]
    for expected in want:
        if expected["label"] in got:
            assert got[expected["label"]] == pytest.approx(expected["score"], abs=0.03), expected["label"]
    # top-1 is always among the answer, so at least that one was compared
    assert want[0]["label"] in got


async def test_fp16_variant_agrees_on_top1() -> None:
    models = [{"name": "m", "source": str(EFFICIENTNET), "dtype": "fp16"}]
    async with running_server(models=models) as server, connect(server) as stub:
        response = await classify(stub, *(image_input(name) for name in sorted(REFERENCE)))
    assert response.model == "m"
    tops = [result.labels[0].label for result in response.results]
    assert tops == [REFERENCE[name][0]["label"] for name in sorted(REFERENCE)]


async def test_jpeg_draft_changes_large_jpeg_scores_only_slightly(
    stub: pb_grpc.ImageClassifierServiceAsyncStub, exact_stub: pb_grpc.ImageClassifierServiceAsyncStub
) -> None:
    # The 1920x1280 JPEG is one draft decoding shrinks (its resize target is 8x smaller): the scores
    # move (so draft decoding really is on by default), but only a little.
    drafted = (await classify(stub, image_input("coffee_1920x1280.jpg"))).results[0]
    exact = (await classify(exact_stub, image_input("coffee_1920x1280.jpg"))).results[0]
    assert drafted.labels[0].label == exact.labels[0].label == "espresso"
    assert drafted.labels[0].score != pytest.approx(exact.labels[0].score, abs=1e-4)
    assert drafted.labels[0].score == pytest.approx(exact.labels[0].score, abs=0.03)


async def test_jpeg_draft_leaves_small_jpegs_exact(
    stub: pb_grpc.ImageClassifierServiceAsyncStub, exact_stub: pb_grpc.ImageClassifierServiceAsyncStub
) -> None:
    # 640x427 is less than twice the 256-pixel resize target: no reduced decode, identical scores.
    drafted = (await classify(stub, image_input("rocket.jpg"))).results[0]
    exact = (await classify(exact_stub, image_input("rocket.jpg"))).results[0]
    assert_same_result(drafted, exact, atol=0)


# --- input kinds -------------------------------------------------------------------------


async def test_image_base64_plain_and_data_url(exact_stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    data = (IMAGES / "coffee.jpg").read_bytes()
    text = base64.b64encode(data).decode()
    response = await classify(
        exact_stub,
        pb.Input(image=data),
        pb.Input(image_base64=text),
        pb.Input(image_base64=f"data:image/jpeg;base64,{text}"),
        pb.Input(image_base64=base64.urlsafe_b64encode(data).decode().rstrip("=")),
        pb.Input(image_base64=base64.encodebytes(data).decode()),  # MIME style, wrapped lines
    )
    by_bytes = response.results[0]
    assert by_bytes.labels[0].label == "espresso"
    for result in response.results[1:]:
        assert_same_result(result, by_bytes, atol=0)


def encoded(image: Image.Image, fmt: str, **params: Any) -> pb.Input:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return pb.Input(image=out.getvalue())


async def test_every_documented_file_format(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    # The same pixels as PNG, BMP, TIFF and lossless WebP: identical to the raw pixels.
    image = decoded("coffee.jpg")
    lossless = [
        encoded(image, "PNG"),
        encoded(image, "BMP"),
        encoded(image, "TIFF", compression="tiff_lzw"),
        encoded(image, "WEBP", lossless=True),
    ]
    response = await classify(stub, raw_input(np.asarray(image), pb.PIXEL_FORMAT_RGB8), *lossless)
    by_raw = response.results[0]
    assert by_raw.labels[0].label == "espresso"
    for result in response.results[1:]:
        assert_same_result(result, by_raw, atol=0)
    # GIF is palettized (256 colours): still answered, with 5 labels.
    gif = await classify(stub, encoded(image, "GIF"))
    assert len(gif.results[0].labels) == 5


async def test_animated_gif_uses_the_first_frame(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    first, second = decoded("coffee.jpg").resize((300, 200)), decoded("rocket.jpg").resize((300, 200))
    animated = io.BytesIO()
    first.save(animated, "GIF", save_all=True, append_images=[second])
    response = await classify(stub, pb.Input(image=animated.getvalue()), encoded(first, "GIF"))
    by_animation, by_first_frame = response.results
    assert_same_result(by_animation, by_first_frame, atol=0)


async def test_raw_rgb8_of_decoded_jpeg_equals_the_encoded_image(
    exact_stub: pb_grpc.ImageClassifierServiceAsyncStub,
) -> None:
    pixels = np.asarray(decoded("coffee.jpg"))
    response = await classify(exact_stub, raw_input(pixels, pb.PIXEL_FORMAT_RGB8), image_input("coffee.jpg"))
    raw, encoded = response.results
    assert raw.labels[0].label == "espresso"
    # Same pixels, same preprocessing: the same scores.
    assert_same_result(raw, encoded)


async def test_raw_bgr8_and_rgba8_equal_rgb8(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    rgb = np.asarray(decoded("cat.jpg"))
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)
    response = await classify(
        stub,
        raw_input(rgb, pb.PIXEL_FORMAT_RGB8),
        raw_input(bgr, pb.PIXEL_FORMAT_BGR8),
        raw_input(rgba, pb.PIXEL_FORMAT_RGBA8),
    )
    by_rgb, by_bgr, by_rgba = response.results
    assert by_rgb.labels[0].label == REFERENCE["cat.jpg"][0]["label"]
    assert_same_result(by_bgr, by_rgb, atol=0)
    assert_same_result(by_rgba, by_rgb, atol=0)


async def test_raw_bgr8_is_not_read_as_rgb(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    # The same bytes labelled RGB8 and BGR8 must differ: the server really swaps the channels.
    rgb = np.asarray(decoded("coffee.jpg"))
    response = await classify(stub, raw_input(rgb, pb.PIXEL_FORMAT_RGB8), raw_input(rgb, pb.PIXEL_FORMAT_BGR8))
    as_rgb, as_bgr = response.results
    assert as_rgb.labels[0].score != pytest.approx(as_bgr.labels[0].score, abs=1e-4)


async def test_raw_gray8_equals_a_grayscale_png(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    gray = decoded("coffee.jpg").convert("L")
    png = io.BytesIO()
    gray.save(png, "PNG")
    response = await classify(stub, raw_input(np.asarray(gray), pb.PIXEL_FORMAT_GRAY8), pb.Input(image=png.getvalue()))
    by_raw, by_png = response.results
    assert len(by_raw.labels) == 5
    assert_same_result(by_raw, by_png, atol=0)


async def test_tensor_float32_raw_data_equals_image(exact_stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    response = await classify(exact_stub, tensor_input(preprocessed("coffee.jpg")), image_input("coffee.jpg"))
    by_tensor, by_image = response.results
    assert by_tensor.labels[0].label == "espresso"
    assert_same_result(by_tensor, by_image)


async def test_tensor_float16_close_to_image(exact_stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    half = preprocessed("coffee.jpg").astype(np.float16)
    response = await classify(exact_stub, tensor_input(half), image_input("coffee.jpg"))
    by_tensor, by_image = response.results
    assert by_tensor.labels[0].label == by_image.labels[0].label == "espresso"
    # float16 rounding of the inputs moves the scores a little, not more.
    assert by_tensor.labels[0].score == pytest.approx(by_image.labels[0].score, abs=0.01)


async def test_tensor_float_data_from_hand_written_json(exact_stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    array = preprocessed("coffee.jpg")
    # JSON as a caller without protobuf tooling writes it: enum names, camelCase, plain numbers.
    text = json.dumps(
        {
            "requestId": "json",
            "inputs": [
                {"tensor": {"dims": [3, 224, 224], "dtype": "DATA_TYPE_FLOAT32", "floatData": array.ravel().tolist()}}
            ],
        }
    )
    message = json_format.Parse(text, pb.ClassifyRequest())
    assert not message.inputs[0].tensor.raw_data
    response = await exact_stub.Classify(message)
    by_image = (await classify(exact_stub, image_input("coffee.jpg"))).results[0]
    assert response.request_id == "json"
    assert_same_result(response.results[0], by_image)


async def test_tensor_with_batch_dimension_yields_one_result_per_row(
    exact_stub: pb_grpc.ImageClassifierServiceAsyncStub,
) -> None:
    names = ["coffee.jpg", "cat.jpg", "rocket.jpg"]
    batch = np.stack([preprocessed(name) for name in names])
    assert batch.shape == (3, 3, 224, 224)
    response = await classify(exact_stub, tensor_input(batch))
    assert [r.labels[0].label for r in response.results] == [REFERENCE[n][0]["label"] for n in names]
    by_images = await classify(exact_stub, *(image_input(n) for n in names))
    for by_tensor, by_image in zip(response.results, by_images.results, strict=True):
        assert_same_result(by_tensor, by_image)


async def test_tensor_without_batch_dimension_yields_one_result(
    exact_stub: pb_grpc.ImageClassifierServiceAsyncStub,
) -> None:
    single = preprocessed("cat.jpg")
    assert single.ndim == 3
    response = await classify(exact_stub, tensor_input(single))
    assert len(response.results) == 1
    assert response.results[0].labels[0].label == REFERENCE["cat.jpg"][0]["label"]


async def test_mixed_inputs_with_a_tensor_batch_keep_input_order(
    exact_stub: pb_grpc.ImageClassifierServiceAsyncStub,
) -> None:
    # A tensor with batch 2 between two images: its two results sit between theirs.
    batch = np.stack([preprocessed("cat.jpg"), preprocessed("rocket.jpg")])
    response = await classify(exact_stub, image_input("coffee.jpg"), tensor_input(batch), image_input("camera.png"))
    tops = [r.labels[0].label for r in response.results]
    assert tops == ["espresso", REFERENCE["cat.jpg"][0]["label"], REFERENCE["rocket.jpg"][0]["label"], "tripod"]


# --- batches, request fields and parameters ----------------------------------------------


async def test_batch_answers_in_input_order(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    names = ["rocket.jpg", "coffee.jpg", "camera.png", "cat.jpg", "astronaut.jpg", "coffee.jpg"]
    response = await classify(stub, *(image_input(n) for n in names))
    assert [r.labels[0].label for r in response.results] == [REFERENCE[n][0]["label"] for n in names]
    singles = [(await classify(stub, image_input(n))).results[0] for n in names]
    for batched, single in zip(response.results, singles, strict=True):
        assert_same_result(batched, single)


async def test_request_id_is_echoed_and_model_named(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    response = await classify(stub, image_input("cat.jpg"), request_id="req-42/ünïcode")
    assert response.request_id == "req-42/ünïcode"
    assert response.model == "efficientnet-lite0"
    unnamed = await classify(stub, image_input("cat.jpg"))
    assert unnamed.request_id == ""


async def test_empty_model_is_the_default_model() -> None:
    models = [
        {"name": "first", "source": str(EFFICIENTNET)},
        {"name": "second", "source": str(EFFICIENTNET), "dtype": "fp16"},
    ]
    async with running_server(models=models, default_model="second") as server, connect(server) as stub:
        by_default = await classify(stub, image_input("coffee.jpg"))
        by_name = await classify(stub, image_input("coffee.jpg"), model="first")
    assert by_default.model == "second"
    assert by_name.model == "first"
    assert by_default.results[0].labels[0].label == by_name.results[0].labels[0].label == "espresso"


@pytest.mark.parametrize(("top_k", "expected"), [(None, 5), (1, 1), (3, 3), (0, NUM_LABELS), (5000, NUM_LABELS)])
async def test_top_k(stub: pb_grpc.ImageClassifierServiceAsyncStub, top_k: int | None, expected: int) -> None:
    parameters = pb.Parameters() if top_k is None else pb.Parameters(top_k=top_k)
    response = await classify(stub, image_input("coffee.jpg"), parameters=parameters)
    labels = response.results[0].labels
    assert len(labels) == expected
    assert labels[0].label == "espresso"
    scores = [label.score for label in labels]
    assert scores == sorted(scores, reverse=True)
    assert len({label.index for label in labels}) == expected


async def test_threshold_drops_labels_below_it(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    everything = await classify(stub, image_input("coffee.jpg"), parameters=pb.Parameters(top_k=0))
    kept = await classify(stub, image_input("coffee.jpg"), parameters=pb.Parameters(top_k=0, threshold=0.01))
    expected = [(x.label, x.score) for x in everything.results[0].labels if x.score >= 0.01]
    assert pairs(kept.results[0]) == expected
    assert 1 < len(expected) < 5  # espresso and cup: the threshold really cut something
    nothing = await classify(stub, image_input("coffee.jpg"), parameters=pb.Parameters(threshold=1.0))
    assert list(nothing.results[0].labels) == []


async def test_threshold_applies_after_top_k(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    response = await classify(stub, image_input("cat.jpg"), parameters=pb.Parameters(top_k=2, threshold=0.001))
    assert [x.label for x in response.results[0].labels] == ["Egyptian cat", "tiger cat"]


async def test_function_to_apply_default_is_softmax(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    # The model is single-label with 1000 labels: its default is softmax, a distribution over the labels.
    item = image_input("coffee.jpg")
    default = await all_scores(stub, item, pb.FUNCTION_TO_APPLY_UNSPECIFIED)
    softmax = await all_scores(stub, item, pb.FUNCTION_TO_APPLY_SOFTMAX)
    assert not np.isnan(softmax).any()
    np.testing.assert_allclose(default, softmax, atol=0)
    assert softmax.sum() == pytest.approx(1.0, abs=1e-3)


async def test_function_to_apply_none_returns_logits(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    item = image_input("coffee.jpg")
    softmax = await all_scores(stub, item, pb.FUNCTION_TO_APPLY_SOFTMAX)
    logits = await all_scores(stub, item, pb.FUNCTION_TO_APPLY_NONE)
    returned = ~np.isnan(logits)
    assert returned.sum() >= 5
    # Logits are not probabilities ...
    assert np.nanmax(logits) > 1.0
    # ... and softmax of them is the softmax answer: log(p_i) - logit_i is the same for every label.
    offsets = np.log(softmax[returned]) - logits[returned]
    assert np.ptp(offsets) < 1e-3
    assert int(np.nanargmax(logits)) == int(np.argmax(softmax))


async def test_function_to_apply_none_with_top_k_0_returns_every_logit(
    stub: pb_grpc.ImageClassifierServiceAsyncStub,
) -> None:
    # An unset threshold filters nothing: negative logits are answered too.
    item = image_input("coffee.jpg")
    logits = await all_scores(stub, item, pb.FUNCTION_TO_APPLY_NONE)
    softmax = await all_scores(stub, item, pb.FUNCTION_TO_APPLY_SOFTMAX)
    assert not np.isnan(logits).any()
    assert logits.min() < 0.0
    exp = np.exp(logits - logits.max())
    np.testing.assert_allclose(exp / exp.sum(), softmax, atol=1e-6)


async def test_function_to_apply_sigmoid(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    item = image_input("coffee.jpg")
    softmax = await all_scores(stub, item, pb.FUNCTION_TO_APPLY_SOFTMAX)
    sigmoid = await all_scores(stub, item, pb.FUNCTION_TO_APPLY_SIGMOID)
    logits = await all_scores(stub, item, pb.FUNCTION_TO_APPLY_NONE)
    assert not np.isnan(sigmoid).any()
    assert ((sigmoid > 0) & (sigmoid < 1)).all()
    # Independent per label: not a distribution, and not the softmax answer.
    assert sigmoid.sum() > 2.0
    assert not np.allclose(sigmoid, softmax, atol=1e-3)
    returned = ~np.isnan(logits)
    np.testing.assert_allclose(sigmoid[returned], 1 / (1 + np.exp(-logits[returned])), atol=1e-5)
    assert int(np.argmax(sigmoid)) == int(np.argmax(softmax))


# --- preprocessor overrides ------------------------------------------------------------


async def test_override_changes_scores_slightly(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    overrides: dict[str, Any] = {"size": {"shortest_edge": 224}, "crop_pct": 1.0}
    plain = await classify(stub, image_input("coffee.jpg"))
    overridden = pb.ClassifyRequest(inputs=[image_input("coffee.jpg")])
    overridden.preprocessor_overrides.update(overrides)
    response = await stub.Classify(overridden)
    before, after = plain.results[0].labels[0], response.results[0].labels[0]
    assert after.label == before.label == "espresso"
    assert after.score != pytest.approx(before.score, abs=1e-5)
    assert after.score == pytest.approx(before.score, abs=0.1)


async def test_override_equals_locally_compiled_preprocessing(
    exact_stub: pb_grpc.ImageClassifierServiceAsyncStub,
) -> None:
    # The override really is merged over the model's config: the server's answer equals a tensor
    # preprocessed locally with the same merged config.
    overrides: dict[str, Any] = {"size": {"shortest_edge": 224}, "crop_pct": 1.0, "resample": 3}
    preprocessor = compile_preprocessor(
        {**PREPROCESSOR_CONFIG, **overrides}, dtype=np.dtype(np.float32), jpeg_draft=False
    )
    with Image.open(IMAGES / "rocket.jpg") as image:
        array = preprocessor(image)
    message = pb.ClassifyRequest(inputs=[image_input("rocket.jpg")])
    message.preprocessor_overrides.update(overrides)
    by_image = (await exact_stub.Classify(message)).results[0]
    by_tensor = (await classify(exact_stub, tensor_input(array))).results[0]
    assert_same_result(by_image, by_tensor)


def overridden(overrides: dict[str, Any]) -> pb.ClassifyRequest:
    message = pb.ClassifyRequest(inputs=[image_input("coffee.jpg")])
    message.preprocessor_overrides.update(overrides)
    return message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # 112/0.5 = 224 shortest edge, then a 112x112 crop: a shape the 224x224 model cannot take.
        ({"crop_pct": 0.5, "size": {"shortest_edge": 112}}, "preprocessing would produce 112x112 images"),
        # ConvNext resizes by the shortest edge: from 384 on it warps to a square, and it takes no height/width.
        ({"size": {"shortest_edge": 400}}, "preprocessing would produce 400x400 images"),
        ({"size": {"height": 300, "width": 300}}, "ConvNextImageProcessor: size must be {shortest_edge}"),
        ({"rescale_offset": True}, "ConvNextImageProcessor does not read 'rescale_offset'"),
        ({"bogus_key": 1}, "unknown key 'bogus_key'"),
        ({"do_resize": "yes"}, "do_resize must be bool, got str"),
        ({"size": "big"}, "size must be"),
        ({"image_mean": [0.5, 0.5]}, "image_mean must be a number or a list of 3 numbers"),
        ({"image_std": [0, 1, 1]}, "image_std must not contain 0"),
        ({"crop_pct": 1.5}, "crop_pct must be in (0, 1]"),
        ({"resample": 7}, "resample must be a Pillow filter code 0-5"),
        ({"size": {"height": 4096, "width": 4096}}, "between 1 and 2048"),
        ({"size": {"shortest_edge": 3000}}, "between 1 and 2048"),
    ],
)
async def test_bad_overrides_are_invalid_argument(
    stub: pb_grpc.ImageClassifierServiceAsyncStub, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Classify(overridden(overrides))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")


async def test_bad_override_does_not_poison_the_next_request(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Classify(overridden({"crop_pct": 0.5, "size": {"shortest_edge": 112}}))
    response = await classify(stub, image_input("coffee.jpg"))
    assert response.results[0].labels[0].label == "espresso"


def test_reference_covers_every_shared_image() -> None:
    # Parity above is parametrized from the reference file: make sure it names every image.
    images = {p.name for p in Path(IMAGES).iterdir() if p.suffix in (".jpg", ".png")}
    assert images == set(REFERENCE)
    assert all(len(v) == 5 for v in REFERENCE.values())
