"""Where a served model comes from: a Hugging Face layout folder, a custom model spec, a bare .onnx
file, or a Hugging Face repo id. Everything model-specific is resolved here, once, at start-up."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from imgcls.server.domain.errors import ModelLoadError
from imgcls.server.domain.types import FunctionToApply
from imgcls.server.sources.variants import VARIANT_FILES, resolve_dtype, variants_in
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
_RESAMPLE_NAMES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


@dataclass(frozen=True)
class ModelFiles:
    """A model resolved to local files and the knowledge needed to serve it."""

    onnx_path: Path
    source: str
    variant: str  # "" when the source has no variants
    labels: tuple[str, ...]
    preprocessing: dict[str, Any]  # preprocessor_config.json-style, plus channel_order/input_layout
    problem_type: str | None = None
    default_function: FunctionToApply | None = None  # None: the pipeline's choice from problem_type
    output_name: str | None = None
    # With no output_name: exporters name the scores "logits", so a graph with several outputs needs one of
    # that name (False); a custom model spec documents "the first" as its default (True).
    first_output_by_default: bool = False
    model_type: str | None = None  # config.json's; names the image processor when preprocessing does not
    extra: dict[str, Any] = field(default_factory=dict)


class _ResizeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["exact", "shortest_edge"]
    height: int | None = Field(default=None, ge=1)
    width: int | None = Field(default=None, ge=1)
    shortest_edge: int | None = Field(default=None, ge=1)


class ModelSpec(BaseModel):
    """A custom model spec file (YAML or JSON) for an ONNX model outside Hugging Face layout."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str  # the .onnx file, relative to the spec file
    labels: list[str] | str | None = None  # a list, or a text file with one label a line
    input_layout: Literal["NCHW", "NHWC"] | None = None  # None: from the graph
    channel_order: Literal["RGB", "BGR"] = "RGB"
    resize: _ResizeSpec
    center_crop: _ResizeSpec | None = None  # mode exact, height and width
    resample: int | Literal["nearest", "lanczos", "bilinear", "bicubic", "box", "hamming"] = "bilinear"
    pixel_range: Literal[1, 255] = 1  # units of mean and std: 1 = pixels scaled to 0..1, 255 = raw 0..255
    mean: list[float] = Field(default=[0.0, 0.0, 0.0], min_length=3, max_length=3)  # model channel order
    std: list[float] = Field(default=[1.0, 1.0, 1.0], min_length=3, max_length=3)
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = None
    output: str | None = None  # the output holding the scores; None: the first


def resolve_local(source: str, dtype: str) -> ModelFiles | None:
    """The model at a local path (relative to the working directory), or None when source is not an existing path.

    sources.resolve.resolve_model_files also tries the Hub and says why neither had it.
    """
    path = Path(source).expanduser()
    if not path.exists():
        return None
    return load_local(path, dtype, source=source)


def load_local(path: Path, dtype: str, *, source: str) -> ModelFiles:
    """The model at an existing path: a folder in Hugging Face layout, a spec file or a bare .onnx file."""
    if path.is_dir():
        return load_hf_folder(path, dtype, source=source)
    if path.suffix in SPEC_SUFFIXES:
        return replace(load_spec(path), source=source)
    if path.suffix == ".onnx":
        return replace(load_bare_onnx(path), source=source)
    raise ModelLoadError(f"{source}: expected a model folder, a .onnx file or a spec file (.yaml/.json)")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def load_hf_folder(folder: Path, dtype: str, *, source: str) -> ModelFiles:
    """A folder in Hugging Face layout: config.json, preprocessor_config.json, onnx/model*.onnx."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{source}: no config.json; not a model folder in Hugging Face layout")
    config = _read_json(config_path)
    labels = labels_from_config(config, source)
    preprocessor_path = folder / "preprocessor_config.json"
    preprocessing = _read_json(preprocessor_path) if preprocessor_path.is_file() else {}
    dtype = resolve_dtype(dtype, config, source)
    onnx_dir = folder / "onnx" if (folder / "onnx").is_dir() else folder
    onnx_path = onnx_dir / VARIANT_FILES[dtype]
    if not onnx_path.is_file():
        present = variants_in({p.name for p in onnx_dir.glob("*.onnx")})
        raise ModelLoadError(
            f"{source}: no {dtype} variant ({onnx_dir.name}/{VARIANT_FILES[dtype]}); "
            f"it has: {', '.join(present) or 'none'}"
        )
    return ModelFiles(
        onnx_path=onnx_path,
        source=source,
        variant=dtype,
        labels=labels,
        preprocessing=preprocessing,
        problem_type=config.get("problem_type"),
        model_type=config.get("model_type") if isinstance(config.get("model_type"), str) else None,
    )


def labels_from_config(config: dict[str, Any], source: str) -> tuple[str, ...]:
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        try:
            indexed = {int(k): str(v) for k, v in id2label.items()}
        except ValueError as exc:
            raise ModelLoadError(f"{source}: config.json id2label keys must be integers") from exc
        return tuple(indexed.get(i, f"LABEL_{i}") for i in range(max(indexed) + 1))
    num_labels = config.get("num_labels")
    if isinstance(num_labels, int) and num_labels > 0:
        return tuple(f"LABEL_{i}" for i in range(num_labels))
    raise ModelLoadError(f"{source}: config.json has no id2label or num_labels; not an image-classification model")


def _read_labels_file(path: Path) -> tuple[str, ...]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ModelLoadError(f"cannot read labels file {path}: {exc}") from exc
    return tuple(line.strip() for line in lines if line.strip())


def load_spec(spec_path: Path) -> ModelFiles:
    try:
        raw = yaml.safe_load(spec_path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"cannot read model spec {spec_path}: {exc}") from exc
    try:
        spec = ModelSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ModelLoadError(f"model spec {spec_path}: {problems}") from None
    onnx_path = (spec_path.parent / spec.model).resolve()
    if not onnx_path.is_file():
        raise ModelLoadError(f"model spec {spec_path}: model file {onnx_path} not found")
    if isinstance(spec.labels, str):
        labels = _read_labels_file(spec_path.parent / spec.labels)
    else:
        labels = tuple(spec.labels or ())
    return ModelFiles(
        onnx_path=onnx_path,
        source=str(spec_path),
        variant="",
        labels=labels,
        preprocessing=spec_preprocessing(spec, spec_path),
        default_function=FunctionToApply(spec.function_to_apply) if spec.function_to_apply else None,
        output_name=spec.output,
        first_output_by_default=True,
    )


def spec_preprocessing(spec: ModelSpec, spec_path: Path) -> dict[str, Any]:
    """A spec in preprocessor_config.json terms, so overrides and ModelInfo work the same for every model."""
    resize = spec.resize
    if resize.mode == "exact":
        if not (resize.height and resize.width):
            raise ModelLoadError(f"model spec {spec_path}: resize mode exact needs height and width")
        size: dict[str, int] = {"height": resize.height, "width": resize.width}
    else:
        if not resize.shortest_edge:
            raise ModelLoadError(f"model spec {spec_path}: resize mode shortest_edge needs shortest_edge")
        size = {"shortest_edge": resize.shortest_edge}
    config: dict[str, Any] = {
        "image_processor_type": "ImgclsSpecImageProcessor",
        "do_resize": True,
        "size": size,
        "resample": spec.resample if isinstance(spec.resample, int) else _RESAMPLE_NAMES[spec.resample],
        "do_rescale": spec.pixel_range == 1,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(spec.mean),
        "image_std": list(spec.std),
        "channel_order": spec.channel_order,
    }
    if spec.input_layout:
        config["input_layout"] = spec.input_layout
    if spec.center_crop is not None:
        if not (spec.center_crop.height and spec.center_crop.width):
            raise ModelLoadError(f"model spec {spec_path}: center_crop needs height and width")
        config["do_center_crop"] = True
        config["crop_size"] = {"height": spec.center_crop.height, "width": spec.center_crop.width}
    return config


def load_bare_onnx(path: Path) -> ModelFiles:
    """A lone .onnx file: labels from a labels.txt beside it if any, ViT-style 0.5/0.5 preprocessing."""
    labels_path = path.with_name("labels.txt")
    labels = _read_labels_file(labels_path) if labels_path.is_file() else ()
    return ModelFiles(
        onnx_path=path,
        source=str(path),
        variant="",
        labels=labels,
        preprocessing={"image_processor_type": "ViTImageProcessor"},
    )
