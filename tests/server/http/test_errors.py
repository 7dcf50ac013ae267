"""Every row of the HTTP error table, with its status code, headers and {"error": ...} body, on every protocol."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx2 as httpx
import pytest
import pytest_asyncio
from imgcls.server.server import RunningServer
from server.http.helpers import MODEL, url
from support.fake_backend import fake_engine
from support.inputs import COFFEE
from support.servers import running_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "http-s3cret-token-91ab"
HF = f"/models/{MODEL}"
V2_IMAGE = f"/v2/models/{MODEL}_image/infer"


def image_request(*images: bytes) -> dict[str, Any]:
    data = [[base64.b64encode(i).decode()] for i in images]
    return {"inputs": [{"name": "image", "shape": [len(images), 1], "datatype": "BYTES", "data": data}]}


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)
    return str(body["error"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(http_server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url(http_server), timeout=60) as session:
        yield session


# -- 400 invalid input, naming the input ------------------------------------------------------------
async def test_400_undecodable_image_names_the_input(client: httpx.AsyncClient) -> None:
    hf = error_of(await client.post(HF, content=b"not an image"), 400)
    v2 = error_of(await client.post(V2_IMAGE, json=image_request(COFFEE, b"not an image")), 400)
    v1 = error_of(
        await client.post(
            "/v1/classify", json={"inputs": [{"image_base64": base64.b64encode(COFFEE).decode()}, {"image": "AAAA"}]}
        ),
        400,
    )
    assert hf.startswith("inputs[0]: ") and "decodable image" in hf
    assert v2.startswith("input 'image' element 1: ") and "decodable image" in v2
    assert v1.startswith("inputs[1]: ")


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        (HF, {"inputs": 3}, "inputs: expected"),
        (HF, {"inputs": "x", "parameters": {"top_k": "many"}}, "parameters.top_k"),
        (HF, {"inputs": "x", "parameters": {"top_kk": 3}}, "parameters.top_kk: unknown parameter"),
        (HF, {"inputs": "x", "parameters": {"function_to_apply": "tanh"}}, "parameters.function_to_apply"),
        (V2_IMAGE, {"inputs": [{"name": "image", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}]}, "shape"),
        (V2_IMAGE, {"inputs": [{"name": "pixels", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]}]}, "pixels"),
        (V2_IMAGE, {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES"}]}, "input 'image': has neither"),
        (V2_IMAGE, {**image_request(COFFEE), "outputs": [{"name": "nope"}]}, "no output 'nope'"),
        (V2_IMAGE, {**image_request(COFFEE), "parameters": {"top_k": -1}}, "top_k"),
        (
            "/v1/classify",
            {"inputs": [{"image": "AAAA"}], "parameters": {"function_to_apply": "X"}},
            "function_to_apply",
        ),
        ("/v1/classify", {"inputz": []}, "inputz"),
    ],
)
async def test_400_bad_request_fields_are_named(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], words: str
) -> None:
    assert words in error_of(await client.post(path, json=body), 400)


COFFEE_64 = base64.b64encode(COFFEE).decode()
DIGITS_5000 = "9" * 5000  # a JSON integer over Python's 4300-digit conversion limit
BEYOND_FLOAT = str(10**400)  # a JSON integer no float holds
V2_TENSOR = f"/v2/models/{MODEL}/infer"


def v2_image(parameters: str) -> str:
    tensor = '{"name":"image","shape":[1,1],"datatype":"BYTES","data":["' + COFFEE_64 + '"]}'
    return '{"inputs":[' + tensor + '],"parameters":{' + parameters + "}}"


def override(text: str) -> str:
    return v2_image('"preprocessor_overrides":{' + text + "}")


def v2_pixels(last: str) -> str:
    values = ",".join(["0"] * (3 * 224 * 224 - 1) + [last])
    return '{"inputs":[{"name":"pixel_values","shape":[1,3,224,224],"datatype":"FP32","data":[' + values + "]}]}"


def hf(parameters: str) -> str:
    return '{"inputs":"' + COFFEE_64 + '","parameters":{' + parameters + "}}"


# Caller mistakes that were answered 500 (internal error) and logged as bugs: numbers JSON can write and
# Python cannot convert, and values numpy would have taken for numbers.
@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        (HF, hf('"top_k":' + DIGITS_5000), "number has more than 4300 digits"),
        (HF, hf('"threshold":' + DIGITS_5000), "more than 4300 digits"),
        (V2_IMAGE, v2_image('"top_k":' + DIGITS_5000), "inference request: a JSON number has more than 4300"),
        (V2_TENSOR, v2_pixels(BEYOND_FLOAT), "input 'pixel_values': data is not a list of numbers (OverflowError)"),
        (V2_TENSOR, v2_pixels("null"), "input 'pixel_values': element 150527 is None; FP32 data holds numbers only"),
        (V2_TENSOR, v2_pixels('"1.5"'), "element 150527 is '1.5'; FP32 data holds numbers only"),
        (V2_TENSOR, v2_pixels("true"), "element 150527 is True; FP32 data holds numbers only"),
        (V2_IMAGE, override('"resample":NaN'), "resample must be a finite number"),
        (V2_IMAGE, override('"resample":Infinity'), "resample must be a finite number"),
        (V2_IMAGE, override('"crop_pct":' + BEYOND_FLOAT), "crop_pct must be a finite"),
        (V2_IMAGE, override('"image_mean":' + BEYOND_FLOAT), "image_mean must be a"),
        (V2_IMAGE, override('"size":{"shortest_edge":' + BEYOND_FLOAT + "}"), "size.shortest"),
        (V2_IMAGE, override('"image_std":[1e-320,1,1]'), "not finite, or the same"),
        (V2_IMAGE, override('"image_mean":1e308'), "not finite, or the same for every"),
        (V2_IMAGE, override('"rescale_factor":1e308'), "make pixel values that are not"),
        ("/v1/classify", '{"inputs":[{"image":"AAAA"}],"request_id":"a","request_id":"b"}', "key 'request_id' twice"),
        ("/v1/classify", "1", "imgcls.v1.ClassifyRequest: expected a JSON object, got int"),
        ("/v1/classify", "null", "expected a JSON object, got NoneType"),
        ("/v1/classify", '{"parameters":{"function_to_apply":1e400}}', "Failed to parse JSON"),
        (V2_IMAGE, v2_image('"preprocessor_overrides":"' + "[" * 5000 + '"'), "not valid JSON (nested too deeply)"),
        (V2_IMAGE, v2_image('"preprocessor_overrides":"' + " " * 20_000 + '{}"'), "20002 characters, over the limit"),
    ],
)
async def test_400_numbers_no_float_holds_and_non_numbers_are_caller_mistakes_not_bugs(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, path: str, body: str, words: str
) -> None:
    with caplog.at_level(logging.ERROR):
        response = await client.post(path, content=body.encode(), headers={"content-type": "application/json"})
    assert words in error_of(response, 400)
    assert not [r for r in caplog.records if "unexpected" in r.getMessage()]


async def test_timeout_parameter_beyond_any_float_is_a_year_not_an_error(client: httpx.AsyncClient) -> None:
    response = await client.post(
        V2_IMAGE, content=v2_image('"timeout":' + BEYOND_FLOAT).encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    for nan in ("NaN", "Infinity"):
        body = v2_image(f'"timeout":{nan}').encode()
        answer = await client.post(V2_IMAGE, content=body, headers={"content-type": "application/json"})
        if nan == "NaN":
            assert "parameter timeout: expected microseconds as a number" in error_of(answer, 400)
        else:
            assert answer.status_code == 200, answer.text  # no deadline: a year at most


@pytest.mark.parametrize("path", [HF, V2_IMAGE, "/v1/classify"])
async def test_400_malformed_json(client: httpx.AsyncClient, path: str) -> None:
    response = await client.post(path, content=b'{"inputs": [', headers={"content-type": "application/json"})
    assert "JSON" in error_of(response, 400) or "json" in error_of(response, 400)


async def test_400_bad_timeout_header_and_binary_lengths(client: httpx.AsyncClient) -> None:
    assert "timeout" in error_of(await client.post(HF, content=COFFEE, headers={"timeout": "soon"}), 400)
    header = json.dumps(
        {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 99}}]}
    ).encode()
    short = await client.post(
        V2_IMAGE, content=header + b"\x01\x00\x00\x00x", headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert "binary_data_size 99" in error_of(short, 400)
    for length in ("9999", "-1", "many"):
        bad_length = await client.post(V2_IMAGE, content=header, headers={"Inference-Header-Content-Length": length})
        assert f"Inference-Header-Content-Length {length!r} is not a length" in error_of(bad_length, 400)


# -- 404 unknown model, listing the served ones; unknown routes and methods --------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/models/no-such-model"),
        ("POST", "/models/owner/repo"),
        ("GET", "/v2/models/no-such-model"),
        ("GET", "/v2/models/no-such-model/config"),
        ("POST", "/v2/models/no-such-model/infer"),
        ("GET", "/v1/models/no-such-model"),
    ],
)
async def test_404_unknown_model_lists_the_served_ones(client: httpx.AsyncClient, method: str, path: str) -> None:
    message = error_of(await client.request(method, path, content=COFFEE if method == "POST" else None), 404)
    assert "is not served" in message and MODEL in message


async def test_404_unknown_version_and_route_405_method(client: httpx.AsyncClient) -> None:
    assert "no version '7'" in error_of(await client.get(f"/v2/models/{MODEL}/versions/7"), 404)
    assert error_of(await client.get("/v3/anything"), 404) == "no route /v3/anything"
    assert "GET" in error_of(await client.get(HF), 405)
    ok = await client.get(f"/v2/models/{MODEL}/versions/1/ready")
    assert ok.status_code == 200 and ok.json() == {"name": MODEL, "ready": True}


# -- 415 an encoding it cannot undo; gzip and deflate bodies are undone ------------------------------
async def test_415_unknown_content_encoding_and_gzip_accepted(client: httpx.AsyncClient) -> None:
    refused = await client.post(HF, content=COFFEE, headers={"content-encoding": "br"})
    assert "Content-Encoding" in error_of(refused, 415)
    packed = await client.post(HF, content=gzip.compress(COFFEE), headers={"content-encoding": "gzip"})
    assert packed.status_code == 200 and packed.json()[0]["label"] == "espresso"


# -- 429 queue full, with Retry-After ----------------------------------------------------------------
async def test_429_queue_full_with_retry_after() -> None:
    async with (
        running_server(http_port="auto", batching={"queue_limit": 4}) as server,
        httpx.AsyncClient(base_url=url(server), timeout=60) as session,
    ):
        response = await session.post(V2_IMAGE, json=image_request(*[COFFEE] * 5))
        v1 = await session.post("/v1/classify", json={"inputs": [{"image": base64.b64encode(COFFEE).decode()}] * 5})
    assert "queue" in error_of(response, 429)
    assert response.headers["retry-after"] == "1"
    assert v1.status_code == 429 and v1.headers["retry-after"] == "1"


# -- 503 shutting down, with Retry-After ---------------------------------------------------------------
async def test_503_while_stopping_with_retry_after_and_not_ready() -> None:
    async with (
        running_server(http_port="auto") as server,
        httpx.AsyncClient(base_url=url(server), timeout=60) as session,
    ):
        server.engine.begin_shutdown()
        refused = await session.post(HF, content=COFFEE)
        ready = await session.get("/v2/health/ready")
        live = await session.get("/v2/health/live")
    assert "shutting down" in error_of(refused, 503)
    assert refused.headers["retry-after"] == "1"
    assert ready.status_code == 503 and ready.json() == {"ready": False}
    assert live.status_code == 200 and live.json() == {"live": True}


# -- 504 deadline --------------------------------------------------------------------------------------
async def test_504_deadline_passed_while_queued() -> None:
    engine, backends = fake_engine()
    gate = threading.Event()
    backends["fake"].gate = gate
    async with (
        running_server(engine=engine, http_port="auto") as server,
        httpx.AsyncClient(base_url=url(server), timeout=60) as session,
    ):
        first = asyncio.create_task(session.post("/models/fake", content=COFFEE))  # holds the one instance
        while backends["fake"].runs_started == 0:
            await asyncio.sleep(0.01)
        late = asyncio.create_task(session.post("/models/fake", content=COFFEE, headers={"timeout": "0.2"}))
        parameter = asyncio.create_task(
            session.post(
                "/v2/models/fake_image/infer", json={**image_request(COFFEE), "parameters": {"timeout": 200_000}}
            )
        )
        await asyncio.sleep(0.5)
        gate.set()
        answered, timed_out, by_parameter = await asyncio.gather(first, late, parameter)
    assert answered.status_code == 200
    assert "deadline" in error_of(timed_out, 504)
    assert "deadline" in error_of(by_parameter, 504)


# -- 500 a bug: the type only ------------------------------------------------------------------------
async def test_500_bug_answers_the_type_only(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async def bug(*_: Any, **__: Any) -> Any:
        raise RuntimeError("secret detail of a bug")

    async with (
        running_server(http_port="auto") as server,
        httpx.AsyncClient(base_url=url(server), timeout=60) as session,
    ):
        model = server.engine.get("")
        monkeypatch.setattr(model, "classify", bug)
        monkeypatch.setattr(model, "run", bug)
        with caplog.at_level(logging.ERROR):
            answers = [
                await session.post(HF, content=COFFEE),
                await session.post(V2_IMAGE, json=image_request(COFFEE)),
                await session.post("/v1/classify", json={"inputs": [{"image": base64.b64encode(COFFEE).decode()}]}),
            ]
    for answer in answers:
        assert error_of(answer, 500) == "internal error: RuntimeError"
    assert "secret detail of a bug" in caplog.text  # logged for the operator, never sent


# -- 401 tokens (details of reading no body: test_limits.py) ------------------------------------------
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def token_server() -> AsyncIterator[RunningServer]:
    async with running_server(http_port="auto", auth_tokens=[TOKEN]) as running:
        yield running


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN])
@pytest.mark.parametrize(("method", "path"), [("POST", HF), ("POST", V2_IMAGE), ("GET", "/v1/models"), ("GET", "/v2")])
async def test_401_missing_or_wrong_token(
    token_server: RunningServer, authorization: str | None, method: str, path: str
) -> None:
    headers = {"authorization": authorization} if authorization else {}
    async with httpx.AsyncClient(base_url=url(token_server), timeout=60) as session:
        response = await session.request(method, path, content=COFFEE if method == "POST" else None, headers=headers)
    assert "bearer token" in error_of(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_right_token_is_served_and_health_and_docs_are_open(token_server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=url(token_server), timeout=60) as session:
        served = await session.post(HF, content=COFFEE, headers={"authorization": f"Bearer {TOKEN}"})
        lowercase = await session.post(HF, content=COFFEE, headers={"authorization": f"bearer {TOKEN}"})
        open_paths = [
            await session.get(path)
            for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready", "/openapi.json")
        ]
    assert served.status_code == 200 and served.json()[0]["label"] == "espresso"
    assert lowercase.status_code == 200
    assert [r.status_code for r in open_paths] == [200, 200, 200, 200]


async def test_health_closed_when_auth_close_health() -> None:
    async with (
        running_server(http_port="auto", auth_tokens=[TOKEN], auth_open_health=False) as server,
        httpx.AsyncClient(base_url=url(server), timeout=60) as session,
    ):
        closed = [await session.get(p) for p in ("/v2/health/ready", f"/v2/models/{MODEL}/ready", "/openapi.json")]
        opened = await session.get("/v2/health/ready", headers={"authorization": f"Bearer {TOKEN}"})
    assert [r.status_code for r in closed] == [401, 401, 401]
    assert opened.status_code == 200
