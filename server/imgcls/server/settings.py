"""One frozen settings object for the whole server, built from CLI flags, IMGCLS_* environment
variables and an optional TOML file (precedence: CLI > environment > file > defaults).

It is built once at start-up and passed whole; nothing reads the environment later.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from imgcls.server.errors import ConfigError
from imgcls.server.onnx_backend import RuntimeOptions
from imgcls.server.variants import DTYPES
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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

    max_batch_size: int = Field(default=8, ge=1, le=1024)
    max_queue_delay_us: int = Field(default=0, ge=0, le=10_000_000)
    queue_limit: int = Field(default=256, ge=1, le=1_000_000)


class RuntimeSettings(_Frozen):
    """ONNX Runtime session settings."""

    intra_op_threads: int = Field(default=0, ge=0, le=1024)
    inter_op_threads: int = Field(default=0, ge=0, le=1024)
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    def options(self) -> RuntimeOptions:
        return RuntimeOptions(self.intra_op_threads, self.inter_op_threads, self.providers)


class ModelSettings(_Frozen):
    """One served model: a name and where it comes from."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    source: str = Field(min_length=1)
    dtype: str = "fp32"
    batching: BatchingSettings | None = None  # None: the server-wide settings
    runtime: RuntimeSettings | None = None

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
    jpeg_draft: bool = True  # decode large JPEGs at reduced size; off for exact parity
    stream_max_in_flight: int = Field(default=8, ge=1, le=1024)
    grace_period_s: float = Field(default=10.0, ge=0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    tls: TlsSettings | None = None
    auth_tokens: tuple[str, ...] = Field(default=(), repr=False)
    auth_open_health: bool = True  # health and reflection answer without a token
    hf_token: str | None = Field(default=None, repr=False)
    cache_dir: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"

    @model_validator(mode="after")
    def _check_models(self) -> ServerSettings:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"models: duplicate names {duplicates}")
        if self.default_model is not None and self.default_model not in names:
            raise ValueError(f"default_model {self.default_model!r} is not among the models {names}")
        return self

    @property
    def served_models(self) -> tuple[ModelSettings, ...]:
        """The configured models, or the embedded default when none is."""
        if self.models:
            return self.models
        return (ModelSettings(name=DEFAULT_MODEL_NAME, source=str(EMBEDDED_MODEL_DIR), dtype="fp32"),)

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


def load_settings(
    cli: Mapping[str, Any] | None = None,
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServerSettings:
    """Build the settings: defaults < TOML file < IMGCLS_* environment < CLI. ConfigError names the bad key."""
    environ = os.environ if environ is None else environ
    layers: list[Mapping[str, Any]] = []
    config_file = config_file or (Path(environ["IMGCLS_CONFIG"]) if environ.get("IMGCLS_CONFIG") else None)
    if config_file is not None:
        try:
            layers.append(tomllib.loads(config_file.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from exc
    env = _env_layer(environ)
    env.pop("config", None)
    layers.append(env)
    layers.append({k: v for k, v in (cli or {}).items() if v is not None})
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer)
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
    try:
        return ServerSettings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None
