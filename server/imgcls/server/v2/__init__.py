"""The Open Inference Protocol (KServe v2, with Triton's extensions), protocol-neutral: shared by gRPC and REST.

No grpc, no protobuf, no HTTP: plain dataclasses, numpy arrays and dicts. A front door converts its wire
form to these types, calls the core, and converts the answer back; errors are the engine's
(``imgcls.server.domain.errors``: InvalidInputError, ModelNotFoundError, ...) for the door to map.

Models: every served model ``NAME`` is two Open Inference Protocol models (views):

- ``NAME``: the network, as Triton's ONNX Runtime backend serves it: exactly the model's own input (e.g.
  ``pixel_values`` FP32 [-1, 3, 224, 224]; FP16 for fp16 variants; FP32 and FP16 are both accepted and
  converted) and output (``logits`` [-1, num_labels], the model's dtype). Pre-processed tensors.
- ``NAME_image``: one input ``image``, BYTES [-1, 1] (or [-1]), each element an encoded image file
  (``bytes``), or base64 text / a ``data:`` URL (``str``, for JSON); one output ``scores`` FP32
  [-1, num_labels]: probabilities after the model's default function, or the ``function_to_apply`` parameter.

``check_model_names(names)`` raises ConfigError when some ``NAME_image`` is another served model's name;
``OpenInferenceCore(engine)`` calls it, so building the core refuses such a model set.

API (``from imgcls.server.v2 import ...``):

``OpenInferenceCore(engine, extensions=GRPC_EXTENSIONS | REST_EXTENSIONS)``:

- ``server_metadata() -> ServerMetadata`` (name "imgcls", the package version, ``extensions`` as given:
  REST_EXTENSIONS adds binary_tensor_data to classification, model_configuration, statistics);
  ``server_live() -> bool``; ``server_ready() -> bool``.
- ``view(name, version="") -> View``: ModelNotFoundError for an unknown name or a version other than
  "" and "1". ``views: dict[str, View]`` lists them all. ``engine_model(name) -> str``: the served model
  behind a view name (pass it to ``engine.observe`` so metrics label the served model).
- ``model_ready(name, version="") -> bool``; ``model_metadata(name, version="") -> ModelMetadata``.
- ``model_config(name, version="") -> dict``: Triton's ModelConfig as JSON (model_config.proto field names,
  enums by name: ``max_batch_size`` (inputs one request may carry), ``input`` [{name, data_type TYPE_FP32 /
  TYPE_FP16 / TYPE_STRING, format FORMAT_NCHW / FORMAT_NHWC / FORMAT_NONE, dims without the batch}],
  ``output`` [{name, data_type, dims, label_filename}], ``dynamic_batching`` {preferred_batch_size (the
  batcher's run size), max_queue_delay_microseconds, default_queue_policy.max_queue_size},
  ``instance_group``, ``parameters``). ``json_format.ParseDict`` reads it into ``inference.ModelConfig``.
  ``labels(name) -> tuple[str, ...]``: the content of ``label_filename``, one label a line.
- ``model_statistics(name="", version="") -> dict``: Triton's ModelStatisticsResponse as JSON
  (``{"model_stats": [...]}``; an empty name: every view).
- ``async infer(request: InferRequest, *, deadline=None, call=None, protocol="v2", method="ModelInfer")
  -> InferResponse``: one request through the engine's batcher (shared with imgcls.v1). Without ``call``
  it opens ``engine.observe(protocol, method, engine_model(name), id)`` itself; a door that converts
  inside its own ``observe`` passes that call. ``deadline`` is on ``time.monotonic()``.

Requests (``types``): ``InferRequest(model_name, inputs, model_version="", id="", outputs=(),
parameters={})``; ``InputTensor(name, datatype, shape, raw=None, data=None, parameters={})`` with ``raw``
the binary form (gRPC raw_input_contents, REST binary data: little-endian numbers, BYTES elements each
a 4-byte little-endian length then the bytes) or ``data`` (typed contents or JSON data, flat or nested;
BYTES elements as bytes or str); ``RequestedOutput(name, classification=0, parameters={})``
(``classification`` N > 0, or ``parameters["classification"]``: Triton's classification extension).
Request ``parameters``: ``top_k`` (int >= 0: every output comes back as that many classification strings,
0 = all; an output's own classification wins), ``function_to_apply`` ("softmax" | "sigmoid" | "none";
the image view's scores, and on the network view it turns the raw output into that function's values),
``preprocessor_overrides`` (a JSON object, or its text: merged over the model's preprocessor_config.json
as in imgcls.v1). Other parameters are ignored.

Responses: ``InferResponse(model_name, model_version "1", id, outputs)``; ``OutputTensor(name,
datatype, shape, data)`` with ``data`` a numpy array (FP32 / FP16) or a flat list of ``bytes`` (BYTES);
``raw_bytes()`` is the binary form, ``json_data()`` the flat JSON values, ``to_dict()`` the REST JSON.
With no outputs asked for, the view's one output is returned. A classification output is BYTES
[batch, N] of ``"value:index:label"`` (best first, ties by index; value the output's own float32 value,
written so it reads back exactly).

Helpers (``tensors``): ``encode_bytes_elements(list[bytes]) -> bytes``,
``decode_bytes_elements(raw, count, name) -> list[bytes]``, ``numeric_array(InputTensor) -> np.ndarray``,
``bytes_elements(InputTensor)``. ``parse_parameters(dict) -> Parameters`` checks the request parameters;
``whole_number`` reads an integer one.
"""

from imgcls.server.v2.core import (
    GRPC_EXTENSIONS,
    IMAGE_INPUT,
    IMAGE_SUFFIX,
    REST_EXTENSIONS,
    SCORES_OUTPUT,
    SERVER_NAME,
    VERSION,
    OpenInferenceCore,
    Parameters,
    View,
    ViewKind,
    check_model_names,
    parse_parameters,
    whole_number,
)
from imgcls.server.v2.tensors import bytes_elements, decode_bytes_elements, encode_bytes_elements, numeric_array
from imgcls.server.v2.types import (
    InferRequest,
    InferResponse,
    InputTensor,
    ModelMetadata,
    OutputTensor,
    RequestedOutput,
    ServerMetadata,
    TensorMetadata,
)

__all__ = [
    "GRPC_EXTENSIONS",
    "IMAGE_INPUT",
    "IMAGE_SUFFIX",
    "REST_EXTENSIONS",
    "SCORES_OUTPUT",
    "SERVER_NAME",
    "VERSION",
    "InferRequest",
    "InferResponse",
    "InputTensor",
    "ModelMetadata",
    "OpenInferenceCore",
    "OutputTensor",
    "Parameters",
    "RequestedOutput",
    "ServerMetadata",
    "TensorMetadata",
    "View",
    "ViewKind",
    "bytes_elements",
    "check_model_names",
    "decode_bytes_elements",
    "encode_bytes_elements",
    "numeric_array",
    "parse_parameters",
    "whole_number",
]
