"""The serve flags, generated from the server settings: SERVE_FLAGS maps each flag to its setting, and the help
shows the setting's default, so a setting and its flag cannot drift apart."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic.fields import FieldInfo

JPEG_DRAFT_HELP = (
    "decode large JPEGs at reduced size: faithful (scores within about 0.01 of a full decode; 2.4x-5x faster "
    "on camera-sized photos), fast (3x-6.5x faster; scores move by up to 0.07), off (full decode, exact parity "
    "with transformers)"
)


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


def add_setting_flag(group: argparse._ActionsContainer, flag: SettingFlag, info: FieldInfo) -> None:
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
