"""Logging: the JSON format (one object a line, with level, logger and message), levels that apply to
imgcls and not to chatty libraries, the debug line per request with its request_id, and the start-up
summary (models, variants, providers, batching, ports); in process, and from a real ``imgcls serve``."""

from __future__ import annotations

import io
import json
import logging
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from imgcls.client import AsyncClient, Client, ClientError
from imgcls.server.logging_setup import configure_logging
from imgcls.server.server import log_startup_summary
from support.environment import without_server_variables
from support.paths import EFFICIENTNET, IMAGES
from support.servers import running_server

COFFEE = IMAGES / "coffee.jpg"
IMGCLS = Path(sys.executable).parent / "imgcls"
TOKEN = "s3cret-token-never-logged"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back for the other tests."""
    root, ours = logging.getLogger(), logging.getLogger("imgcls")
    saved = (root.handlers[:], root.level, ours.level)
    try:
        yield
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        ours.setLevel(saved[2])
        logging.captureWarnings(False)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line parsed; fails on the first that is not one JSON object with level, logger and message."""
    entries = []
    for line in text.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        entries.append(entry)
    return entries


# -- the formats and levels ---------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_logging")
def test_json_format_is_one_object_per_line() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    log = logging.getLogger("imgcls.test")
    log.info("two\nlines", extra={"model": "m", "path": Path("/p")})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    logging.getLogger("some.library").warning("from a library")
    entries = json_lines(out.getvalue())
    # Three records, three lines: the message's newline and the traceback's are escaped inside the JSON.
    assert len(entries) == 3
    first, failure, library = entries
    assert {"level": "info", "logger": "imgcls.test", "message": "two\nlines", "model": "m"}.items() <= first.items()
    assert first["path"] == "/p"  # extras JSON cannot hold are written as text, not dropped with the line
    assert failure["level"] == "error"
    assert "ValueError: boom" in failure["exception"]
    assert library["level"] == "warning"
    assert library["logger"] == "some.library"


@pytest.mark.usefixtures("restore_logging")
def test_text_format_and_levels() -> None:
    out = io.StringIO()
    configure_logging("debug", "text", stream=out)
    logging.getLogger("imgcls.requests").debug("request line")
    # A library's debug output (Pillow logs every PNG chunk) would bury the request lines: held at info.
    logging.getLogger("PIL.PngImagePlugin").debug("STREAM b'IHDR'")
    logging.getLogger("PIL.PngImagePlugin").info("library info")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(" DEBUG imgcls.requests: request line")
    assert lines[1].endswith(" INFO PIL.PngImagePlugin: library info")

    out = io.StringIO()
    configure_logging("warning", "text", stream=out)
    logging.getLogger("imgcls.server.server").info("hidden")
    logging.getLogger("imgcls.server.server").warning("shown")
    assert out.getvalue().splitlines()[0].endswith(" WARNING imgcls.server.server: shown")
    assert "hidden" not in out.getvalue()


# -- what the server logs -----------------------------------------------------------------------------


async def test_debug_line_per_classify_carries_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="imgcls")
    async with (
        running_server(auth_tokens=[TOKEN]) as server,
        AsyncClient(f"127.0.0.1:{server.port}", token=TOKEN) as client,
    ):
        await client.classify(COFFEE, request_id="req-7f3a")
    lines = [r for r in caplog.records if r.levelno == logging.DEBUG and "req-7f3a" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert lines[0].name == "imgcls.requests"
    assert "Classify" in lines[0].getMessage()
    assert "efficientnet-lite0" in lines[0].getMessage()
    assert TOKEN not in caplog.text


async def test_debug_lines_for_refused_calls_and_stream_frames(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="imgcls")
    async with running_server() as server, AsyncClient(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(ClientError):
            await client.classify(b"not an image", request_id="req-bad")
        frames = [r async for r in client.classify_stream([COFFEE, b"junk"])]
    assert [f.code for f in frames] == [grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT]
    messages = [r.getMessage() for r in caplog.records if r.name == "imgcls.requests"]
    refused = [m for m in messages if "'req-bad'" in m]
    assert len(refused) == 1 and "outcome=invalid_input" in refused[0], messages
    stream = [m for m in messages if m.startswith("imgcls.v1 ClassifyStream ")]
    assert len(stream) == 2, messages
    assert "outcome=ok" in stream[0] and "outcome=invalid_input" in stream[1]


async def test_startup_summary_names_models_variants_providers_and_batching(
    caplog: pytest.LogCaptureFixture,
) -> None:
    models = [
        {"name": "lite-q8", "source": str(EFFICIENTNET), "dtype": "q8", "batching": {"queue_limit": 33}},
        {"name": "lite", "source": str(EFFICIENTNET)},
    ]
    settings = {
        "models": models,
        "batching": {"max_batch_size": 4, "max_queue_delay_us": 250, "queue_limit": 17},
        "runtime": {"intra_op_threads": 1, "instances": 2},
        "metrics_port": 0,
        "max_connection_age_s": 300,
        "auth_tokens": [TOKEN],
    }
    caplog.set_level(logging.INFO, logger="imgcls")
    async with running_server(**settings) as server:
        log_startup_summary(server)
    records = [r for r in caplog.records if r.name == "imgcls.server.server"]
    head, *per_model = (r.getMessage() for r in records)
    assert head.startswith(f"imgcls serving on 127.0.0.1:{server.port} (plaintext, auth bearer token, ")
    assert f"metrics http://127.0.0.1:{server.metrics_port}/metrics" in head
    assert "max connection age 300s" in head
    assert "models lite-q8, lite (default lite-q8)" in head
    assert per_model == [
        f"model lite-q8 (default): source={EFFICIENTNET} variant=q8 input_dtype=float32 "
        "providers=CPUExecutionProvider instances=2 threads intra=1 (lone run -) inter=0; batching max_batch_size=4 "
        "max_queue_delay_us=250 queue_limit=33",
        f"model lite: source={EFFICIENTNET} variant=fp32 input_dtype=float32 providers=CPUExecutionProvider "
        "instances=2 threads intra=1 (lone run -) inter=0; batching max_batch_size=4 max_queue_delay_us=250 "
        "queue_limit=17",
    ]
    # The same facts as fields of their own, for JSON logs.
    assert records[0].port == server.port  # type: ignore[attr-defined]
    assert records[1].variant == "q8"  # type: ignore[attr-defined]
    assert records[1].providers == ["CPUExecutionProvider"]  # type: ignore[attr-defined]
    assert records[1].instances == 2  # type: ignore[attr-defined]
    assert TOKEN not in caplog.text


# -- a real imgcls serve ------------------------------------------------------------------------------


def test_serve_process_logs_json(tmp_path: Path) -> None:
    """``imgcls serve --log-format json --log-level debug`` on port 0: every line it writes is a JSON object;
    the start-up summary reports the bound port, the model, its variant and providers; a Classify gives
    a debug line with its request_id; SIGTERM ends it with exit 0."""
    env = without_server_variables()
    process = subprocess.Popen(
        [
            str(IMGCLS),
            "serve",
            "--port",
            "0",
            "--http-port",
            "0",
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--grace-period",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []

    def next_entry() -> dict[str, Any]:
        line = lines.get(timeout=60)
        if line is None:
            pytest.fail(f"imgcls serve ended early ({process.wait()}):\n{''.join(seen)}")
        seen.append(line)
        (entry,) = json_lines(line)
        return entry

    try:
        # The summary is logged once the server is SERVING: its port is where to connect.
        while not (summary := next_entry())["message"].startswith("imgcls serving on"):
            pass
        model = next_entry()
        with Client(f"127.0.0.1:{summary['port']}", timeout=30) as client:
            assert client.classify(COFFEE, request_id="frame-0042")[0].label == "espresso"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        reader.join(timeout=60)
        entries = [summary, model]
        while (line := lines.get(timeout=5)) is not None:
            seen.append(line)
            entries.extend(json_lines(line))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert model["level"] == "info"
    expected = {"model": "efficientnet-lite0", "variant": "fp32", "providers": ["CPUExecutionProvider"]}
    assert expected.items() <= model.items()
    assert {"max_batch_size": 4, "max_queue_delay_us": 0, "queue_limit": 256}.items() <= model.items()
    requests = [e for e in entries if e["logger"] == "imgcls.requests"]
    assert len(requests) == 1, seen
    assert requests[0]["level"] == "debug"
    assert "frame-0042" in requests[0]["message"]
    assert entries[-2]["message"] == "shutting down: finishing accepted requests (grace 2.0s)"
    assert entries[-1]["message"] == "stopped; requests answered per model: efficientnet-lite0 1 (0 failed)"
    assert entries[-1]["requests"] == {"efficientnet-lite0": 1}
