"""One frozen settings object for the whole server, built from CLI flags, IMGCLS_* environment
variables and an optional TOML file (precedence: CLI > environment > file > defaults).

It is built once at start-up and passed whole; nothing reads the environment later.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from imgcls.server.domain.errors import ConfigError
from imgcls.server.images.preprocessing import DEFAULT_JPEG_DRAFT, JpegDraft
from imgcls.server.runtime import cpus
from imgcls.server.runtime.onnx import RuntimeOptions, is_gpu_provider
from imgcls.server.sources.variants import DTYPES
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

ENV_PREFIX = "IMGCLS_"
DEFAULT_MODEL_NAME = "efficientnet-lite0"
EMBEDDED_MODEL_DIR = Path(__file__).parent / "models" / "efficientnet-lite0"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BatchingSettings(_Frozen):
    """Dynamic batching of one model.

    Defaults come from measurements on a 2-core CPU (README, "Batching defaults"): EfficientNet-Lite0
    runs fastest per image at small batches, so the batcher never waits for a batch to fill
    (max_queue_delay_us 0) and only merges inputs that are already queued while the session is busy.
    """

    max_batch_size: int = Field(default=4, ge=1, le=1024)
    max_queue_delay_us: int = Field(default=0, ge=0, le=10_000_000)
    queue_limit: int = Field(default=256, ge=1, le=1_000_000)


AUTO_MAX_INSTANCES = 4


class RuntimeSettings(_Frozen):
    """ONNX Runtime session settings."""

    intra_op_threads: int = Field(default=0, ge=0, le=1024)  # 0: the cores shared out among instances
    inter_op_threads: int = Field(default=0, ge=0, le=1024)
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    # Concurrent session.run calls per model (Triton's instance count), each with its own inference
    # thread; 0: auto (see resolved_instances).
    instances: int = Field(default=0, ge=0, le=64)

    def resolved_instances(self) -> int:
        """0 (auto): one per core, up to AUTO_MAX_INSTANCES, on CPU; one on a GPU provider.

        On CPU, independent single-threaded runs side by side beat one run spread over every core:
        a small model's intra-op parallelism is poor, and any other work on a core (decode, gRPC)
        stalls every thread of a parallel run, not just one (README, "Batching defaults").
        """
        if self.instances:
            return self.instances
        if any(is_gpu_provider(p) for p in self.providers):
            return 1
        return max(1, min(AUTO_MAX_INSTANCES, cpus.available_cpus()))

    def options(self) -> RuntimeOptions:
        intra = self.intra_op_threads
        solo: int | None = None
        if intra == 0:
            # ONNX Runtime's own default counts the machine's cores, not the container's quota.
            usable = cpus.available_cpus()
            instances = self.resolved_instances()
            # The cores shared out among the instances, and a batch that runs alone gets them all.
            intra = max(1, usable // instances)
            solo = usable if instances > 1 else None
        return RuntimeOptions(intra, self.inter_op_threads, self.providers, solo_intra_op_threads=solo)


class ModelSettings(_Frozen):
    """One served model: a name and where it comes from."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    source: str = Field(min_length=1)
    dtype: str = "fp32"
    batching: BatchingSettings | None = None  # None: the server-wide settings
    runtime: RuntimeSettings | None = None
    # Set by load_settings on models from a config file: their relative sources are relative to its folder.
    _config_file: Path | None = PrivateAttr(default=None)

    @property
    def config_file(self) -> Path | None:
        """The config file that named this model (pass it to sources.resolve.resolve_model_files), or None."""
        return self._config_file

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in DTYPES:
            raise ValueError(f"unknown dtype {value!r}; one of {', '.join(DTYPES)}")
        return value


class TlsSettings(_Frozen):
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # set: clients must present a certificate it signed (mTLS)


# gRPC takes connection ages as int milliseconds.
_MAX_CONNECTION_AGE_S = (2**31 - 1) / 1000


class ServerSettings(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    models: tuple[ModelSettings, ...] = ()
    default_model: str | None = None  # None: the first model
    batching: BatchingSettings = BatchingSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    # 64 MiB: a 4K RGB frame is 25 MB, far over gRPC's 4 MB default.
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_inputs_per_request: int = Field(default=64, ge=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_tensor_elements: int = Field(default=64 * 3 * 512 * 512, ge=1)
    preprocess_threads: int = Field(default=0, ge=0, le=256)  # 0: one per CPU
    # Decode large JPEGs at reduced size: "faithful" keeps scores within about 0.01 of a full decode, "fast" is
    # faster and moves them more, "off" is exact (README, "JPEG draft decoding").
    jpeg_draft: JpegDraft = DEFAULT_JPEG_DRAFT
    stream_max_in_flight: int = Field(default=8, ge=1, le=1024)
    # Bytes of work in flight (payloads, decoded pixels, model inputs) from admission to answer; past
    # it new work is refused RESOURCE_EXHAUSTED at once. None: 40% of the container's memory limit,
    # or 768 MiB without one (with every other default, RSS stays under 2 GiB whatever callers do).
    memory_budget_bytes: int | None = Field(default=None, ge=16 * 1024 * 1024)
    # How long one request message may take to arrive once the server starts receiving it.
    message_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    # How long a request may wait for its turn to be received (a slot of the read gate) before it is refused
    # RESOURCE_EXHAUSTED: its refusal comes within this, however many callers queue up to send large messages.
    read_wait_s: float = Field(default=5.0, gt=0, le=3600)
    # Streams open at once (all connections) and calls at once on one HTTP/2 connection
    # (SETTINGS_MAX_CONCURRENT_STREAMS; a client queues calls past it). Room for a busy client's burst: a
    # client that opens more calls than the limit before it has read the server's SETTINGS gets the extra
    # ones refused (UNAVAILABLE; 120 at once are refused 17 at a limit of 100). Not much more: gRPC core counts
    # a call reset by its client against the limit until the application has taken it, so the limit is how
    # many dead calls one HEADERS + RST_STREAM flood queues in front of everyone's (at 1024 that queue ran
    # ~270 ms behind, and pushed core's pending calls past its random-drop threshold, cancelling bystanders'
    # calls on other connections: 3 of 36 rapid-reset rows; see also grpc/door.py's MAX_PENDING_CALLS).
    max_streams: int = Field(default=256, ge=1, le=100_000)
    max_calls_per_connection: int = Field(default=256, ge=1, le=100_000)
    grace_period_s: float = Field(default=10.0, ge=0)
    # A connection older than this is sent a GOAWAY (gRPC adds +-10 % jitter), so its client reconnects and
    # re-resolves its dns:/// target: behind a headless Service that is how long-lived clients find the
    # pods a scale-out added. None: connections live until the client closes them.
    max_connection_age_s: float | None = Field(default=None, gt=0, le=_MAX_CONNECTION_AGE_S)
    # How long calls still running on such a connection (a camera's stream) may go on before it is closed.
    # None: until they end; new calls already go over the new connection either way.
    max_connection_age_grace_s: float | None = Field(default=None, ge=0, le=_MAX_CONNECTION_AGE_S)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # HTTP front door (Open Inference Protocol REST, the Hugging Face API, imgcls.v1 as JSON) on the same
    # host: 0 turns it off; "auto" binds a free port (tests), reported by the running server.
    http_port: Annotated[int, Field(ge=0, le=65535)] | Literal["auto"] = 8000
    # HTTP connections held at once. An idle one costs a file descriptor and a few KB, so thousands are held
    # (imgcls serve raises its open-file limit to fit, and holds fewer when the hard limit is lower); at the
    # cap, connections doing nothing (never sent a request, idle keep-alive, then slow headers) are closed,
    # oldest first, before a new one is refused (503).
    http_max_connections: int = Field(default=10_000, ge=1, le=1_000_000)
    # Largest JSON body (HTTP) parsed into Python objects: JSON numbers cost ~30 bytes each once parsed and
    # parsing holds the interpreter, so past this a request is refused (413) with a pointer to the binary
    # tensor data extension or raw image bytes, which carry the same data without the parse.
    max_json_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    tls: TlsSettings | None = None
    auth_tokens: tuple[str, ...] = Field(default=(), repr=False)
    auth_open_health: bool = True  # health and reflection answer without a token
    hf_token: str | None = Field(default=None, repr=False)
    cache_dir: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"

    @field_validator("jpeg_draft", mode="before")
    @classmethod
    def _jpeg_draft_on_off(cls, value: Any) -> Any:
        """The on/off boolean of earlier versions (true, false; IMGCLS_JPEG_DRAFT=false): on is the default mode."""
        text = str(value).lower()
        if value is True or text in ("true", "1", "yes", "on"):
            return DEFAULT_JPEG_DRAFT
        if value is False or text in ("false", "0", "no"):
            return "off"
        return value

    @model_validator(mode="after")
    def _check_models(self) -> ServerSettings:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"models: duplicate names {duplicates}")
        if self.default_model is not None and self.default_model not in names:
            raise ValueError(f"default_model {self.default_model!r} is not among the models {names}")
        if self.max_connection_age_grace_s is not None and self.max_connection_age_s is None:
            # A grace without an age would silently do nothing.
            raise ValueError("max_connection_age_grace_s is set but max_connection_age_s is not")
        return self

    @property
    def served_models(self) -> tuple[ModelSettings, ...]:
        """The configured models, or the embedded default when none is."""
        if self.models:
            return self.models
        return (ModelSettings(name=DEFAULT_MODEL_NAME, source=str(EMBEDDED_MODEL_DIR), dtype="fp32"),)

    @property
    def resolved_memory_budget(self) -> int:
        """memory_budget_bytes, or its default from the container's memory limit (see the field)."""
        if self.memory_budget_bytes is not None:
            return self.memory_budget_bytes
        limit = cpus.memory_limit_bytes()
        return int(limit * 0.4) if limit is not None else 768 * 1024 * 1024

    @property
    def default_model_name(self) -> str:
        return self.default_model or self.served_models[0].name

    def batching_for(self, model: ModelSettings) -> BatchingSettings:
        """The server-wide batching with the keys the model sets itself on top."""
        return _overlay(self.batching, model.batching)

    def runtime_for(self, model: ModelSettings) -> RuntimeSettings:
        return _overlay(self.runtime, model.runtime)


_S = TypeVar("_S", bound=BaseModel)


def _overlay(base: _S, top: _S | None) -> _S:
    if top is None:
        return base
    return base.model_copy(update={key: getattr(top, key) for key in top.model_fields_set})


def parse_model_arg(value: str, dtype: str | None = None) -> dict[str, Any]:
    """'NAME=SOURCE' (or a bare SOURCE, named after its last path part) as a models entry."""
    name, sep, source = value.partition("=")
    if not sep:
        source = value
        name = Path(value.split("@")[0].rstrip("/")).name.removesuffix(".onnx") or value
        for suffix in (".yaml", ".yml", ".json"):
            name = name.removesuffix(suffix)
    entry: dict[str, Any] = {"name": name, "source": source}
    if dtype is not None:
        entry["dtype"] = dtype
    return entry


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    """IMGCLS_PORT=50052 -> {"port": "50052"}; IMGCLS_BATCHING__MAX_BATCH_SIZE=4 -> nested."""
    layer: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        if path == ["auth_tokens"]:
            layer["auth_tokens"] = tuple(t for t in value.replace(",", " ").split() if t)
            continue
        if path == ["models"]:
            layer["models"] = [parse_model_arg(v) for v in value.split(",") if v]
            continue
        parsed: Any = value
        if path[-1] == "providers":
            parsed = tuple(p.strip() for p in value.split(",") if p.strip())
        target = layer
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = parsed
    return layer


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _leaf_paths(layer: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in layer.items():
        path = (*prefix, key)
        if isinstance(value, Mapping) and value:
            yield from _leaf_paths(value, path)
        else:
            yield path


def _origin(loc: tuple[int | str, ...], origins: Mapping[tuple[str, ...], str]) -> str | None:
    """Which layer set the value at loc (or the nearest enclosing key: a TOML list of models)."""
    path = tuple(str(part) for part in loc)
    while path:
        if path in origins:
            return origins[path]
        path = path[:-1]
    return None


def load_settings(
    cli: Mapping[str, Any] | None = None,
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServerSettings:
    """Build the settings: defaults < TOML file < IMGCLS_* environment < CLI. ConfigError names the bad key."""
    environ = os.environ if environ is None else environ
    # Each layer with how an error message names where a value came from: an operator who sees
    # "port: Input should be a valid integer" must know whether to fix a flag, a variable or the file.
    layers: list[tuple[Mapping[str, Any], Callable[[tuple[str, ...]], str]]] = []
    config_file = config_file or (Path(environ["IMGCLS_CONFIG"]) if environ.get("IMGCLS_CONFIG") else None)
    if config_file is not None:
        try:
            file_layer = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from exc
        layers.append((file_layer, lambda _path: f"config file {config_file}"))
    env = _env_layer(environ)
    env.pop("config", None)
    layers.append((env, lambda path: ENV_PREFIX + "__".join(path).upper()))
    layers.append(({k: v for k, v in (cli or {}).items() if v is not None}, lambda _path: "the command line"))
    merged: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    for layer, name_origin in layers:
        merged = _merge(merged, layer)
        origins.update((path, name_origin(path)) for path in _leaf_paths(layer))
    if "hf_token" not in merged and environ.get("HF_TOKEN"):
        merged["hf_token"] = environ["HF_TOKEN"]
    auth_file = merged.pop("auth_token_file", None)
    if auth_file:
        try:
            tokens = [t.strip() for t in Path(auth_file).read_text().splitlines()]
        except OSError as exc:
            raise ConfigError(f"auth_token_file: {exc}") from exc
        merged["auth_tokens"] = (
            *merged.get("auth_tokens", ()),
            *(t for t in tokens if t and not t.startswith("#")),
        )
    from_file = config_file is not None and origins.get(("models",), "").startswith("config file")
    if from_file and config_file is not None and isinstance(merged.get("models"), list):
        merged["models"] = [_relative_to_file(entry, config_file) for entry in merged["models"]]
    try:
        settings = ServerSettings.model_validate(merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            # The message, never the value: it may be a token.
            problem = f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            origin = _origin(err["loc"], origins)
            problems.append(f"{problem} (from {origin})" if origin else problem)
        raise ConfigError(f"invalid configuration: {'; '.join(problems)}") from None
    if from_file and config_file is not None:
        for model in settings.models:
            model._config_file = config_file.absolute()
    return settings


def _relative_to_file(entry: Any, config_file: Path) -> Any:
    """A config file's model entry with a relative source that exists beside the file made absolute.

    A relative source that does not exist there may still be a Hugging Face repo id: it stays as written,
    and ModelSettings.config_file tells the resolver what it is relative to.
    """
    if not isinstance(entry, Mapping) or not isinstance(entry.get("source"), str):
        return entry
    source = Path(entry["source"]).expanduser()
    beside = config_file.parent / source
    if source.is_absolute() or not beside.exists():
        return entry
    return {**entry, "source": str(beside.absolute())}
