"""The v2 core over a real engine, without a transport: views, inference, output selection, errors, config, stats.

The engine serves the shared EfficientNet-Lite0 twice, fp32 as "lite" and fp16 as "half", on the exact
decode path (jpeg_draft off), so the v2 answers can be compared with the engine's own for the same input.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from imgcls.server.domain.errors import ConfigError, ErrorKind, InvalidInputError, ModelNotFoundError
from imgcls.server.domain.types import (
    ClassifyOptions,
    ClassifyRequest,
    EncodedImage,
    TensorDType,
    TensorInput,
)
from imgcls.server.engine.engine import Engine
from imgcls.server.engine.observation import RequestRecord
from imgcls.server.v2 import (
    REST_EXTENSIONS,
    InferRequest,
    InferResponse,
    InputTensor,
    OpenInferenceCore,
    RequestedOutput,
    ViewKind,
    encode_bytes_elements,
)
from support.fake_backend import fake_engine
from support.paths import EFFICIENTNET, IMAGES
from support.servers import make_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODELS = [
    {"name": "lite", "source": str(EFFICIENTNET), "dtype": "fp32"},
    {"name": "half", "source": str(EFFICIENTNET), "dtype": "fp16"},
]
IMAGE_NAMES = sorted(p.name for p in IMAGES.iterdir() if p.suffix in (".jpg", ".png"))
CAT = (IMAGES / "cat.jpg").read_bytes()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[Engine]:
    engine = await asyncio.to_thread(Engine.load, make_settings(models=MODELS, jpeg_draft=False))
    engine.start(asyncio.get_running_loop())
    try:
        yield engine
    finally:
        await engine.stop(drain=False)


@pytest.fixture(scope="module")
def core(engine: Engine) -> OpenInferenceCore:
    return OpenInferenceCore(engine)


def images(*data: bytes, shape: tuple[int, ...] | None = None) -> InputTensor:
    return InputTensor("image", "BYTES", shape or (len(data), 1), raw=encode_bytes_elements(list(data)))


def image_request(*data: bytes, model: str = "lite_image", **fields: Any) -> InferRequest:
    return InferRequest(model, (images(*data),), **fields)


def pixels(batch: int = 2, seed: int = 0, dtype: Any = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (batch, 3, 224, 224)).astype(dtype)


def tensor_request(array: np.ndarray, model: str = "lite", datatype: str = "FP32", **fields: Any) -> InferRequest:
    tensor = InputTensor("pixel_values", datatype, array.shape, raw=array.tobytes())
    return InferRequest(model, (tensor,), **fields)


def parse(strings: list[bytes]) -> list[tuple[float, int, str]]:
    """Triton's classification strings "value:index:label" (a label may itself hold colons)."""
    parsed = []
    for text in strings:
        value, index, label = text.decode().split(":", 2)
        parsed.append((float(value), int(index), label))
    return parsed


def only(response: InferResponse) -> Any:
    (output,) = response.outputs
    return output


# --- views and metadata ------------------------------------------------------------------


async def test_every_model_is_two_views(core: OpenInferenceCore) -> None:
    assert list(core.views) == ["lite", "lite_image", "half", "half_image"]
    assert [v.kind for v in core.views.values()] == [ViewKind.NETWORK, ViewKind.IMAGE] * 2
    assert core.engine_model("half_image") == "half" and core.engine_model("nope") == "nope"


async def test_network_view_is_the_model_own_input_and_output(core: OpenInferenceCore) -> None:
    lite = core.model_metadata("lite").to_dict()
    assert lite == {
        "name": "lite",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}],
    }
    half = core.model_metadata("half", "1")
    assert [(t.name, t.datatype) for t in (*half.inputs, *half.outputs)] == [
        ("pixel_values", "FP16"),
        ("logits", "FP16"),
    ]


async def test_image_view_takes_one_bytes_input_and_gives_scores(core: OpenInferenceCore) -> None:
    for name in ("lite_image", "half_image"):
        metadata = core.model_metadata(name)
        assert [t.to_dict() for t in metadata.inputs] == [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}]
        assert [t.to_dict() for t in metadata.outputs] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 1000]}]


async def test_model_config_says_what_triton_clients_read(core: OpenInferenceCore, engine: Engine) -> None:
    config = core.model_config("lite")
    assert config["max_batch_size"] == engine.settings.max_inputs_per_request > 0
    assert config["input"] == [
        {"name": "pixel_values", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [3, 224, 224]}
    ]
    assert config["output"] == [
        {"name": "logits", "data_type": "TYPE_FP32", "dims": [1000], "label_filename": "labels.txt"}
    ]
    batching = engine.describe("lite").batching
    assert config["dynamic_batching"] == {
        "preferred_batch_size": [batching.max_batch_size],
        "max_queue_delay_microseconds": batching.max_queue_delay_us,
        "default_queue_policy": {"max_queue_size": batching.queue_limit},
    }
    assert config["instance_group"][0]["count"] == batching.instances
    assert core.model_config("half")["input"][0]["data_type"] == "TYPE_FP16"
    assert core.model_config("half")["output"][0]["data_type"] == "TYPE_FP16"
    image = core.model_config("lite_image")
    assert image["input"] == [{"name": "image", "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [1]}]
    assert image["output"][0] == {
        "name": "scores",
        "data_type": "TYPE_FP32",
        "dims": [1000],
        "label_filename": "labels.txt",
    }
    labels = core.labels("lite_image")
    assert len(labels) == 1000 and labels[285] == "Egyptian cat"


async def test_server_metadata_lists_only_the_extensions_that_work(engine: Engine, core: OpenInferenceCore) -> None:
    metadata = core.server_metadata()
    assert metadata.name == "imgcls"
    assert metadata.version == importlib.metadata.version("imgcls")
    assert metadata.extensions == ("classification", "model_configuration", "statistics")
    rest = OpenInferenceCore(engine, extensions=REST_EXTENSIONS).server_metadata()
    assert "binary_tensor_data" in rest.extensions
    assert core.server_live() and core.server_ready()
    assert core.model_ready("lite_image") and core.model_ready("half", "1")


# --- the image view -------------------------------------------------------------------------


@pytest.mark.parametrize("name", IMAGE_NAMES)
async def test_image_scores_equal_the_engine_classify(core: OpenInferenceCore, engine: Engine, name: str) -> None:
    data = (IMAGES / name).read_bytes()
    response = await core.infer(image_request(data, id=f"id-{name}"))
    assert (response.model_name, response.model_version, response.id) == ("lite_image", "1", f"id-{name}")
    scores = only(response)
    assert (scores.name, scores.datatype, scores.shape) == ("scores", "FP32", (1, 1000))
    classified = await engine.classify(
        ClassifyRequest("lite", (EncodedImage(data),), ClassifyOptions(top_k=0))  # every label, softmax
    )
    expected = np.zeros(1000, dtype=np.float32)
    for entry in classified.rankings[0]:
        expected[entry.index] = entry.score
    np.testing.assert_array_equal(scores.data[0], expected)


async def test_classification_strings_are_the_top_n_best_first(core: OpenInferenceCore, engine: Engine) -> None:
    response = await core.infer(image_request(CAT, outputs=(RequestedOutput("scores", classification=5),)))
    output = only(response)
    assert (output.name, output.datatype, output.shape) == ("scores", "BYTES", (1, 5))
    classified = await engine.classify(ClassifyRequest("lite", (EncodedImage(CAT),)))
    want = [(s.score, s.index, s.label) for s in classified.rankings[0]]
    got = parse(output.data)
    assert [(i, label) for _, i, label in got] == [(i, label) for _, i, label in want]
    assert [np.float32(v) for v, _, _ in got] == [np.float32(v) for v, _, _ in want]  # exact, read back
    assert got[0][2] == "Egyptian cat"


async def test_top_k_parameter_turns_outputs_into_that_many_labels(core: OpenInferenceCore) -> None:
    three = only(await core.infer(image_request(CAT, parameters={"top_k": 3})))
    assert (three.datatype, three.shape) == ("BYTES", (1, 3))
    every = only(await core.infer(image_request(CAT, parameters={"top_k": 0})))
    assert every.shape == (1, 1000) and every.datatype == "BYTES"
    # An output's own classification count wins over top_k.
    own = RequestedOutput("scores", parameters={"classification": 2})
    assert only(await core.infer(image_request(CAT, outputs=(own,), parameters={"top_k": 4}))).shape == (1, 2)
    # classification beyond the label count is clipped.
    huge = only(await core.infer(image_request(CAT, outputs=(RequestedOutput("scores", classification=5000),))))
    assert huge.shape == (1, 1000)
    # 2.0 is 2, as the Hugging Face API and imgcls.v1's JSON read it (JavaScript clients send no other).
    assert only(await core.infer(image_request(CAT, parameters={"top_k": 3.0}))).shape == (1, 3)
    own = RequestedOutput("scores", parameters={"classification": 2.0})
    assert only(await core.infer(image_request(CAT, outputs=(own,)))).shape == (1, 2)


async def test_function_to_apply(core: OpenInferenceCore, engine: Engine) -> None:
    logits = (await engine.score(ClassifyRequest("lite", (EncodedImage(CAT),)))).outputs[0]
    none = only(await core.infer(image_request(CAT, parameters={"function_to_apply": "none"}))).data[0]
    np.testing.assert_array_equal(none, logits)
    sigmoid = only(await core.infer(image_request(CAT, parameters={"function_to_apply": "sigmoid"}))).data[0]
    np.testing.assert_allclose(sigmoid, 1 / (1 + np.exp(-logits.astype(np.float64))), rtol=1e-6)
    default = only(await core.infer(image_request(CAT))).data[0]
    assert default.sum() == pytest.approx(1.0, abs=1e-5)  # the model's default: softmax


async def test_a_batch_of_images_in_order_with_shape_n_1_or_n(core: OpenInferenceCore) -> None:
    names = ["cat.jpg", "coffee.jpg", "rocket.jpg"]
    data = [(IMAGES / n).read_bytes() for n in names]
    alone = [only(await core.infer(image_request(d))).data[0] for d in data]
    for shape in ((3, 1), (3,)):
        batch = only(await core.infer(InferRequest("lite_image", (images(*data, shape=shape),))))
        assert batch.shape == (3, 1000)
        for row, expected in zip(batch.data, alone, strict=True):
            np.testing.assert_allclose(row, expected, atol=1e-6)


async def test_text_elements_are_base64_or_data_urls(core: OpenInferenceCore) -> None:
    encoded = base64.b64encode(CAT).decode()
    tensor = InputTensor("image", "BYTES", (2, 1), data=[encoded, f"data:image/jpeg;base64,{encoded}"])
    both = only(await core.infer(InferRequest("lite_image", (tensor,))))
    direct = only(await core.infer(image_request(CAT))).data[0]
    np.testing.assert_array_equal(both.data[0], direct)
    np.testing.assert_array_equal(both.data[1], direct)


async def test_preprocessor_overrides_apply(core: OpenInferenceCore) -> None:
    plain = only(await core.infer(image_request(CAT))).data[0]
    overrides = '{"crop_pct": 1.0, "size": {"shortest_edge": 224}}'
    changed = only(await core.infer(image_request(CAT, parameters={"preprocessor_overrides": overrides}))).data[0]
    assert not np.array_equal(plain, changed)
    assert int(np.argmax(changed)) in (281, 282, 285)  # still a cat


# --- the network view ----------------------------------------------------------------------


async def test_network_view_raw_and_typed_contents_equal_the_engine_tensor_path(
    core: OpenInferenceCore, engine: Engine
) -> None:
    array = pixels(batch=2)
    raw = only(await core.infer(tensor_request(array)))
    assert (raw.name, raw.datatype, raw.shape) == ("logits", "FP32", (2, 1000))
    for data in (array.reshape(-1).tolist(), array.tolist()):
        typed = InferRequest("lite", (InputTensor("pixel_values", "FP32", array.shape, data=data),))
        np.testing.assert_array_equal(only(await core.infer(typed)).data, raw.data)
    engine_tensor = TensorInput(array.shape, TensorDType.FLOAT32, raw_data=array.tobytes())
    expected = (await engine.score(ClassifyRequest("lite", (engine_tensor,)))).outputs
    np.testing.assert_array_equal(raw.data, expected)


async def test_fp16_variant_takes_and_gives_fp16(core: OpenInferenceCore, engine: Engine) -> None:
    array = pixels(batch=1, dtype=np.float16)
    output = only(await core.infer(tensor_request(array, model="half", datatype="FP16")))
    assert (output.datatype, output.data.dtype) == ("FP16", np.dtype(np.float16))
    engine_tensor = TensorInput(array.shape, TensorDType.FLOAT16, raw_data=array.tobytes())
    expected = (await engine.score(ClassifyRequest("half", (engine_tensor,)))).outputs
    np.testing.assert_array_equal(output.data, expected)
    # FP32 values are converted to the model's FP16, as imgcls.v1 converts them.
    converted = only(await core.infer(tensor_request(array.astype(np.float32), model="half")))
    np.testing.assert_array_equal(converted.data, output.data)


async def test_network_view_function_and_classification(core: OpenInferenceCore) -> None:
    array = pixels(batch=1)
    logits = only(await core.infer(tensor_request(array))).data[0]
    softmax = only(await core.infer(tensor_request(array, parameters={"function_to_apply": "softmax"}))).data[0]
    assert softmax.sum() == pytest.approx(1.0, abs=1e-5)
    strings = only(await core.infer(tensor_request(array, outputs=(RequestedOutput("logits", classification=3),))))
    top = parse(strings.data)
    assert [i for _, i, _ in top] == list(np.argsort(-logits, kind="stable")[:3])
    assert [np.float32(v) for v, _, _ in top] == [logits[i] for _, i, _ in top]  # the output's own values


# --- errors ------------------------------------------------------------------------------------


BAD_REQUESTS: list[tuple[InferRequest, str]] = [
    (InferRequest("lite_image", (InputTensor("img", "BYTES", (1, 1), data=[CAT]),)), "has no input 'img'"),
    (InferRequest("lite_image", (images(CAT), images(CAT))), "takes one input, 'image'; the request has 2"),
    (InferRequest("lite_image", ()), "the request has 0"),
    (InferRequest("lite_image", (InputTensor("image", "FP32", (1, 1), data=[1.0]),)), "input 'image': datatype"),
    (InferRequest("lite_image", (images(CAT, CAT, shape=(1, 2)),)), "input 'image': shape [1, 2] is not [N, 1]"),
    (InferRequest("lite_image", (images(shape=(0, 1)),)), "input 'image': has no images"),
    (image_request(CAT, b"not an image"), "input 'image' element 1: not a decodable image"),
    (InferRequest("lite_image", (InputTensor("image", "BYTES", (1, 1), raw=b"\x09\x00"),)), "input 'image': element 0"),
    (image_request(*[CAT] * 65), "65 inputs, over the limit of 64"),
    (tensor_request(np.zeros((1, 3, 100, 100), np.float32)), "input 'pixel_values': shape [1, 3, 100, 100]"),
    (tensor_request(np.zeros((3, 224, 224), np.float32)), "input 'pixel_values': shape [3, 224, 224] does not match"),
    (
        InferRequest("lite", (InputTensor("pixel_values", "FP32", (1, 3, 224, 224), raw=b"\x00" * 8),)),
        "input 'pixel_values': raw contents have 8 bytes",
    ),
    (
        InferRequest("lite", (InputTensor("pixel_values", "INT32", (1, 3, 224, 224), data=[0]),)),
        "input 'pixel_values': datatype 'INT32' is not accepted",
    ),
    (image_request(CAT, outputs=(RequestedOutput("logits"),)), "has no output 'logits'; its output is 'scores'"),
    (image_request(CAT, outputs=(RequestedOutput("scores"), RequestedOutput("scores"))), "asked for twice"),
    (image_request(CAT, outputs=(RequestedOutput("scores", parameters={"classification": -2}),)), "classification"),
    (image_request(CAT, parameters={"top_k": -1}), "parameter top_k"),
    (image_request(CAT, parameters={"top_k": 2.5}), "parameter top_k must be an integer >= 0, got 2.5"),
    (image_request(CAT, parameters={"top_k": float("inf")}), "parameter top_k must be an integer >= 0, got inf"),
    (image_request(CAT, parameters={"top_k": True}), "parameter top_k must be an integer >= 0, got True"),
    (image_request(CAT, outputs=(RequestedOutput("scores", parameters={"classification": 1.5}),)), "got 1.5"),
    (image_request(CAT, parameters={"function_to_apply": "relu"}), "parameter function_to_apply"),
    (image_request(CAT, parameters={"preprocessor_overrides": "{"}), "parameter preprocessor_overrides"),
    (image_request(CAT, parameters={"preprocessor_overrides": {"size": {"height": 99999}}}), "size must be"),
]


@pytest.mark.parametrize(("request_", "expected"), BAD_REQUESTS)
async def test_bad_requests_are_invalid_input_naming_what_is_wrong(
    core: OpenInferenceCore, request_: InferRequest, expected: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await core.infer(request_)
    assert expected in caught.value.message


@pytest.mark.parametrize(
    ("name", "version", "expected"),
    [
        ("nope", "", "model 'nope' is not served; served models: lite, lite_image, half, half_image"),
        ("", "", "model '' is not served"),
        ("lite_image", "2", "model lite_image has no version '2'; its one version is 1"),
        ("/etc/passwd", "", "model '/etc/passwd' is not served"),
    ],
)
async def test_unknown_models_and_versions_are_not_found(
    core: OpenInferenceCore, name: str, version: str, expected: str
) -> None:
    calls: list[Any] = [core.view, core.model_metadata, core.model_config, core.model_ready]
    if name:  # statistics of no name are those of every model
        calls.append(core.model_statistics)
    for call in calls:
        with pytest.raises(ModelNotFoundError) as caught:
            call(name, version)
        assert expected in caught.value.message
    with pytest.raises(ModelNotFoundError):
        await core.infer(InferRequest(name, (images(CAT),), model_version=version))


# --- observation and statistics --------------------------------------------------------------


async def test_requests_are_observed_under_the_served_model_and_protocol(
    core: OpenInferenceCore, engine: Engine
) -> None:
    records: list[RequestRecord] = []
    engine.add_request_listener(records.append)
    await core.infer(image_request(CAT, CAT, id="two"), protocol="v2-test", method="ModelInfer")
    await core.infer(tensor_request(pixels(batch=3), id="three"), protocol="v2-test")
    with pytest.raises(ModelNotFoundError):
        await core.infer(image_request(CAT, model="nope", id="lost"), protocol="v2-test")
    with pytest.raises(InvalidInputError):
        await core.infer(image_request(b"junk", id="bad"), protocol="v2-test")
    seen = [(r.protocol, r.method, r.model, r.request_id, r.inputs, r.results, r.outcome) for r in records]
    assert seen == [
        ("v2-test", "ModelInfer", "lite", "two", 2, 2, None),
        ("v2-test", "ModelInfer", "lite", "three", 3, 3, None),
        ("v2-test", "ModelInfer", "_unknown", "lost", 0, 0, ErrorKind.NOT_FOUND),
        ("v2-test", "ModelInfer", "lite", "bad", 1, 0, ErrorKind.INVALID_INPUT),
    ]


async def test_statistics_come_from_the_model_counters(core: OpenInferenceCore, engine: Engine) -> None:
    await core.infer(image_request(CAT, CAT))
    stats = engine.stats("lite")
    (entry,) = core.model_statistics("lite_image")["model_stats"]
    assert (entry["name"], entry["version"]) == ("lite_image", "1")
    assert entry["inference_count"] == stats.inputs and entry["execution_count"] == stats.batches
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in entry["batch_stats"]) == stats.inputs
    inference = entry["inference_stats"]
    assert inference["queue"] == {"count": stats.inputs, "ns": int(stats.queue_time_s * 1e9)}
    assert inference["compute_infer"]["ns"] == int(stats.compute_time_s * 1e9) > 0
    assert inference["success"]["count"] > 0 and inference["success"]["ns"] > 0
    assert entry["last_inference"] > 0
    # Both views share the model's batcher, so they report the same counters; no name: every view.
    assert core.model_statistics("lite")["model_stats"][0]["inference_count"] == stats.inputs
    assert [e["name"] for e in core.model_statistics()["model_stats"]] == ["lite", "lite_image", "half", "half_image"]


async def test_a_model_whose_image_view_is_another_model_is_refused() -> None:
    engine, _ = fake_engine("cam", "cam_image")
    with pytest.raises(ConfigError, match="cam_image"):
        OpenInferenceCore(engine)
    await engine.stop(drain=False)
