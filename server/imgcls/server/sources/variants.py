"""dtype variants of a model, named as transformers.js names its ONNX files."""

from __future__ import annotations

from typing import Any

from imgcls.server.domain.errors import ModelLoadError

# dtype -> file name under onnx/ in a Hugging Face layout folder or repo.
VARIANT_FILES: dict[str, str] = {
    "fp32": "model.onnx",
    "fp16": "model_fp16.onnx",
    "q8": "model_quantized.onnx",
    "int8": "model_int8.onnx",
    "uint8": "model_uint8.onnx",
    "q4": "model_q4.onnx",
    "q4f16": "model_q4f16.onnx",
    "bnb4": "model_bnb4.onnx",
}

AUTO = "auto"
DTYPES: tuple[str, ...] = (AUTO, *VARIANT_FILES)


def variants_in(file_names: list[str] | set[str]) -> list[str]:
    """The dtypes whose ONNX file is among file_names (names relative to onnx/)."""
    present = set(file_names)
    return [dtype for dtype, name in VARIANT_FILES.items() if name in present]


DEFAULT_DTYPE = "fp32"


def resolve_dtype(dtype: str, config: Any, where: str) -> str:
    """The variant to serve: dtype itself, or for auto config.json's transformers.js_config.dtype, else fp32.

    The one copy for local folders and Hub repos; where names the model in errors.
    """
    if dtype != AUTO:
        return dtype
    wanted = transformers_js_dtype(config)
    if wanted is None:
        return DEFAULT_DTYPE
    if wanted not in VARIANT_FILES:
        raise ModelLoadError(
            f"{where}: config.json transformers.js_config.dtype is {wanted!r}, "
            f"which this server does not know; pass a dtype explicitly ({', '.join(VARIANT_FILES)})"
        )
    return wanted


def transformers_js_dtype(config: Any) -> str | None:
    """config.json's transformers.js_config.dtype (per-module form: the "model" module's), or None."""
    js_config = config.get("transformers.js_config") if isinstance(config, dict) else None
    if not isinstance(js_config, dict):
        return None
    value = js_config.get("dtype")
    if isinstance(value, dict):
        # Per-module dtypes; an image classifier has one module, named "model".
        if "model" in value:
            value = value["model"]
        elif len(value) == 1:
            value = next(iter(value.values()))
        else:
            return None
    if not isinstance(value, str) or value == AUTO:
        return None
    return value
