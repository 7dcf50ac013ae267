"""Big JSON costs what it weighs: over max_json_bytes refused (413) with a pointer to the binary forms,
under it charged to the budget by its parsed size and parsed off the event loop."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import math
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator

import httpx2 as httpx
import numpy as np
import pytest
from imgcls.server.domain.errors import InvalidInputError, TooLargeError
from imgcls.server.engine.budget import Lease
from imgcls.server.http import common, json_bodies
from imgcls.server.http.json_bodies import JsonParsing, json_cost
from server.http.helpers import MODEL, url
from support.inputs import COFFEE
from support.servers import running_server
from support.waiting import poll_until

LIMIT = 1 << 20


def numbers_request(shape: tuple[int, ...]) -> dict[str, object]:
    data = np.random.default_rng(0).random(int(np.prod(shape)), dtype=np.float32).round(4).tolist()
    return {"inputs": [{"name": "pixel_values", "shape": list(shape), "datatype": "FP32", "data": data}]}


def test_json_cost_counts_every_value_and_long_strings_by_length() -> None:
    numbers = json.dumps([0.5] * 1000).encode()
    assert json_cost(numbers) >= len(numbers) + 32 * 1000
    text = json.dumps({"inputs": "A" * 100_000}).encode()
    assert 200_000 <= json_cost(text) < 205_000  # json.loads decodes the text to a str, then copies the value


# Every shape of JSON value an attacker can repeat, ~20k times each: what parsing it holds per byte of text
# ranges from 2x (a long string) to ~37x (arrays in arrays).
SHAPES = {
    "long string": b'{"inputs":"' + b"QUJD" * 100_000 + b'"}',
    "objects of an empty key and an empty array": b"[" + b",".join([b'{"":[]}'] * 20_000) + b"]",
    "empty arrays": b"[" + b",".join([b"[]"] * 30_000) + b"]",
    "empty objects": b"[" + b",".join([b"{}"] * 30_000) + b"]",
    "nested one-element arrays": b"[" + b",".join([b"[[[[0]]]]"] * 10_000) + b"]",
    "objects in objects": b"[" + b",".join([b'{"":{"":{}}}'] * 10_000) + b"]",
    "two-character strings": b"[" + b",".join([b'"ab"'] * 30_000) + b"]",
    "distinct short strings": b"[" + b",".join(b'"%d"' % i for i in range(30_000)) + b"]",
    "floats": b"[" + b",".join([b"0.1"] * 30_000) + b"]",
    "big integers": b"[" + b",".join([b"123456789012345678901"] * 30_000) + b"]",
    "distinct integers": b"[" + b",".join(b"%d" % (i + 1000) for i in range(30_000)) + b"]",
    "distinct keys": b"{" + b",".join(b'"key_%d":0' % i for i in range(20_000)) + b"}",
    "objects of two keys": b"[" + b",".join([b'{"a":1,"b":2}'] * 10_000) + b"]",
    "true and null": b"[" + b",".join([b"true", b"null"] * 15_000) + b"]",
    # One character beyond U+FFFF makes the decoded text and every string value 4 bytes a character.
    "escaped astral character and ASCII": b'{"inputs":"\\ud83d\\ude00' + b"A" * 400_000 + b'"}',
    "raw astral character and ASCII": '{"inputs":"\U0001f600'.encode() + b"A" * 400_000 + b'"}',
}


@pytest.mark.parametrize("text", SHAPES.values(), ids=SHAPES.keys())
def test_json_cost_bounds_what_the_parse_holds_for_every_shape(text: bytes) -> None:
    tracemalloc.start()
    try:
        parsed = common.parse_json(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del parsed
    assert json_cost(text) >= peak, f"charged {json_cost(text)} for a parse that held {peak}"


def repeated(element: bytes, count: int) -> bytes:
    return b"[" + b",".join([element] * count) + b"]"


@pytest.mark.parametrize(
    ("text", "counted"),
    [
        (repeated(b"{}", json_bodies.MAX_JSON_OBJECTS + 1), "65537 objects (the limit: 65536)"),
        (repeated(b'""', json_bodies.MAX_JSON_STRINGS + 1), "65537 strings (the limit: 65536)"),
        (repeated(b"null", json_bodies.MAX_JSON_LITERALS + 1), "65537 true, false or null (the limit: 65536)"),
        (repeated(b"true", json_bodies.MAX_JSON_LITERALS + 1), "65537 true, false or null"),
        (repeated(b"[]", json_bodies.MAX_JSON_EMPTY_ARRAYS), "65537 arrays for 0 digits"),
    ],
    ids=["objects", "strings", "null", "true", "empty arrays"],
)
def test_json_of_more_of_what_parses_without_a_thread_switch_than_any_request_is_too_large(
    text: bytes, counted: str
) -> None:
    with pytest.raises(TooLargeError) as raised:
        json_cost(text)
    assert counted in raised.value.message
    assert "binary tensor data extension" in raised.value.message
    json_cost(repeated(b"[]", json_bodies.MAX_JSON_EMPTY_ARRAYS - 1))  # at the limit: charged
    json_cost(repeated(b"{}", json_bodies.MAX_JSON_OBJECTS))


def test_a_tensor_nested_by_its_shape_is_not_too_large_however_many_rows() -> None:
    """NHWC, batch 2, nested as the v2 spec allows: 100,803 arrays, every one holding numbers."""
    data = np.zeros((2, 224, 224, 3), np.float32).tolist()
    body = json.dumps({"inputs": [{"name": "x", "shape": [2, 224, 224, 3], "datatype": "FP32", "data": data}]})
    assert body.count("[") > json_bodies.MAX_JSON_EMPTY_ARRAYS
    assert json_cost(body.encode()) > len(body)


def test_json_numbers_are_not_limited_by_count() -> None:
    text = b"[" + b",".join([b"0"] * 500_000) + b"]"
    assert json_cost(text) >= 40 * 500_000


async def test_large_json_is_parsed_on_the_json_thread_and_small_json_in_place() -> None:
    parsing = JsonParsing()
    try:
        small = await parsing.run(b"{}", lambda: threading.current_thread().name)
        large = await parsing.run(bytes(json_bodies.SMALL_JSON_BYTES + 1), lambda: threading.current_thread().name)
    finally:
        parsing.close()
    assert small == threading.current_thread().name and large.startswith("imgcls-json")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_v2_json_numbers_over_the_limit_are_413_naming_the_binary_extension(chunked: bool) -> None:
    body = json.dumps(numbers_request((1, 3, 224, 224))).encode()  # ~1.2 MB of text

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    content: object = pieces() if chunked else body
    async with (
        running_server(http_port="auto", max_json_bytes=LIMIT) as server,
        httpx.AsyncClient(base_url=url(server), timeout=60) as client,
    ):
        response = await client.post(
            f"/v2/models/{MODEL}/infer", content=content, headers={"content-type": "application/json"}
        )
        assert server.engine.budget.used == 0
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert f"over the limit of {LIMIT} bytes for JSON (max_json_bytes)" in error
    assert "binary tensor data extension (Inference-Header-Content-Length)" in error


async def test_base64_json_over_the_limit_is_413_naming_raw_bytes_on_the_hf_and_v1_routes() -> None:
    image = base64.b64encode(bytes(LIMIT)).decode()
    async with (
        running_server(http_port="auto", max_json_bytes=LIMIT) as server,
        httpx.AsyncClient(base_url=url(server), timeout=60) as client,
    ):
        hf = await client.post(f"/models/{MODEL}", json={"inputs": image})
        v1 = await client.post("/v1/classify", json={"inputs": [{"image_base64": image}]})
        # The same image as raw bytes is not JSON: only the body limit applies.
        raw = await client.post(f"/models/{MODEL}", content=COFFEE, headers={"content-type": "image/jpeg"})
    for response in (hf, v1):
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert "bytes is over the limit of 1048576 bytes for JSON" in error and "Content-Type: image/jpeg" in error
    assert raw.status_code == 200


async def test_json_under_the_limit_is_answered_and_charged_by_its_parsed_size() -> None:
    """Charged json_floor from the moment the door has the body (it may wait for the JSON thread), then
    json_cost once it is counted, for as long as the request lives."""
    body = json.dumps(numbers_request((1, 3, 224, 224))).encode()
    held: list[int] = []
    async with (
        running_server(http_port="auto") as server,
        httpx.AsyncClient(base_url=url(server), timeout=60) as client,
    ):
        budget = server.engine.budget
        original = budget._take

        def watched(lease: Lease, nbytes: int) -> None:
            original(lease, nbytes)
            held.append(lease.held)

        budget._take = watched  # type: ignore[method-assign]
        try:
            response = await client.post(
                f"/v2/models/{MODEL}/infer", content=body, headers={"content-type": "application/json"}
            )
        finally:
            budget._take = original  # type: ignore[method-assign]
        assert budget.used == 0
    assert response.status_code == 200, response.text
    assert json_bodies.json_floor(body) in held and json_cost(body) in held
    assert held.index(json_bodies.json_floor(body)) < held.index(json_cost(body))
    assert json_cost(body) > len(body) + 32 * 3 * 224 * 224


async def test_a_small_gzip_body_of_millions_of_containers_is_413_before_it_is_parsed() -> None:
    """24 KiB on the wire, 16 MiB of {"":[]} decoded: parsed, it held ~570 MB against a charge of 80."""
    elements = b",".join([b'{"":[]}'] * ((16 << 20) // 8 - 16))
    body = gzip.compress(b'{"inputs":[{"name":"image","shape":[1,1],"datatype":"BYTES","data":[' + elements + b"]}]}")
    assert len(body) < 64 * 1024
    async with (
        running_server(http_port="auto") as server,
        httpx.AsyncClient(base_url=url(server), timeout=60) as client,
    ):
        peaks: list[int] = []
        original = server.engine.budget.lease
        server.engine.budget.lease = lambda n, owner: peaks.append(n) or original(n, owner)  # type: ignore[method-assign]
        try:
            response = await client.post(
                f"/v2/models/{MODEL}_image/infer",
                content=body,
                headers={"content-type": "application/json", "content-encoding": "gzip"},
            )
        finally:
            server.engine.budget.lease = original  # type: ignore[method-assign]
        assert server.engine.budget.used == 0
    assert response.status_code == 413, response.text
    assert "objects (the limit: 65536)" in response.json()["error"], response.json()["error"]
    assert max(peaks) < 64 << 20  # the body as received, not a parse


async def test_v1_overrides_of_many_values_are_refused_before_json_format_converts_them() -> None:
    overrides = {"crop_pct": 1.0, "image_mean": [0.5] * 60_000}  # json_format took seconds for this
    body = {"inputs": [{"image_base64": base64.b64encode(COFFEE).decode()}], "preprocessor_overrides": overrides}
    async with (
        running_server(http_port="auto") as server,
        httpx.AsyncClient(base_url=url(server), timeout=60) as client,
    ):
        started = time.monotonic()
        response = await client.post("/v1/classify", json=body)
        elapsed = time.monotonic() - started
        camel_body = {"inputs": body["inputs"], "preprocessorOverrides": overrides}  # the JSON mapping's other name
        camel = await client.post("/v1/classify", json=camel_body)
    for answer in (response, camel):
        assert answer.status_code == 400, answer.text
        assert "preprocessor_overrides holds more than 256 values" in answer.json()["error"]
    assert elapsed < 5


def test_json_numbers_are_converted_where_the_event_loop_can_take_its_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """json.loads converting numbers itself held the interpreter for a whole body (420 ms for 16 MiB); a Python
    function per number is where the interpreter switches threads."""
    calls = {"float": 0, "int": 0}

    def counted_float(text: str) -> float:
        calls["float"] += 1
        return float(text)

    def counted_int(text: str) -> int:
        calls["int"] += 1
        return int(text)

    monkeypatch.setitem(common.NUMBER_HOOKS, "parse_float", counted_float)
    monkeypatch.setitem(common.NUMBER_HOOKS, "parse_int", counted_int)
    calls["constant"] = 0

    def counted_constant(name: str) -> float:
        calls["constant"] += 1
        return float(name)

    monkeypatch.setitem(common.NUMBER_HOOKS, "parse_constant", counted_constant)
    parsed = common.parse_json(b'{"data": [0.5, 1, -2.25e3, 7, NaN, -Infinity], "n": 3, "s": "4", "b": true}')
    assert parsed["data"][:4] == [0.5, 1, -2250.0, 7] and math.isnan(parsed["data"][4])
    assert parsed["data"][5] == -math.inf and (parsed["n"], parsed["s"], parsed["b"]) == (3, "4", True)
    assert calls == {"float": 2, "int": 3, "constant": 2}
    assert all(hasattr(hook, "__code__") for hook in (common._float, common._int, common._constant))


def test_json_number_hooks_read_numbers_as_json_loads_does() -> None:
    text = b"[0, -0, 1e400, -1e400, 123456789012345678901234567890, 0.1, -3.5E-7, 2.0]"
    assert common.parse_json(text) == json.loads(text)
    with pytest.raises(InvalidInputError, match="a JSON number has more than 4300 digits"):
        common.parse_json(b"[" + b"9" * 5000 + b"]")


async def test_a_json_body_waiting_for_the_json_thread_is_charged_meanwhile() -> None:
    """Counted on the JSON thread, a large body may wait there behind others: its bytes stay charged (48 bodies
    of 16 MiB waited uncharged, 750 MiB over a 256 MiB budget, before json_lease)."""
    body = json.dumps(numbers_request((1, 3, 224, 224))).encode()
    assert len(body) > json_bodies.SMALL_JSON_BYTES
    release = threading.Event()
    async with (
        running_server(http_port="auto") as server,
        httpx.AsyncClient(base_url=url(server), timeout=60) as client,
    ):
        parsing = server.http._parsing  # type: ignore[union-attr]
        busy = asyncio.ensure_future(parsing.run(body, release.wait, 30))  # the JSON thread, taken
        budget = server.engine.budget
        posted = asyncio.ensure_future(
            client.post(f"/v2/models/{MODEL}/infer", content=body, headers={"content-type": "application/json"})
        )
        await poll_until(lambda: budget.used >= json_bodies.json_floor(body), attempts=800)
        waiting = budget.used
        release.set()
        response = await posted
        await busy
        assert budget.used == 0
    assert waiting >= json_bodies.json_floor(body), waiting
    assert response.status_code == 200, response.text
