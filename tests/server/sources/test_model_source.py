"""Resolving a model source: custom model specs (validation, labels, preprocessing), Hugging Face layout
folders and their dtype variants, and what is refused before any ONNX Runtime session is made."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from imgcls.server.domain.errors import ModelLoadError, StartupError
from imgcls.server.domain.types import FunctionToApply
from imgcls.server.sources.local import load_spec, resolve_local
from imgcls.server.sources.variants import resolve_dtype
from support.paths import EFFICIENTNET, EXAMPLE_SPEC, OPEN_NSFW
from support.servers import running_server

# A valid minimal spec; tests change one thing at a time.
BASE_SPEC: dict[str, Any] = {"model": "model.onnx", "resize": {"mode": "exact", "height": 8, "width": 8}}


@pytest.fixture
def spec_dir(tmp_path: Path) -> Path:
    # load_spec only checks that the model file exists; ONNX Runtime opens it later, in ServedModel.
    (tmp_path / "model.onnx").write_bytes(b"placeholder")
    return tmp_path


def write_spec(folder: Path, spec: dict[str, Any], name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec))
    return path


def load_error(spec_path: Path) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as exc:
        load_spec(spec_path)
    assert isinstance(exc.value, StartupError)  # never answered to a caller: no status
    return exc.value


# -- the shipped example spec ------------------------------------------------------------------------


def test_example_open_nsfw_spec(open_nsfw_spec: Path) -> None:
    files = load_spec(open_nsfw_spec)
    assert files.onnx_path == (OPEN_NSFW / "model.onnx").resolve()
    assert files.labels == ("sfw", "nsfw")
    assert files.variant == ""
    assert files.default_function is FunctionToApply.NONE
    assert files.output_name == "outputs"
    pre = files.preprocessing
    # The README's reference procedure: exact 256x256 bilinear, crop 224, BGR, raw pixels minus mean.
    assert pre["size"] == {"height": 256, "width": 256}
    assert pre["do_center_crop"] is True and pre["crop_size"] == {"height": 224, "width": 224}
    assert pre["resample"] == 2
    assert pre["do_rescale"] is False
    assert pre["image_mean"] == [104, 117, 123] and pre["image_std"] == [1, 1, 1]
    assert pre["channel_order"] == "BGR" and pre["input_layout"] == "NHWC"


def test_example_spec_model_path_is_relative_to_the_spec(tmp_path: Path) -> None:
    # The example names model.onnx beside itself; it is not resolved against the working directory.
    assert yaml.safe_load(EXAMPLE_SPEC.read_text())["model"] == "model.onnx"
    spec = tmp_path / "elsewhere" / "open-nsfw.yaml"
    spec.parent.mkdir()
    shutil.copy(EXAMPLE_SPEC, spec)
    error = load_error(spec)
    assert "model file" in error.message and str(spec.parent / "model.onnx") in error.message


# -- validation ---------------------------------------------------------------------------------------


def test_unknown_key_is_named(spec_dir: Path) -> None:
    error = load_error(write_spec(spec_dir, {**BASE_SPEC, "colour_order": "BGR"}))
    assert "colour_order" in error.message
    assert "spec.yaml" in error.message


def test_unknown_nested_key_is_named(spec_dir: Path) -> None:
    error = load_error(write_spec(spec_dir, {**BASE_SPEC, "resize": {"mode": "exact", "height": 8, "widht": 8}}))
    assert "resize.widht" in error.message


def test_resize_exact_without_height(spec_dir: Path) -> None:
    error = load_error(write_spec(spec_dir, {**BASE_SPEC, "resize": {"mode": "exact", "width": 8}}))
    assert "exact" in error.message and "height" in error.message


def test_resize_shortest_edge_without_value(spec_dir: Path) -> None:
    error = load_error(write_spec(spec_dir, {**BASE_SPEC, "resize": {"mode": "shortest_edge", "height": 8}}))
    assert "shortest_edge" in error.message


def test_resize_unknown_mode(spec_dir: Path) -> None:
    error = load_error(write_spec(spec_dir, {**BASE_SPEC, "resize": {"mode": "stretch", "height": 8}}))
    assert "resize.mode" in error.message


def test_resize_is_required(spec_dir: Path) -> None:
    error = load_error(write_spec(spec_dir, {"model": "model.onnx"}))
    assert "resize" in error.message


def test_center_crop_needs_both_sides(spec_dir: Path) -> None:
    error = load_error(write_spec(spec_dir, {**BASE_SPEC, "center_crop": {"mode": "exact", "height": 4}}))
    assert "center_crop" in error.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pixel_range", 100),
        ("mean", [0.5, 0.5]),
        ("std", [1, 1, 1, 1]),
        ("channel_order", "GBR"),
        ("input_layout", "CHW"),
        ("function_to_apply", "relu"),
        ("resample", "cubic"),
    ],
)
def test_invalid_value_names_the_field(spec_dir: Path, field: str, value: Any) -> None:
    error = load_error(write_spec(spec_dir, {**BASE_SPEC, field: value}))
    assert field in error.message


def test_missing_model_file(tmp_path: Path) -> None:
    error = load_error(write_spec(tmp_path, {**BASE_SPEC, "model": "absent.onnx"}))
    assert "absent.onnx" in error.message and "not found" in error.message


def test_spec_that_is_not_a_mapping(spec_dir: Path) -> None:
    path = spec_dir / "spec.yaml"
    path.write_text("- model.onnx\n- labels.txt\n")
    error = load_error(path)
    assert "spec.yaml" in error.message


def test_spec_that_is_not_yaml(spec_dir: Path) -> None:
    path = spec_dir / "spec.yaml"
    path.write_text("model: [model.onnx\n")
    error = load_error(path)
    assert "cannot read model spec" in error.message


def test_json_spec(spec_dir: Path) -> None:
    path = spec_dir / "spec.json"
    path.write_text(
        '{"model": "model.onnx", "labels": ["a", "b"], "resize": {"mode": "shortest_edge", "shortest_edge": 10}}'
    )
    files = resolve_local(str(path), "fp32")
    assert files is not None
    assert files.labels == ("a", "b")
    assert files.preprocessing["size"] == {"shortest_edge": 10}


# -- labels and preprocessing -------------------------------------------------------------------------


def test_labels_from_a_file_beside_the_spec(spec_dir: Path) -> None:
    (spec_dir / "classes.txt").write_text("zero\n one \n\ntwo\nthree\n")
    files = load_spec(write_spec(spec_dir, {**BASE_SPEC, "labels": "classes.txt"}))
    # One label a line, stripped; blank lines skipped.
    assert files.labels == ("zero", "one", "two", "three")


def test_missing_labels_file(spec_dir: Path) -> None:
    error = load_error(write_spec(spec_dir, {**BASE_SPEC, "labels": "classes.txt"}))
    assert "labels file" in error.message and "classes.txt" in error.message


def test_no_labels_left_to_the_graph(spec_dir: Path) -> None:
    files = load_spec(write_spec(spec_dir, BASE_SPEC))
    assert files.labels == ()  # ServedModel names them LABEL_i from the output size


def test_pixel_range_one_rescales(spec_dir: Path) -> None:
    files = load_spec(write_spec(spec_dir, {**BASE_SPEC, "mean": [0.5, 0.4, 0.3], "resample": 3}))
    pre = files.preprocessing
    assert pre["do_rescale"] is True and pre["rescale_factor"] == pytest.approx(1 / 255)
    assert pre["image_mean"] == [0.5, 0.4, 0.3]
    assert pre["resample"] == 3
    assert "input_layout" not in pre  # left to the graph
    assert "do_center_crop" not in pre
    assert files.default_function is None  # the pipeline's rule from the number of labels


# -- local paths and Hugging Face layout folders ------------------------------------------------------


def test_nonexistent_path_is_not_local(tmp_path: Path) -> None:
    assert resolve_local(str(tmp_path / "nothing-here"), "fp32") is None
    assert resolve_local("owner/repo", "fp32") is None


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError) as exc:
        resolve_local(str(path), "fp32")
    assert isinstance(exc.value, StartupError)  # never answered to a caller: no status
    assert "expected a model folder, a .onnx file or a spec file" in exc.value.message


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as exc:
        resolve_local(str(tmp_path), "fp32")
    assert "no config.json" in exc.value.message


@pytest.mark.parametrize(
    ("dtype", "file_name"),
    [("fp32", "model.onnx"), ("fp16", "model_fp16.onnx"), ("q8", "model_quantized.onnx"), ("int8", "model_int8.onnx")],
)
def test_folder_variant_files(dtype: str, file_name: str) -> None:
    files = resolve_local(str(EFFICIENTNET), dtype)
    assert files is not None
    assert files.onnx_path == EFFICIENTNET / "onnx" / file_name
    assert files.variant == dtype
    assert len(files.labels) == 1000
    assert files.problem_type == "single_label_classification"


@pytest.mark.parametrize("dtype", ["uint8", "q4", "q4f16", "bnb4"])
def test_folder_missing_variant_lists_present_ones(dtype: str) -> None:
    with pytest.raises(ModelLoadError) as exc:
        resolve_local(str(EFFICIENTNET), dtype)
    assert f"no {dtype} variant" in exc.value.message
    assert "fp32, fp16, q8, int8" in exc.value.message


def test_auto_dtype() -> None:
    # config.json's transformers.js_config.dtype when there is one, else fp32.
    assert resolve_dtype("auto", {}, "m") == "fp32"
    assert resolve_dtype("auto", {"transformers.js_config": {"dtype": "q8"}}, "m") == "q8"
    assert resolve_dtype("auto", {"transformers.js_config": {"dtype": {"model": "fp16"}}}, "m") == "fp16"
    assert resolve_dtype("int8", {"transformers.js_config": {"dtype": "q8"}}, "m") == "int8"
    # Malformed or unknown: the same outcome for a local folder as for a Hub repo (one copy of the rules).
    assert resolve_dtype("auto", {"transformers.js_config": "q8"}, "m") == "fp32"
    assert resolve_dtype("auto", {"transformers.js_config": {"dtype": {"a": "q8", "b": "fp16"}}}, "m") == "fp32"
    files = resolve_local(str(EFFICIENTNET), "auto")
    assert files is not None and files.variant == "fp32"


def test_auto_dtype_unknown_to_the_server_is_a_clear_error(tmp_path: Path) -> None:
    """Was: a local folder silently fell back to fp32 while a Hub repo raised; now both raise."""
    folder = tmp_path / "model"
    folder.mkdir()
    config = json.loads((EFFICIENTNET / "config.json").read_text())
    config["transformers.js_config"] = {"dtype": "q9"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as exc:
        resolve_local(str(folder), "auto")
    assert "transformers.js_config.dtype is 'q9'" in exc.value.message
    assert "pass a dtype explicitly" in exc.value.message
    files = resolve_local(str(EFFICIENTNET), "auto")
    assert files is not None and files.variant == "fp32"


# -- at server start ----------------------------------------------------------------------------------


async def test_bad_spec_stops_the_start(spec_dir: Path) -> None:
    spec = write_spec(spec_dir, {**BASE_SPEC, "colour_order": "BGR"})
    with pytest.raises(ModelLoadError) as exc:
        async with running_server(models=[{"name": "custom", "source": str(spec)}]):
            pass
    assert isinstance(exc.value, StartupError)  # never answered to a caller: no status
    assert "colour_order" in exc.value.message


async def test_spec_error_at_start_names_the_model_and_file(spec_dir: Path) -> None:
    bad = write_spec(spec_dir, {**BASE_SPEC, "resize": {"mode": "exact", "width": 8}}, name="bad.yaml")
    with pytest.raises(ModelLoadError) as exc:
        async with running_server(models=[{"name": "broken", "source": str(bad)}]):
            pass
    assert "height" in exc.value.message
    assert "broken" in exc.value.message and "bad.yaml" in exc.value.message
