"""What the HTTP tests share: the reference answers, imgcls.v1's own answers, curl and raw sockets."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from imgcls.server.server import RunningServer
from imgcls.v1 import classifier_pb2 as pb
from imgcls.v1 import classifier_pb2_grpc as pb_grpc
from support.paths import IMAGES

MODEL = "efficientnet-lite0"
REFERENCE: dict[str, list[dict[str, Any]]] = json.loads((IMAGES / "reference-efficientnet-lite0.json").read_text())
IMAGE_NAMES = sorted(REFERENCE)
CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed (apt-get install -y curl)")


def url(server: RunningServer, path: str = "") -> str:
    return f"http://127.0.0.1:{server.http_port}{path}"


def image(name: str) -> bytes:
    return (IMAGES / name).read_bytes()


@dataclass(frozen=True)
class Answer:
    """One label as imgcls.v1 answers it over gRPC."""

    label: str
    index: int
    score: float


async def v1_answer(stub: pb_grpc.ImageClassifierServiceStub, data: bytes, *, top_k: int = 5) -> list[Answer]:
    response = await stub.Classify(
        pb.ClassifyRequest(inputs=[pb.Input(image=data)], parameters=pb.Parameters(top_k=top_k))
    )
    return [Answer(x.label, x.index, x.score) for x in response.results[0].labels]


def assert_reference_top5(name: str, labels: list[str]) -> None:
    assert labels == [entry["label"] for entry in REFERENCE[name]], name


def same_float32(got: float, want: float) -> bool:
    """Equal as the float32 both sides computed (JSON writers differ in how many digits they print)."""
    return bool(np.float32(got) == np.float32(want))


@dataclass(frozen=True)
class CurlResult:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def curl(*args: str, stdin: bytes | None = None) -> CurlResult:
    """curl as a user runs it, in a subprocess: the status, response headers (lower-case) and body."""
    assert CURL is not None
    process = await asyncio.create_subprocess_exec(
        CURL,
        "-sS",
        "-D",
        "-",
        *args,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=60)
    assert process.returncode == 0, err.decode()
    head, _, body = out.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):  # Expect: 100-continue answered first
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return CurlResult(status, headers, body)
