"""Every image processor family against transformers itself (its PIL image processors, pinned in pyproject).

Each case is a model folder in Hugging Face layout with the preprocessor_config.json a real repo of that
family ships (legacy feature_extractor_type files with int sizes among them), and a tiny ONNX classifier
built here: logits = flatten(pixel_values) @ W, with W random, so every step of the preprocessing moves
every score. imgcls's model input must equal transformers' pixel_values, and its top-5 scores through the
server (imgcls.v1 gRPC and the Hugging Face HTTP route) match those of transformers' pixel_values run
through the same graph, within 0.01. Each family's distinctive step is then removed from the config and
the scores must move by more than that, so a test cannot pass with the step ignored.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from imgcls.server.domain.errors import InvalidInputError
from imgcls.server.images import families
from imgcls.server.images.preprocessing import compile_preprocessor
from imgcls.server.sources.local import load_hf_folder
from imgcls.v1 import classifier_pb2 as pb
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from support.paths import IMAGES
from support.servers import connect, running_server

transformers = pytest.importorskip("transformers")  # a dev dependency: installed wherever the suite runs

DEFAULT_MEAN, DEFAULT_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
HALF = [0.5, 0.5, 0.5]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
RESCALE = 0.00392156862745098
# coffee_1920x1280.jpg: large enough for JPEG draft decoding, which the served test has on.
PHOTOS = ("cat.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg", "camera.png", "coffee_1920x1280.jpg")
CLASSES = 10


@dataclass(frozen=True)
class Case:
    family: str  # the family as imgcls names it
    repo: str  # the real repo whose preprocessor_config.json this is
    model_type: str
    config: Mapping[str, Any]
    # The keys that make this family different, with values that would remove that step: the scores
    # must move when the config is given them.
    distinctive: Mapping[str, Any] = field(default_factory=dict)
    # transformers 5 no longer has the class: the 4.x class it was, as a transformers 5 processor and kwargs.
    reference: tuple[str, Mapping[str, Any]] | None = None


CASES = (
    Case(
        "ViTImageProcessor",
        "google/vit-base-patch16-224",
        "vit",
        {
            "do_normalize": True,
            "do_resize": True,
            "feature_extractor_type": "ViTFeatureExtractor",
            "image_mean": HALF,
            "image_std": HALF,
            "resample": 2,
            "size": 224,
        },
        {"image_std": DEFAULT_STD},
    ),
    Case(
        "ViTImageProcessor",
        "microsoft/swin-tiny-patch4-window7-224",
        "swin",
        {
            "do_normalize": True,
            "do_resize": True,
            "feature_extractor_type": "ViTFeatureExtractor",
            "image_mean": DEFAULT_MEAN,
            "image_std": DEFAULT_STD,
            "resample": 3,
            "size": 224,
        },
        {"image_mean": HALF},
    ),
    Case(
        "DeiTImageProcessor",
        "facebook/deit-small-patch16-224",
        "deit",
        {
            "crop_size": 224,
            "do_center_crop": True,
            "do_normalize": True,
            "do_resize": True,
            "feature_extractor_type": "DeiTFeatureExtractor",
            "image_mean": DEFAULT_MEAN,
            "image_std": DEFAULT_STD,
            "resample": 3,
            "size": 256,
        },
        {"size": 224},
    ),
    Case(
        "BeitImageProcessor",
        "microsoft/beit-base-patch16-224",
        "beit",
        {
            "crop_size": 224,
            "do_center_crop": False,
            "do_normalize": True,
            "do_resize": True,
            "feature_extractor_type": "BeitFeatureExtractor",
            "image_mean": HALF,
            "image_std": HALF,
            "reduce_labels": False,
            "resample": 2,
            "size": 224,
        },
        {"image_std": DEFAULT_STD},
    ),
    Case(
        "BeitImageProcessor",
        "facebook/data2vec-vision-base-ft1k",
        "data2vec-vision",
        {
            "crop_size": 224,
            "do_center_crop": False,
            "do_normalize": True,
            "do_resize": True,
            "image_processor_type": "BeitImageProcessor",
            "image_mean": HALF,
            "image_std": HALF,
            "do_reduce_labels": False,
            "resample": 2,
            "size": {"height": 224, "width": 224},
        },
        {"image_mean": DEFAULT_MEAN},
    ),
    Case(
        "ConvNextImageProcessor",
        "facebook/convnext-tiny-224",
        "convnext",
        {
            "crop_pct": 0.875,
            "do_normalize": True,
            "do_resize": True,
            "feature_extractor_type": "ConvNextFeatureExtractor",
            "image_mean": DEFAULT_MEAN,
            "image_std": DEFAULT_STD,
            "resample": 3,
            "size": 224,
        },
        {"crop_pct": 1.0},
    ),
    Case(
        "ConvNextImageProcessor",
        "microsoft/resnet-50",
        "resnet",
        {
            "crop_pct": 0.875,
            "do_normalize": True,
            "do_resize": True,
            "feature_extractor_type": "ConvNextFeatureExtractor",
            "image_mean": DEFAULT_MEAN,
            "image_std": DEFAULT_STD,
            "resample": 3,
            "size": 224,
        },
        {"crop_pct": 1.0},
    ),
    Case(
        "ConvNextImageProcessor",
        "facebook/convnext-base-384",
        "convnext",
        {
            "crop_pct": 0.875,
            "do_normalize": True,
            "do_resize": True,
            "feature_extractor_type": "ConvNextFeatureExtractor",
            "image_mean": DEFAULT_MEAN,
            "image_std": DEFAULT_STD,
            "resample": 3,
            "size": 384,
        },
        {"image_std": HALF},
    ),
    Case(
        "MobileNetV1ImageProcessor",
        "google/mobilenet_v1_1.0_224",
        "mobilenet_v1",
        {
            "crop_size": {"height": 224, "width": 224},
            "do_center_crop": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": HALF,
            "image_std": HALF,
            "image_processor_type": "MobileNetV1ImageProcessor",
            "resample": 2,
            "rescale_factor": RESCALE,
            "size": {"shortest_edge": 256},
        },
        {"size": {"shortest_edge": 224}},
    ),
    Case(
        "MobileNetV2ImageProcessor",
        "google/mobilenet_v2_1.0_224",
        "mobilenet_v2",
        {
            "crop_size": {"height": 224, "width": 224},
            "do_center_crop": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": HALF,
            "image_std": HALF,
            "image_processor_type": "MobileNetV2ImageProcessor",
            "resample": 2,
            "rescale_factor": RESCALE,
            "size": {"shortest_edge": 256},
        },
        {"size": {"shortest_edge": 224}},
    ),
    Case(
        "MobileViTImageProcessor",
        "apple/mobilevit-small",
        "mobilevit",
        {
            "crop_size": 256,
            "do_center_crop": True,
            "do_flip_channel_order": True,
            "do_resize": True,
            "feature_extractor_type": "MobileViTFeatureExtractor",
            "resample": 2,
            "size": 288,
        },
        {"do_flip_channel_order": False},
    ),
    Case(
        "MobileViTImageProcessor",
        "apple/mobilevitv2-1.0-imagenet1k-256",
        "mobilevitv2",
        {
            "crop_size": {"height": 256, "width": 256},
            "do_center_crop": True,
            "do_flip_channel_order": True,
            "do_rescale": True,
            "do_resize": True,
            "image_processor_type": "MobileViTImageProcessor",
            "resample": 2,
            "rescale_factor": RESCALE,
            "size": {"shortest_edge": 256},
        },
        {"do_flip_channel_order": False},
    ),
    Case(
        "EfficientNetImageProcessor",
        "google/efficientnet-b0",
        "efficientnet",
        {
            "crop_size": {"height": 289, "width": 289},
            "do_center_crop": False,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": DEFAULT_MEAN,
            "image_processor_type": "EfficientNetImageProcessor",
            "image_std": [0.47853944, 0.4732864, 0.47434163],
            "include_top": True,
            "resample": 0,
            "rescale_factor": RESCALE,
            "rescale_offset": False,
            "size": {"height": 224, "width": 224},
        },
        {"include_top": False},
    ),
    Case(
        "EfficientNetImageProcessor",
        "google/efficientnet-b0 (rescale_offset)",
        "efficientnet",
        {
            "do_center_crop": False,
            "do_normalize": False,
            "do_rescale": True,
            "do_resize": True,
            "image_processor_type": "EfficientNetImageProcessor",
            "image_std": HALF,
            "include_top": False,
            "resample": 3,
            "rescale_factor": 2 * RESCALE,
            "rescale_offset": True,
            "size": {"height": 224, "width": 224},
        },
        {"rescale_offset": False},
    ),
    Case(
        "LevitImageProcessor",
        "facebook/levit-128S",
        "levit",
        {
            "crop_size": {"height": 224, "width": 224},
            "do_center_crop": True,
            "do_normalize": True,
            "do_resize": True,
            "feature_extractor_type": "LevitFeatureExtractor",
            "image_mean": DEFAULT_MEAN,
            "image_std": DEFAULT_STD,
            "resample": 3,
            "size": {"shortest_edge": 224},
        },
        {"size": {"height": 224, "width": 224}},
    ),
    Case(
        "PoolFormerImageProcessor",
        "sail/poolformer_s12",
        "poolformer",
        {
            "crop_pct": 0.9,
            "crop_size": 224,
            "do_center_crop": True,
            "do_normalize": True,
            "do_resize_and_center_crop": True,
            "feature_extractor_type": "PoolFormerFeatureExtractor",
            "image_mean": DEFAULT_MEAN,
            "image_std": DEFAULT_STD,
            "resample": 3,
            "size": 224,
        },
        {"crop_pct": 1.0},
    ),
    Case(
        "PerceiverImageProcessor",
        "deepmind/vision-perceiver-learned",
        "perceiver",
        {
            "crop_size": 256,
            "do_center_crop": True,
            "do_normalize": True,
            "do_resize": True,
            "feature_extractor_type": "PerceiverFeatureExtractor",
            "image_mean": DEFAULT_MEAN,
            "image_std": DEFAULT_STD,
            "resample": 3,
            "size": 224,
        },
        {"do_center_crop": False},
    ),
    Case(
        "BitImageProcessor",
        "google/bit-50",
        "bit",
        {
            "crop_size": {"height": 224, "width": 224},
            "do_center_crop": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": HALF,
            "image_processor_type": "BitImageProcessor",
            "image_std": HALF,
            "resample": 3,
            "rescale_factor": RESCALE,
            "size": {"shortest_edge": 256},
        },
        {"size": {"shortest_edge": 224}},
    ),
    Case(
        "BitImageProcessor",
        "facebook/dinov2-small-imagenet1k-1-layer",
        "dinov2",
        {
            "crop_size": {"height": 224, "width": 224},
            "do_center_crop": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": DEFAULT_MEAN,
            "image_processor_type": "BitImageProcessor",
            "image_std": DEFAULT_STD,
            "resample": 3,
            "rescale_factor": RESCALE,
            "size": {"shortest_edge": 256},
        },
        {"size": {"shortest_edge": 224}},
    ),
    Case(
        "ViTHybridImageProcessor",
        "google/vit-hybrid-base-bit-384",
        "vit-hybrid",
        {
            "crop_size": {"height": 384, "width": 384},
            "do_center_crop": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": HALF,
            "image_processor_type": "ViTHybridImageProcessor",
            "image_std": HALF,
            "resample": 3,
            "rescale_factor": RESCALE,
            "size": {"shortest_edge": 384},
        },
        {"image_std": DEFAULT_STD},
        reference=("BitImageProcessorPil", {}),
    ),
    Case(
        "CLIPImageProcessor",
        "openai/clip-vit-base-patch32",
        "clip",
        {
            "crop_size": 224,
            "do_center_crop": True,
            "do_normalize": True,
            "do_resize": True,
            "feature_extractor_type": "CLIPFeatureExtractor",
            "image_mean": CLIP_MEAN,
            "image_std": CLIP_STD,
            "resample": 3,
            "size": 224,
        },
        {"size": 256},
    ),
    Case(
        "SiglipImageProcessor",
        "google/siglip-base-patch16-224",
        "siglip",
        {
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": HALF,
            "image_processor_type": "SiglipImageProcessor",
            "image_std": HALF,
            "processor_class": "SiglipProcessor",
            "resample": 3,
            "rescale_factor": RESCALE,
            "size": {"height": 224, "width": 224},
        },
        {"image_mean": DEFAULT_MEAN},
    ),
    Case(
        "SegformerImageProcessor",
        "nvidia/mit-b0",
        "segformer",
        {
            "do_normalize": True,
            "do_resize": True,
            "feature_extractor_type": "SegformerFeatureExtractor",
            "image_mean": DEFAULT_MEAN,
            "image_std": DEFAULT_STD,
            "reduce_labels": False,
            "resample": 2,
            "size": 512,
        },
        {"image_std": HALF},
    ),
    Case(
        "PvtImageProcessor",
        "Zetatech/pvt-tiny-224",
        "pvt",
        {
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": DEFAULT_MEAN,
            "image_processor_type": "PvtImageProcessor",
            "image_std": DEFAULT_STD,
            "resample": 2,
            "rescale_factor": RESCALE,
            "size": {"height": 224, "width": 224},
        },
        {"image_std": HALF},
    ),
    Case(
        "EfficientFormerImageProcessor",
        "snap-research/efficientformer-l1-300",
        "efficientformer",
        {
            "crop_pct": 0.95,
            "crop_size": {"height": 224, "width": 224},
            "do_center_crop": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": DEFAULT_MEAN,
            "image_processor_type": "EfficientFormerImageProcessor",
            "image_std": DEFAULT_STD,
            "resample": 3,
            "rescale_factor": RESCALE,
            "size": {"shortest_edge": 224},
        },
        {"do_center_crop": False, "size": {"height": 224, "width": 224}},
        # transformers 4.x's class: the standard steps with these defaults, crop_pct never read.
        reference=("ViTImageProcessorPil", {"default_to_square": False}),
    ),
)
IDS = [f"{case.family.removesuffix('ImageProcessor')}-{case.repo.split('/')[-1]}" for case in CASES]


def reference_processor(case: Case, config: Mapping[str, Any], folder: Path) -> Any:
    """transformers' own image processor for the config, as its pipeline loads it (PIL backend)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if case.reference is None:
            return transformers.AutoImageProcessor.from_pretrained(str(folder), backend="pil")
        name, extra = case.reference
        kwargs = {k: v for k, v in config.items() if k not in ("image_processor_type", "crop_pct")}
        return getattr(transformers, name)(**{**kwargs, **extra})


def reference_pixels(processor: Any, image: Image.Image) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(processor(image, return_tensors="np")["pixel_values"][0], dtype=np.float32)


def classifier(height: int, width: int, seed: int) -> onnx.ModelProto:
    """logits = flatten(pixel_values) @ W: every pixel moves every score; W scaled so scores are not saturated."""
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((3 * height * width, CLASSES)) * (3.0 / np.sqrt(3 * height * width))).astype(
        np.float32
    )
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["pixel_values"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch_size", 3, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", CLASSES])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def model_folder(root: Path, case: Case, config: Mapping[str, Any], hw: tuple[int, int]) -> Path:
    folder = root / case.repo.replace("/", "--").replace(" ", "_")
    (folder / "onnx").mkdir(parents=True, exist_ok=True)
    labels = {str(i): f"class {i}" for i in range(CLASSES)}
    (folder / "config.json").write_text(json.dumps({"model_type": case.model_type, "id2label": labels}))
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    onnx.save(classifier(*hw, seed=sum(map(ord, case.repo))), folder / "onnx" / "model.onnx")
    return folder


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


def photo(name: str) -> Image.Image:
    with Image.open(IMAGES / name) as image:
        return image.convert("RGB")


@dataclass
class Prepared:
    folder: Path
    session: ort.InferenceSession
    reference: dict[str, np.ndarray]  # per photo: transformers' pixel_values
    expected: dict[str, np.ndarray]  # per photo: the softmaxed scores of those


def prepare(root: Path, case: Case, config: Mapping[str, Any] | None = None) -> Prepared:
    config = dict(config if config is not None else case.config)
    staging = root / "staging" / case.repo.replace("/", "--").replace(" ", "_")
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "preprocessor_config.json").write_text(json.dumps(config))
    (staging / "config.json").write_text(json.dumps({"model_type": case.model_type}))
    processor = reference_processor(case, config, staging)
    reference = {name: reference_pixels(processor, photo(name)) for name in PHOTOS}
    shape = next(iter(reference.values())).shape
    folder = model_folder(root, case, config, (shape[1], shape[2]))
    session = ort.InferenceSession(str(folder / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = {
        name: softmax(session.run(None, {"pixel_values": pixels[None]})[0][0]) for name, pixels in reference.items()
    }
    return Prepared(folder, session, reference, expected)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("families")


def imgcls_pixels(folder: Path, image: Image.Image, *, jpeg_draft: bool = False) -> np.ndarray:
    """The model input imgcls makes, from the folder as the server loads it."""
    files = load_hf_folder(folder, "fp32", source=str(folder))
    config = {**files.preprocessing}
    if families.processor_name(config) is None:
        config["image_processor_type"] = families.processor_for_model_type(files.model_type)
    preprocessor = compile_preprocessor(config, dtype=np.dtype(np.float32), jpeg_draft=jpeg_draft)
    return preprocessor(image)


def test_every_family_has_a_case() -> None:
    tested = {case.family for case in CASES}
    assert {family.processor for family in families.FAMILIES} - tested == {"ImgclsSpecImageProcessor"}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_model_input_equals_transformers(root: Path, case: Case) -> None:
    prepared = prepare(root, case)
    for name in PHOTOS:
        ours = imgcls_pixels(prepared.folder, photo(name))
        theirs = prepared.reference[name]
        assert ours.shape == theirs.shape, name
        # float32 rounding of the fused rescale-and-normalize: a few ulps of values up to ~|5|
        np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_distinctive_step_moves_the_scores(root: Path, case: Case) -> None:
    """Without the family's own step the answers differ from transformers' by more than the 0.01 allowed,
    so test_served_scores_match_transformers would catch that step being ignored."""
    prepared = prepare(root, case)
    changed = {**case.config, **case.distinctive}
    worst = 0.0
    for name in PHOTOS:
        files_config = dict(changed)
        if families.processor_name(files_config) is None:
            files_config["image_processor_type"] = case.family
        altered = compile_preprocessor(files_config, dtype=np.dtype(np.float32), jpeg_draft=False)(photo(name))
        if altered.shape != prepared.reference[name].shape:
            worst = 1.0  # the graph could not even take it
            break
        scores = softmax(prepared.session.run(None, {"pixel_values": altered[None]})[0][0])
        worst = max(worst, float(np.abs(scores - prepared.expected[name]).max()))
    assert worst > 0.02, f"{case.repo}: removing {dict(case.distinctive)} moved scores by only {worst:.4f}"


def top5(scores: np.ndarray) -> list[tuple[str, float]]:
    order = np.argsort(-scores, kind="stable")[:5]
    return [(f"class {i}", float(scores[i])) for i in order]


def assert_close(got: list[tuple[str, float]], want: list[tuple[str, float]], what: str) -> float:
    want_scores = dict(want)
    worst = 0.0
    for label, score in got:
        assert label in want_scores or abs(score - want[-1][1]) < 0.01, f"{what}: {got} vs {want}"
        if label in want_scores:
            worst = max(worst, abs(score - want_scores[label]))
    assert worst < 0.01, f"{what}: scores differ by {worst:.4f}: {got} vs {want}"
    return worst


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_served_scores_match_transformers(root: Path, case: Case) -> None:
    """Served with the defaults (JPEG draft decoding on), over imgcls.v1 gRPC and the Hugging Face route."""
    prepared = await asyncio.to_thread(prepare, root, case)
    models = [{"name": "family", "source": str(prepared.folder)}]
    async with running_server(models=models, http_port="auto") as server, connect(server) as stub:
        request = pb.ClassifyRequest(inputs=[pb.Input(image=(IMAGES / n).read_bytes()) for n in PHOTOS])
        response = await stub.Classify(request)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as http:
            answers = [
                (await http.post("/models/family", content=(IMAGES / n).read_bytes())).json() for n in PHOTOS[:2]
            ]
    for name, result in zip(PHOTOS, response.results, strict=True):
        got = [(label.label, label.score) for label in result.labels]
        assert_close(got, top5(prepared.expected[name]), f"{case.repo} {name} over gRPC")
    for name, answer in zip(PHOTOS[:2], answers, strict=True):
        got = [(item["label"], item["score"]) for item in answer]
        assert_close(got, top5(prepared.expected[name]), f"{case.repo} {name} over HTTP")


# -- refusals ---------------------------------------------------------------------------------------------


def _write(folder: Path, preprocessor: Mapping[str, Any] | None, model_type: str | None = "vit") -> Path:
    (folder / "onnx").mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"id2label": {str(i): f"class {i}" for i in range(CLASSES)}}
    if model_type:
        config["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(config))
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    onnx.save(classifier(8, 8, seed=1), folder / "onnx" / "model.onnx")
    return folder


@pytest.mark.parametrize(
    ("preprocessor", "model_type", "message"),
    [
        (
            {"image_processor_type": "ImageGPTImageProcessor", "size": 8},
            "imagegpt",
            "'ImageGPTImageProcessor' is not one imgcls reproduces: it turns pixels into colour-cluster",
        ),
        (
            {"image_processor_type": "MadeUpImageProcessor", "size": 8},
            "vit",
            "image processor 'MadeUpImageProcessor' is not one imgcls reproduces; serve it with a custom model spec",
        ),
        (
            {"image_processor_type": "ViTImageProcessor", "size": 8, "do_pad": True},
            "vit",
            "ViTImageProcessor: do_pad True changes the result and imgcls does not implement it",
        ),
        (
            {"image_processor_type": "ViTImageProcessor", "size": 8, "auto_map": {"AutoImageProcessor": "x.Y"}},
            "vit",
            "the preprocessor config has auto_map: its preprocessing is code of its own",
        ),
        ({"size": 8}, "hgnet_v2", "names no image processor imgcls reproduces"),
        (None, None, "it has no preprocessor_config.json"),
        (
            {"image_processor_type": "ViTImageProcessor", "size": {"longest_edge": 8}},
            "vit",
            "a longest_edge or max_height/max_width size is not implemented",
        ),
        (
            {"image_processor_type": "ConvNextImageProcessor", "size": {"height": 8, "width": 8}},
            "convnext",
            "ConvNextImageProcessor: size must be {shortest_edge}",
        ),
    ],
    ids=["imagegpt", "unknown", "do_pad", "auto_map", "no-type", "no-config", "longest_edge", "convnext-hw"],
)
async def test_unfaithful_models_are_refused_at_start(
    tmp_path: Path, preprocessor: dict[str, Any] | None, model_type: str | None, message: str
) -> None:
    folder = _write(tmp_path / "model", preprocessor, model_type)
    with pytest.raises(Exception) as caught:
        async with running_server(models=[{"name": "m", "source": str(folder)}]):
            pass
    assert type(caught.value).__name__ == "ModelLoadError"
    assert message in str(caught.value) and "model m" in str(caught.value)


async def test_a_type_from_model_type_when_the_config_names_none(tmp_path: Path) -> None:
    """As transformers' AutoImageProcessor: config.json's model_type names the processor (DeiT's defaults here)."""
    folder = _write(tmp_path / "model", {"size": 8, "crop_size": 8, "do_center_crop": True}, "deit")
    assert imgcls_pixels(folder, photo("cat.jpg")).shape == (3, 8, 8)
    files = load_hf_folder(folder, "fp32", source="m")
    assert files.model_type == "deit"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"crop_pct": 0.5}, "ViTImageProcessor does not read 'crop_pct'"),
        ({"do_flip_channel_order": True}, "ViTImageProcessor does not read 'do_flip_channel_order'"),
        ({"include_top": True}, "ViTImageProcessor does not read 'include_top'"),
    ],
)
def test_overrides_a_family_does_not_read_are_refused(overrides: dict[str, Any], message: str) -> None:
    from imgcls.server.images.preprocessing import merge_overrides

    with pytest.raises(InvalidInputError) as caught:
        merge_overrides({"image_processor_type": "ViTImageProcessor"}, overrides)
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("key", "message"),
    [("size", "do_resize needs a size"), ("resample", "resample must be"), ("crop_size", "needs a crop_size")],
)
def test_a_null_a_step_needs_is_refused_as_transformers_refuses_it(tmp_path: Path, key: str, message: str) -> None:
    """transformers keeps a null config value (not its class default) and refuses it where a step needs it."""
    config = {"image_processor_type": "DeiTImageProcessor", key: None}
    folder = _write(tmp_path / "model", config, "deit")
    with pytest.raises(ValueError, match="must be specified"):
        reference_pixels(reference_processor(CASES[2], config, folder), photo("cat.jpg"))
    with pytest.raises(InvalidInputError, match=message):
        compile_preprocessor(config, dtype=np.dtype(np.float32), jpeg_draft=False)


# -- graphs as exporters write them -----------------------------------------------------------------------


def exported_graph(
    *, batch: int | str = "batch_size", side: int | str = 8, outputs: tuple[str, ...] = ("logits",)
) -> onnx.ModelProto:
    """A classifier over the per-channel means (any height and width), with the output names an exporter gives:
    a distilled DeiT's "logits" is the average of its "cls_logits" and "distillation_logits"."""
    rng = np.random.default_rng(7)
    cls_w, dist_w = (rng.standard_normal((3, CLASSES)).astype(np.float32) * 4 for _ in range(2))
    nodes = [
        helper.make_node("GlobalAveragePool", ["pixel_values"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "Wc"], ["cls_logits"]),
        helper.make_node("MatMul", ["flat", "Wd"], ["distillation_logits"]),
        helper.make_node("Add", ["cls_logits", "distillation_logits"], ["summed"]),
        helper.make_node("Mul", ["summed", "half"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "exported",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [batch, 3, side, side])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, CLASSES]) for name in outputs],
        initializer=[
            numpy_helper.from_array(cls_w, "Wc"),
            numpy_helper.from_array(dist_w, "Wd"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def exported_folder(root: Path, graph: onnx.ModelProto, preprocessor: Mapping[str, Any]) -> Path:
    folder = _write(root, preprocessor, "deit")
    onnx.save(graph, folder / "onnx" / "model.onnx")
    return folder


async def classify_all(folder: Path, names: tuple[str, ...] = PHOTOS, **settings: Any) -> list[list[tuple[str, float]]]:
    models = [{"name": "m", "source": str(folder)}]
    async with running_server(models=models, jpeg_draft=False, **settings) as server, connect(server) as stub:
        calls = [stub.Classify(pb.ClassifyRequest(inputs=[pb.Input(image=(IMAGES / n).read_bytes())])) for n in names]
        responses = await asyncio.gather(*calls)
    return [[(label.label, label.score) for label in r.results[0].labels] for r in responses]


def expected_top5(folder: Path, graph: onnx.ModelProto, output: str, names: tuple[str, ...] = PHOTOS) -> list[Any]:
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    answers = []
    for name in names:
        pixels = imgcls_pixels(folder, photo(name))
        (logits,) = session.run([output], {"pixel_values": pixels[None]})
        answers.append(top5(softmax(logits[0])))
    return answers


DEIT_8 = {"image_processor_type": "DeiTImageProcessor", "size": 10, "crop_size": 8, "do_center_crop": True}


async def test_the_logits_output_is_read_among_several(tmp_path: Path) -> None:
    """A distilled DeiT export: cls_logits, distillation_logits and logits (their average): logits is read."""
    graph = exported_graph(outputs=("cls_logits", "distillation_logits", "logits"))
    folder = exported_folder(tmp_path / "deit", graph, DEIT_8)
    got = await classify_all(folder)
    for answer, want, first in zip(
        got, expected_top5(folder, graph, "logits"), expected_top5(folder, graph, "cls_logits"), strict=True
    ):
        assert_close(answer, want, "logits")
        assert answer != first  # not the first output


async def test_several_outputs_none_named_logits_is_refused(tmp_path: Path) -> None:
    graph = exported_graph(outputs=("cls_logits", "distillation_logits"))
    folder = exported_folder(tmp_path / "two", graph, DEIT_8)
    with pytest.raises(Exception) as caught:
        async with running_server(models=[{"name": "m", "source": str(folder)}]):
            pass
    assert type(caught.value).__name__ == "ModelLoadError"
    assert "the graph has outputs ['cls_logits', 'distillation_logits'] and none is named 'logits'" in str(caught.value)


async def test_a_fixed_batch_of_one_is_run_one_at_a_time_for_concurrent_callers(tmp_path: Path) -> None:
    graph = exported_graph(batch=1)
    folder = exported_folder(tmp_path / "one", graph, DEIT_8)
    got = await classify_all(folder, PHOTOS * 3)
    for answer, want in zip(got, expected_top5(folder, graph, "logits", PHOTOS * 3), strict=True):
        assert_close(answer, want, "batch of one")


async def test_symbolic_height_and_width_take_the_preprocessor_size(tmp_path: Path) -> None:
    graph = exported_graph(side="height")
    folder = exported_folder(tmp_path / "dynamic", graph, {**DEIT_8, "size": 40, "crop_size": 32})
    assert imgcls_pixels(folder, photo("cat.jpg")).shape == (3, 32, 32)
    got = await classify_all(folder)
    for answer, want in zip(got, expected_top5(folder, graph, "logits"), strict=True):
        assert_close(answer, want, "symbolic size")


async def test_preprocessing_that_does_not_fit_the_graph_says_which_keys(tmp_path: Path) -> None:
    """A Perceiver config (224x224 out) on a graph that takes 8x8: the message names the processor and its sizes."""
    perceiver = {"image_processor_type": "PerceiverImageProcessor", "size": 224, "crop_size": 256}
    folder = exported_folder(tmp_path / "perceiver", exported_graph(), perceiver)
    with pytest.raises(Exception) as caught:
        async with running_server(models=[{"name": "m", "source": str(folder)}]):
            pass
    assert type(caught.value).__name__ == "ModelLoadError"
    assert (
        "preprocessing would produce 224x224 images but model m takes 8x8 "
        "(its PerceiverImageProcessor with size 224, crop_size 256)"
    ) in str(caught.value)


async def test_labels_that_do_not_match_the_graph_are_refused(tmp_path: Path) -> None:
    folder = exported_folder(tmp_path / "labels", exported_graph(), DEIT_8)
    (folder / "config.json").write_text(json.dumps({"model_type": "deit", "id2label": {"0": "a", "1": "b"}}))
    with pytest.raises(Exception) as caught:
        async with running_server(models=[{"name": "m", "source": str(folder)}]):
            pass
    assert f"2 labels but the model outputs {CLASSES} scores" in str(caught.value)
