"""Request messages from the clients' arguments: the ranking options, unary requests and stream frames."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from imgcls.client.inputs import ImageLike, to_input
from imgcls.v1 import classifier_pb2 as pb

FunctionName = Literal["softmax", "sigmoid", "none"]
Frame = ImageLike | pb.ClassifyStreamRequest

_FUNCTIONS = {
    None: pb.FUNCTION_TO_APPLY_UNSPECIFIED,
    "softmax": pb.FUNCTION_TO_APPLY_SOFTMAX,
    "sigmoid": pb.FUNCTION_TO_APPLY_SIGMOID,
    "none": pb.FUNCTION_TO_APPLY_NONE,
}


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """The options every classify method takes, held together so that they are read in one place.

    The clients build one positionally from their keyword arguments: one short line each, where passing
    the keywords on would repeat the whole parameter list in every method.
    """

    model: str = ""
    top_k: int | None = None
    threshold: float | None = None
    function_to_apply: FunctionName | None = None
    preprocessor_overrides: dict[str, Any] | None = None

    def request(self, images: Sequence[ImageLike], request_id: str = "") -> pb.ClassifyRequest:
        # Checked before the images are read: a misspelt function fails before any file is opened.
        if self.function_to_apply not in _FUNCTIONS:
            raise ValueError(
                f"function_to_apply must be softmax, sigmoid, none or None, got {self.function_to_apply!r}"
            )
        request = pb.ClassifyRequest(model=self.model, inputs=[to_input(i) for i in images], request_id=request_id)
        if self.top_k is not None:
            request.parameters.top_k = self.top_k
        if self.threshold is not None:
            request.parameters.threshold = self.threshold
        request.parameters.function_to_apply = _FUNCTIONS[self.function_to_apply]
        if self.preprocessor_overrides:
            request.preprocessor_overrides.update(self.preprocessor_overrides)
        return request

    def stream_defaults(self, drop_stale: bool) -> pb.ClassifyStreamRequest:
        """What the first frame carries for every later one that leaves it empty."""
        first = self.request([])
        return pb.ClassifyStreamRequest(
            model=first.model,
            parameters=first.parameters,
            preprocessor_overrides=first.preprocessor_overrides if self.preprocessor_overrides else None,
            drop_stale=drop_stale,
        )


def build_request(
    images: Sequence[ImageLike],
    *,
    model: str = "",
    top_k: int | None = None,
    threshold: float | None = None,
    function_to_apply: FunctionName | None = None,
    preprocessor_overrides: dict[str, Any] | None = None,
    request_id: str = "",
) -> pb.ClassifyRequest:
    """A ClassifyRequest: top_k (None: the server's 5, 0: all), threshold (0..1), function_to_apply
    (softmax, sigmoid, none; None: the model's default), preprocessor_overrides (merged over the
    model's preprocessor_config.json)."""
    options = RequestOptions(model, top_k, threshold, function_to_apply, preprocessor_overrides)
    return options.request(images, request_id)


def frame_request(frame: Frame, index: int) -> pb.ClassifyStreamRequest:
    if isinstance(frame, pb.ClassifyStreamRequest):
        return frame
    try:
        return pb.ClassifyStreamRequest(inputs=[to_input(frame)], request_id=str(index))
    except Exception as exc:
        exc.add_note(f"(frame {index} of the stream)")
        raise


def with_defaults(request: pb.ClassifyStreamRequest, defaults: pb.ClassifyStreamRequest) -> pb.ClassifyStreamRequest:
    merged = pb.ClassifyStreamRequest()
    merged.CopyFrom(defaults)
    merged.MergeFrom(request)
    return merged
