"""dtype variants of a model, named as transformers.js names its ONNX files."""

from __future__ import annotations

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
