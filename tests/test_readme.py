"""The README is the front door: its commands and examples must stay true."""

from __future__ import annotations

import base64
import json
import re

from google.protobuf import json_format
from imgcls.v1 import classifier_pb2 as pb
from support.paths import IMAGES, ROOT
from support.servers import connect, running_server

README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    test_command = re.search(r"Run every test.*?```sh\n(.+?)\n```", README, re.S)
    assert test_command is not None
    ci = (ROOT / ".ci" / "run").read_text()
    # The README's command ends with the test runner; CI runs that same runner after installing.
    runner = test_command.group(1).split("&&")[-1].strip()
    assert runner in ci
    assert "pip install -e '.[dev,bench]'" in test_command.group(1) and "pip install -q -e '.[dev,bench]'" in ci


def test_serve_command_is_the_container_entrypoint() -> None:
    serve = re.search(r"Serve the embedded default model.*?```sh\n(.+?)\n```", README, re.S)
    assert serve is not None and serve.group(1).endswith("imgcls serve")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["imgcls"]' in dockerfile and '"serve"' in dockerfile


async def test_grpcurl_example_json_gives_the_documented_answer() -> None:
    command = re.search(r"-d '(\{\"inputs\": \[\{\"image\".+?)' \\\n", README)
    assert command is not None
    image = base64.b64encode((IMAGES / "cat.jpg").read_bytes()).decode()
    body = command.group(1).replace("'\"$(base64 -w0 cat.jpg)\"'", image)
    request = json_format.Parse(body, pb.ClassifyRequest())
    shown = json.loads(re.search(r"```json\n(.+?)\n```", README, re.S).group(1))  # type: ignore[union-attr]
    async with running_server() as server, connect(server) as stub:
        response = await stub.Classify(request)
    assert response.model == shown["model"]
    got = [(label.label, round(label.score, 4), label.index) for label in response.results[0].labels]
    want = [(label["label"], label["score"], label["index"]) for label in shown["results"][0]["labels"]]
    assert [g[0] for g in got] == [w[0] for w in want]
    assert [g[2] for g in got] == [w[2] for w in want]
    for (_, got_score, _), (_, want_score, _) in zip(got, want, strict=True):
        assert abs(got_score - want_score) < 1e-3
