"""The ASGI app: FastAPI routes for the three HTTP protocols behind the guard (tokens and body limits).

FastAPI gives the OpenAPI document (/openapi.json) and interactive docs (/docs). Routes take the raw
request and read their bodies themselves (guard.read_body), so nothing is parsed before the token and
size checks and no request model is validated twice; the OpenAPI document still describes each body.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from imgcls.server.engine.engine import Engine
from imgcls.server.http import hf, v1, v2
from imgcls.server.http.errors import error_body, error_headers
from imgcls.server.http.guard import Guard, HttpLimits
from imgcls.server.http.json_bodies import JsonParsing
from imgcls.server.settings import ServerSettings
from imgcls.server.v2.core import server_version
from starlette.exceptions import HTTPException
from starlette.responses import Response

OPENAPI_URL = "/openapi.json"
DOCS_URL = "/docs"
# Reachable without a token unless the settings close them (auth_open_health), as health and reflection are
# over gRPC: probes, and the description of the API (not of the models).
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready", OPENAPI_URL, DOCS_URL, f"{DOCS_URL}/oauth2-redirect")


def is_health_or_docs(path: str) -> bool:
    """Server and model readiness and liveness, and the API description."""
    if path in OPEN_PATHS:
        return True
    return path.startswith("/v2/models/") and path.endswith("/ready") and path.count("/") in (4, 6)


def build_app(engine: Engine, settings: ServerSettings, limits: HttpLimits, parsing: JsonParsing) -> Any:
    """The whole HTTP API as one ASGI app: the guard around FastAPI; large JSON bodies parsed by parsing."""
    app = FastAPI(
        title="imgcls",
        version=server_version(),
        summary="Image classification on ONNX Runtime",
        description=(
            "The Open Inference Protocol (KServe v2) REST API with Triton's extensions, the Hugging Face "
            "Inference API for image classification, and imgcls.v1 as JSON. Errors are "
            '`{"error": "..."}`; with tokens configured, send `Authorization: Bearer <token>`.'
        ),
        openapi_url=OPENAPI_URL,
        docs_url=DOCS_URL,
        redoc_url=None,
    )
    app.include_router(v2.router(engine, limits, parsing))
    app.include_router(hf.router(engine, limits, parsing))
    app.include_router(v1.router(engine, limits, parsing))
    app.add_exception_handler(HTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)
    tokens = settings.auth_tokens
    return Guard(
        app,
        tokens=tokens,
        is_open=is_health_or_docs if settings.auth_open_health else _never,
        limits=limits,
    )


def _never(path: str) -> bool:
    return False


async def _http_exception(request: Request, exc: Exception) -> Response:
    """The framework's own refusals (no such route: 404, wrong method: 405) in the one error form."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    message = {404: f"no route {request.url.path}", 405: f"method {request.method} is not allowed here"}.get(
        status, str(exc.detail)
    )
    headers = {**error_headers(status, close=False), **(exc.headers or {})}
    return Response(error_body(message), status_code=status, headers=headers, media_type="application/json")


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return Response(
        error_body(f"{where}: {first.get('msg', 'invalid')}"), status_code=400, media_type="application/json"
    )
