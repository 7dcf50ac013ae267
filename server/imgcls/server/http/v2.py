"""The Open Inference Protocol over REST (KServe v2, with Triton's extensions), on the v2 core.

    GET  /v2                                          server metadata
    GET  /v2/health/live, /v2/health/ready            200, or 503 when not ready
    GET  /v2/models/{m}[/versions/{v}]                model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready          200, or 503 when not ready
    GET  /v2/models/{m}[/versions/{v}]/config         Triton's ModelConfig as JSON
    GET  /v2/models[/{m}[/versions/{v}]]/stats        Triton's statistics as JSON
    POST /v2/models/{m}[/versions/{v}]/infer          JSON tensors, or Triton's binary tensor data extension

The core (imgcls.server.v2) knows the models, views, tensors and answers; this module only turns REST into
its types and back. What is REST's own is here: JSON tensors, and the binary tensor data extension (a body
of JSON then raw tensor bytes, the JSON's length in ``Inference-Header-Content-Length``; inputs carry
``binary_data_size``, outputs are sent binary when asked with ``binary_data: true`` or the request parameter
``binary_data_output``). The request parameter ``timeout`` (microseconds, as tritonclient sends it) is a
deadline, like the ``timeout`` header (seconds).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from imgcls.server.domain.errors import InvalidInputError
from imgcls.server.engine.engine import Engine
from imgcls.server.http.common import MAX_TIMEOUT_S, JSONResponse, answer_errors, deadline_of, parse_json
from imgcls.server.http.guard import HttpLimits, owner_of, read_body
from imgcls.server.http.json_bodies import JsonParsing, json_lease, refuse_declared, too_large
from imgcls.server.images.decoding import brief
from imgcls.server.v2 import (
    REST_EXTENSIONS,
    InferRequest,
    InferResponse,
    InputTensor,
    OpenInferenceCore,
    RequestedOutput,
    whole_number,
)
from imgcls.server.v2.tensors import check_json_numbers
from starlette.responses import Response

PROTOCOL = "v2-http"
HEADER_LENGTH = "inference-header-content-length"
# Triton's own request parameters that are not the model's: read here or ignored, never passed on.
_TRANSPORT_PARAMETERS = ("binary_data_output", "timeout", "priority")


def router(engine: Engine, limits: HttpLimits, parsing: JsonParsing) -> APIRouter:
    core = OpenInferenceCore(engine, extensions=REST_EXTENSIONS)
    routes = APIRouter(tags=["Open Inference Protocol (KServe v2)"])
    guarded = answer_errors(limits)

    def observe(method: str, name: str) -> Any:
        return engine.observe(PROTOCOL, method, core.engine_model(name))

    # -- server --------------------------------------------------------------------------------------
    @routes.get("/v2", summary="Server metadata")
    @guarded
    async def server_metadata(request: Request) -> JSONResponse:
        with observe("ServerMetadata", ""):
            return JSONResponse(core.server_metadata().to_dict())

    @routes.get("/v2/health/live", summary="Server live")
    @guarded
    async def server_live(request: Request) -> JSONResponse:
        return JSONResponse({"live": core.server_live()})

    @routes.get("/v2/health/ready", summary="Server ready (503 when not)")
    @guarded
    async def server_ready(request: Request) -> JSONResponse:
        ready = core.server_ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @routes.get("/v2/models/stats", summary="Statistics of every model")
    @guarded
    async def all_statistics(request: Request) -> JSONResponse:
        with observe("ModelStatistics", ""):
            return JSONResponse(core.model_statistics())

    # -- models (each with and without /versions/{version}) ------------------------------------------
    async def metadata(name: str, version: str, request: Request) -> JSONResponse:
        with observe("ModelMetadata", name):
            return JSONResponse(core.model_metadata(name, version).to_dict())

    async def ready(name: str, version: str, request: Request) -> JSONResponse:
        is_ready = core.model_ready(name, version)
        return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)

    async def config(name: str, version: str, request: Request) -> JSONResponse:
        with observe("ModelConfig", name):
            return JSONResponse(core.model_config(name, version))

    async def statistics(name: str, version: str, request: Request) -> JSONResponse:
        with observe("ModelStatistics", name):
            return JSONResponse(core.model_statistics(name, version))

    async def infer(name: str, version: str, request: Request) -> Response:
        with engine.observe(PROTOCOL, "ModelInfer", core.engine_model(name), owner=owner_of(request)) as call:
            core.view(name, version)  # an unknown model is answered before the body is read
            deadline = deadline_of(request)
            all_json = request.headers.get(HEADER_LENGTH) is None
            if all_json:
                refuse_declared(request, limits.max_json_bytes)
            body = await read_body(request, limits, engine, json=all_json)
            header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
            if len(header) > limits.max_json_bytes:
                raise too_large(len(header), limits.max_json_bytes)
            # Parsed JSON is Python objects, several times its text: counted while the request lives, beside
            # the engine's own lease.
            async with json_lease(engine.budget, call.owner, parsing, header):
                infer_request, binary_outputs, timeout_us = await parsing.run(
                    header, parse_infer, name, version, header, binary
                )
                call.set_request_id(infer_request.id)  # known only now, from the body
                if timeout_us is not None:
                    by_parameter = time.monotonic() + timeout_us / 1e6
                    deadline = by_parameter if deadline is None else min(deadline, by_parameter)
                answer = await core.infer(infer_request, deadline=deadline, call=call)
        return infer_response(answer, binary_outputs)

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        versioned = "{version}" in prefix
        for suffix, handler, method, summary in (
            ("", metadata, "GET", "Model metadata"),
            ("/ready", ready, "GET", "Model ready (503 when not)"),
            ("/config", config, "GET", "Model configuration (Triton's ModelConfig as JSON)"),
            ("/stats", statistics, "GET", "Model statistics (Triton's ModelStatisticsResponse as JSON)"),
            ("/infer", infer, "POST", "Inference (JSON tensors, or Triton's binary tensor data extension)"),
        ):
            routes.add_api_route(
                prefix + suffix,
                _endpoint(handler, versioned, guarded),
                methods=[method],
                summary=summary,
                openapi_extra=_INFER_BODY if suffix == "/infer" else None,
            )
    return routes


def _endpoint(handler: Any, versioned: bool, guarded: Any) -> Any:
    """FastAPI reads a route's path parameters from its signature: one endpoint per form of the path."""
    if versioned:

        async def endpoint(name: str, version: str, request: Request) -> Response:
            return await handler(name, version, request)  # type: ignore[no-any-return]

    else:

        async def endpoint(name: str, request: Request) -> Response:  # type: ignore[misc]
            return await handler(name, "", request)  # type: ignore[no-any-return]

    endpoint.__name__ = f"{handler.__name__}{'_versioned' if versioned else ''}"
    return guarded(endpoint)


# -- REST <-> the core's types --------------------------------------------------------------------------
def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary tensor data after it: the whole body is JSON without the header."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise InvalidInputError(
            f"Inference-Header-Content-Length {brief(header_length)} is not a length within the {len(body)}-byte body"
        )
    return body[:length], memoryview(body)[length:]


def parse_infer(
    name: str, version: str, header: bytes, binary: memoryview
) -> tuple[InferRequest, dict[str, bool], float | None]:
    """The request, which outputs go back binary (name -> bool; "" is the default), and a timeout in µs.

    header, binary: the body as split_body() splits it.
    """
    document = parse_json(header, "inference request")
    if not isinstance(document, dict):
        raise InvalidInputError("inference request: expected a JSON object")
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInputError("id: expected a string")
    parameters = _parameters(document.get("parameters"), "parameters")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InvalidInputError("parameter binary_data_output: expected true or false")
    timeout_us = parameters.get("timeout")
    if timeout_us is not None and (
        not isinstance(timeout_us, int | float) or isinstance(timeout_us, bool) or timeout_us != timeout_us
    ):
        raise InvalidInputError("parameter timeout: expected microseconds as a number")
    if timeout_us is not None and timeout_us <= 0:
        timeout_us = None  # Triton: 0 is no timeout
    elif timeout_us is not None:
        timeout_us = min(timeout_us, MAX_TIMEOUT_S * 1e6)  # an int of any size compares; divided, it overflows
    inputs_json = document.get("inputs")
    if not isinstance(inputs_json, list):
        raise InvalidInputError("inputs: expected a list of tensors")
    inputs = []
    offset = 0
    for index, item in enumerate(inputs_json):
        tensor, offset = _input(item, index, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidInputError(
            f"the body has {len(binary) - offset} bytes of binary data after the inputs' binary_data_size "
            f"({offset} bytes)"
        )
    outputs, binary_outputs = _outputs(document.get("outputs"), binary_default)
    request = InferRequest(
        model_name=name,
        inputs=tuple(inputs),
        model_version=version,
        id=request_id,
        outputs=outputs,
        parameters={k: v for k, v in parameters.items() if k not in _TRANSPORT_PARAMETERS},
    )
    return request, binary_outputs, timeout_us


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"{where}: expected an object of name: value")
    return value


def _input(item: Any, index: int, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    if not isinstance(item, dict):
        raise InvalidInputError(f"inputs[{index}]: expected an object with name, shape, datatype and data")
    name = item.get("name")
    if not isinstance(name, str):
        raise InvalidInputError(f"inputs[{index}]: name: expected a string")
    where = f"input {brief(name)}"
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidInputError(f"{where}: datatype: expected a string such as FP32 or BYTES")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidInputError(f"{where}: shape: expected a list of integers")
    parameters = dict(_parameters(item.get("parameters"), f"{where}: parameters"))
    size = parameters.pop("binary_data_size", None)
    data = item.get("data")
    raw: memoryview | None = None
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInputError(f"{where}: binary_data_size: expected a byte count")
        if data is not None:
            raise InvalidInputError(f"{where}: has both data and binary_data_size; send one")
        if offset + size > len(binary):
            raise InvalidInputError(
                f"{where}: binary_data_size {size} goes past the end of the body's binary data "
                f"({len(binary) - offset} bytes left)"
            )
        raw = binary[offset : offset + size]
        offset += size
    elif data is None:
        raise InvalidInputError(f"{where}: has neither data nor binary_data_size")
    elif not isinstance(data, list):
        data = [data]
    tensor = InputTensor(name, datatype, tuple(shape), raw=raw, data=data, parameters=parameters)
    check_json_numbers(tensor)
    return tensor, offset


def _outputs(value: Any, binary_default: bool) -> tuple[tuple[RequestedOutput, ...], dict[str, bool]]:
    binary: dict[str, bool] = {"": binary_default}
    if value is None:
        return (), binary
    if not isinstance(value, list):
        raise InvalidInputError("outputs: expected a list of {name, parameters}")
    outputs = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInputError(f"outputs[{index}]: expected an object with a name")
        name = item["name"]
        parameters = dict(_parameters(item.get("parameters"), f"output {brief(name)}: parameters"))
        as_binary = parameters.pop("binary_data", binary_default)
        if not isinstance(as_binary, bool):
            raise InvalidInputError(f"output {brief(name)}: binary_data: expected true or false")
        binary[name] = as_binary
        classification = whole_number(parameters.pop("classification", 0))
        if classification is None or classification < 0:
            raise InvalidInputError(f"output {brief(name)}: classification: expected an integer >= 0")
        outputs.append(RequestedOutput(name, classification, parameters))
    return tuple(outputs), binary


def infer_response(answer: InferResponse, binary_outputs: dict[str, bool]) -> Response:
    header: dict[str, Any] = {"model_name": answer.model_name, "model_version": answer.model_version}
    if answer.id:
        header["id"] = answer.id
    if answer.parameters:
        header["parameters"] = dict(answer.parameters)
    outputs = []
    chunks: list[bytes] = []
    for output in answer.outputs:
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": list(output.shape)}
        if binary_outputs.get(output.name, binary_outputs[""]):
            raw = output.raw_bytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = output.json_data()
        outputs.append(entry)
    header["outputs"] = outputs
    json_part = JSONResponse(header).body
    if not chunks:
        return Response(json_part, media_type="application/json")
    return Response(
        b"".join([json_part, *chunks]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(json_part))},
    )


_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "An inference request as JSON; with Triton's binary tensor data extension, the JSON (its length in "
            "the Inference-Header-Content-Length header) followed by each binary input's bytes in input order"
        ),
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "datatype": {"type": "string"},
                                    "parameters": {"type": "object"},
                                    "data": {"type": "array", "items": {}},
                                },
                            },
                        },
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                            },
                        },
                    },
                },
                "example": {
                    "inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": ["<base64 JPEG>"]}],
                    "outputs": [{"name": "scores", "parameters": {"classification": 3}}],
                },
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
