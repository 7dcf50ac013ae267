"""The imgcls command: classify, health, models and serve (in process, and as a real process with SIGTERM)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import logging
import os
import pty
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from imgcls import cli
from imgcls.cli import common, serve_flags, stream
from imgcls.server.server import RunningServer
from imgcls.v1 import classifier_pb2 as pb
from support.environment import without_server_variables
from support.paths import IMAGES, ROOT
from support.ports import closed_port
from support.serve_process import ServeProcess

COFFEE = IMAGES / "coffee.jpg"


async def run_cli(*argv: str) -> int:
    """cli.main in a worker thread: the blocking client must not stall the server on this loop."""
    return await asyncio.to_thread(cli.main, list(argv))


def address(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


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
    with closed_port() as port:  # bound, never listening: nothing listens there
        assert await run_cli("health", "--server", f"127.0.0.1:{port}", "--timeout", "5") == 1
    assert capsys.readouterr().out.startswith("NOT_SERVING (")


async def test_models_json(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli("models", "--server", address(server), "--json") == 0
    (info,) = json.loads(capsys.readouterr().out)
    assert info["name"] == "efficientnet-lite0" and info["default"] is True
    assert info["num_labels"] == 1000
    assert "labels" not in info  # 1000 labels would drown the rest
    # Plain JSON types, not protobuf's JSON mapping: ints as ints, enums as names, Struct doubles made whole.
    assert info["input"] == {"name": "pixel_values", "shape": [-1, 3, 224, 224], "dtype": "float32", "layout": "NCHW"}
    assert info["preprocessing"]["resample"] == 2 and isinstance(info["preprocessing"]["resample"], int)
    assert isinstance(info["stats"]["requests"], int)
    assert info["default_function"] == "softmax"


async def test_models_closed_port_is_one_line_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    with closed_port() as port:
        assert await run_cli("models", "--server", f"127.0.0.1:{port}", "--timeout", "5") == 1
    err = capsys.readouterr().err
    assert err.startswith("imgcls models: UNAVAILABLE") and "Traceback" not in err


# --- serve -----------------------------------------------------------------------------------


def test_serve_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--dtype", "--port", "--max-batch-size", "--config", "--jpeg-draft", "--no-jpeg-draft"):
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
    assert settings.jpeg_draft == "off"


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


# --- the real command in a subprocess (issue 13): exit codes and output, a timeout so a hang fails -----

CLI_TIMEOUT_S = 60


@dataclass(frozen=True)
class Done:
    code: int
    out: str
    err: str


def imgcls(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Done:
    """`imgcls ARGV` as a user runs it: a fresh process; a hang fails the test after CLI_TIMEOUT_S."""
    done = subprocess.run(
        [sys.executable, "-m", "imgcls.cli", *argv],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        cwd=cwd or ROOT,
        env={**without_server_variables(), **(env or {})},
    )
    return Done(done.returncode, done.stdout, done.stderr)


def assert_one_line_error(done: Done, prefix: str, *parts: str) -> None:
    assert done.code != 0, done
    assert "Traceback" not in done.err, done.err
    lines = done.err.strip().splitlines()
    assert len(lines) == 1, done.err
    assert lines[0].startswith(prefix), done.err
    for part in parts:
        assert part in lines[0], done.err


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `imgcls serve` for the module's subprocess tests; its target address."""
    server = ServeProcess(tmp_path_factory.mktemp("serve") / "serve.log", "--grace-period", "1").start()
    try:
        yield server.target
    finally:
        server.stop()


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    """A folder of three images: two good ones and a truncated JPEG between them."""
    folder = tmp_path / "frames"
    folder.mkdir()
    shutil.copy(IMAGES / "cat.jpg", folder / "a-cat.jpg")
    (folder / "b-broken.jpg").write_bytes((IMAGES / "cat.jpg").read_bytes()[:3000])
    shutil.copy(COFFEE, folder / "c-coffee.jpg")
    (folder / "notes.txt").write_text("not an image: left out")
    return folder


# 1. stream never hangs on a source it cannot read: one line, before any stream is opened.


@pytest.mark.parametrize(
    ("make_source", "reason"),
    [
        (lambda tmp: tmp / "missing-folder", "no such file or folder"),
        (lambda tmp: shutil.copy(COFFEE, tmp / "one.jpg"), "is one image; stream takes a folder of images or a video"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "no images (.jpg"),
        (lambda tmp: (tmp / "clip.mp4").write_bytes(b"\0" * 64) and tmp / "clip.mp4", "clip.mp4"),
    ],
    ids=["missing folder", "single image", "empty folder", "video"],
)
def test_stream_refuses_an_unusable_source_in_one_line(
    served: str, tmp_path: Path, make_source: Callable[[Path], Any], reason: str
) -> None:
    source = Path(make_source(tmp_path))
    done = imgcls("stream", str(source), "--server", served)
    assert_one_line_error(done, f"imgcls stream: {source}: ", reason)
    assert done.code == 2 and done.out == ""


def test_stream_of_a_video_without_pyav_says_how_to_get_it(served: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("av") is not None:
        pytest.skip("PyAV is installed here")
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 64)
    done = imgcls("stream", str(tmp_path / "clip.mp4"), "--server", served)
    assert_one_line_error(done, "imgcls stream: ", "reading video files needs PyAV: pip install 'imgcls[video]'")


# 2. classify: no tracebacks.


@pytest.mark.parametrize(
    ("argument", "reason"),
    [
        ("nope.jpg", f"nope.jpg: no such file ({ROOT / 'nope.jpg'})"),
        (".", ".: is a folder"),
        ("https://example.com/cat.jpg", "https://example.com/cat.jpg: URLs are not fetched; download the image first"),
    ],
)
def test_classify_what_is_no_image_file_is_one_line(served: str, argument: str, reason: str) -> None:
    done = imgcls("classify", argument, "--server", served)
    assert_one_line_error(done, "imgcls classify: ", reason)
    assert done.code == 1


def test_classify_with_no_server_is_one_line(tmp_path: Path) -> None:
    with closed_port() as port:
        done = imgcls("classify", str(COFFEE), "--server", f"127.0.0.1:{port}", "--timeout", "5")
    assert_one_line_error(done, "imgcls classify: UNAVAILABLE")


# 4. one bad file does not sink the others; each error names its file.


def test_classify_prints_each_file_s_result_or_error(served: str, frames: Path) -> None:
    good, broken = frames / "a-cat.jpg", frames / "b-broken.jpg"
    done = imgcls("classify", str(good), str(broken), str(COFFEE), "--server", served, "--top-k", "1")
    assert done.code == 1
    assert done.out.splitlines() == [str(good), done.out.splitlines()[1], str(COFFEE), done.out.splitlines()[3]]
    assert done.out.splitlines()[1].split(maxsplit=1)[1] == "Egyptian cat"
    assert done.out.splitlines()[3].split(maxsplit=1)[1] == "espresso"
    assert_one_line_error(done, f"imgcls classify: {broken}: INVALID_ARGUMENT: ", "truncated")
    assert "inputs[" not in done.err


def test_classify_json_carries_errors_and_indexes(served: str, frames: Path) -> None:
    good, broken = frames / "a-cat.jpg", frames / "b-broken.jpg"
    done = imgcls("classify", str(good), str(broken), "--server", served, "--json", "--top-k", "2")
    assert done.code == 1
    parsed = json.loads(done.out)
    assert parsed[str(good)] == [
        {"label": "Egyptian cat", "score": pytest.approx(0.3677, abs=1e-3), "index": 285},
        {"label": "tiger cat", "score": pytest.approx(0.3648, abs=1e-3), "index": 282},
    ]
    assert parsed[str(broken)]["error"].startswith("INVALID_ARGUMENT: ")


def test_classify_all_good_exits_0(served: str) -> None:
    assert imgcls("classify", str(COFFEE), str(IMAGES / "cat.jpg"), "--server", served).code == 0


# 5. stream output: file names, --top-k, --json, exit status.


def test_stream_names_files_and_fails_when_a_frame_failed(served: str, frames: Path) -> None:
    done = imgcls("stream", str(frames), "--server", served)
    assert done.code == 1
    assert [line.split("  ")[0] for line in done.out.splitlines()] == [
        str(frames / "a-cat.jpg"),
        str(frames / "c-coffee.jpg"),
    ]
    assert done.out.splitlines()[1].endswith("  espresso")
    errors = [line for line in done.err.splitlines() if line.startswith("imgcls stream: ")]
    assert errors == [errors[0]] and errors[0].startswith(f"imgcls stream: {frames / 'b-broken.jpg'}: INVALID_ARGUMENT")
    assert "inputs[" not in done.err
    assert "2 frames in" in done.err and "1 failed" in done.err


def test_stream_top_k_and_json_lines(served: str, frames: Path) -> None:
    (frames / "b-broken.jpg").unlink()
    done = imgcls("stream", str(frames), "--server", served, "--json", "--top-k", "3")
    assert done.code == 0, done.err
    lines = [json.loads(line) for line in done.out.splitlines()]
    assert [line["frame"] for line in lines] == [str(frames / "a-cat.jpg"), str(frames / "c-coffee.jpg")]
    assert [len(line["predictions"]) for line in lines] == [3, 3]
    assert lines[1]["predictions"][0] == {"label": "espresso", "score": pytest.approx(0.9527, abs=1e-3), "index": 967}
    text = imgcls("stream", str(frames), "--server", served, "--top-k", "2")
    assert text.code == 0
    assert text.out.splitlines()[0] == str(frames / "a-cat.jpg") and len(text.out.splitlines()) == 6


def test_stream_with_no_frame_answered_fails(served: str, tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    done = imgcls("stream", str(tmp_path), "--server", served)
    assert done.code == 1
    assert "imgcls stream: " in done.err and "Traceback" not in done.err


def test_stream_shows_progress_on_a_terminal_only(served: str, frames: Path) -> None:
    piped = imgcls("stream", str(frames), "--server", served)
    assert "3/3" not in piped.err
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "imgcls.cli", "stream", str(frames), "--server", served],
            stdout=subprocess.PIPE,
            stderr=follower,
            cwd=ROOT,
            env={**without_server_variables(), "COLUMNS": "100", "TERM": "xterm"},
        )
        os.close(follower)
        follower = -1
        terminal = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            terminal += chunk
        assert process.wait(timeout=CLI_TIMEOUT_S) == 1
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    shown = terminal.decode(errors="replace")
    assert str(frames) in shown and "/3" in shown, shown  # the bar: the source and frames done of 3


# 6. models: a table, and --json.


def test_models_table(served: str) -> None:
    done = imgcls("models", "--server", served)
    assert done.code == 0, done.err
    header, row = done.out.splitlines()
    assert header.split() == ["name", "default", "source", "variant", "input", "labels", "batching"]
    assert row.split()[:4] == ["efficientnet-lite0", "yes", "efficientnet-lite0", "fp32"]
    assert "pixel_values ?x3x224x224 float32 NCHW" in row and " 1000 " in row and "max 4" in row


def test_models_json_in_a_subprocess(served: str) -> None:
    done = imgcls("models", "--server", served, "--json")
    assert done.code == 0
    assert json.loads(done.out)[0]["input"]["shape"] == [-1, 3, 224, 224]


# 7. help: every option says what it does and its default; --version.


def every_option() -> Iterator[tuple[str, argparse.Action]]:
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield f"{name} {action.option_strings[0]}", action


def test_every_option_has_help_with_its_default() -> None:
    options = dict(every_option())
    assert {"serve --max-batch-size", "serve --jpeg-draft", "classify --top-k", "stream --model"} <= set(options)
    missing = [name for name, action in options.items() if not action.help or "(default: " not in action.help]
    assert not missing, missing


@pytest.mark.parametrize(
    ("option", "default"),
    [
        ("serve --max-batch-size", "4"),
        ("serve --max-queue-delay-us", "0"),
        ("serve --queue-limit", "256"),
        ("serve --stream-max-in-flight", "8"),
        ("serve --grace-period", "10.0"),
        ("serve --max-inputs-per-request", "64"),
        ("serve --max-image-pixels", "40000000"),
        ("serve --dtype", "fp32"),
        ("serve --inter-op-threads", "0"),
        ("serve --jpeg-draft", "faithful"),
        ("classify --top-k", "the server's, 5"),
        ("stream --top-k", "1"),
        ("health --timeout", "5"),
    ],
)
def test_help_shows_the_default(option: str, default: str) -> None:
    assert f"(default: {default})" in dict(every_option())[option].help  # type: ignore[operator]


def test_serve_flag_defaults_are_the_settings_defaults() -> None:
    # The defaults shown come from ServerSettings itself, so they cannot drift.
    from imgcls.server.settings import ServerSettings

    for flag in cli.SERVE_FLAGS:
        info = cli.setting_field(flag.path)
        if info is None or flag.default_text is not None:
            continue
        option = dict(every_option())[f"serve {flag.flags[0]}"]
        assert option.help is not None
        value = info.get_default(call_default_factory=True)
        shown = ",".join(value) if isinstance(value, tuple) else str(value)
        assert f"(default: {shown}" in option.help, flag
    assert ServerSettings().batching.max_batch_size == 4


def test_every_setting_has_a_serve_flag() -> None:
    from imgcls.server.settings import ServerSettings

    def leaves(model: Any, prefix: str = "") -> Iterator[str]:
        for name, info in model.model_fields.items():
            nested = serve_flags._model_class(info.annotation)
            if nested is not None and name != "models":
                yield from leaves(nested, f"{prefix}{name}.")
            else:
                yield prefix + name

    flagged = {flag.path for flag in cli.SERVE_FLAGS} | {"models"}
    assert not set(leaves(ServerSettings)) - flagged


def test_version() -> None:
    done = imgcls("--version")
    assert done.code == 0 and done.out.strip() == f"imgcls {importlib.metadata.version('imgcls')}"


# 9. a taken port: imgcls's own line, no gRPC C++ log line above it.


def test_serve_on_a_taken_port_prints_no_grpc_log_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = imgcls("serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning")
    assert done.code == 1
    assert "add_port" not in done.err and "Traceback" not in done.err, done.err
    (line,) = done.err.strip().splitlines()
    assert f"cannot start: cannot bind 127.0.0.1:{port}" in line


# 3. a model source that is neither a path nor a repo id the Hub has: both reasons, in one line.


def test_serve_a_missing_model_path_says_where_it_looked(tmp_path: Path) -> None:
    done = imgcls(
        "serve", "--port", "0", "--model", "m=models/efficientnet-lite0", "--log-level", "warning",
        cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert done.code == 1
    (line,) = done.err.strip().splitlines()
    assert f"no such file or folder {tmp_path / 'models' / 'efficientnet-lite0'}" in line
    assert f"relative to the working directory {tmp_path}" in line
    assert "not in the local Hugging Face cache" in line


async def test_a_source_failing_mid_stream_is_one_line_after_the_frames_before_it(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A video that stops decoding part-way: the error is raised in gRPC's request thread, and must reach
    # the command as its own message (not UNKNOWN "Exception iterating requests!", not a hang).
    def frames(report: Callable[[str, str], None]) -> Iterator[pb.ClassifyStreamRequest]:
        yield pb.ClassifyStreamRequest(inputs=[pb.Input(image=COFFEE.read_bytes())], request_id="clip.mp4#0")
        raise common.SourceError("clip.mp4: cannot decode frame 1: Invalid data found when processing input")

    monkeypatch.setattr(stream, "stream_source", lambda source: stream.Source(source, None, frames))
    code = await asyncio.wait_for(run_cli("stream", "clip.mp4", "--server", address(server)), timeout=60)
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out.splitlines() == [captured.out.splitlines()[0]]
    assert captured.out.startswith("clip.mp4#0  ") and captured.out.rstrip().endswith("espresso")
    assert "imgcls stream: clip.mp4: cannot decode frame 1: Invalid data" in captured.err
    assert "UNKNOWN" not in captured.err and "Traceback" not in captured.err


def test_the_cli_is_a_package_of_small_modules_one_per_command() -> None:
    package = Path(cli.__file__).parent
    sizes = {path.name: len(path.read_text().splitlines()) for path in package.glob("*.py")}
    assert {"serve.py", "classify.py", "stream.py", "models.py", "common.py"} <= set(sizes)
    assert max(sizes.values()) <= 300, sizes


@pytest.mark.parametrize(("flags", "checked"), [([], True), (["--no-health-check"], False)])
def test_several_servers_are_health_checked_unless_told_not_to(flags: list[str], checked: bool) -> None:
    parser = argparse.ArgumentParser()
    common.add_client_options(parser)
    with common.client_from_args(parser.parse_args(["--server", "127.0.0.1:50051,127.0.0.1:50052", *flags])) as client:
        config = json.loads(dict(client.options)["grpc.service_config"])
    assert ("healthCheckConfig" in config) is checked
