"""Answers computed beside the server: ONNX Runtime run directly on the embedded model, ranked as the
server ranks (its default function, top 5), to compare a served answer with."""

from __future__ import annotations

import functools
import json

import numpy as np
import onnxruntime as ort
from imgcls.server.domain.types import ClassifyOptions, LabelScore
from imgcls.server.images.postprocessing import default_function, rank
from imgcls.server.settings import EMBEDDED_MODEL_DIR


@functools.cache
def _embedded() -> tuple[ort.InferenceSession, list[str], str | None]:
    session = ort.InferenceSession(str(EMBEDDED_MODEL_DIR / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    config = json.loads((EMBEDDED_MODEL_DIR / "config.json").read_text())
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    return session, labels, config.get("problem_type")


def embedded_model_ranking(sample: np.ndarray, options: ClassifyOptions | None = None) -> list[LabelScore]:
    """The embedded model's ranking of one pre-processed (3, 224, 224) float32 sample, run alone."""
    session, labels, problem_type = _embedded()
    (logits,) = session.run(None, {session.get_inputs()[0].name: sample[None].astype(np.float32)})
    return rank(logits, labels, options or ClassifyOptions(), default_function(problem_type, len(labels)))[0]
