"""The Hugging Face Inference API for image classification: ``POST /models/{model}``.

The body is the image file itself (any Content-Type: image/*, application/octet-stream, or none, as
``InferenceClient`` sends bytes and ``curl --data-binary`` sends files), or JSON
``{"inputs": "<base64 or data: URL>", "parameters": {"top_k", "function_to_apply", "threshold"}}``.
The answer is a JSON array of ``{"label", "score"}``, best first. The same parameters may be given in
the query string (``?top_k=3``), so a raw body can carry them too; the JSON body's win.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

from fastapi import APIRouter, Request
from imgcls.server.domain.errors import InvalidInputError
from imgcls.server.domain.types import Base64Image, ClassifyOptions, ClassifyRequest, EncodedImage, FunctionToApply
from imgcls.server.engine.engine import Engine
from imgcls.server.http.common import JSONResponse, answer_errors, deadline_of, parse_json
from imgcls.server.http.guard import HttpLimits, owner_of, read_body
from imgcls.server.http.json_bodies import JsonParsing, json_lease, refuse_declared, too_large
from pydantic import BaseModel

PROTOCOL = "hf-http"
METHOD = "ImageClassification"
PARAMETERS = ("top_k", "function_to_apply", "threshold")
_FUNCTIONS = {f.value: f for f in FunctionToApply}


class LabelScore(BaseModel):
    label: str
    score: float


def router(engine: Engine, limits: HttpLimits, parsing: JsonParsing) -> APIRouter:
    routes = APIRouter(tags=["Hugging Face Inference API"])

    @routes.post(
        "/models/{model:path}",
        summary="Image classification (Hugging Face Inference API)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else "",
        openapi_extra=_OPENAPI_BODY,
        responses={200: {"model": list[LabelScore], "description": "labels and scores, best first"}},
    )
    @answer_errors(limits)
    async def classify(model: str, request: Request) -> JSONResponse:
        request_id = request.headers.get("x-request-id", "")
        with engine.observe(PROTOCOL, METHOD, model, request_id, 1, owner=owner_of(request)) as call:
            engine.get(model)  # an unknown model is answered before the body is read
            deadline = deadline_of(request)
            content_type = request.headers.get("content-type", "")
            declared_json = is_json(content_type)
            if declared_json:
                refuse_declared(request, limits.max_json_bytes)
            body = await read_body(request, limits, engine, json=declared_json)
            if not (declared_json or _looks_like_json(body)):
                domain = classify_request(model, body, content_type, request.query_params)
            else:
                if len(body) > limits.max_json_bytes:
                    raise too_large(len(body), limits.max_json_bytes)
                async with json_lease(engine.budget, call.owner, parsing, body):
                    domain = await parsing.run(body, classify_request, model, body, content_type, request.query_params)
            answer = await engine.classify(domain, deadline=deadline, call=call)
        return JSONResponse([{"label": s.label, "score": s.score} for s in answer.rankings[0]])

    return routes


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _looks_like_json(body: bytes) -> bool:
    # No image format starts with "{": curl -d '{...}' without a Content-Type is JSON too.
    return body.lstrip()[:1] == b"{"


def classify_request(model: str, body: bytes, content_type: str, query: Any) -> ClassifyRequest:
    media = content_type.split(";", 1)[0].strip().lower()
    parameters: dict[str, Any] = {k: query[k] for k in PARAMETERS if k in query}
    if is_json(content_type) or _looks_like_json(body):
        document = parse_json(body)
        if not isinstance(document, dict) or not isinstance(document.get("inputs"), str):
            raise InvalidInputError('inputs: expected {"inputs": "<base64 image or data: URL>", "parameters": {...}}')
        unknown = sorted(set(document) - {"inputs", "parameters"})
        if unknown:
            raise InvalidInputError(f"unknown field {unknown[0]!r}: expected inputs and parameters")
        given = document.get("parameters") or {}
        if not isinstance(given, dict):
            raise InvalidInputError("parameters: expected an object")
        parameters.update(given)
        image: EncodedImage | Base64Image = Base64Image(document["inputs"])
    elif media == "text/plain":
        image = Base64Image(body.decode("latin-1"))
    else:
        image = EncodedImage(body)
    return ClassifyRequest(model=model, inputs=(image,), options=options_from(parameters))


def options_from(parameters: dict[str, Any]) -> ClassifyOptions:
    unknown = sorted(set(parameters) - set(PARAMETERS))
    if unknown:
        raise InvalidInputError(f"parameters.{unknown[0]}: unknown parameter (known: {', '.join(PARAMETERS)})")
    top_k = parameters.get("top_k")
    threshold = parameters.get("threshold")
    function = parameters.get("function_to_apply")
    return ClassifyOptions(
        top_k=None if top_k is None else _integer("parameters.top_k", top_k),
        threshold=None if threshold is None else _number("parameters.threshold", threshold),
        function_to_apply=None if function is None else _function(function),
    )


def _integer(name: str, value: Any) -> int:
    if isinstance(value, str):  # from the query string
        with contextlib.suppress(ValueError):
            value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInputError(f"{name}: expected an integer")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        raise InvalidInputError(f"{name}: expected a number")
    return float(value)


def _function(value: Any) -> FunctionToApply:
    function = _FUNCTIONS.get(value.lower()) if isinstance(value, str) else None
    if function is None:
        raise InvalidInputError(f"parameters.function_to_apply: expected one of {', '.join(_FUNCTIONS)}")
    return function


_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "description": "the image file itself, or JSON with the image as base64 and parameters",
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "inputs": {"type": "string", "description": "base64 of the image file, or a data: URL"},
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "top_k": {"type": "integer", "minimum": 0, "description": "unset: 5; 0: all"},
                                "function_to_apply": {"type": "string", "enum": ["softmax", "sigmoid", "none"]},
                                "threshold": {"type": "number", "minimum": 0, "maximum": 1},
                            },
                        },
                    },
                }
            },
        },
    }
}
