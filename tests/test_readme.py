"""The README is the front door and the docs pages the rest of the house: their commands and examples must stay
true. Every code block of the README is one of the docs pages' (so the tests of those pages run it too)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from google.protobuf import json_format
from imgcls.v1 import classifier_pb2 as pb
from support import docs
from support.environment import without_server_variables
from support.paths import IMAGES, ROOT
from support.serve_process import ServeProcess
from support.servers import connect, running_server

README = (ROOT / "README.md").read_text()
IMGCLS_V1 = docs.page("doors/imgcls-v1.md")


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
    body = command.group(1).replace("'\"$(base64 -w0 examples/images/cat.jpg)\"'", image)
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


# --- "Calling it": every example pastes and runs from the clone root -------------------------------------


def section(title: str) -> str:
    return docs.section(IMGCLS_V1, title)


def code_blocks(text: str, language: str) -> list[str]:
    return docs.code_blocks(text, language)


def test_the_readme_reads_in_a_minute_and_its_examples_are_the_docs_pages() -> None:
    assert len(README.splitlines()) < 150
    pages = "\n".join(path.read_text() for path in docs.DOCS.rglob("*.md"))
    for language in ("sh", "python", "json"):
        for block in code_blocks(README, language):
            if block.startswith(("python3 -m venv", 'grpcurl -plaintext -d \'{"inputs"')):
                continue  # the set-up commands (tested above) and the grpcurl call (tested against a server below)
            assert block in pages, f"a README example that no docs page has (and so no test runs):\n{block}"


def test_the_readme_links_resolve() -> None:
    for target in re.findall(r"\]\(((?!https?:)[^)#]+)\)", README):
        assert (ROOT / target).exists(), target


def test_examples_use_files_of_the_clone() -> None:
    calling = IMGCLS_V1[: IMGCLS_V1.index("## The contract")]
    paths = set(re.findall(r"examples/images/[\w.-]+", calling))
    assert paths >= {"examples/images/cat.jpg", "examples/images/coffee.jpg"}
    assert all((ROOT / p).is_file() for p in paths), paths
    assert not re.search(r"(?<![\w/])(cat|coffee)\.jpg", calling), "a file name without its folder"
    cli = code_blocks(section("Command line"), "sh")[0]
    commands = [line for line in cli.splitlines() if line.strip()]
    assert commands and all(line.startswith(".venv/bin/imgcls ") for line in commands)


async def test_tensor_example_builds_a_real_tensor_that_classifies() -> None:
    grpcurl = code_blocks(section("grpcurl"), "sh")[1]
    script = re.search(r"\.venv/bin/python -c '(.+?)' \|\n", grpcurl, re.S)
    assert script is not None and "grpcurl -plaintext -d @ 127.0.0.1:50051" in grpcurl
    built = subprocess.run(
        [sys.executable, "-c", script.group(1)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    request = json_format.Parse(built.stdout, pb.ClassifyRequest())
    assert list(request.inputs[0].tensor.dims) == [1, 3, 224, 224]
    async with running_server() as server, connect(server) as stub:
        response = await stub.Classify(request)
    labels = response.results[0].labels
    assert labels[0].label == "espresso" and labels[0].index == 967
    assert all(label.score >= 0.2 for label in labels) and labels[0].score > 0.9  # sigmoid, thresholded


async def test_python_example_runs_as_written() -> None:
    (example,) = code_blocks(section("Python"), "python")
    async with running_server() as server:
        code = example.replace("127.0.0.1:50051", f"127.0.0.1:{server.port}")
        output = io.StringIO()

        def run() -> None:
            cwd = os.getcwd()
            os.chdir(ROOT)
            try:
                with contextlib.redirect_stdout(output):
                    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
            finally:
                os.chdir(cwd)

        await asyncio.to_thread(run)
    lines = output.getvalue().splitlines()
    shown = re.search(r"# (\[Prediction\(label='Egyptian cat', score=0\.\d+)\.\.\., (index=285\))", example)
    assert shown is not None
    assert lines[0].startswith(shown.group(1)) and shown.group(2) in lines[0]
    assert len(lines) == 3  # the classify line, then one line per frame of the stream
    assert lines[1].split(" ", 1)[1].startswith("Prediction(label='Egyptian cat'")
    assert lines[2].split(" ", 1)[1].startswith("Prediction(label='espresso'")


def test_command_line_examples_run_from_the_clone_root(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "serve.log", "--grace-period", "1").start()
    try:
        (block,) = code_blocks(section("Command line"), "sh")
        for line in block.splitlines():
            argv = shlex.split(line.split("  #")[0])
            assert argv[0] == ".venv/bin/imgcls"
            argv = [a for i, a in enumerate(argv[1:]) if a != "--server" and argv[i] != "--server"]
            done = subprocess.run(
                [sys.executable, "-m", "imgcls.cli", *argv, "--server", server.target],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                env=without_server_variables(),
            )
            assert done.returncode == 0, (line, done.stderr)
            assert "Traceback" not in done.stderr
            if argv[0] == "classify":
                assert "Egyptian cat" in done.stdout and "espresso" in done.stdout
            if argv[0] == "stream":
                assert done.stdout.splitlines()[0].startswith("examples/images/cat.jpg  ")
    finally:
        server.stop()


def test_readme_shows_the_jpeg_draft_modes_the_server_has() -> None:
    from imgcls.server.images.preprocessing import DEFAULT_JPEG_DRAFT, DRAFT_MARGINS, JPEG_DRAFT_MODES

    models = docs.page("models.md")
    table = models[models.index("**JPEG draft decoding.**") :]
    rows = re.findall(r"^\| `(\w+)`(?: \(default\))?[^|]*\| ([^|]+) \|", table, re.M)
    assert [mode for mode, _ in rows] == list(JPEG_DRAFT_MODES)
    assert f"| `{DEFAULT_JPEG_DRAFT}` (default) |" in table
    for mode, margin in DRAFT_MARGINS.items():
        assert f"at least {margin:g}x the target" in dict(rows)[mode]


def test_license_is_the_apache_2_0_text_pyproject_names() -> None:
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
    assert len(license_text.splitlines()) > 190  # the full text, not a notice
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
