"""imgcls.v1 as JSON over HTTP: every unary method of ImageClassifierService, with the proto's JSON mapping.

    POST /v1/classify            ClassifyRequest  -> ClassifyResponse
    GET  /v1/models              ListModelsRequest -> ListModelsResponse
    GET  /v1/models/{name}       GetModelRequest  -> GetModelResponse

Bodies are parsed by protobuf's own JSON parser (json_format), so every field, enum name and encoding
(bytes as base64, int64 as strings) is exactly the mapping grpcurl and every protobuf runtime use;
answers are written with the .proto's field names and every field present (an index of 0 included).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from google.protobuf import json_format
from google.protobuf.message import Message
from imgcls.server.domain.errors import InvalidInputError
from imgcls.server.engine.engine import Engine
from imgcls.server.http.common import JSONResponse, answer_errors, deadline_of, parse_json
from imgcls.server.http.guard import HttpLimits, owner_of, read_body
from imgcls.server.http.json_bodies import JsonParsing, json_lease, refuse_declared
from imgcls.server.images.decoding import brief
from imgcls.server.images.preprocessing import check_override_values
from imgcls.server.v1.converters import model_info_to_pb, request_from_pb, results_to_pb
from imgcls.v1 import classifier_pb2 as pb

PROTOCOL = "v1-http"


def router(engine: Engine, limits: HttpLimits, parsing: JsonParsing) -> APIRouter:
    routes = APIRouter(tags=["imgcls.v1"])

    @routes.post(
        "/v1/classify",
        summary="Classify (imgcls.v1.ImageClassifierService/Classify as JSON)",
        openapi_extra=_json_body("imgcls.v1.ClassifyRequest in the proto's JSON mapping", _CLASSIFY_EXAMPLE),
        responses={200: {"description": "imgcls.v1.ClassifyResponse in the proto's JSON mapping"}},
    )
    @answer_errors(limits)
    async def classify(request: Request) -> JSONResponse:
        with engine.observe(PROTOCOL, "Classify", "", owner=owner_of(request)) as call:
            deadline = deadline_of(request)
            refuse_declared(request, limits.max_json_bytes)
            body = await read_body(request, limits, engine, json=True)
            async with json_lease(engine.budget, call.owner, parsing, body):
                message = await parsing.run(body, parse, body, pb.ClassifyRequest())
            call.model = engine.model_label(message.model)
            call.set_request_id(message.request_id)  # known only now, from the body
            call.inputs = len(message.inputs)
            answer = await engine.classify(request_from_pb(message, engine.input_bound), deadline=deadline, call=call)
        response = pb.ClassifyResponse(
            request_id=message.request_id, model=answer.model, results=results_to_pb(answer.rankings)
        )
        return JSONResponse(to_json(response))

    @routes.get(
        "/v1/models",
        summary="ListModels (imgcls.v1.ImageClassifierService/ListModels as JSON)",
        responses={200: {"description": "imgcls.v1.ListModelsResponse in the proto's JSON mapping"}},
    )
    @answer_errors(limits)
    async def list_models(request: Request) -> JSONResponse:
        with engine.observe(PROTOCOL, "ListModels", ""):
            response = pb.ListModelsResponse(models=[_info(engine, name) for name in engine.models])
        return JSONResponse(to_json(response))

    @routes.get(
        "/v1/models/{name:path}",
        summary="GetModel (imgcls.v1.ImageClassifierService/GetModel as JSON)",
        responses={200: {"description": "imgcls.v1.GetModelResponse in the proto's JSON mapping"}},
    )
    @answer_errors(limits)
    async def get_model(name: str, request: Request) -> JSONResponse:
        with engine.observe(PROTOCOL, "GetModel", name):
            response = pb.GetModelResponse(model=_info(engine, name))
        return JSONResponse(to_json(response))

    return routes


def parse(body: bytes, message: Message) -> Any:
    """json_format.Parse in two steps, so preprocessor_overrides is bounded (check_override_values) before
    json_format, which is Python, turns it into a Struct value by value (2M values took 42 s)."""
    name = message.DESCRIPTOR.full_name
    document = parse_json(body, name, object_pairs_hook=_unique_keys)
    if not isinstance(document, dict):
        raise InvalidInputError(f"{name}: expected a JSON object, got {type(document).__name__}")
    for key in ("preprocessor_overrides", "preprocessorOverrides"):
        if isinstance(document.get(key), dict):
            check_override_values(document[key])
    try:
        return json_format.ParseDict(document, message)
    except json_format.ParseError as exc:
        raise InvalidInputError(f"{name}: {exc}") from None
    except RecursionError as exc:
        raise InvalidInputError(f"{name}: not valid JSON ({type(exc).__name__})") from None
    except Exception as exc:  # json_format.Parse wrapped whatever ParseDict raised (TypeError, OverflowError)
        raise InvalidInputError(f"{name}: Failed to parse JSON: {type(exc).__name__}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object, refused when it names a key twice (as json_format.Parse refuses it)."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidInputError(f"the JSON object has the key {brief(key)} twice")
            seen.add(key)
    return document


def to_json(message: Message) -> dict[str, Any]:
    """Every field, with the .proto's names, in the .proto's order (json_format puts unset fields last)."""
    return _in_proto_order(
        message.DESCRIPTOR,
        json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True),
    )


def _in_proto_order(descriptor: Any, value: dict[str, Any]) -> dict[str, Any]:
    ordered: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.name not in value:
            continue
        item = value[field.name]
        inner = field.message_type
        if inner is not None and not inner.GetOptions().map_entry and inner.full_name.startswith("imgcls."):
            if isinstance(item, list):
                item = [_in_proto_order(inner, element) for element in item]
            else:
                item = _in_proto_order(inner, item)
        ordered[field.name] = item
    return ordered


def _info(engine: Engine, name: str) -> pb.ModelInfo:
    model = engine.describe(name)
    return model_info_to_pb(model, engine.stats(name), is_default=model.name == engine.default_model)


def _json_body(description: str, example: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": {"type": "object"}, "example": example}},
        }
    }


_CLASSIFY_EXAMPLE = {
    "model": "",
    "inputs": [{"image_base64": "<base64 of a JPEG, PNG, WebP, GIF, BMP or TIFF file, or a data: URL>"}],
    "parameters": {"top_k": 3, "function_to_apply": "FUNCTION_TO_APPLY_SOFTMAX"},
    "request_id": "42",
}
