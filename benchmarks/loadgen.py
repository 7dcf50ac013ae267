"""The load generator: a separate process that drives imgcls servers with grpc.aio and the generated stubs.

    python benchmarks/loadgen.py --plan plan.json --out results.json

The plan (written by benchmarks/run.py) names the servers, the payload files and the levels to
run in order. A unary level keeps ``concurrency`` Classify calls in flight; a stream level sends
frames on one ClassifyStream as fast as flow control allows while reading answers. Each level:

- warms up for ``warmup_s`` at its own concurrency, then measures a window that ends after
  ``duration_s`` or ``max_requests`` answers, whichever comes first; work still in flight when the
  window closes is drained but not counted, so the window sees the steady state only;
- reports throughput, latency percentiles (calls started and answered inside the window), errors,
  its own CPU time, wall-clock start/end (so the harness can match its RSS samples of the server)
  and the server's batch statistics over the level (GetModel before and after).

A level with ``"protocol": "v2-grpc"`` sends the same payload over the Open Inference Protocol's gRPC
service instead (tritonclient's generated stubs, as Triton clients do): images to ``NAME_image``, tensors
to ``NAME``, asking for the top-5 classification strings (the answer imgcls.v1 gives by default).
``"hf-http"`` and ``"v2-http"`` levels send it over HTTP to the server's HTTP port (aiohttp, keep-alive
connections): the image as the body of ``POST /models/NAME`` (the Hugging Face Inference API), or to
``NAME_image`` with Triton's binary tensor data extension, again asking for the top-5.

The process is kept apart from the harness so the client's CPU use is visible and the harness's
in-process ONNX Runtime session cannot disturb it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc

V2_TOP_K = 5  # classification strings per answer: the top-5 labels imgcls.v1 answers by default
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
CALL_TIMEOUT_S = 120.0
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def build_input(payload: dict[str, Any]) -> pb.Input:
    """One protobuf Input from a payload file the harness prepared."""
    data = Path(payload["path"]).read_bytes()
    kind = payload["type"]
    if kind == "tensor":
        array = np.load(payload["path"]).astype("<f4", copy=False)
        return pb.Input(tensor=pb.Tensor(dims=list(array.shape), dtype=pb.DATA_TYPE_FLOAT32, raw_data=array.tobytes()))
    if kind == "image":
        return pb.Input(image=data)
    if kind == "raw":
        return pb.Input(
            raw=pb.RawImage(width=payload["width"], height=payload["height"], format=pb.PIXEL_FORMAT_RGB8, data=data)
        )
    raise ValueError(f"unknown payload type {kind!r}")


def summarize(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {
            "p50": float("nan"),
            "p90": float("nan"),
            "p99": float("nan"),
            "mean": float("nan"),
            "max": float("nan"),
        }
    ms = np.asarray(latencies) * 1e3
    return {
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
        "max": float(ms.max()),
    }


class Window:
    """The measurement window of one level: opens after warm-up, closes on time or on count."""

    def __init__(self, warmup_s: float, duration_s: float, max_count: int) -> None:
        self.started = time.perf_counter()
        self.opens = self.started + warmup_s
        self.closes = self.opens + duration_s
        self.max_count = max_count
        self.count = 0
        self.closed_at: float | None = None
        self.latencies: list[float] = []

    @property
    def stopping(self) -> bool:
        """No new work once the window has closed (on count) or its time is up."""
        if self.closed_at is None and time.perf_counter() >= self.closes:
            self.closed_at = self.closes
        return self.closed_at is not None

    def record(self, sent: float, answered: float) -> None:
        if self.closed_at is not None and answered > self.closed_at:
            return  # drained after the window closed: not steady state
        if answered > self.closes:
            self.closed_at = self.closes
            return
        if answered < self.opens:
            return  # warm-up
        self.count += 1
        if sent >= self.opens:
            self.latencies.append(answered - sent)
        if self.count >= self.max_count:
            self.closed_at = answered

    def seconds(self) -> float:
        end = self.closed_at if self.closed_at is not None else time.perf_counter()
        return max(end - self.opens, 1e-9)

    def wall(self) -> dict[str, float]:
        """The window on the wall clock (time.time), as the harness samples the server's CPU."""
        offset = time.time() - time.perf_counter()
        return {"window_wall_start": self.opens + offset, "window_wall_end": self.opens + self.seconds() + offset}


async def model_stats(stub: pb_grpc.ImageClassifierServiceAsyncStub) -> dict[str, Any]:
    info = (await stub.GetModel(pb.GetModelRequest(), timeout=30)).model
    return {
        "inputs": info.stats.inputs,
        "batches": info.stats.batches,
        "batch_size_counts": dict(info.stats.batch_size_counts),
        "queue_time_us": info.stats.queue_time_us,
        "compute_time_us": info.stats.compute_time_us,
    }


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    counts = {
        int(k): after["batch_size_counts"].get(k, 0) - before["batch_size_counts"].get(k, 0)
        for k in after["batch_size_counts"]
    }
    inputs = after["inputs"] - before["inputs"]
    batches = after["batches"] - before["batches"]
    return {
        "inputs": inputs,
        "batches": batches,
        "avg_batch_size": inputs / batches if batches else 0.0,
        "batch_size_counts": {k: v for k, v in sorted(counts.items()) if v},
        "compute_ms_per_input": (after["compute_time_us"] - before["compute_time_us"]) / 1e3 / inputs
        if inputs
        else 0.0,
        "queue_ms_per_input": (after["queue_time_us"] - before["queue_time_us"]) / 1e3 / inputs if inputs else 0.0,
    }


async def run_unary(
    stub: pb_grpc.ImageClassifierServiceAsyncStub, request: pb.ClassifyRequest, level: dict[str, Any]
) -> dict[str, Any]:
    window = Window(level["warmup_s"], level["duration_s"], level["max_requests"])
    errors: Counter[str] = Counter()
    images_per_request = level.get("images_per_request", 1)

    async def worker() -> None:
        while not window.stopping:
            sent = time.perf_counter()
            try:
                response = await stub.Classify(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                continue
            if len(response.results) != images_per_request:
                errors["BAD_RESPONSE"] += 1
                continue
            window.record(sent, time.perf_counter())

    await asyncio.gather(*(worker() for _ in range(level["concurrency"])))
    seconds = window.seconds()
    return {
        "requests": window.count,
        "images": window.count * images_per_request,
        "seconds": seconds,
        "images_per_s": window.count * images_per_request / seconds,
        "latency_ms": summarize(window.latencies),
        "errors": dict(errors),
        **window.wall(),
    }


async def run_stream(
    stub: pb_grpc.ImageClassifierServiceAsyncStub,
    first: pb.ClassifyStreamRequest,
    rest: pb.ClassifyStreamRequest,
    level: dict[str, Any],
) -> dict[str, Any]:
    window = Window(level["warmup_s"], level["duration_s"], level["max_requests"])
    errors: Counter[str] = Counter()
    sent_at: deque[float] = deque()
    # No request iterator: frames are written with call.write() (the stubs' types miss that form).
    call: Any = stub.ClassifyStream(timeout=CALL_TIMEOUT_S)  # type: ignore[call-arg]
    frames_sent = 0

    async def writer() -> None:
        nonlocal frames_sent
        message = first
        while not window.stopping:
            sent_at.append(time.perf_counter())
            await call.write(message)  # waits while flow control holds the stream back
            frames_sent += 1
            message = rest
        await call.done_writing()

    async def reader() -> None:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:  # type: ignore[attr-defined]
                return
            answered = time.perf_counter()
            sent = sent_at.popleft()
            if response.status.code != 0:
                errors[_CODE_NAMES.get(response.status.code, str(response.status.code))] += 1
            elif response.skipped:
                errors["SKIPPED"] += 1
            else:
                window.record(sent, answered)

    try:
        await asyncio.gather(writer(), reader())
    except grpc.aio.AioRpcError as exc:
        errors[f"STREAM_{exc.code().name}"] += 1
    seconds = window.seconds()
    return {
        "requests": window.count,
        "images": window.count,
        "frames_sent": frames_sent,
        "seconds": seconds,
        "images_per_s": window.count / seconds,
        "latency_ms": summarize(window.latencies),
        "errors": dict(errors),
        **window.wall(),
    }


# -- the Open Inference Protocol over gRPC (v2) -----------------------------------------------------
async def build_v2_request(channel: grpc.aio.Channel, model: str, payload: dict[str, Any]) -> Any:
    """A ModelInferRequest for a payload: an image to MODEL_image, a tensor to MODEL (names from its metadata)."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    kind = payload["type"]
    name = f"{model}_image" if kind == "image" else model
    metadata = await stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=name), timeout=30)
    request = service_pb2.ModelInferRequest(model_name=name)
    tensor = request.inputs.add(name=metadata.inputs[0].name)
    if kind == "tensor":
        array = np.load(payload["path"]).astype("<f4", copy=False)
        tensor.datatype, tensor.shape[:] = "FP32", list(array.shape)
        request.raw_input_contents.append(array.tobytes())
    elif kind == "image":
        data = Path(payload["path"]).read_bytes()
        tensor.datatype, tensor.shape[:] = "BYTES", [1, 1]
        request.raw_input_contents.append(len(data).to_bytes(4, "little") + data)
    else:
        raise ValueError(f"payload type {kind!r} has no v2 form (raw pixels are an imgcls.v1 feature)")
    output = request.outputs.add(name=metadata.outputs[0].name)
    output.parameters["classification"].int64_param = V2_TOP_K
    return request


async def run_v2_unary(channel: grpc.aio.Channel, request: Any, level: dict[str, Any]) -> dict[str, Any]:
    """As run_unary, with ModelInfer: ``concurrency`` calls in flight, each answer checked for its top-5."""
    from tritonclient.grpc import service_pb2_grpc

    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    window = Window(level["warmup_s"], level["duration_s"], level["max_requests"])
    errors: Counter[str] = Counter()

    async def worker() -> None:
        while not window.stopping:
            sent = time.perf_counter()
            try:
                response = await stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                continue
            if len(response.raw_output_contents) != 1 or list(response.outputs[0].shape) != [1, V2_TOP_K]:
                errors["BAD_RESPONSE"] += 1
                continue
            window.record(sent, time.perf_counter())

    await asyncio.gather(*(worker() for _ in range(level["concurrency"])))
    seconds = window.seconds()
    return {
        "requests": window.count,
        "images": window.count,
        "seconds": seconds,
        "images_per_s": window.count / seconds,
        "latency_ms": summarize(window.latencies),
        "errors": dict(errors),
        **window.wall(),
    }


# -- HTTP: the Hugging Face Inference API and the Open Inference Protocol's REST API ------------------
HTTP_PROTOCOLS = ("hf-http", "v2-http")


def build_http_request(protocol: str, model: str, payload: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of one request: ``hf-http`` sends the image file itself as the body; ``v2-http``
    sends it to MODEL_image as tritonclient.http does (binary tensor data extension), asking for the top-5
    classification strings, binary."""
    if payload["type"] != "image":
        raise ValueError(f"payload type {payload['type']!r} has no {protocol} form here (images only)")
    data = Path(payload["path"]).read_bytes()
    if protocol == "hf-http":
        return f"/models/{model}", data, {"content-type": "image/jpeg"}
    tensor = {"name": "image", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": len(data) + 4}}
    output = {"name": "scores", "parameters": {"classification": V2_TOP_K, "binary_data": True}}
    header = json.dumps({"inputs": [tensor], "outputs": [output]}).encode()
    headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))}
    return f"/v2/models/{model}_image/infer", header + len(data).to_bytes(4, "little") + data, headers


def http_answer_ok(protocol: str, body: bytes, headers: Any) -> bool:
    """The answer carries the top-5: a JSON array of five labels, or a binary [1, 5] classification output."""
    if protocol == "hf-http":
        return len(json.loads(body)) == V2_TOP_K
    length = int(headers.get("inference-header-content-length", "-1"))
    return length > 0 and json.loads(body[:length])["outputs"][0]["shape"] == [1, V2_TOP_K]


async def run_http_unary(
    session: Any, url: str, body: bytes, headers: dict[str, str], protocol: str, level: dict[str, Any]
) -> dict[str, Any]:
    """As run_unary, over HTTP/1.1 (aiohttp, keep-alive): ``concurrency`` requests in flight, each answer checked."""
    import aiohttp

    window = Window(level["warmup_s"], level["duration_s"], level["max_requests"])
    errors: Counter[str] = Counter()

    async def worker() -> None:
        while not window.stopping:
            sent = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    answer = await response.read()
                    status = response.status
                    answer_headers = response.headers
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1
                continue
            if status != 200:
                errors[f"HTTP_{status}"] += 1
                continue
            if not http_answer_ok(protocol, answer, answer_headers):
                errors["BAD_RESPONSE"] += 1
                continue
            window.record(sent, time.perf_counter())

    await asyncio.gather(*(worker() for _ in range(level["concurrency"])))
    seconds = window.seconds()
    return {
        "requests": window.count,
        "images": window.count,
        "seconds": seconds,
        "images_per_s": window.count / seconds,
        "latency_ms": summarize(window.latencies),
        "errors": dict(errors),
        **window.wall(),
    }


def http_session() -> Any:
    """One keep-alive connection pool per server, as large as any level's concurrency."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout)


async def run_plan(plan: dict[str, Any]) -> list[dict[str, Any]]:
    channels = {
        name: grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for name, target in plan["targets"].items()
    }
    stubs = {name: pb_grpc.ImageClassifierServiceStub(channel) for name, channel in channels.items()}
    inputs = {name: build_input(payload) for name, payload in plan["payloads"].items()}
    model = plan.get("model", "")
    v2_requests: dict[tuple[str, str], Any] = {}  # (target, payload) -> ModelInferRequest, built on first use
    http_sessions: dict[str, Any] = {}  # target -> aiohttp session, opened on first use
    results = []
    try:
        for level in plan["levels"]:
            stub = stubs[level["target"]]
            before = await model_stats(stub)
            wall_start = time.time()
            cpu_start = time.process_time()
            if level.get("protocol") == "v2-grpc":
                key = (level["target"], level["payload"])
                if key not in v2_requests:
                    channel = channels[level["target"]]
                    v2_requests[key] = await build_v2_request(channel, plan["v2_model"], plan["payloads"][key[1]])
                measured = await run_v2_unary(channels[level["target"]], v2_requests[key], level)
            elif level.get("protocol") in HTTP_PROTOCOLS:
                target = level["target"]
                session = http_sessions.get(target) or http_sessions.setdefault(target, http_session())
                path, body, headers = build_http_request(
                    level["protocol"], plan["v2_model"], plan["payloads"][level["payload"]]
                )
                url = f"http://{plan['http_targets'][target]}{path}"
                measured = await run_http_unary(session, url, body, headers, level["protocol"], level)
            elif level["mode"] == "unary":
                request = pb.ClassifyRequest(model=model, inputs=[inputs[level["payload"]]])
                measured = await run_unary(stub, request, level)
            else:
                first = pb.ClassifyStreamRequest(
                    model=model, inputs=[inputs[level["payload"]]], parameters=pb.Parameters(top_k=5)
                )
                rest = pb.ClassifyStreamRequest(inputs=[inputs[level["payload"]]])
                measured = await run_stream(stub, first, rest, level)
            cpu = time.process_time() - cpu_start
            wall_end = time.time()
            after = await model_stats(stub)
            result = {
                **level,
                **measured,
                "wall_start": wall_start,
                "wall_end": wall_end,
                "loadgen_cpu_s": cpu,
                "loadgen_cpu_util": cpu / max(wall_end - wall_start, 1e-9),
                "server_batches": stats_delta(before, after),
            }
            results.append(result)
            print(
                f"loadgen: {level['id']}: {measured['images_per_s']:.1f} img/s, "
                f"p50 {measured['latency_ms']['p50']:.1f} ms, errors {measured['errors'] or 0}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        for channel in channels.values():
            await channel.close(None)
        for session in http_sessions.values():
            await session.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, required=True, help="plan JSON written by benchmarks/run.py")
    parser.add_argument("--out", type=Path, required=True, help="where to write the results JSON")
    args = parser.parse_args(argv)
    plan = json.loads(args.plan.read_text())
    results = asyncio.run(run_plan(plan))
    args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
