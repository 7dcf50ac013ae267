"""Serving custom models, dtype variants and several models at once, through real gRPC servers.

- open-nsfw through examples/open-nsfw.yaml reproduces the model's reference scores;
- every dtype variant of the shared EfficientNet-Lite0 folder serves, missing ones fail at start;
- two models side by side, chosen by name, default_model, concurrent interleaved requests;
- a request's model name is only a key: paths and repo ids are NOT_FOUND;
- what the server reads from an ONNX graph: fixed batch sizes (padded), layouts, outputs, labels.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from google.protobuf import json_format
from imgcls.server.domain.errors import ConfigError, ModelLoadError, StartupError
from imgcls.server.images.preprocessing import compile_preprocessor
from imgcls.server.server import start_server
from imgcls.server.settings import load_settings
from imgcls.v1 import classifier_pb2 as pb
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from support.inputs import image_input
from support.paths import EFFICIENTNET, EXAMPLE_SPEC, IMAGES, OPEN_NSFW, ROOT
from support.servers import connect, running_server

EXAMPLE_CONFIG = ROOT / "examples" / "imgcls.toml"
IMAGE_NAMES = sorted(p.name for p in IMAGES.iterdir() if p.suffix in (".jpg", ".png"))
NONE = pb.Parameters(function_to_apply=pb.FUNCTION_TO_APPLY_NONE, top_k=0)


def load_reference(model: str) -> dict[str, list[dict[str, Any]]]:
    return json.loads((IMAGES / f"reference-{model}.json").read_text())


def scores_by_label(result: pb.Result) -> dict[str, float]:
    return {label.label: label.score for label in result.labels}


def scores_by_index(result: pb.Result) -> np.ndarray:
    scores = np.zeros(len(result.labels), dtype=np.float64)
    for label in result.labels:
        scores[label.index] = label.score
    return scores


# -- 1. open-nsfw through a spec ------------------------------------------------------------------------


@pytest.mark.parametrize("jpeg_draft", [False, True], ids=["exact-decode", "jpeg-draft"])
async def test_open_nsfw_matches_reference(open_nsfw_spec: Path, jpeg_draft: bool) -> None:
    reference = load_reference("open-nsfw")
    assert sorted(reference) == IMAGE_NAMES
    models = [{"name": "open-nsfw", "source": str(open_nsfw_spec)}]
    async with running_server(models=models, jpeg_draft=jpeg_draft) as server, connect(server) as stub:
        response = await stub.Classify(pb.ClassifyRequest(inputs=[image_input(n) for n in IMAGE_NAMES]))
    assert response.model == "open-nsfw"
    for name, result in zip(IMAGE_NAMES, response.results, strict=True):
        got = scores_by_label(result)
        # The default function is none: the model's own softmaxed outputs, summing to 1.
        assert sum(got.values()) == pytest.approx(1.0, abs=1e-5)
        for expected in reference[name]:
            assert got[expected["label"]] == pytest.approx(expected["score"], abs=0.01), name
        assert [label.label for label in result.labels] == [e["label"] for e in reference[name]]


async def test_open_nsfw_exact_decode_is_tight(open_nsfw_spec: Path) -> None:
    # Without draft decoding the served pipeline is the README's reference procedure: far tighter than 0.01.
    reference = load_reference("open-nsfw")
    models = [{"name": "open-nsfw", "source": str(open_nsfw_spec)}]
    async with running_server(models=models, jpeg_draft=False) as server, connect(server) as stub:
        response = await stub.Classify(pb.ClassifyRequest(inputs=[image_input(n) for n in IMAGE_NAMES]))
    for name, result in zip(IMAGE_NAMES, response.results, strict=True):
        got = scores_by_label(result)
        for expected in reference[name]:
            assert got[expected["label"]] == pytest.approx(expected["score"], abs=1e-4), name


async def test_open_nsfw_model_info(open_nsfw_spec: Path) -> None:
    models = [{"name": "open-nsfw", "source": str(open_nsfw_spec)}]
    async with running_server(models=models) as server, connect(server) as stub:
        info = (await stub.GetModel(pb.GetModelRequest(name="open-nsfw"))).model
    assert info.labels == ["sfw", "nsfw"] and info.num_labels == 2
    assert info.default_function_to_apply == pb.FUNCTION_TO_APPLY_NONE
    assert info.input_layout == "NHWC"
    assert list(info.input_shape) == [-1, 224, 224, 3]
    assert info.input_name == "input:0"
    assert info.input_dtype == pb.DATA_TYPE_FLOAT32
    assert info.variant == ""
    assert info.source == open_nsfw_spec.name  # the spec file's name, never its path
    preprocessing = json_format.MessageToDict(info.preprocessing)
    assert preprocessing["channel_order"] == "BGR"
    assert preprocessing["size"] == {"height": 256, "width": 256}
    assert preprocessing["crop_size"] == {"height": 224, "width": 224}
    assert preprocessing["image_mean"] == [104, 117, 123]


# -- 2. dtype variants ----------------------------------------------------------------------------------


def fp32_top1() -> dict[str, str]:
    return {name: ranked[0]["label"] for name, ranked in load_reference("efficientnet-lite0").items()}


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
async def test_float_variants_agree_with_fp32_reference(dtype: str) -> None:
    models = [{"name": "effnet", "source": str(EFFICIENTNET), "dtype": dtype}]
    async with running_server(models=models) as server, connect(server) as stub:
        response = await stub.Classify(pb.ClassifyRequest(inputs=[image_input(n) for n in IMAGE_NAMES]))
        info = (await stub.GetModel(pb.GetModelRequest(name="effnet"))).model
    top1 = fp32_top1()
    assert [r.labels[0].label for r in response.results] == [top1[n] for n in IMAGE_NAMES]
    assert info.variant == dtype
    assert info.input_dtype == (pb.DATA_TYPE_FLOAT16 if dtype == "fp16" else pb.DATA_TYPE_FLOAT32)
    assert list(info.input_shape) == [-1, 3, 224, 224]


def direct_batch_scores(onnx_file: Path, names: Sequence[str]) -> np.ndarray:
    """Softmaxed scores from ONNX Runtime run directly on one batch of these images."""
    config = json.loads((EFFICIENTNET / "preprocessor_config.json").read_text())
    preprocess = compile_preprocessor(config, dtype=np.dtype(np.float32), jpeg_draft=False)
    batch = np.stack([preprocess(Image.open(IMAGES / n)) for n in names])
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: batch})
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(("dtype", "file_name"), [("q8", "model_quantized.onnx"), ("int8", "model_int8.onnx")])
async def test_quantized_variants(dtype: str, file_name: str) -> None:
    # These are slow on this CPU: one request with every image, one batch (one instance, room for all).
    models = [{"name": "effnet", "source": str(EFFICIENTNET), "dtype": dtype}]
    one_batch = {"batching": {"max_batch_size": 8}, "runtime": {"instances": 1}}
    async with running_server(models=models, jpeg_draft=False, **one_batch) as server, connect(server) as stub:
        response = await stub.Classify(
            pb.ClassifyRequest(inputs=[image_input(n) for n in IMAGE_NAMES], parameters=pb.Parameters(top_k=0))
        )
        info = (await stub.GetModel(pb.GetModelRequest(name="effnet"))).model
    assert info.variant == dtype
    assert info.input_dtype == pb.DATA_TYPE_FLOAT32
    assert dict(info.stats.batch_size_counts) == {len(IMAGE_NAMES): 1}
    # The variant's own file answers: same scores as ONNX Runtime on the same batch. (These models quantize
    # activations dynamically over the whole batch tensor, so a score depends on the batch it ran in.)
    served = np.stack([scores_by_index(r) for r in response.results])
    np.testing.assert_allclose(served, direct_batch_scores(EFFICIENTNET / "onnx" / file_name, IMAGE_NAMES), atol=1e-4)
    # Quantization moves scores a lot on this model and flips the close calls (astronaut, cat, rocket);
    # the confident ones (fp32 top-1 ahead by more than 0.5) keep their top-1.
    reference = load_reference("efficientnet-lite0")
    confident = [n for n in IMAGE_NAMES if reference[n][0]["score"] - reference[n][1]["score"] > 0.5]
    assert confident == ["camera.png", "coffee.jpg", "coffee_1920x1280.jpg"]
    for name, result in zip(IMAGE_NAMES, response.results, strict=True):
        if name in confident:
            assert result.labels[0].label == reference[name][0]["label"], name


@pytest.mark.parametrize("dtype", ["uint8", "q4", "q4f16", "bnb4"])
async def test_missing_variant_fails_at_start(dtype: str) -> None:
    with pytest.raises(ModelLoadError) as exc:
        async with running_server(models=[{"name": "effnet", "source": str(EFFICIENTNET), "dtype": dtype}]):
            pass
    assert isinstance(exc.value, StartupError)  # never answered to a caller: no status
    assert f"no {dtype} variant" in exc.value.message
    assert "fp32, fp16, q8, int8" in exc.value.message


async def test_unknown_dtype_fails_in_settings() -> None:
    with pytest.raises(ConfigError) as exc:
        async with running_server(models=[{"name": "effnet", "source": str(EFFICIENTNET), "dtype": "fp64"}]):
            pass
    assert isinstance(exc.value, StartupError)  # never answered to a caller: no status
    assert "dtype" in exc.value.message and "fp64" in exc.value.message


# -- 3. several models ----------------------------------------------------------------------------------


def two_models(open_nsfw_spec: Path) -> list[dict[str, str]]:
    return [
        {"name": "efficientnet-lite0", "source": str(EFFICIENTNET)},
        {"name": "open-nsfw", "source": str(open_nsfw_spec)},
    ]


async def test_two_models_chosen_by_name(open_nsfw_spec: Path) -> None:
    async with running_server(models=two_models(open_nsfw_spec)) as server, connect(server) as stub:
        effnet = await stub.Classify(pb.ClassifyRequest(model="efficientnet-lite0", inputs=[image_input("cat.jpg")]))
        nsfw = await stub.Classify(pb.ClassifyRequest(model="open-nsfw", inputs=[image_input("cat.jpg")]))
        default = await stub.Classify(pb.ClassifyRequest(inputs=[image_input("cat.jpg")]))
        listed = (await stub.ListModels(pb.ListModelsRequest())).models
    assert effnet.model == "efficientnet-lite0"
    assert effnet.results[0].labels[0].label == fp32_top1()["cat.jpg"]
    assert nsfw.model == "open-nsfw"
    assert {label.label for label in nsfw.results[0].labels} == {"sfw", "nsfw"}
    # An empty name is the first model.
    assert default.model == "efficientnet-lite0"
    assert [(m.name, m.is_default) for m in listed] == [("efficientnet-lite0", True), ("open-nsfw", False)]
    assert [m.input_layout for m in listed] == ["NCHW", "NHWC"]
    assert all(m.ready for m in listed)


async def test_default_model_setting(open_nsfw_spec: Path) -> None:
    async with (
        running_server(models=two_models(open_nsfw_spec), default_model="open-nsfw") as server,
        connect(server) as stub,
    ):
        response = await stub.Classify(pb.ClassifyRequest(inputs=[image_input("cat.jpg")]))
        info = (await stub.GetModel(pb.GetModelRequest())).model
        listed = (await stub.ListModels(pb.ListModelsRequest())).models
    assert response.model == "open-nsfw"
    assert {label.label for label in response.results[0].labels} == {"sfw", "nsfw"}
    assert info.name == "open-nsfw" and info.is_default
    assert [(m.name, m.is_default) for m in listed] == [("efficientnet-lite0", False), ("open-nsfw", True)]


async def test_unknown_model_lists_served_ones(open_nsfw_spec: Path) -> None:
    async with running_server(models=two_models(open_nsfw_spec)) as server, connect(server) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.Classify(pb.ClassifyRequest(model="resnet-50", inputs=[image_input("cat.jpg")]))
        with pytest.raises(grpc.aio.AioRpcError) as get_exc:
            await stub.GetModel(pb.GetModelRequest(name="resnet-50"))
    for error in (exc.value, get_exc.value):
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "resnet-50" in (error.details() or "")
        assert "efficientnet-lite0, open-nsfw" in (error.details() or "")


async def test_concurrent_requests_to_both_models(open_nsfw_spec: Path) -> None:
    effnet_top1 = fp32_top1()
    nsfw_reference = load_reference("open-nsfw")
    async with running_server(models=two_models(open_nsfw_spec)) as server, connect(server) as stub:
        # Interleaved: each model's batcher sees its requests mixed with the other model's traffic.
        calls = [
            (
                model,
                name,
                stub.Classify(
                    pb.ClassifyRequest(model=model, inputs=[image_input(name)], request_id=f"{model}/{name}")
                ),
            )
            for name in IMAGE_NAMES * 2
            for model in ("efficientnet-lite0", "open-nsfw")
        ]
        responses = await asyncio.gather(*(call for _, _, call in calls))
        listed = {m.name: m for m in (await stub.ListModels(pb.ListModelsRequest())).models}
    for (model, name, _), response in zip(calls, responses, strict=True):
        assert response.request_id == f"{model}/{name}"
        assert response.model == model
        if model == "efficientnet-lite0":
            assert response.results[0].labels[0].label == effnet_top1[name], name
        else:
            got = scores_by_label(response.results[0])
            for expected in nsfw_reference[name]:
                assert got[expected["label"]] == pytest.approx(expected["score"], abs=0.01), name
    for model in ("efficientnet-lite0", "open-nsfw"):
        assert listed[model].stats.requests == 2 * len(IMAGE_NAMES)
        assert listed[model].stats.inputs == 2 * len(IMAGE_NAMES)


async def test_example_config_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # examples/imgcls.toml in a folder laid out as its comments describe, started from elsewhere:
    # relative sources resolve against the config file's folder, not the working directory.
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "efficientnet-lite0").symlink_to(EFFICIENTNET)
    (tmp_path / "models" / "open-nsfw").mkdir()
    shutil.copy(EXAMPLE_SPEC, tmp_path / "models" / "open-nsfw" / "open-nsfw.yaml")
    (tmp_path / "models" / "open-nsfw" / "model.onnx").symlink_to(OPEN_NSFW / "model.onnx")
    shutil.copy(EXAMPLE_CONFIG, tmp_path / "imgcls.toml")
    monkeypatch.chdir(tmp_path / "models")
    settings = load_settings({"host": "127.0.0.1", "port": 0}, config_file=tmp_path / "imgcls.toml", environ={})
    server = await start_server(settings)
    try:
        async with connect(server) as stub:
            listed = (await stub.ListModels(pb.ListModelsRequest())).models
            response = await stub.Classify(pb.ClassifyRequest(inputs=[image_input("coffee.jpg")]))
    finally:
        await server.stop(grace=1.0)
    assert [(m.name, m.variant, m.is_default) for m in listed] == [
        ("efficientnet-lite0", "fp16", True),
        ("open-nsfw", "", False),
    ]
    assert listed[0].input_dtype == pb.DATA_TYPE_FLOAT16
    assert listed[0].max_batch_size == 16  # the model's own [models.batching]
    assert listed[1].max_batch_size == 4  # the server-wide [batching]
    assert response.model == "efficientnet-lite0"
    assert response.results[0].labels[0].label == fp32_top1()["coffee.jpg"]


# -- 4. a request cannot load a model -------------------------------------------------------------------


@pytest.mark.parametrize(
    "requested",
    [
        str(OPEN_NSFW / "model.onnx"),
        str(OPEN_NSFW),
        str(EFFICIENTNET),
        "owner/repo",
        "Xenova/efficientnet-lite0",
        "../open-nsfw",
    ],
)
async def test_request_cannot_load_a_path_or_repo(requested: str) -> None:
    async with running_server() as server, connect(server) as stub:
        before = dict(server.engine.models)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.Classify(pb.ClassifyRequest(model=requested, inputs=[image_input("cat.jpg")]))
        with pytest.raises(grpc.aio.AioRpcError) as get_exc:
            await stub.GetModel(pb.GetModelRequest(name=requested))

        async def frames() -> Any:
            yield pb.ClassifyStreamRequest(model=requested, inputs=[image_input("cat.jpg")])

        # In a stream the model is chosen per stream: an unknown one ends the stream with NOT_FOUND.
        with pytest.raises(grpc.aio.AioRpcError) as stream_exc:
            _ = [response async for response in stub.ClassifyStream(frames())]
        listed = [m.name for m in (await stub.ListModels(pb.ListModelsRequest())).models]
    for error in (exc.value, get_exc.value, stream_exc.value):
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "is not served" in (error.details() or "")
    assert server.engine.models == before
    assert listed == ["efficientnet-lite0"]


# -- 5. what the server reads from the graph ------------------------------------------------------------

# logits = per-channel mean of the (normalized) image @ WEIGHTS: one column per channel plus their sum,
# so a wrong channel order or layout shows in the scores.
WEIGHTS = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1]], dtype=np.float32)
OTHER_WEIGHTS = np.array([[0, 0, 2, 0], [0, 2, 0, 0], [2, 0, 0, 0]], dtype=np.float32)


def build_tiny_model(
    path: Path,
    shape: Sequence[int | str],
    *,
    layout: str = "NCHW",
    outputs: dict[str, np.ndarray] | None = None,
    input_type: int = TensorProto.FLOAT,
    second_input: bool = False,
) -> Path:
    """A tiny image classifier: spatial mean -> MatMul per output. shape may hold "N" for a dynamic batch."""
    outputs = outputs or {"logits": WEIGHTS}
    batch = shape[0]
    nodes = []
    inputs = [helper.make_tensor_value_info("pixels", input_type, list(shape))]
    source = "pixels"
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["pixels"], ["pixels_f"], to=TensorProto.FLOAT))
        source = "pixels_f"
    axes = [2, 3] if layout == "NCHW" else [1, 2]
    nodes.append(helper.make_node("ReduceMean", [source], ["mean"], axes=axes, keepdims=0))
    features = "mean"
    if second_input:
        inputs.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, [batch, 3]))
        nodes.append(helper.make_node("Add", ["mean", "bias"], ["mean_b"]))
        features = "mean_b"
    initializers = []
    graph_outputs = []
    for name, weights in outputs.items():
        initializers.append(numpy_helper.from_array(weights, name=f"{name}_w"))
        nodes.append(helper.make_node("MatMul", [features, f"{name}_w"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, weights.shape[1]]))
    graph = helper.make_graph(nodes, "tiny", inputs, graph_outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by any recent onnxruntime
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def solid(rgb: tuple[int, int, int], size: int = 8) -> pb.Input:
    """A size x size raw RGB image of one colour."""
    return pb.Input(
        raw=pb.RawImage(width=size, height=size, format=pb.PIXEL_FORMAT_RGB8, data=bytes(rgb) * size * size)
    )


def vit_logits(rgb: tuple[int, int, int], weights: np.ndarray = WEIGHTS) -> np.ndarray:
    """Expected logits for a solid image under a bare .onnx file's preprocessing (x/255 - 0.5) / 0.5."""
    return ((np.array(rgb, dtype=np.float64) / 255 - 0.5) / 0.5) @ weights


# Every channel at least 128, so every logit is >= 0 (see test_function_none_keeps_negative_scores).
COLOURS = [(255, 128, 128), (128, 255, 128), (128, 128, 255), (200, 160, 130), (250, 240, 140)]


def tiny_bare_model(tmp_path: Path, shape: Sequence[int | str], labels: int | None = 4, **kwargs: Any) -> Path:
    path = build_tiny_model(tmp_path / "tiny" / "tiny.onnx", shape, **kwargs)
    if labels is not None:
        (path.parent / "labels.txt").write_text("".join(f"class-{i}\n" for i in range(labels)))
    return path


async def test_fixed_batch_one_introspection(tmp_path: Path) -> None:
    path = tiny_bare_model(tmp_path, [1, 3, 8, 8])
    async with running_server(models=[{"name": "tiny", "source": str(path)}]) as server, connect(server) as stub:
        info = (await stub.GetModel(pb.GetModelRequest(name="tiny"))).model
        response = await stub.Classify(
            pb.ClassifyRequest(model="tiny", inputs=[solid(c) for c in COLOURS[:3]], parameters=NONE)
        )
        stats = (await stub.GetModel(pb.GetModelRequest(name="tiny"))).model.stats
    assert list(info.input_shape) == [1, 3, 8, 8]
    assert info.max_batch_size == 1  # the graph's fixed batch wins over the default of 8
    assert info.num_labels == 4
    assert list(info.labels) == ["class-0", "class-1", "class-2", "class-3"]
    assert info.input_layout == "NCHW"
    assert info.variant == ""
    # No preprocessor config: the size comes from the graph.
    assert json_format.MessageToDict(info.preprocessing)["size"] == {"height": 8, "width": 8}
    # Three inputs run one at a time, in order.
    assert len(response.results) == 3
    for colour, result in zip(COLOURS, response.results, strict=False):
        np.testing.assert_allclose(scores_by_index(result), vit_logits(colour), atol=1e-5)
    assert stats.batches == 3 and stats.inputs == 3
    assert dict(stats.batch_size_counts) == {1: 3}


async def test_fixed_batch_two_pads_the_last_run(tmp_path: Path) -> None:
    path = tiny_bare_model(tmp_path, [2, 3, 8, 8])
    async with running_server(models=[{"name": "tiny", "source": str(path)}]) as server, connect(server) as stub:
        response = await stub.Classify(
            pb.ClassifyRequest(model="tiny", inputs=[solid(c) for c in COLOURS], parameters=NONE)
        )
        info = (await stub.GetModel(pb.GetModelRequest(name="tiny"))).model
    assert info.max_batch_size == 2
    # Five inputs: runs of 2, 2 and 1 padded to 2; every input gets its own scores, none the padding's.
    assert len(response.results) == 5
    for colour, result in zip(COLOURS, response.results, strict=True):
        np.testing.assert_allclose(scores_by_index(result), vit_logits(colour), atol=1e-5)
    assert info.stats.batches == 3 and info.stats.inputs == 5
    assert dict(info.stats.batch_size_counts) == {2: 2, 1: 1}


async def test_dynamic_batch_tiny_model_batches_freely(tmp_path: Path) -> None:
    path = tiny_bare_model(tmp_path, ["N", 3, 8, 8])
    one_batch = {"batching": {"max_batch_size": 8}, "runtime": {"instances": 1}}
    models = [{"name": "tiny", "source": str(path)}]
    async with running_server(models=models, **one_batch) as server, connect(server) as stub:
        response = await stub.Classify(
            pb.ClassifyRequest(model="tiny", inputs=[solid(c) for c in COLOURS], parameters=NONE)
        )
        info = (await stub.GetModel(pb.GetModelRequest(name="tiny"))).model
    assert list(info.input_shape) == [-1, 3, 8, 8]
    assert info.max_batch_size == 8
    assert dict(info.stats.batch_size_counts) == {5: 1}
    for colour, result in zip(COLOURS, response.results, strict=True):
        np.testing.assert_allclose(scores_by_index(result), vit_logits(colour), atol=1e-5)


async def test_nhwc_model_detected(tmp_path: Path) -> None:
    path = tiny_bare_model(tmp_path, ["N", 8, 8, 3], layout="NHWC")
    async with running_server(models=[{"name": "tiny", "source": str(path)}]) as server, connect(server) as stub:
        info = (await stub.GetModel(pb.GetModelRequest(name="tiny"))).model
        response = await stub.Classify(
            pb.ClassifyRequest(model="tiny", inputs=[solid(c) for c in COLOURS], parameters=NONE)
        )
    assert info.input_layout == "NHWC"
    assert list(info.input_shape) == [-1, 8, 8, 3]
    assert json_format.MessageToDict(info.preprocessing)["size"] == {"height": 8, "width": 8}
    # Solid colours fed in the wrong layout would mix the channels.
    for colour, result in zip(COLOURS, response.results, strict=True):
        np.testing.assert_allclose(scores_by_index(result), vit_logits(colour), atol=1e-5)


async def test_bare_model_without_labels_file(tmp_path: Path) -> None:
    path = tiny_bare_model(tmp_path, ["N", 3, 8, 8], labels=None)
    async with running_server(models=[{"name": "tiny", "source": str(path)}]) as server, connect(server) as stub:
        info = (await stub.GetModel(pb.GetModelRequest(name="tiny"))).model
        response = await stub.Classify(pb.ClassifyRequest(model="tiny", inputs=[solid((255, 0, 0))]))
    assert list(info.labels) == ["LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3"]
    # Four labels and no problem_type: the pipeline's default is softmax.
    assert info.default_function_to_apply == pb.FUNCTION_TO_APPLY_SOFTMAX
    assert sum(label.score for label in response.results[0].labels) == pytest.approx(1.0, abs=1e-5)


async def start_error(models: list[dict[str, Any]]) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as exc:
        async with running_server(models=models):
            pass
    assert isinstance(exc.value, StartupError)  # never answered to a caller: no status
    return exc.value


async def test_two_input_model_refused(tmp_path: Path) -> None:
    path = tiny_bare_model(tmp_path, ["N", 3, 8, 8], second_input=True)
    error = await start_error([{"name": "tiny", "source": str(path)}])
    assert "one input" in error.message and "'pixels', 'bias'" in error.message
    assert "model tiny" in error.message


async def test_int64_input_refused(tmp_path: Path) -> None:
    path = tiny_bare_model(tmp_path, ["N", 3, 8, 8], input_type=TensorProto.INT64)
    error = await start_error([{"name": "tiny", "source": str(path)}])
    assert "tensor(int64)" in error.message and "float or float16 needed" in error.message


async def test_labels_count_mismatch_refused(tmp_path: Path) -> None:
    path = tiny_bare_model(tmp_path, ["N", 3, 8, 8], labels=3)
    error = await start_error([{"name": "tiny", "source": str(path)}])
    assert "3 labels but the model outputs 4 scores" in error.message


def tiny_spec(folder: Path, **fields: Any) -> Path:
    spec = {
        "model": "two-outputs.onnx",
        "labels": ["a", "b", "c", "d"],
        "resize": {"mode": "exact", "height": 8, "width": 8},
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
        "function_to_apply": "none",
        **fields,
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def two_output_model(tmp_path: Path) -> Path:
    build_tiny_model(tmp_path / "two-outputs.onnx", ["N", 3, 8, 8], outputs={"first": WEIGHTS, "second": OTHER_WEIGHTS})
    return tmp_path


@pytest.mark.parametrize(("output", "weights"), [(None, WEIGHTS), ("first", WEIGHTS), ("second", OTHER_WEIGHTS)])
async def test_spec_output_selects_the_scores(two_output_model: Path, output: str | None, weights: np.ndarray) -> None:
    spec = tiny_spec(two_output_model, **({"output": output} if output else {}))
    colour = (200, 100, 50)
    async with running_server(models=[{"name": "tiny", "source": str(spec)}]) as server, connect(server) as stub:
        response = await stub.Classify(
            pb.ClassifyRequest(model="tiny", inputs=[solid(colour)], parameters=pb.Parameters(top_k=0))
        )
    # pixel_range 1, mean 0, std 1: the model sees x / 255; the spec's default function is none.
    expected = (np.array(colour) / 255) @ weights
    np.testing.assert_allclose(scores_by_index(response.results[0]), expected, atol=1e-5)


async def test_spec_bgr_channel_order(two_output_model: Path) -> None:
    spec = tiny_spec(two_output_model, channel_order="BGR", mean=[0.1, 0.2, 0.3])
    colour = (200, 100, 50)
    async with running_server(models=[{"name": "tiny", "source": str(spec)}]) as server, connect(server) as stub:
        response = await stub.Classify(
            pb.ClassifyRequest(model="tiny", inputs=[solid(colour)], parameters=pb.Parameters(top_k=0))
        )
    # Channel 0 of the model is blue, and the mean is given in the model's (BGR) order.
    bgr = np.array(colour[::-1]) / 255 - np.array([0.1, 0.2, 0.3])
    np.testing.assert_allclose(scores_by_index(response.results[0]), bgr @ WEIGHTS, atol=1e-5)


async def test_spec_wrong_output_lists_outputs(two_output_model: Path) -> None:
    spec = tiny_spec(two_output_model, output="scores")
    error = await start_error([{"name": "tiny", "source": str(spec)}])
    assert "no output named 'scores'" in error.message
    assert "['first', 'second']" in error.message


async def test_spec_labels_count_mismatch(two_output_model: Path) -> None:
    spec = tiny_spec(two_output_model, labels=["a", "b"])
    error = await start_error([{"name": "tiny", "source": str(spec)}])
    assert "2 labels but the model outputs 4 scores" in error.message


async def test_spec_size_disagreeing_with_graph_refused(two_output_model: Path) -> None:
    # The graph takes 8x8; a spec producing 16x16 images would fail every request, so it fails at start.
    spec = tiny_spec(two_output_model, resize={"mode": "exact", "height": 16, "width": 16})
    error = await start_error([{"name": "tiny", "source": str(spec)}])
    assert "16x16" in error.message and "8x8" in error.message


async def test_function_none_keeps_negative_scores(tmp_path: Path) -> None:
    path = tiny_bare_model(tmp_path, ["N", 3, 8, 8])
    colour = (255, 0, 0)  # logits [1, -1, -1, -1] after (x/255 - 0.5) / 0.5
    async with running_server(models=[{"name": "tiny", "source": str(path)}]) as server, connect(server) as stub:
        response = await stub.Classify(pb.ClassifyRequest(model="tiny", inputs=[solid(colour)], parameters=NONE))
    assert len(response.results[0].labels) == 4
    np.testing.assert_allclose(scores_by_index(response.results[0]), vit_logits(colour), atol=1e-5)


async def test_dynamic_size_model_refuses_an_unbounded_input_made_by_overrides(tmp_path: Path) -> None:
    path = tiny_bare_model(tmp_path, ["N", 3, "H", "W"])
    big = io.BytesIO()
    Image.new("RGB", (2100, 2100), (200, 10, 10)).save(big, format="PNG")  # compresses to a few KB
    request = pb.ClassifyRequest(model="tiny", inputs=[pb.Input(image=big.getvalue())], parameters=NONE)
    request.preprocessor_overrides.update({"do_resize": False})
    async with running_server(models=[{"name": "tiny", "source": str(path)}]) as server, connect(server) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Classify(request)
        # The same model takes a size within the limit as it is.
        small = io.BytesIO()
        Image.new("RGB", (300, 200), (200, 10, 10)).save(small, format="PNG")
        request.inputs[0].image = small.getvalue()
        assert len((await stub.Classify(request)).results) == 1
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        "inputs[0]: preprocessing made a 2100x2100 (height x width) image, over the limit of 4194304 pixels "
        "for a model input; resize or crop it (do_resize, do_center_crop)"
    )


def test_backend_builds_a_solo_session_only_when_asked_and_it_gives_the_same_scores() -> None:
    from imgcls.server.runtime.onnx import OnnxBackend, RuntimeOptions

    onnx_path = EFFICIENTNET / "onnx" / "model.onnx"
    shared = OnnxBackend(onnx_path, RuntimeOptions(1, 0, ("CPUExecutionProvider",), solo_intra_op_threads=2))
    plain = OnnxBackend(onnx_path, RuntimeOptions(1, 0, ("CPUExecutionProvider",)))
    assert shared.has_solo_session and not plain.has_solo_session
    batch = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    np.testing.assert_allclose(shared.run_alone(batch), shared.run(batch), atol=1e-5)
    np.testing.assert_allclose(plain.run_alone(batch), plain.run(batch), atol=0)
