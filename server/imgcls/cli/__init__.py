"""The ``imgcls`` command: serve, classify, stream, health, models.

Parsing is argparse (``build_parser()`` is also what the deployment tests parse container arguments
with); tables, colours and progress bars are Rich's. The ``serve`` flags are generated from the server
settings (SERVE_FLAGS maps each flag to its setting, and the help shows the setting's default), so a
setting and its flag cannot drift apart. Every error a user can cause is one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from imgcls.cli import classify, models, serve, stream
from imgcls.cli.common import UsageError
from imgcls.cli.serve import serve_settings_from_args
from imgcls.cli.serve_flags import SERVE_FLAGS, setting_field

__all__ = ["SERVE_FLAGS", "build_parser", "main", "run", "serve_settings_from_args", "setting_field"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imgcls")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree that was never installed
        return "unknown"


def build_parser(*, serve_flags: bool = True) -> argparse.ArgumentParser:
    """The imgcls argument parser (serve_flags False: serve without its flags, to spare importing the server)."""
    parser = argparse.ArgumentParser(prog="imgcls", description="gRPC image classification on ONNX Runtime")
    parser.add_argument("--version", action="version", version=f"imgcls {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.add_parser(sub, flags=serve_flags)
    classify.add_parser(sub)
    stream.add_parser(sub)
    models.add_parsers(sub)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": serve.cmd_serve,
    "classify": classify.cmd_classify,
    "stream": stream.cmd_stream,
    "health": models.cmd_health,
    "models": models.cmd_models,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(serve_flags=command == "serve").parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"imgcls {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `imgcls stream DIR | head`: the reader has gone; so do we, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
