"""Ranking as the Hugging Face image-classification pipeline ranks: function choice, top_k, threshold, ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from imgcls.server.domain.errors import InvalidInputError
from imgcls.server.domain.types import ClassifyOptions, FunctionToApply
from imgcls.server.images.postprocessing import apply_function, default_function, rank, validate_options

LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven")


def ranked(scores: list[float], **options: object) -> list[tuple[str, float, int]]:
    """One row through rank(), with softmax left out (NONE) so the expected scores are the inputs."""
    opts = ClassifyOptions(**options)  # type: ignore[arg-type]
    (ranking,) = rank(np.array([scores], np.float32), LABELS, opts, FunctionToApply.NONE)
    return [(s.label, round(s.score, 6), s.index) for s in ranking]


# --- default_function ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("problem_type", "num_labels", "expected"),
    [
        ("multi_label_classification", 10, FunctionToApply.SIGMOID),
        ("multi_label_classification", 1, FunctionToApply.SIGMOID),
        (None, 1, FunctionToApply.SIGMOID),
        ("single_label_classification", 1, FunctionToApply.SIGMOID),  # one label: sigmoid wins
        ("single_label_classification", 1000, FunctionToApply.SOFTMAX),
        (None, 2, FunctionToApply.SOFTMAX),
        (None, 1000, FunctionToApply.SOFTMAX),
        ("regression", 3, FunctionToApply.SOFTMAX),
        (None, 0, FunctionToApply.NONE),
        ("regression", 0, FunctionToApply.NONE),
        ("single_label_classification", 0, FunctionToApply.SOFTMAX),
    ],
)
def test_default_function(problem_type: str | None, num_labels: int, expected: FunctionToApply) -> None:
    assert default_function(problem_type, num_labels) is expected


# --- apply_function --------------------------------------------------------------------------


def test_apply_function_row_wise() -> None:
    scores = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]], np.float32)
    softmax = apply_function(scores, FunctionToApply.SOFTMAX)
    np.testing.assert_allclose(softmax.sum(axis=1), [1.0, 1.0], atol=1e-6)
    expected = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    np.testing.assert_allclose(softmax[0], expected, atol=1e-6)
    # Large logits neither overflow nor give NaN.
    np.testing.assert_allclose(softmax[1], [1.0, 0.0, 0.0], atol=1e-6)
    sigmoid = apply_function(scores, FunctionToApply.SIGMOID)
    np.testing.assert_allclose(sigmoid[0], 1 / (1 + np.exp([-1.0, -2.0, -3.0])), atol=1e-6)
    np.testing.assert_allclose(sigmoid[1], [1.0, 0.5, 0.0], atol=1e-6)
    assert not np.isnan(sigmoid).any()
    np.testing.assert_array_equal(apply_function(scores, FunctionToApply.NONE), scores)


def test_rank_applies_the_default_unless_told_otherwise() -> None:
    scores = np.array([[0.0, math.log(3.0)]], np.float32)
    (by_default,) = rank(scores, ("a", "b"), ClassifyOptions(), FunctionToApply.SOFTMAX)
    assert [(s.label, round(s.score, 6)) for s in by_default] == [("b", 0.75), ("a", 0.25)]
    (by_sigmoid,) = rank(
        scores, ("a", "b"), ClassifyOptions(function_to_apply=FunctionToApply.SIGMOID), FunctionToApply.SOFTMAX
    )
    assert [(s.label, round(s.score, 6)) for s in by_sigmoid] == [("b", 0.75), ("a", 0.5)]


# --- top_k, threshold, order -----------------------------------------------------------------


SCORES = [0.1, 0.7, 0.05, 0.3, 0.9, 0.0, 0.2, 0.6]


def test_default_top_k_is_5_sorted_descending() -> None:
    assert ranked(SCORES) == [
        ("four", 0.9, 4),
        ("one", 0.7, 1),
        ("seven", 0.6, 7),
        ("three", 0.3, 3),
        ("six", 0.2, 6),
    ]


@pytest.mark.parametrize(("top_k", "count"), [(1, 1), (3, 3), (8, 8), (0, 8), (100, 8)])
def test_top_k(top_k: int, count: int) -> None:
    result = ranked(SCORES, top_k=top_k)
    assert len(result) == count
    assert [r[2] for r in result] == [int(i) for i in np.argsort(-np.array(SCORES), kind="stable")[:count]]


def test_threshold_drops_below_and_keeps_equal() -> None:
    assert [r[0] for r in ranked(SCORES, top_k=0, threshold=0.6)] == ["four", "one", "seven"]
    assert ranked(SCORES, threshold=1.0) == []
    # threshold 0 explicitly keeps zero scores
    assert ("five", 0.0, 5) in ranked(SCORES, top_k=0, threshold=0.0)


def test_threshold_after_top_k() -> None:
    assert [r[0] for r in ranked(SCORES, top_k=2, threshold=0.1)] == ["four", "one"]


def test_ties_are_ordered_by_index() -> None:
    tied = [0.5, 0.2, 0.5, 0.5, 0.2, 0.5, 0.1, 0.5]
    assert [r[2] for r in ranked(tied, top_k=0)] == [0, 2, 3, 5, 7, 1, 4, 6]
    # top_k among ties also takes the lowest indices
    assert [r[2] for r in ranked(tied, top_k=3)] == [0, 2, 3]


def test_every_row_ranked_separately() -> None:
    scores = np.array([SCORES, SCORES[::-1]], np.float32)
    first, second = rank(scores, LABELS, ClassifyOptions(top_k=1), FunctionToApply.NONE)
    assert [s.index for s in first] == [4]
    assert [s.index for s in second] == [3]  # 0.9 is at position 3 once reversed


def test_missing_labels_are_named_by_index() -> None:
    (ranking,) = rank(np.array([[0.1, 0.9, 0.5]], np.float32), ("a",), ClassifyOptions(), FunctionToApply.NONE)
    assert [s.label for s in ranking] == ["LABEL_1", "LABEL_2", "a"]


def test_unset_threshold_keeps_negative_logits() -> None:
    assert [r[2] for r in ranked([-1.0, 2.0, -3.0], top_k=0)] == [1, 0, 2]


# --- validate_options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        ClassifyOptions(),
        ClassifyOptions(top_k=0),
        ClassifyOptions(top_k=10_000),
        ClassifyOptions(threshold=0.0),
        ClassifyOptions(threshold=1.0),
        ClassifyOptions(threshold=0.5, function_to_apply=FunctionToApply.SIGMOID),
    ],
)
def test_validate_options_accepts(options: ClassifyOptions) -> None:
    validate_options(options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (ClassifyOptions(top_k=-1), "top_k must be >= 0, got -1"),
        (ClassifyOptions(threshold=-0.01), "threshold must be between 0 and 1"),
        (ClassifyOptions(threshold=1.01), "threshold must be between 0 and 1"),
        (ClassifyOptions(threshold=float("nan")), "threshold must be between 0 and 1, got nan"),
        (ClassifyOptions(threshold=float("inf")), "threshold must be between 0 and 1"),
    ],
)
def test_validate_options_refuses(options: ClassifyOptions, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        validate_options(options)


def test_the_threshold_is_compared_in_float32_as_the_scores_are() -> None:
    # 0.3 as float32 is 0.30000001192...; a threshold just above that float64 value but within the same
    # float32 step is the same float32 number, so the score is kept.
    score = float(np.float32(0.3))
    assert [label for label, _, _ in ranked([0.3, 0.1], threshold=score + 1e-9)] == ["zero"]
    assert ranked([0.3, 0.1], threshold=0.31) == []
