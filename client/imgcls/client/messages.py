"""Request messages from the clients' arguments: the ranking options, unary requests and stream frames."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, Unpack

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


class RankingOptions(TypedDict, total=False):
    """ClassifyOptions but ``timeout``: what a request carries (build_request takes these)."""

    model: str
    top_k: int | None
    threshold: float | None
    function_to_apply: FunctionName | None
    preprocessor_overrides: dict[str, Any] | None


class ClassifyOptions(RankingOptions, total=False):
    """The keyword options of every classify method (``classify``, ``classify_batch``, ``classify_stream``).

    Any of them may be left out; a keyword not listed here is a TypeError.

    Attributes:
        model: The model to ask; ``""`` (the default) is the server's default model.
        top_k: How many predictions to return; None (the default) is the server's 5, 0 is all of them.
        threshold: Only predictions scoring at least this (0..1); None: no threshold.
        function_to_apply: ``"softmax"``, ``"sigmoid"`` or ``"none"`` over the model's outputs;
            None (the default) is the model's own.
        preprocessor_overrides: Keys merged over the model's ``preprocessor_config.json`` for this call.
        timeout: Seconds before the call fails as DEADLINE_EXCEEDED; None: no deadline. Left out, a unary
            call takes the client's ``timeout`` and a stream has none.
    """

    timeout: float | None


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """The ranking options of one call (see ClassifyOptions), held together so that they are read in one place."""

    model: str = ""
    top_k: int | None = None
    threshold: float | None = None
    function_to_apply: FunctionName | None = None
    preprocessor_overrides: dict[str, Any] | None = None

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> RequestOptions:
        """RequestOptions from RankingOptions keywords; any other keyword is a TypeError naming it, as Python's own."""
        for name in options:
            if name not in RankingOptions.__optional_keys__:
                raise TypeError(f"unexpected keyword argument {name!r}")
        return cls(**options)

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
    images: Sequence[ImageLike], *, request_id: str = "", **options: Unpack[RankingOptions]
) -> pb.ClassifyRequest:
    """A ClassifyRequest of images with the options of ClassifyOptions (but ``timeout``, which is the call's)."""
    return RequestOptions.of(options).request(images, request_id)


def call_options(options: ClassifyOptions, timeout: float | None) -> tuple[RequestOptions, float | None]:
    """A classify method's keywords: the request's options, and the call's timeout (``timeout`` if none is given)."""
    ranking = {name: value for name, value in options.items() if name != "timeout"}
    return RequestOptions.of(ranking), options.get("timeout", timeout)


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
