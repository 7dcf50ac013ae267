"""The ONNX Runtime session behind a served model, and what its graph says about it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from imgcls.server.domain.errors import ModelLoadError
from imgcls.server.domain.graph import GraphInfo, RuntimeDescription

log = logging.getLogger(__name__)

_ORT_DTYPES: dict[str, np.dtype[Any]] = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16)}


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    intra_op_threads: int = 0  # 0 = ONNX Runtime's default (one per physical core)
    inter_op_threads: int = 0
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    # Spinning intra-op threads burn the cores that decode and preprocessing need.
    allow_spinning: bool = False
    # Set: a second session with this many intra-op threads (0 = every core) for a batch that runs
    # alone, while the main session's fewer threads serve runs side by side (see run_alone).
    solo_intra_op_threads: int | None = None


def _dim(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


class OnnxBackend:
    """One ONNX Runtime InferenceSession; run() takes a stacked batch and returns (N, classes) scores."""

    def __init__(
        self, path: Path, options: RuntimeOptions, output_name: str | None = None, *, first_by_default: bool = False
    ) -> None:
        self.providers = select_providers(options.providers)
        self._session = self._open(path, options, options.intra_op_threads)
        self._solo_session = (
            self._open(path, options, options.solo_intra_op_threads)
            if options.solo_intra_op_threads is not None and options.solo_intra_op_threads != options.intra_op_threads
            else None
        )
        self.options = options
        self.graph = self._inspect(path, output_name, first_by_default)

    def _open(self, path: Path, options: RuntimeOptions, intra_op_threads: int) -> ort.InferenceSession:
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = intra_op_threads
        session_options.inter_op_num_threads = options.inter_op_threads
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not options.allow_spinning:
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session_options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(str(path), session_options, providers=list(self.providers))
        except Exception as exc:
            raise ModelLoadError(f"ONNX Runtime cannot load {path}: {exc}") from exc

    @property
    def has_solo_session(self) -> bool:
        return self._solo_session is not None

    def describe(self) -> RuntimeDescription:
        return RuntimeDescription(
            providers=self.providers,
            intra_op_threads=self.options.intra_op_threads,
            inter_op_threads=self.options.inter_op_threads,
            solo_intra_op_threads=self.options.solo_intra_op_threads if self.has_solo_session else None,
        )

    def _inspect(self, path: Path, output_name: str | None, first_by_default: bool) -> GraphInfo:
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            names = [i.name for i in inputs]
            raise ModelLoadError(f"{path}: image classifiers take one input, this model takes {names}")
        model_input = inputs[0]
        dtype = _ORT_DTYPES.get(model_input.type)
        if dtype is None:
            raise ModelLoadError(f"{path}: input {model_input.name} is {model_input.type}; float or float16 needed")
        shape = tuple(_dim(d) for d in model_input.shape)
        if len(shape) != 4:
            raise ModelLoadError(f"{path}: input {model_input.name} has shape {model_input.shape}; 4 dims needed")
        outputs = {o.name: o for o in self._session.get_outputs()}
        if output_name is None:
            # Exporters name the scores "logits" (a distilled DeiT's are the average of its two heads, beside
            # cls_logits and distillation_logits); a graph with several outputs and none of that name is
            # ambiguous, and reading the first would be a guess.
            if first_by_default or len(outputs) == 1:
                output = self._session.get_outputs()[0]
            elif "logits" in outputs:
                output = outputs["logits"]
            else:
                raise ModelLoadError(
                    f"{path}: the graph has outputs {list(outputs)} and none is named 'logits'; name the one that "
                    "holds the scores with a custom model spec's output"
                )
        elif output_name in outputs:
            output = outputs[output_name]
        else:
            raise ModelLoadError(f"{path}: no output named {output_name!r}; it has {list(outputs)}")
        num_classes = _dim(output.shape[-1]) if output.shape else None
        return GraphInfo(model_input.name, shape, dtype, output.name, num_classes)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self._session, batch)

    def run_alone(self, batch: np.ndarray) -> np.ndarray:
        """A batch with nothing else running or waiting: on every core when there is a solo session.

        Independent single-threaded runs side by side give the most images/s on CPU, but a lone
        request then waits for one core's run; with the solo session it gets all of them.
        """
        return self._run(self._solo_session or self._session, batch)

    def _run(self, session: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
        (scores,) = session.run([self.graph.output_name], {self.graph.input_name: batch})
        return np.asarray(scores).reshape(batch.shape[0], -1)


def is_gpu_provider(name: str) -> bool:
    """Any execution provider but the CPU's runs on an accelerator (CUDA, TensorRT, ROCm, CoreML, ...)."""
    return name != "CPUExecutionProvider"


def select_providers(requested: tuple[str, ...]) -> tuple[str, ...]:
    """The requested execution providers this onnxruntime build has, always ending with CPU."""
    available = set(ort.get_available_providers())
    chosen = []
    for name in requested:
        if name in available:
            chosen.append(name)
        else:
            log.warning("execution provider %s is not available in this onnxruntime build; skipped", name)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return tuple(chosen)
