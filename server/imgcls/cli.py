"""The ``imgcls`` command: serve, classify, stream, health, models.

Parsing is argparse (``build_parser()`` is also what the deployment tests parse container arguments
with); tables, colours and progress bars are Rich's. The ``serve`` flags are generated from the server
settings (SERVE_FLAGS maps each flag to its setting, and the help shows the setting's default), so a
setting and its flag cannot drift apart. Every error a user can cause is one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

if TYPE_CHECKING:
    from imgcls.client import Client, StreamResult
    from imgcls.v1 import classifier_pb2 as pb
    from pydantic import BaseModel
    from pydantic.fields import FieldInfo

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
DEFAULT_SERVER = "127.0.0.1:50051"
JPEG_DRAFT_HELP = (
    "decode large JPEGs at reduced size: faithful (scores within 0.01 of a full decode; 2x-3.4x faster on "
    "camera-sized photos), fast (3x-5x faster; scores move by up to 0.03), off (full decode, exact parity "
    "with transformers)"
)
# Codes that concern one input, not the call: the other files go on.
_PER_INPUT_CODES = ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")


class UsageError(Exception):
    """A mistake on the command line or in its files: one line on stderr, exit 2 (or 1 for classify/stream)."""


class SourceError(Exception):
    """A stream source that fails part-way (a video that stops decoding): one line on stderr, exit 1."""


# --- serve: flags generated from the settings ----------------------------------------------------------


@dataclass(frozen=True)
class SettingFlag:
    """One serve flag and the setting it sets (a dotted path into ServerSettings)."""

    flags: tuple[str, ...]
    path: str
    help: str
    metavar: str | None = None
    const: Any = None  # set: a switch that stores this value
    choices: tuple[str, ...] | None = None
    default_text: str | None = None  # how the default reads when its value alone does not say it
    parse: Callable[[str], Any] | None = None  # None: int/float from the setting's type, else the text as is
    dest: str | None = None  # the argparse attribute; None: the flag's name (--max-batch-size: max_batch_size)

    @property
    def attribute(self) -> str:
        return self.dest or self.flags[0][2:].replace("-", "_")


def _providers(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _port_or_word(text: str) -> int | str:
    return int(text) if text.isdigit() else text


SERVE_FLAGS: tuple[SettingFlag, ...] = (
    SettingFlag(("--host",), "host", "address to bind (0.0.0.0 in the container)"),
    SettingFlag(("--port",), "port", "gRPC port (0 picks a free port)"),
    SettingFlag(
        ("--http-port",),
        "http_port",
        "HTTP port (Open Inference Protocol REST, the Hugging Face API, imgcls.v1 as JSON); 0: off, auto: a free port",
        parse=_port_or_word,
    ),
    SettingFlag(
        ("--http-max-connections",),
        "http_max_connections",
        "HTTP connections held at once (idle ones are closed first to make room)",
    ),
    SettingFlag(
        ("--max-json-bytes",),
        "max_json_bytes",
        "largest JSON body parsed (HTTP); larger: use binary tensor data or raw image bytes",
    ),
    SettingFlag(("--default-model",), "default_model", "name of the default model", default_text="the first model"),
    SettingFlag(
        ("--max-batch-size",), "batching.max_batch_size", "largest batch one ONNX Runtime run takes (1 = no batching)"
    ),
    SettingFlag(
        ("--max-queue-delay-us",),
        "batching.max_queue_delay_us",
        "longest wait for a batch to fill, from its oldest input (microseconds)",
    ),
    SettingFlag(("--queue-limit",), "batching.queue_limit", "queued inputs per model before RESOURCE_EXHAUSTED"),
    SettingFlag(
        ("--instances",),
        "runtime.instances",
        "concurrent ONNX Runtime runs per model, each on its own thread (0 = auto: one per core on CPU, up to "
        "4; one on GPU)",
    ),
    SettingFlag(
        ("--intra-op-threads",),
        "runtime.intra_op_threads",
        "ONNX Runtime intra-op threads per run (0 = the cores / instances)",
    ),
    SettingFlag(("--inter-op-threads",), "runtime.inter_op_threads", "ONNX Runtime inter-op threads (0 = its default)"),
    SettingFlag(
        ("--providers",),
        "runtime.providers",
        "comma-separated execution providers, e.g. CUDAExecutionProvider,CPUExecutionProvider (CPU is always "
        "the fallback)",
        parse=_providers,
    ),
    SettingFlag(("--max-message-bytes",), "max_message_bytes", "largest gRPC message"),
    SettingFlag(("--max-inputs-per-request",), "max_inputs_per_request", "inputs (and tensor batch rows) per request"),
    SettingFlag(("--max-image-pixels",), "max_image_pixels", "refuse images with more pixels (decompression bombs)"),
    SettingFlag(("--max-tensor-elements",), "max_tensor_elements", "refuse pre-processed tensors with more values"),
    SettingFlag(
        ("--memory-budget",),
        "memory_budget_bytes",
        "bytes of work in flight (payloads, decoded pixels, model inputs); past it, new work gets "
        "RESOURCE_EXHAUSTED at once",
        metavar="BYTES",
        parse=str,
        default_text="40%% of the container memory limit, else 768 MiB",
    ),
    SettingFlag(("--preprocess-threads",), "preprocess_threads", "decode/preprocess threads (0 = one per CPU)"),
    SettingFlag(("--jpeg-draft",), "jpeg_draft", JPEG_DRAFT_HELP),
    SettingFlag(
        ("--no-jpeg-draft",),
        "jpeg_draft",
        "the same as --jpeg-draft off",
        const="off",
        default_text="no",
        dest="jpeg_draft",
    ),
    SettingFlag(("--stream-max-in-flight",), "stream_max_in_flight", "frames in flight per ClassifyStream"),
    SettingFlag(
        ("--message-timeout",),
        "message_timeout_s",
        "seconds a request message may take to arrive once the server starts receiving it",
        metavar="SECONDS",
    ),
    SettingFlag(
        ("--read-wait",),
        "read_wait_s",
        "seconds a request may wait for its turn to be received (the server receives a few large messages at "
        "a time); past it, RESOURCE_EXHAUSTED",
        metavar="SECONDS",
    ),
    SettingFlag(("--max-streams",), "max_streams", "streams open at once, all connections together"),
    SettingFlag(
        ("--max-calls-per-connection",),
        "max_calls_per_connection",
        "calls at once on one HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS)",
    ),
    SettingFlag(("--grace-period",), "grace_period_s", "seconds to finish work on shutdown", metavar="SECONDS"),
    SettingFlag(
        ("--max-connection-age-s",),
        "max_connection_age_s",
        "send clients a GOAWAY on connections older than this, so they reconnect and re-resolve DNS (picks up "
        "pods added behind a headless Service)",
        metavar="SECONDS",
        default_text="no limit",
    ),
    SettingFlag(
        ("--max-connection-age-grace-s",),
        "max_connection_age_grace_s",
        "then close the connection after this long even if calls (streams) are still running",
        metavar="SECONDS",
        default_text="when they end",
    ),
    SettingFlag(("--metrics-port",), "metrics_port", "Prometheus metrics HTTP port", default_text="no metrics server"),
    SettingFlag(
        ("--tls-cert",),
        "tls.cert_file",
        "server certificate chain (PEM); with --tls-key enables TLS",
        default_text="no TLS",
    ),
    SettingFlag(("--tls-key",), "tls.key_file", "server private key (PEM)", default_text="none"),
    SettingFlag(
        ("--tls-client-ca",),
        "tls.client_ca_file",
        "CA (PEM) that client certificates must chain to (mutual TLS)",
        default_text="no client certificates",
    ),
    SettingFlag(
        ("--auth-token-file",),
        "auth_tokens",
        "file of accepted bearer tokens, one a line (or IMGCLS_AUTH_TOKENS)",
        metavar="FILE",
        default_text="no tokens needed",
    ),
    SettingFlag(
        ("--auth-close-health",),
        "auth_open_health",
        "require a token for health and reflection too",
        const=False,
        default_text="health and reflection are open",
    ),
    SettingFlag(("--hf-token",), "hf_token", "Hugging Face token for gated repos", default_text="HF_TOKEN"),
    SettingFlag(("--cache-dir",), "cache_dir", "Hugging Face cache folder", default_text="HF_HUB_CACHE / HF_HOME"),
    SettingFlag(
        ("--log-level",), "log_level", "info: a start-up summary; debug adds one line per request with its request_id"
    ),
    SettingFlag(("--log-format",), "log_format", "json: one JSON object a line"),
)
# Settings without a flag of their own: --model / --dtype / the config file set them.
FLAGLESS_SETTINGS = ("models", "models[].")


def _model_class(annotation: Any) -> type[BaseModel] | None:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_class(arg)
        if found is not None:
            return found
    return None


def setting_field(path: str) -> FieldInfo | None:
    """The ServerSettings field at a dotted path, or None when the settings have no such key."""
    from imgcls.server.settings import ServerSettings

    model: type[BaseModel] | None = ServerSettings
    parts = path.split(".")
    for part in parts[:-1]:
        info = model.model_fields.get(part) if model else None
        model = _model_class(info.annotation) if info else None
    return model.model_fields.get(parts[-1]) if model else None


def _default_text(flag: SettingFlag, info: FieldInfo) -> str:
    if flag.default_text is not None:
        return flag.default_text
    value = info.get_default(call_default_factory=True)
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if flag.path.endswith("_bytes") and isinstance(value, int) and value % (1 << 20) == 0:
        return f"{value} ({value >> 20} MiB)"
    return str(value)


def _annotation_choices(info: FieldInfo) -> tuple[str, ...] | None:
    """The values of a Literal["a", "b"] setting, else None."""
    args = get_args(info.annotation)
    return args if args and all(isinstance(a, str) for a in args) else None


def _parse_for(info: FieldInfo) -> Callable[[str], Any]:
    for kind in (int, float):
        if info.annotation is kind or kind in get_args(info.annotation):
            return kind
    return str


def _add_setting_flag(group: argparse._ActionsContainer, flag: SettingFlag, info: FieldInfo) -> None:
    dest = flag.attribute
    help_text = f"{flag.help} (default: {_default_text(flag, info)})"
    if flag.const is not None:
        group.add_argument(*flag.flags, dest=dest, action="store_const", const=flag.const, help=help_text)
        return
    choices = flag.choices or _annotation_choices(info)
    group.add_argument(
        *flag.flags,
        dest=dest,
        type=flag.parse or _parse_for(info),
        choices=choices,
        metavar=flag.metavar
        or ("{" + ",".join(choices) + "}" if choices else flag.flags[0][2:].upper().replace("-", "_")),
        help=help_text,
    )


def _serve_parser(sub: Any, *, flags: bool = True) -> None:
    p = sub.add_parser(
        "serve",
        help="serve models over gRPC",
        description="Serve ONNX image classifiers over gRPC. Every option but --dtype can also be set with an "
        "IMGCLS_* environment variable named after its setting (IMGCLS_PORT, IMGCLS_BATCHING__MAX_BATCH_SIZE, "
        "...) and in a TOML --config file (where each model can have its own dtype, batching and runtime); "
        "precedence: flags > environment > config file > defaults.",
    )
    if not flags:
        return
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME=SOURCE",
        help="a model to serve: a Hugging Face layout folder, a .onnx file, a model spec (.yaml/.json) or a "
        "Hugging Face repo id owner/repo[@revision]; repeat for several; the first is the default "
        "(default: the embedded EfficientNet-Lite0)",
    )
    from imgcls.server.sources.variants import DTYPES

    p.add_argument(
        "--dtype",
        metavar="{" + ",".join(DTYPES) + "}",
        help="variant of the --model entries, by transformers.js file name; auto: config.json's "
        "transformers.js_config.dtype, else fp32 (default: fp32)",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML config file (models with per-model dtype, batching, threads; relative paths in it are "
        "relative to its folder) (default: IMGCLS_CONFIG, else none)",
    )
    for flag in SERVE_FLAGS:
        info = setting_field(flag.path)
        if info is not None:  # a flag whose setting this version does not have is left out
            _add_setting_flag(p, flag, info)


def _set_path(target: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value


def serve_settings_from_args(args: argparse.Namespace) -> Any:
    from imgcls.server.domain.errors import ConfigError
    from imgcls.server.settings import load_settings, parse_model_arg

    cli: dict[str, Any] = {}
    for flag in SERVE_FLAGS:
        value = getattr(args, flag.attribute, None)
        if value is None:
            continue
        if flag.path == "auth_tokens":  # a file of tokens, read by load_settings
            cli["auth_token_file"] = value
        else:
            _set_path(cli, flag.path, value)
    if args.model:
        cli["models"] = [parse_model_arg(m, args.dtype) for m in args.model]
    elif args.dtype:
        # Models from the environment or the file keep their own dtype; ignoring the flag would serve
        # another variant than the one asked for.
        raise ConfigError("dtype: --dtype applies to --model entries; give the dtype per model in the config file")
    # Only the flags given reach load_settings, so that the others can come from the environment or the
    # file (a --tls-client-ca alone turns on mTLS for a certificate configured there).
    return load_settings(cli, config_file=args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    # gRPC's C core logs through its own logger (a raw "E... add_port.cc" line above imgcls's message when
    # the port is taken); it reads GRPC_VERBOSITY when grpc is first imported, which is after this.
    if not os.environ.get("GRPC_VERBOSITY"):
        os.environ["GRPC_VERBOSITY"] = "NONE"
    from imgcls.server.domain.errors import ImgclsError
    from imgcls.server.logging_setup import configure_logging
    from imgcls.server.server import serve

    try:
        settings = serve_settings_from_args(args)
    except ImgclsError as exc:
        print(f"imgcls serve: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except ImgclsError as exc:
        logging.getLogger("imgcls").error("cannot start: %s", exc.message)
        return 1
    except OSError as exc:  # e.g. the port is taken
        logging.getLogger("imgcls").error("cannot start: %s", exc)
        return 1
    return 0


# --- client commands -----------------------------------------------------------------------------------


def _add_client_options(p: argparse.ArgumentParser, *, timeout: float = 60.0) -> None:
    group = p.add_argument_group("connection")
    group.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help=f"server address; repeat, or comma-separate, for several (round-robin); dns:///name:port works "
        f"(default: {DEFAULT_SERVER})",
    )
    group.add_argument(
        "--timeout", type=float, default=timeout, metavar="SECONDS", help=f"seconds per call (default: {timeout:g})"
    )
    group.add_argument("--token", help="bearer token (default: none)")
    group.add_argument("--tls", action="store_true", help="use TLS (default: plaintext)")
    group.add_argument("--ca", metavar="FILE", help="CA certificate (PEM) to verify the server (default: system CAs)")
    group.add_argument("--cert", metavar="FILE", help="client certificate (PEM) for mutual TLS (default: none)")
    group.add_argument("--key", metavar="FILE", help="client private key (PEM) for mutual TLS (default: none)")


def _add_ranking_options(p: argparse.ArgumentParser, *, top_k: int | None) -> None:
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


def _client(args: argparse.Namespace) -> Client:
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
            servers, timeout=args.timeout, token=args.token, tls=args.tls, root_certificates=root, client_cert=cert
        )
    except (ValueError, OSError) as exc:  # a malformed address, a name that does not resolve
        raise UsageError(str(exc)) from None


def _brief(message: str) -> str:
    """A server message about one input, without the 'inputs[0]: ' that names it within its request."""
    return message.removeprefix("inputs[0]: ")


def _prediction_dicts(predictions: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"label": p.label, "score": p.score, "index": p.index} for p in predictions]


def _read_image(path: str) -> bytes:
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


@dataclass
class _FileResult:
    path: str
    predictions: list[Any] = field(default_factory=list)
    error: str | None = None  # "CODE: message" from the server, or why the file could not be sent


def cmd_classify(args: argparse.Namespace) -> int:
    from imgcls.client import ClientError

    def classify_one(client: Client, path: str) -> _FileResult:
        try:
            data = _read_image(path)
        except UsageError as exc:
            return _FileResult(path, error=str(exc))
        try:
            predictions = client.classify(
                data, model=args.model, top_k=args.top_k, threshold=args.threshold, function_to_apply=args.function
            )
        except ClientError as exc:
            if exc.code.name not in _PER_INPUT_CODES:
                raise  # the call itself failed (server down, unknown model, token): the same for every file
            return _FileResult(path, error=f"{exc.code.name}: {_brief(exc.message)}")
        return _FileResult(path, predictions)

    results: list[_FileResult] = []
    with _client(args) as client, ThreadPoolExecutor(max_workers=min(8, len(args.images))) as pool:
        # One request per file, so one bad file fails alone; read and sent 8 at a time, printed in order.
        jobs = [pool.submit(classify_one, client, path) for path in args.images]
        for job in jobs:
            try:
                result = job.result()
            except ClientError as exc:
                pool.shutdown(cancel_futures=True)
                print(f"imgcls classify: {exc}", file=sys.stderr)
                return 1
            results.append(result)
            if result.error is not None:
                sys.stdout.flush()  # in order with the results before it on a terminal
                print(f"imgcls classify: {result.path}: {result.error}", file=sys.stderr)
            elif not args.json:
                print(result.path)
                for prediction in result.predictions:
                    print(f"  {prediction.score:8.4f}  {prediction.label}")
    if args.json:
        out: dict[str, Any] = {}
        for result in results:
            if result.error is None:
                out[result.path] = _prediction_dicts(result.predictions)
            else:
                out[result.path] = {"error": result.error}
        print(json.dumps(out, indent=2))
    return 1 if any(result.error is not None for result in results) else 0


# --- stream --------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """A validated stream source: the frames to send (as requests named after their file or frame)."""

    name: str
    total: int | None  # frames, when known
    frames: Callable[[Callable[[str, str], None]], Iterator[pb.ClassifyStreamRequest]]


def _folder_source(folder: Path) -> _Source:
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except OSError as exc:
        raise UsageError(f"{folder}: cannot list the folder: {exc.strerror or exc}") from None
    if not files:
        raise UsageError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")

    def frames(report: Callable[[str, str], None]) -> Iterator[pb.ClassifyStreamRequest]:
        from imgcls.v1 import classifier_pb2 as pb

        for file in files:
            try:
                data = file.read_bytes()
            except OSError as exc:  # gone or unreadable since it was listed: that file fails, the rest go on
                report(str(file), f"cannot read: {exc.strerror or exc}")
                continue
            yield pb.ClassifyStreamRequest(inputs=[pb.Input(image=data)], request_id=str(file))

    return _Source(str(folder), len(files), frames)


def _video_source(video: Path) -> _Source:
    try:
        import av  # type: ignore[import-not-found]
    except ImportError:
        raise UsageError(f"{video}: reading video files needs PyAV: pip install 'imgcls[video]'") from None
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise UsageError(f"{video}: has no video stream")
            total = int(container.streams.video[0].frames) or None
    except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
        raise UsageError(f"{video}: cannot read it as a video: {exc}") from None

    def frames(report: Callable[[str, str], None]) -> Iterator[pb.ClassifyStreamRequest]:
        from imgcls.client.inputs import to_input
        from imgcls.v1 import classifier_pb2 as pb

        index = 0
        try:
            with av.open(str(video)) as container:
                for index, frame in enumerate(container.decode(video=0)):
                    pixels = frame.to_ndarray(format="rgb24")
                    yield pb.ClassifyStreamRequest(inputs=[to_input(pixels)], request_id=f"{video}#{index}")
        except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
            # Raised in gRPC's request thread; the client raises it again here, in cmd_stream.
            raise SourceError(f"{video}: cannot decode frame {index}: {exc}") from None

    return _Source(str(video), total, frames)


def stream_source(source: str) -> _Source:
    """Check a stream source before any stream is opened; UsageError says what is wrong with it."""
    path = Path(source)
    if not path.exists():
        raise UsageError(f"{source}: no such file or folder")
    if path.is_dir():
        return _folder_source(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise UsageError(
            f"{source}: is one image; stream takes a folder of images or a video file (imgcls classify {source})"
        )
    return _video_source(path)


class _Output:
    """Stream output: results on stdout (text or JSON lines), errors on stderr, a progress bar on a terminal."""

    def __init__(self, args: argparse.Namespace, source: _Source) -> None:
        self.json = args.json
        self.lock = threading.Lock()
        self.answered = self.failed = self.skipped = 0
        self.progress: Any = None
        self.task: Any = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.task = self.progress.add_task(source.name, total=source.total)

    def __enter__(self) -> _Output:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def _advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def error(self, name: str, message: str) -> None:
        """A frame that failed (here or on the server)."""
        with self.lock:
            self.failed += 1
            self._advance()
            if self.json:
                print(json.dumps({"frame": name, "error": message}), flush=True)
            sys.stdout.flush()
            print(f"imgcls stream: {name}: {message}", file=sys.stderr, flush=True)

    def result(self, result: StreamResult) -> None:
        name = result.request_id
        if not result.skipped and not result.ok:
            self.error(name, f"{result.code.name}: {_brief(result.message)}")
            return
        with self.lock:
            self.answered += 1
            self._advance()
            if result.skipped:
                self.skipped += 1
                print(json.dumps({"frame": name, "skipped": True}) if self.json else f"{name}  skipped", flush=True)
                return
            predictions = result.predictions[0] if result.predictions else []
            if self.json:
                print(json.dumps({"frame": name, "predictions": _prediction_dicts(predictions)}), flush=True)
            elif len(predictions) == 1:
                print(f"{name}  {predictions[0].score:.4f}  {predictions[0].label}", flush=True)
            else:
                print(name)
                for prediction in predictions:
                    print(f"  {prediction.score:8.4f}  {prediction.label}")
                sys.stdout.flush()


def cmd_stream(args: argparse.Namespace) -> int:
    from imgcls.client import ClientError

    source = stream_source(args.source)
    started = time.perf_counter()
    with _client(args) as client, _Output(args, source) as output:
        try:
            results = client.classify_stream(
                source.frames(output.error),
                model=args.model,
                top_k=args.top_k,
                threshold=args.threshold,
                function_to_apply=args.function,
                drop_stale=args.drop_stale,
            )
            for result in results:
                output.result(result)
        except (ClientError, SourceError) as exc:
            print(f"imgcls stream: {exc}", file=sys.stderr)
            return 1
    elapsed = time.perf_counter() - started
    count = output.answered + output.failed
    rate = output.answered / elapsed if elapsed else 0.0
    summary = f"{output.answered} frames in {elapsed:.2f}s: {rate:.1f} frames/s"
    if output.failed or output.skipped:
        summary += f"; {output.failed} failed, {output.skipped} skipped"
    print(summary, file=sys.stderr)
    if not count:
        print("imgcls stream: no frame was sent", file=sys.stderr)
        return 1
    return 1 if output.failed or not output.answered else 0


# --- health, models ------------------------------------------------------------------------------------


def cmd_health(args: argparse.Namespace) -> int:
    from imgcls.client import ClientError

    with _client(args) as client:
        try:
            serving = client.health(args.service)
        except ClientError as exc:
            print(f"NOT_SERVING ({exc})")
            return 1
    print("SERVING" if serving else "NOT_SERVING")
    return 0 if serving else 1


_DTYPE_NAMES = {1: "float32", 2: "float16"}
_FUNCTION_NAMES = {1: "softmax", 2: "sigmoid", 3: "none"}


def model_summary(model: pb.ModelInfo) -> dict[str, Any]:
    """A ModelInfo as plain JSON types (ints as ints, enums as names); labels left out, their count kept."""
    from google.protobuf import json_format

    preprocessing = json_format.MessageToDict(model.preprocessing)
    stats = model.stats
    return {
        "name": model.name,
        "default": model.is_default,
        "ready": model.ready,
        "source": model.source,
        "variant": model.variant,
        "input": {
            "name": model.input_name,
            "shape": list(model.input_shape),
            "dtype": _DTYPE_NAMES.get(model.input_dtype, str(model.input_dtype)),
            "layout": model.input_layout,
        },
        "num_labels": model.num_labels,
        "default_function": _FUNCTION_NAMES.get(model.default_function_to_apply, "unspecified"),
        "preprocessing": {k: _whole(v) for k, v in preprocessing.items()},
        "max_batch_size": model.max_batch_size,
        "stats": {
            "requests": stats.requests,
            "failed_requests": stats.failed_requests,
            "inputs": stats.inputs,
            "batches": stats.batches,
            "dropped_inputs": stats.dropped_inputs,
            "batch_size_counts": {int(k): int(v) for k, v in sorted(stats.batch_size_counts.items())},
            "queue_time_us": stats.queue_time_us,
            "compute_time_us": stats.compute_time_us,
        },
    }


def _whole(value: Any) -> Any:
    """Struct numbers are doubles: 2.0 -> 2, recursively."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


def _models_table(models: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("name", "default", "source", "variant", "input", "labels", "batching"):
        table.add_column(column, overflow="fold")
    for model in models:
        shape = "x".join("?" if d < 0 else str(d) for d in model["input"]["shape"])
        stats = model["stats"]
        batching = f"max {model['max_batch_size']}"
        if stats["batches"]:
            batching += f", {stats['inputs']} inputs in {stats['batches']} runs"
        table.add_row(
            model["name"] + ("" if model["ready"] else " (not ready)"),
            "yes" if model["default"] else "",
            model["source"],
            model["variant"] or "-",
            f"{model['input']['name']} {shape} {model['input']['dtype']} {model['input']['layout']}",
            str(model["num_labels"]),
            batching,
        )
    console = Console() if sys.stdout.isatty() else Console(width=10_000, color_system=None)
    console.print(table)


def cmd_models(args: argparse.Namespace) -> int:
    from imgcls.client import ClientError

    try:
        with _client(args) as client:
            models = [model_summary(m) for m in client.list_models()]
    except ClientError as exc:
        print(f"imgcls models: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(models, indent=2))
    else:
        _models_table(models)
    return 0


# --- the parser ----------------------------------------------------------------------------------------


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
    _serve_parser(sub, flags=serve_flags)

    classify = sub.add_parser(
        "classify",
        help="classify image files",
        description="Classify image files, one request each: every file gets its result or its error, and the "
        "exit status is 1 when any failed.",
    )
    classify.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, GIF, BMP, TIFF)")
    _add_ranking_options(classify, top_k=None)
    classify.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    _add_client_options(classify)

    stream = sub.add_parser(
        "stream",
        help="classify a folder of images or a video file (needs imgcls[video]) over one stream",
        description="Classify a folder of images (in name order) or the frames of a video file (needs PyAV: "
        "pip install 'imgcls[video]') over one ClassifyStream. One line per frame, named after its file; a "
        "progress bar on a terminal; the exit status is 1 when any frame failed or none was sent.",
    )
    stream.add_argument("source", metavar="SOURCE", help="a folder of images or a video file")
    _add_ranking_options(stream, top_k=1)
    stream.add_argument("--json", action="store_true", help="print one JSON object per frame (default: text)")
    stream.add_argument(
        "--drop-stale", action="store_true", help="skip frames that queue up, as for live video (default: off)"
    )
    _add_client_options(stream)

    health = sub.add_parser("health", help="check grpc.health.v1; exit 0 when SERVING")
    health.add_argument("--service", default="", help="service name (default: the whole server)")
    _add_client_options(health, timeout=5.0)

    models = sub.add_parser("models", help="list the served models")
    models.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    _add_client_options(models)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "classify": cmd_classify,
    "stream": cmd_stream,
    "health": cmd_health,
    "models": cmd_models,
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


if __name__ == "__main__":
    run()
