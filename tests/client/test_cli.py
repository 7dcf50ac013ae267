"""The imgcls command: classify, health, models and serve (in process, and as a real process with SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imgcls import cli
from imgcls.server.server import RunningServer
from support.paths import IMAGES
from support.serve_process import ServeProcess

COFFEE = IMAGES / "coffee.jpg"


async def run_cli(*argv: str) -> int:
    """cli.main in a worker thread: the blocking client must not stall the server on this loop."""
    return await asyncio.to_thread(cli.main, list(argv))


def address(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- classify --------------------------------------------------------------------------------


async def test_classify_json(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    cat = IMAGES / "cat.jpg"
    code = await run_cli("classify", str(COFFEE), str(cat), "--server", address(server), "--json", "--top-k", "3")
    out = capsys.readouterr().out
    assert code == 0
    parsed = json.loads(out)
    assert list(parsed) == [str(COFFEE), str(cat)]
    assert parsed[str(COFFEE)][0]["label"] == "espresso"
    assert parsed[str(COFFEE)][0]["score"] > 0.9
    assert len(parsed[str(COFFEE)]) == 3
    assert parsed[str(cat)][0]["label"] == "Egyptian cat"


async def test_classify_table(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = await run_cli("classify", str(COFFEE), "--server", address(server))
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[0] == str(COFFEE)
    assert len(lines) == 6  # the path and the default top 5
    score, label = lines[1].split(maxsplit=1)
    assert label == "espresso"
    assert float(score) == pytest.approx(0.95, abs=0.03)


async def test_classify_options_reach_the_server(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["classify", str(COFFEE), "--server", address(server), "--json", "--top-k", "0", "--threshold", "0.01"]
    code = await run_cli(*argv, "--function", "sigmoid")
    parsed = json.loads(capsys.readouterr().out)[str(COFFEE)]
    assert code == 0
    # sigmoid scores of the top labels are all close to 1: many labels pass the 0.01 threshold.
    assert len(parsed) > 5
    assert all(p["score"] >= 0.01 for p in parsed)


async def test_classify_error_exits_1(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = await run_cli("classify", str(COFFEE), "--server", address(server), "--model", "nope")
    err = capsys.readouterr().err
    assert code == 1
    assert "NOT_FOUND" in err
    assert "'nope' is not served" in err


# --- health and models -----------------------------------------------------------------------


async def test_health_serving(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli("health", "--server", address(server)) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert await run_cli("health", "--server", address(server), "--service", "imgcls.v1.ImageClassifierService") == 0


async def test_health_not_serving(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    await server.set_serving(False)
    assert await run_cli("health", "--server", address(server)) == 1
    assert capsys.readouterr().out.strip() == "NOT_SERVING"


async def test_health_closed_port(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # bound and closed again: nothing listens there
    assert await run_cli("health", "--server", f"127.0.0.1:{port}", "--timeout", "5") == 1
    assert capsys.readouterr().out.startswith("NOT_SERVING (")


async def test_models(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli("models", "--server", address(server)) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "efficientnet-lite0"
    assert info["numLabels"] == 1000
    assert "labels" not in info  # 1000 labels would drown the rest


async def test_models_closed_port_is_one_line_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert await run_cli("models", "--server", f"127.0.0.1:{port}", "--timeout", "5") == 1
    err = capsys.readouterr().err
    assert err.startswith("imgcls models: UNAVAILABLE") and "Traceback" not in err


# --- serve -----------------------------------------------------------------------------------


def test_serve_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--dtype", "--port", "--max-batch-size", "--config", "--no-jpeg-draft"):
        assert flag in out


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch, clean_environ: None) -> None:
    """A config that unexpectedly passes must fail the test, not serve forever."""

    async def refuse(settings: Any) -> None:
        raise AssertionError(f"serve() was reached with {settings!r}")

    monkeypatch.setattr("imgcls.server.server.serve", refuse)


@pytest.mark.usefixtures("no_serving")
def test_serve_unknown_environment_key_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMGCLS_BOGUS", "1")
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgcls serve: invalid configuration")
    assert "bogus" in err


@pytest.mark.usefixtures("no_serving")
@pytest.mark.parametrize(
    ("argv", "env", "key"),
    [
        (["--max-batch-size", "0"], {}, "batching.max_batch_size"),
        ([], {"IMGCLS_BATCHING__MAX_BATCH_SIZE": "zero"}, "batching.max_batch_size"),
        (["--port", "70000"], {}, "port"),
        (["--model", "m=/x", "--dtype", "fp64"], {}, "dtype"),
        (["--default-model", "other"], {}, "default_model"),
    ],
)
def test_serve_bad_config_exits_2_naming_the_key(
    argv: list[str],
    env: dict[str, str],
    key: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["serve", *argv]) == 2
    assert key in capsys.readouterr().err


def test_serve_flags_become_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLS_PORT", "1234")  # the environment is overridden by flags
    args = cli.build_parser().parse_args(
        [
            "serve",
            "--port",
            "0",
            "--model",
            f"small={IMAGES}",
            "--dtype",
            "fp16",
            "--max-batch-size",
            "4",
            "--no-jpeg-draft",
        ]
    )
    settings = cli.serve_settings_from_args(args)
    assert settings.port == 0
    assert [(m.name, m.source, m.dtype) for m in settings.models] == [("small", str(IMAGES), "fp16")]
    assert settings.batching.max_batch_size == 4
    assert settings.jpeg_draft is False


def test_real_serve_process_classifies_and_stops_on_sigterm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = ServeProcess(tmp_path / "serve.log", "--grace-period", "5").start()
    try:
        assert cli.main(["health", "--server", server.target, "--timeout", "5"]) == 0
        capsys.readouterr()
        assert cli.main(["classify", str(COFFEE), "--server", server.target, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)[str(COFFEE)][0]["label"] == "espresso"
    finally:
        exit_status = server.stop()
    text = server.output()
    assert exit_status == 0, text
    assert f"imgcls serving on {server.target}" in text
    assert "shutting down" in text
    assert "stopped" in text


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """cmd_serve configures logging for the process (root handlers, levels): undo it for the next tests."""
    root, imgcls = logging.getLogger(), logging.getLogger("imgcls")
    handlers, root_level, imgcls_level = root.handlers[:], root.level, imgcls.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(root_level)
        imgcls.setLevel(imgcls_level)
        logging.captureWarnings(False)


@pytest.mark.usefixtures("restore_logging")
def test_serve_on_a_taken_port_fails_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--host", "127.0.0.1", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"cannot start: cannot bind 127.0.0.1:{port}" in err and "Traceback" not in err, err
