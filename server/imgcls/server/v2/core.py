"""The Open Inference Protocol over the engine: two views per served model, inference, metadata, config, stats."""

from __future__ import annotations

import enum
import importlib.metadata
import json
import math
import re
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from imgcls.server.domain.errors import ConfigError, InvalidInputError, ModelNotFoundError
from imgcls.server.domain.types import (
    Base64Image,
    ClassifyOptions,
    ClassifyRequest,
    EncodedImage,
    FunctionToApply,
    ImageInput,
    TensorDType,
    TensorInput,
)
from imgcls.server.engine.description import ModelDescription
from imgcls.server.engine.engine import Call, Engine
from imgcls.server.engine.observation import RequestRecord
from imgcls.server.images.decoding import brief
from imgcls.server.images.postprocessing import apply_function, rank
from imgcls.server.v2 import tensors
from imgcls.server.v2.types import (
    DATATYPE_OF_NUMPY,
    NUMPY_OF_DATATYPE,
    InferRequest,
    InferResponse,
    InputTensor,
    ModelMetadata,
    OutputTensor,
    RequestedOutput,
    ServerMetadata,
    TensorMetadata,
)

SERVER_NAME = "imgcls"
VERSION = "1"  # the one version of every model; an empty version means it
IMAGE_SUFFIX = "_image"
IMAGE_INPUT = "image"
SCORES_OUTPUT = "scores"
LABEL_FILENAME = "labels.txt"

# Extensions that work over each transport (ServerMetadata lists only those).
GRPC_EXTENSIONS: tuple[str, ...] = ("classification", "model_configuration", "statistics")
REST_EXTENSIONS: tuple[str, ...] = (*GRPC_EXTENSIONS, "binary_tensor_data")

_FUNCTIONS = {f.value: f for f in FunctionToApply}
_TENSOR_DTYPES = {"FP32": TensorDType.FLOAT32, "FP16": TensorDType.FLOAT16}
_ENGINE_PREFIX = re.compile(r"^inputs\[(\d+)\]: (?:tensor: )?")


def server_version() -> str:
    try:
        return importlib.metadata.version("imgcls")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def check_model_names(names: Iterable[str]) -> None:
    """Refuse a model set where one model's image view (``NAME_image``) would be another model's name."""
    served = list(names)
    clashes = [f"{name}{IMAGE_SUFFIX}" for name in served if f"{name}{IMAGE_SUFFIX}" in served]
    if clashes:
        raise ConfigError(
            f"models: {', '.join(clashes)} would be both a served model and the Open Inference Protocol image view "
            f"of {', '.join(c[: -len(IMAGE_SUFFIX)] for c in clashes)}; rename one of them"
        )


class ViewKind(enum.Enum):
    NETWORK = "network"  # NAME: the model's own input and output, pre-processed tensors
    IMAGE = "image"  # NAME_image: encoded image files in, scores out


@dataclass(frozen=True, slots=True)
class View:
    """One Open Inference Protocol model: a view of one served model."""

    name: str
    kind: ViewKind
    model: ModelDescription  # as loaded (names, shapes, labels and batching do not change while serving)
    max_inputs: int  # per request (tensor batch rows included)

    @property
    def network_datatype(self) -> str:
        return DATATYPE_OF_NUMPY.get(self.model.input_dtype, "FP32")

    @property
    def input(self) -> TensorMetadata:
        if self.kind is ViewKind.IMAGE:
            return TensorMetadata(IMAGE_INPUT, "BYTES", (-1, 1))
        sample = tuple(-1 if d is None else d for d in self.model.input_shape[1:])
        return TensorMetadata(self.model.input_name, self.network_datatype, (-1, *sample))

    @property
    def output(self) -> TensorMetadata:
        if self.kind is ViewKind.IMAGE:
            return TensorMetadata(SCORES_OUTPUT, "FP32", (-1, self.model.num_labels))
        return TensorMetadata(self.model.output_name, self.network_datatype, (-1, self.model.num_labels))


@dataclass(frozen=True, slots=True)
class Parameters:
    """A request's parameters as imgcls reads them (imgcls.v1 meanings); None: unset."""

    top_k: int | None = None
    function_to_apply: FunctionToApply | None = None
    preprocessor_overrides: dict[str, Any] | None = None


# The preprocessor_overrides parameter as JSON text, at most: imgcls.v1's Struct is capped alike (16 KiB).
MAX_OVERRIDES_TEXT = 16 * 1024


def whole_number(value: Any) -> int | None:
    """An integer parameter: an int, or a float with nothing after the point (2.0, as JavaScript and the
    Hugging Face API's clients send 2; imgcls.v1's JSON takes it too); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    return None


def parse_parameters(parameters: Mapping[str, Any]) -> Parameters:
    """top_k (int >= 0), function_to_apply (softmax|sigmoid|none), preprocessor_overrides (JSON text or object).

    Other parameters (the protocol's own, such as priority or binary_data_output) are left to the door.
    """
    top_k = parameters.get("top_k")
    if top_k is not None:
        top_k = whole_number(top_k)
        if top_k is None or top_k < 0:
            raise InvalidInputError(f"parameter top_k must be an integer >= 0, got {brief(parameters['top_k'])}")
    function = parameters.get("function_to_apply")
    if function is not None:
        if not isinstance(function, str) or function.lower() not in _FUNCTIONS:
            raise InvalidInputError(
                f"parameter function_to_apply must be one of softmax, sigmoid, none; got {brief(function)}"
            )
        function = _FUNCTIONS[function.lower()]
    overrides = parameters.get("preprocessor_overrides")
    if isinstance(overrides, str):
        if len(overrides) > MAX_OVERRIDES_TEXT:
            raise InvalidInputError(
                f"parameter preprocessor_overrides is {len(overrides)} characters, over the limit of "
                f"{MAX_OVERRIDES_TEXT}; an image processor has a few settings"
            )
        try:
            overrides = json.loads(overrides, parse_constant=_refuse_constant)
        except ValueError as exc:
            raise InvalidInputError(f"parameter preprocessor_overrides is not valid JSON ({exc})") from None
        except RecursionError:
            raise InvalidInputError("parameter preprocessor_overrides is not valid JSON (nested too deeply)") from None
    if overrides is not None and not isinstance(overrides, dict):
        raise InvalidInputError(
            f"parameter preprocessor_overrides must be a JSON object, got a {type(overrides).__name__}"
        )
    return Parameters(top_k, function, overrides)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


class _Recorder:
    """Per served model: answered inference requests (any protocol), their time, and the last one's time."""

    def __init__(self) -> None:
        self.success: dict[str, list[int]] = {}  # model -> [count, ns]
        self.fail: dict[str, list[int]] = {}
        self.last_ms: dict[str, int] = {}

    def __call__(self, record: RequestRecord) -> None:
        book = self.success if record.outcome is None else self.fail
        entry = book.setdefault(record.model, [0, 0])
        entry[0] += 1
        entry[1] += int(record.seconds * 1e9)
        self.last_ms[record.model] = int(time.time() * 1000)


# One recorder per engine, whichever doors (gRPC, REST) build a core over it.
_RECORDERS: weakref.WeakKeyDictionary[Engine, _Recorder] = weakref.WeakKeyDictionary()


def _recorder_for(engine: Engine) -> _Recorder:
    recorder = _RECORDERS.get(engine)
    if recorder is None:
        recorder = _RECORDERS[engine] = _Recorder()
        engine.add_request_listener(recorder)
    return recorder


class OpenInferenceCore:
    """The Open Inference Protocol over one engine, for any transport (see the package docstring)."""

    def __init__(self, engine: Engine, *, extensions: tuple[str, ...] = GRPC_EXTENSIONS) -> None:
        check_model_names(engine.models)
        self.engine = engine
        self.extensions = extensions
        self._recorder = _recorder_for(engine)
        max_inputs = engine.settings.max_inputs_per_request
        self.views: dict[str, View] = {}
        for description in engine.describe_all():
            self.views[description.name] = View(description.name, ViewKind.NETWORK, description, max_inputs)
            image = f"{description.name}{IMAGE_SUFFIX}"
            self.views[image] = View(image, ViewKind.IMAGE, description, max_inputs)

    # -- server and models -----------------------------------------------------------
    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, server_version(), self.extensions)

    def server_live(self) -> bool:
        return True  # answering at all is being live

    def server_ready(self) -> bool:
        return self.engine.ready

    def view(self, name: str, version: str = "") -> View:
        """The view called name; ModelNotFoundError for anything else, or a version other than "" and "1"."""
        view = self.views.get(name)
        if view is None:
            raise ModelNotFoundError(f"model {brief(name)} is not served; served models: {', '.join(self.views)}")
        if version not in ("", VERSION):
            raise ModelNotFoundError(f"model {view.name} has no version {brief(version)}; its one version is {VERSION}")
        return view

    def engine_model(self, name: str) -> str:
        """The served model behind a view name (for observe(): metrics and logs label the served model)."""
        view = self.views.get(name)
        return view.model.name if view is not None else name

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.engine.model_ready(self.view(name, version).model.name)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        view = self.view(name, version)
        platform = "onnxruntime_onnx" if view.kind is ViewKind.NETWORK else "imgcls"
        return ModelMetadata(view.name, (VERSION,), platform, (view.input,), (view.output,))

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        """Triton's ModelConfig in its JSON form (field names as in model_config.proto, enums by name)."""
        view = self.view(name, version)
        model = view.model
        batching = model.batching
        on_gpu = any(p != "CPUExecutionProvider" for p in model.runtime.providers)
        if view.kind is ViewKind.NETWORK:
            model_input: dict[str, Any] = {
                "name": view.input.name,
                "data_type": f"TYPE_{view.input.datatype}",
                "format": "FORMAT_NHWC" if model.layout == "NHWC" else "FORMAT_NCHW",
                "dims": list(view.input.shape[1:]),
            }
            platform, backend = "onnxruntime_onnx", "onnxruntime"
        else:
            model_input = {"name": IMAGE_INPUT, "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [1]}
            platform, backend = "", "imgcls"
        return {
            "name": view.name,
            "platform": platform,
            "backend": backend,
            "version_policy": {"specific": {"versions": [int(VERSION)]}},
            # What one request may carry; the batcher splits it into runs of at most preferred_batch_size.
            "max_batch_size": view.max_inputs,
            "input": [model_input],
            "output": [
                {
                    "name": view.output.name,
                    "data_type": f"TYPE_{view.output.datatype}",
                    "dims": list(view.output.shape[1:]),
                    "label_filename": LABEL_FILENAME,
                }
            ],
            "dynamic_batching": {
                "preferred_batch_size": [batching.max_batch_size],
                "max_queue_delay_microseconds": batching.max_queue_delay_us,
                "default_queue_policy": {"max_queue_size": batching.queue_limit},
            },
            "instance_group": [
                {"name": model.name, "count": batching.instances, "kind": "KIND_GPU" if on_gpu else "KIND_CPU"}
            ],
            "parameters": {
                "source": {"string_value": model.source},
                "variant": {"string_value": model.variant},
                "default_function_to_apply": {"string_value": model.default_function.value},
            },
        }

    def labels(self, name: str, version: str = "") -> tuple[str, ...]:
        """The labels behind the output's label_filename, one per class index."""
        return self.view(name, version).model.labels

    def model_statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        """Triton's ModelStatisticsResponse in JSON form; an empty name: every view.

        Both views of a model share its batcher, so they report the same counters. From the batcher:
        inference_count (inputs run), execution_count (runs), queue and compute_infer time, and a
        batch_stats entry per run size (its count; times are kept in aggregate only). From the
        requests answered (over every protocol): success, fail and last_inference.
        """
        views = [self.view(name, version)] if name else list(self.views.values())
        return {"model_stats": [self._statistics(view) for view in views]}

    def _statistics(self, view: View) -> dict[str, Any]:
        stats = self.engine.stats(view.model.name)
        model = view.model.name
        success = self._recorder.success.get(model, [0, 0])
        fail = self._recorder.fail.get(model, [0, 0])

        def duration(count: int, seconds_or_ns: float, *, ns: bool = False) -> dict[str, int]:
            return {"count": count, "ns": int(seconds_or_ns if ns else seconds_or_ns * 1e9)}

        zero = duration(0, 0)
        return {
            "name": view.name,
            "version": VERSION,
            "last_inference": self._recorder.last_ms.get(model, 0),
            "inference_count": stats.inputs,
            "execution_count": stats.batches,
            "inference_stats": {
                "success": duration(success[0], success[1], ns=True),
                "fail": duration(fail[0], fail[1], ns=True),
                "queue": duration(stats.inputs, stats.queue_time_s),
                "compute_input": zero,
                "compute_infer": duration(stats.batches, stats.compute_time_s),
                "compute_output": zero,
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": duration(count, 0),
                    "compute_infer": duration(count, 0),
                    "compute_output": duration(count, 0),
                }
                for size, count in sorted(stats.batch_size_counts.items())
            ],
        }

    # -- inference ---------------------------------------------------------------------
    async def infer(
        self,
        request: InferRequest,
        *,
        deadline: float | None = None,
        call: Call | None = None,
        protocol: str = "v2",
        method: str = "ModelInfer",
    ) -> InferResponse:
        """Run one request through the engine; a door that converts inside observe() passes its call."""
        if call is None:
            model = self.engine_model(request.model_name)
            with self.engine.observe(protocol, method, model, request.id) as call:
                return await self._infer(request, deadline, call)
        return await self._infer(request, deadline, call)

    async def _infer(self, request: InferRequest, deadline: float | None, call: Call) -> InferResponse:
        view = self.view(request.model_name, request.model_version)
        parameters = parse_parameters(request.parameters)
        if len(request.inputs) != 1:
            raise InvalidInputError(
                f"model {view.name} takes one input, {view.input.name!r}; the request has {len(request.inputs)}"
            )
        tensor = request.inputs[0]
        if tensor.name != view.input.name:
            raise InvalidInputError(f"model {view.name} has no {tensors.named(tensor)}; it takes {view.input.name!r}")
        wanted = self._requested(view, request.outputs, parameters)
        if view.kind is ViewKind.IMAGE:
            inputs = self._images(tensor)
        else:
            inputs = (self._tensor(view, tensor),)
        call.inputs = len(inputs) if view.kind is ViewKind.IMAGE else tensor.shape[0]
        engine_request = ClassifyRequest(
            model=view.model.name,
            inputs=inputs,
            request_id=request.id,
            preprocessor_overrides=parameters.preprocessor_overrides or {},
        )
        try:
            scored = await self.engine.score(engine_request, deadline=deadline, call=call)
        except InvalidInputError as exc:
            raise InvalidInputError(_rename_inputs(exc.message, view, tensor)) from None
        values = self._values(view, scored.outputs, parameters)
        outputs = tuple(self._output(view, values, name, count) for name, count in wanted)
        return InferResponse(view.name, VERSION, request.id, outputs)

    def _requested(
        self, view: View, outputs: tuple[RequestedOutput, ...], parameters: Parameters
    ) -> list[tuple[str, int | None]]:
        """(output name, classification count or None for the tensor), checked before anything runs."""
        default = parameters.top_k  # imgcls.v1's top_k: that many labels, best first (0: all)
        if not outputs:
            return [(view.output.name, default)]
        wanted: list[tuple[str, int | None]] = []
        for requested in outputs:
            if requested.name != view.output.name:
                raise InvalidInputError(
                    f"model {view.name} has no output {brief(requested.name)}; its output is {view.output.name!r}"
                )
            if any(name == requested.name for name, _ in wanted):
                raise InvalidInputError(f"output {requested.name!r} is asked for twice")
            given = requested.classification or requested.parameters.get("classification", 0)
            count = whole_number(given)
            if count is None or count < 0:
                raise InvalidInputError(
                    f"output {requested.name!r}: classification must be an integer >= 0, got {brief(given)}"
                )
            wanted.append((requested.name, count if count > 0 else default))
        return wanted

    def _images(self, tensor: InputTensor) -> tuple[ImageInput, ...]:
        if tensor.datatype != "BYTES":
            raise InvalidInputError(f"{tensors.named(tensor)}: datatype is {brief(tensor.datatype)}; it takes BYTES")
        shape = tensor.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise InvalidInputError(
                f"{tensors.named(tensor)}: shape {brief(list(shape))} is not [N, 1] (one encoded image per row)"
            )
        elements = tensors.bytes_elements(tensor)
        if not elements:
            raise InvalidInputError(f"{tensors.named(tensor)}: has no images")
        return tuple(Base64Image(e) if isinstance(e, str) else EncodedImage(e) for e in elements)

    def _tensor(self, view: View, tensor: InputTensor) -> TensorInput:
        expected = view.input.shape
        shape = tensor.shape
        if tensor.datatype not in _TENSOR_DTYPES:
            raise InvalidInputError(
                f"{tensors.named(tensor)}: datatype {brief(tensor.datatype)} is not accepted; "
                f"model {view.name} takes {view.input.datatype} (FP32 and FP16 are converted to it)"
            )
        if (
            len(shape) != len(expected)
            or not shape
            or shape[0] < 1
            or any(want != -1 and got != want for got, want in zip(shape[1:], expected[1:], strict=True))
        ):
            raise InvalidInputError(
                f"{tensors.named(tensor)}: shape {brief(list(shape))} does not match the model's "
                f"{list(expected)} (the first dimension is the batch)"
            )
        array = tensors.numeric_array(tensor)
        raw = tensor.raw if isinstance(tensor.raw, bytes) else array.tobytes()
        return TensorInput(dims=tuple(shape), dtype=_TENSOR_DTYPES[tensor.datatype], raw_data=raw)

    def _values(self, view: View, outputs: np.ndarray, parameters: Parameters) -> np.ndarray:
        """The view's one output: the network's own (a function only when asked for) or the image scores."""
        if view.kind is ViewKind.IMAGE:
            return apply_function(outputs, parameters.function_to_apply or view.model.default_function)
        if parameters.function_to_apply is not None:
            outputs = apply_function(outputs, parameters.function_to_apply)
        return outputs.astype(NUMPY_OF_DATATYPE[view.output.datatype], copy=False)

    def _output(self, view: View, values: np.ndarray, name: str, classification: int | None) -> OutputTensor:
        if classification is None:
            return OutputTensor(name, view.output.datatype, tuple(values.shape), values)
        labels = view.model.labels
        count = values.shape[1] if classification == 0 else min(classification, values.shape[1])
        rankings = rank(values, labels, ClassifyOptions(top_k=count), FunctionToApply.NONE)
        strings = [
            f"{_number(entry.score)}:{entry.index}:{entry.label}".encode() for ranking in rankings for entry in ranking
        ]
        return OutputTensor(name, "BYTES", (values.shape[0], count), strings)


def _number(value: float) -> str:
    """The shortest text that reads back as the same float32 (Triton's form is %f, which loses digits)."""
    if math.isnan(value):
        return "nan"
    return str(np.float32(value))


def _rename_inputs(message: str, view: View, tensor: InputTensor) -> str:
    """The engine numbers its inputs (inputs[2]: ...); say it in the protocol's terms (input 'image' element 2)."""
    match = _ENGINE_PREFIX.match(message)
    if match is None:
        return message
    rest = message[match.end() :]
    if view.kind is ViewKind.IMAGE:
        return f"{tensors.named(tensor)} element {match.group(1)}: {rest}"
    return f"{tensors.named(tensor)}: {rest}"
