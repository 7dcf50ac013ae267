"""What every client command shares: the connection and ranking options, the client they make, and the one-line
errors and prediction output of the commands."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imgcls.client import Client

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
DEFAULT_SERVER = "127.0.0.1:50051"
# Codes that concern one input, not the call: the other files go on.
PER_INPUT_CODES = ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")


class UsageError(Exception):
    """A mistake on the command line or in its files: one line on stderr, exit 2 (or 1 for classify/stream)."""


class SourceError(Exception):
    """A stream source that fails part-way (a video that stops decoding): one line on stderr, exit 1."""


def add_client_options(p: argparse.ArgumentParser, *, timeout: float = 60.0) -> None:
    group = p.add_argument_group("connection")
    group.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help=f"server address; repeat, or comma-separate, for several (round-robin over those SERVING); "
        f"dns:///name:port works (default: {DEFAULT_SERVER})",
    )
    group.add_argument(
        "--no-health-check",
        dest="health_check",
        action="store_false",
        default=None,
        help="over several servers, pick any, not only those whose health says SERVING (needed against servers "
        "started with --auth-close-health: gRPC's own health calls carry no token) (default: health-checked "
        "over several servers or a dns:/// name)",
    )
    group.add_argument(
        "--timeout", type=float, default=timeout, metavar="SECONDS", help=f"seconds per call (default: {timeout:g})"
    )
    group.add_argument("--token", help="bearer token (default: none)")
    group.add_argument("--tls", action="store_true", help="use TLS (default: plaintext)")
    group.add_argument("--ca", metavar="FILE", help="CA certificate (PEM) to verify the server (default: system CAs)")
    group.add_argument("--cert", metavar="FILE", help="client certificate (PEM) for mutual TLS (default: none)")
    group.add_argument("--key", metavar="FILE", help="client private key (PEM) for mutual TLS (default: none)")


def add_ranking_options(p: argparse.ArgumentParser, *, top_k: int | None) -> None:
    p.add_argument(
        "--model", default="", help="served model name (default: the server's default model; see imgcls models)"
    )
    shown = "the server's, 5" if top_k is None else str(top_k)
    p.add_argument(
        "--top-k", type=int, default=top_k, metavar="K", help=f"predictions per image; 0 = all (default: {shown})"
    )
    p.add_argument(
        "--threshold",
        type=float,
        metavar="SCORE",
        help="leave out predictions scoring below this, 0..1 (default: none)",
    )
    p.add_argument(
        "--function",
        choices=["softmax", "sigmoid", "none"],
        help="function applied to the model's outputs (default: the model's own: softmax for single-label models)",
    )


def client_from_args(args: argparse.Namespace) -> Client:
    from imgcls.client import Client

    try:
        root = Path(args.ca).read_bytes() if args.ca else None
        cert = (Path(args.cert).read_bytes(), Path(args.key).read_bytes()) if args.cert and args.key else None
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
    if bool(args.cert) != bool(args.key):
        raise UsageError("--cert and --key go together")
    servers = [s for part in args.server for s in part.split(",") if s] or [DEFAULT_SERVER]
    try:
        return Client(
            servers,
            timeout=args.timeout,
            token=args.token,
            tls=args.tls,
            root_certificates=root,
            client_cert=cert,
            health_check=args.health_check,
        )
    except (ValueError, OSError) as exc:  # a malformed address, a name that does not resolve
        raise UsageError(str(exc)) from None


def brief(message: str) -> str:
    """A server message about one input, without the 'inputs[0]: ' that names it within its request."""
    return message.removeprefix("inputs[0]: ")


def prediction_dicts(predictions: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"label": p.label, "score": p.score, "index": p.index} for p in predictions]


def read_image(path: str) -> bytes:
    """An image file's bytes; UsageError with a one-line reason (not naming the file) when it cannot be one."""
    from imgcls.client.inputs import _URL

    if _URL.match(path):
        raise UsageError("URLs are not fetched; download the image first")
    file = Path(path)
    if file.is_dir():
        raise UsageError("is a folder (imgcls stream classifies the images of a folder)")
    try:
        return file.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"no such file ({file.absolute()})") from None
    except OSError as exc:
        raise UsageError(f"cannot read: {exc.strerror or exc}") from None
