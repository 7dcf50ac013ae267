"""Scores -> ranked labels, as the Hugging Face image-classification pipeline ranks them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from imgcls.server.domain.errors import InvalidInputError
from imgcls.server.domain.types import ClassifyOptions, FunctionToApply, LabelScore, Ranking

DEFAULT_TOP_K = 5


def default_function(problem_type: str | None, num_labels: int) -> FunctionToApply:
    """The pipeline's choice: sigmoid for multi-label or one-label models, softmax for several labels."""
    if problem_type == "multi_label_classification" or num_labels == 1:
        return FunctionToApply.SIGMOID
    if problem_type == "single_label_classification" or num_labels > 1:
        return FunctionToApply.SOFTMAX
    return FunctionToApply.NONE


def validate_options(options: ClassifyOptions) -> None:
    if options.top_k is not None and options.top_k < 0:
        raise InvalidInputError(f"parameters.top_k must be >= 0, got {options.top_k}")
    if options.threshold is not None and not (math.isfinite(options.threshold) and 0.0 <= options.threshold <= 1.0):
        raise InvalidInputError(f"parameters.threshold must be between 0 and 1, got {options.threshold}")


def apply_function(scores: np.ndarray, function: FunctionToApply) -> np.ndarray:
    """Applied row-wise to (N, num_labels) scores, in float32."""
    scores = scores.astype(np.float32, copy=False)
    if function is FunctionToApply.SOFTMAX:
        shifted = scores - scores.max(axis=-1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=-1, keepdims=True)
    if function is FunctionToApply.SIGMOID:
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-scores))
    return scores


def rank(
    scores: np.ndarray,
    labels: Sequence[str],
    options: ClassifyOptions,
    default: FunctionToApply,
) -> list[Ranking]:
    """One ranking per row: top_k (0 = all, clipped to the label count), then threshold."""
    probabilities = apply_function(scores, options.function_to_apply or default)
    num_labels = probabilities.shape[-1]
    top_k = DEFAULT_TOP_K if options.top_k is None else options.top_k
    k = num_labels if top_k == 0 else min(top_k, num_labels)
    # Unset: no filtering (raw logits may be negative). Compared as float32, as the scores are (a threshold
    # within a float32 step of a score keeps or drops it as it did when both were numpy float32).
    threshold = None if options.threshold is None else float(np.float32(options.threshold))
    rankings: list[Ranking] = []
    known = len(labels)
    for row in probabilities:
        if k < num_labels:
            candidates = np.argpartition(-row, k - 1)[:k]
        else:
            candidates = np.arange(num_labels)
        # Descending score, ties by index, so answers are deterministic.
        order = candidates[np.lexsort((candidates, -row[candidates]))]
        # Converted in two calls, not one numpy scalar per label (the same Python ints and floats).
        rankings.append(
            [
                LabelScore(label=labels[i] if i < known else f"LABEL_{i}", score=score, index=i)
                for i, score in zip(order.tolist(), row[order].tolist(), strict=True)
                if threshold is None or not score < threshold
            ]
        )
    return rankings
