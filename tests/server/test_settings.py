"""Settings: precedence of CLI > environment > TOML file > defaults, validation that names the bad key
(and where it was set), per-model overrides, the example config file, immutability, secrets kept out of
repr, connection age, and a flag and an environment variable for every setting."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from imgcls import cli
from imgcls.server.domain.errors import ConfigError, StartupError
from imgcls.server.grpc.door import server_options
from imgcls.server.runtime.onnx import RuntimeOptions
from imgcls.server.settings import (
    DEFAULT_MODEL_NAME,
    BatchingSettings,
    ModelSettings,
    RuntimeSettings,
    ServerSettings,
    TlsSettings,
    load_settings,
)
from pydantic import BaseModel, ValidationError
from support.paths import ROOT

EXAMPLE_CONFIG = ROOT / "examples" / "imgcls.toml"


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "imgcls.toml"
    path.write_text(text)
    return path


def assert_config_error(exc: pytest.ExceptionInfo[ConfigError], *fragments: str) -> None:
    assert isinstance(exc.value, StartupError)  # never answered to a caller: no status
    for fragment in fragments:
        assert fragment in exc.value.message


def test_the_default_stream_limit_per_connection_bounds_a_rapid_reset_flood() -> None:
    """gRPC core counts calls reset by their client against SETTINGS_MAX_CONCURRENT_STREAMS until the
    application takes them: at 1024 a HEADERS + RST_STREAM flood queued enough dead calls that grpcio 1.85
    now and then cancelled an innocent call on another connection (see settings.py). 256 still admits a
    busy client's burst (test_reads: 120 calls at once on a fresh channel)."""
    settings = load_settings(environ={})
    assert 120 <= settings.max_calls_per_connection <= 256
    assert ("grpc.max_concurrent_streams", settings.max_calls_per_connection) in server_options(settings)


# -- precedence ---------------------------------------------------------------------------------------


@pytest.fixture
def port_file(tmp_path: Path) -> Path:
    return write_toml(tmp_path, "port = 1111\n[batching]\nmax_batch_size = 11\nqueue_limit = 111\n")


def test_defaults_without_any_layer() -> None:
    settings = load_settings(environ={})
    assert settings.port == 50051
    assert settings.batching == BatchingSettings(max_batch_size=4, max_queue_delay_us=0, queue_limit=256)
    # No models configured: the embedded default model is served.
    assert [m.name for m in settings.served_models] == [DEFAULT_MODEL_NAME]


def test_file_beats_defaults(port_file: Path) -> None:
    settings = load_settings(config_file=port_file, environ={})
    assert settings.port == 1111
    assert settings.batching.max_batch_size == 11


def test_env_beats_file(port_file: Path) -> None:
    settings = load_settings(config_file=port_file, environ={"IMGCLS_PORT": "2222"})
    assert settings.port == 2222


def test_cli_beats_env_and_file(port_file: Path) -> None:
    settings = load_settings({"port": 3333}, config_file=port_file, environ={"IMGCLS_PORT": "2222"})
    assert settings.port == 3333


def test_cli_none_means_not_given(port_file: Path) -> None:
    # argparse leaves unset flags as None: they must not hide the lower layers.
    settings = load_settings({"port": None}, config_file=port_file, environ={"IMGCLS_PORT": "2222"})
    assert settings.port == 2222


def test_nested_layers_merge_key_by_key(port_file: Path) -> None:
    # The env sets one key of [batching]; the file's other keys of that table survive.
    settings = load_settings(config_file=port_file, environ={"IMGCLS_BATCHING__MAX_BATCH_SIZE": "22"})
    assert settings.batching.max_batch_size == 22
    assert settings.batching.queue_limit == 111
    settings = load_settings(
        {"batching": {"max_batch_size": 33}},
        config_file=port_file,
        environ={"IMGCLS_BATCHING__MAX_BATCH_SIZE": "22"},
    )
    assert settings.batching.max_batch_size == 33
    assert settings.batching.queue_limit == 111


def test_config_file_from_env(port_file: Path) -> None:
    settings = load_settings(environ={"IMGCLS_CONFIG": str(port_file)})
    assert settings.port == 1111


# -- the environment ----------------------------------------------------------------------------------


def test_env_double_underscore_nests() -> None:
    settings = load_settings(
        environ={
            "IMGCLS_BATCHING__MAX_BATCH_SIZE": "4",
            "IMGCLS_BATCHING__MAX_QUEUE_DELAY_US": "500",
            "IMGCLS_RUNTIME__INTRA_OP_THREADS": "1",
        }
    )
    assert settings.batching.max_batch_size == 4
    assert settings.batching.max_queue_delay_us == 500
    assert settings.runtime.intra_op_threads == 1


def test_env_ignores_other_variables() -> None:
    settings = load_settings(environ={"PORT": "1", "HOME": "/root", "imgcls_port": "2"})
    assert settings.port == 50051


def test_env_models_list() -> None:
    settings = load_settings(environ={"IMGCLS_MODELS": "a=/models/one,b=/models/two.yaml"})
    assert [(m.name, m.source) for m in settings.models] == [("a", "/models/one"), ("b", "/models/two.yaml")]
    assert settings.default_model_name == "a"


def test_env_models_bare_sources_are_named_after_the_file() -> None:
    settings = load_settings(environ={"IMGCLS_MODELS": "/m/open-nsfw.yaml,/m/tiny.onnx"})
    assert [m.name for m in settings.models] == ["open-nsfw", "tiny"]


def test_env_auth_tokens_comma_or_space_separated() -> None:
    settings = load_settings(environ={"IMGCLS_AUTH_TOKENS": "tok-a, tok-b tok-c"})
    assert settings.auth_tokens == ("tok-a", "tok-b", "tok-c")


def test_env_bad_value_names_the_key() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ={"IMGCLS_BATCHING__MAX_BATCH_SIZE": "many"})
    assert_config_error(exc, "batching.max_batch_size")


def test_env_unknown_variable_names_the_key() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ={"IMGCLS_BATCHING__MAX_BATCH": "4"})
    assert_config_error(exc, "batching.max_batch")


def test_env_providers_comma_separated() -> None:
    settings = load_settings(environ={"IMGCLS_RUNTIME__PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider"})
    assert settings.runtime.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


# -- the TOML file ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[batching]\nmax_batch = 4\n", "batching.max_batch"),
        ("prot = 50052\n", "prot"),
        ('[[models]]\nname = "a"\nsource = "/m/a"\ndtyp = "fp16"\n', "models.0.dtyp"),
    ],
    ids=["nested", "top-level", "model"],
)
def test_toml_unknown_key_names_it(tmp_path: Path, toml: str, key: str) -> None:
    path = write_toml(tmp_path, toml)
    with pytest.raises(ConfigError) as exc:
        load_settings(config_file=path, environ={})
    assert_config_error(exc, key)


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "port = = 1\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(config_file=path, environ={})
    assert_config_error(exc, str(path))


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as exc:
        load_settings(config_file=path, environ={})
    assert_config_error(exc, "absent.toml")


def test_out_of_range_value_names_the_key() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings({"batching": {"max_batch_size": 0}}, environ={})
    assert_config_error(exc, "batching.max_batch_size")


# -- models -------------------------------------------------------------------------------------------


def test_unknown_dtype_names_dtype() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings({"models": [{"name": "m", "source": "/m", "dtype": "fp8"}]}, environ={})
    assert_config_error(exc, "models.0.dtype", "fp8", "fp32, fp16, q8, int8")


def test_duplicate_model_names() -> None:
    models = [{"name": "a", "source": "/m/1"}, {"name": "a", "source": "/m/2"}]
    with pytest.raises(ConfigError) as exc:
        load_settings({"models": models}, environ={})
    assert_config_error(exc, "duplicate", "'a'")


def test_default_model_must_be_served() -> None:
    models = [{"name": "a", "source": "/m/1"}, {"name": "b", "source": "/m/2"}]
    with pytest.raises(ConfigError) as exc:
        load_settings({"models": models, "default_model": "c"}, environ={})
    assert_config_error(exc, "default_model", "'c'", "'a', 'b'")


def test_default_model_setting_picks_the_default() -> None:
    models = [{"name": "a", "source": "/m/1"}, {"name": "b", "source": "/m/2"}]
    assert load_settings({"models": models}, environ={}).default_model_name == "a"
    assert load_settings({"models": models, "default_model": "b"}, environ={}).default_model_name == "b"


def test_bad_model_name_refused() -> None:
    # Names become metric labels and request keys: no paths or slashes.
    with pytest.raises(ConfigError) as exc:
        load_settings({"models": [{"name": "owner/repo", "source": "/m/1"}]}, environ={})
    assert_config_error(exc, "models.0.name")


def test_per_model_batching_and_runtime_override_global() -> None:
    settings = load_settings(
        {
            "batching": {"max_batch_size": 4},
            "runtime": {"intra_op_threads": 2},
            "models": [
                {
                    "name": "own",
                    "source": "/m/1",
                    "batching": {"max_batch_size": 16, "max_queue_delay_us": 2000},
                    "runtime": {"intra_op_threads": 1, "inter_op_threads": 1},
                },
                {"name": "shared", "source": "/m/2"},
            ],
        },
        environ={},
    )
    own, shared = settings.models
    assert settings.batching_for(own) == BatchingSettings(max_batch_size=16, max_queue_delay_us=2000)
    assert settings.runtime_for(own) == RuntimeSettings(intra_op_threads=1, inter_op_threads=1)
    # Keys a model leaves out come from the server-wide settings, not the built-in defaults.
    partial = ModelSettings(name="partial", source="/m/3", batching={"max_queue_delay_us": 500})
    assert settings.batching_for(partial) == BatchingSettings(max_batch_size=4, max_queue_delay_us=500)
    assert settings.batching_for(shared) == BatchingSettings(max_batch_size=4)
    assert settings.runtime_for(shared) == RuntimeSettings(intra_op_threads=2)


def test_per_model_dtype_from_toml(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        '[[models]]\nname = "a"\nsource = "/m/a"\ndtype = "q8"\n\n[[models]]\nname = "b"\nsource = "/m/b"\n',
    )
    settings = load_settings(config_file=path, environ={})
    assert [(m.name, m.dtype) for m in settings.models] == [("a", "q8"), ("b", "fp32")]


def test_example_config_parses() -> None:
    # Parse only: its model sources are relative to where the server would be started.
    settings = load_settings(config_file=EXAMPLE_CONFIG, environ={})
    names = [m.name for m in settings.models]
    assert len(names) == 2
    assert settings.default_model_name == names[0]
    dtypes = {m.name: m.dtype for m in settings.models}
    assert any(d != "fp32" for d in dtypes.values()), "the example should show a per-model dtype"
    first, second = settings.models
    # The example shows per-model batching and runtime threads differing from the global ones.
    assert first.batching is not None and settings.batching_for(first) != settings.batching
    assert first.runtime is not None and settings.runtime_for(first) != settings.runtime
    assert second.source.endswith("open-nsfw.yaml")


# -- immutability and secrets -------------------------------------------------------------------------


def test_settings_are_frozen() -> None:
    settings = load_settings({"models": [{"name": "a", "source": "/m/1"}]}, environ={})
    with pytest.raises(ValidationError, match="frozen"):
        settings.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        settings.batching.max_batch_size = 1  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        settings.models[0].source = "/elsewhere"  # type: ignore[misc]
    assert isinstance(settings.models, tuple)


def test_auth_token_file_read(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("# one token a line\nfile-token-1\n\n  file-token-2  \n")
    settings = load_settings({"auth_token_file": str(token_file)}, environ={"IMGCLS_AUTH_TOKENS": "env-token"})
    assert settings.auth_tokens == ("env-token", "file-token-1", "file-token-2")


def test_auth_token_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings({"auth_token_file": str(tmp_path / "nope")}, environ={})
    assert_config_error(exc, "auth_token_file")


def test_repr_hides_tokens() -> None:
    settings = load_settings({"auth_tokens": ("s3cret-bearer",)}, environ={"HF_TOKEN": "hf_s3cretvalue"})
    assert settings.hf_token == "hf_s3cretvalue"
    for text in (repr(settings), str(settings)):
        assert "s3cret-bearer" not in text
        assert "hf_s3cretvalue" not in text


# -- connection age -----------------------------------------------------------------------------------


def test_max_connection_age_becomes_grpc_options() -> None:
    settings = load_settings({"max_connection_age_s": 30, "max_connection_age_grace_s": 5}, environ={})
    options = dict(server_options(settings))
    assert options["grpc.max_connection_age_ms"] == 30_000
    assert options["grpc.max_connection_age_grace_ms"] == 5_000
    # Age alone: gRPC's own grace (calls on the old connection, a camera's stream, run until they end).
    options = dict(server_options(load_settings({"max_connection_age_s": 0.25}, environ={})))
    assert options["grpc.max_connection_age_ms"] == 250
    assert "grpc.max_connection_age_grace_ms" not in options
    # By default connections are never recycled.
    assert not any("connection_age" in key for key in dict(server_options(load_settings(environ={}))))


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ({"max_connection_age_s": 0}, "max_connection_age_s"),
        ({"max_connection_age_s": -1}, "max_connection_age_s"),
        ({"max_connection_age_s": 1e12}, "max_connection_age_s"),
        ({"max_connection_age_s": 10, "max_connection_age_grace_s": -1}, "max_connection_age_grace_s"),
        # A grace with no age would do nothing: refused rather than silently ignored.
        ({"max_connection_age_grace_s": 5}, "max_connection_age_grace_s"),
    ],
)
def test_bad_connection_age_names_the_key(given: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(given, environ={})
    assert_config_error(exc, key)


# -- every setting has a flag (and a variable) ----------------------------------------------------------

# Every leaf of ServerSettings: a command line that sets it, environment variables that set it (None:
# none can, see NO_ENVIRONMENT), and the value both give. "{tmp}" stands for the test's tmp_path.
# "models[]" is the first configured model.
SETTABLE: dict[str, tuple[list[str], dict[str, str] | None, Any]] = {
    "host": (["--host", "0.0.0.0"], {"IMGCLS_HOST": "0.0.0.0"}, "0.0.0.0"),
    "port": (["--port", "0"], {"IMGCLS_PORT": "0"}, 0),
    "models[].name": (["--model", "m=/m/x"], {"IMGCLS_MODELS": "m=/m/x"}, "m"),
    "models[].source": (["--model", "m=/m/x"], {"IMGCLS_MODELS": "m=/m/x"}, "/m/x"),
    "models[].dtype": (["--model", "m=/m/x", "--dtype", "q8"], None, "q8"),
    "default_model": (
        ["--model", "a=/m/a", "--model", "b=/m/b", "--default-model", "b"],
        {"IMGCLS_MODELS": "a=/m/a,b=/m/b", "IMGCLS_DEFAULT_MODEL": "b"},
        "b",
    ),
    "batching.max_batch_size": (["--max-batch-size", "3"], {"IMGCLS_BATCHING__MAX_BATCH_SIZE": "3"}, 3),
    "batching.max_queue_delay_us": (["--max-queue-delay-us", "7"], {"IMGCLS_BATCHING__MAX_QUEUE_DELAY_US": "7"}, 7),
    "batching.queue_limit": (["--queue-limit", "9"], {"IMGCLS_BATCHING__QUEUE_LIMIT": "9"}, 9),
    "runtime.intra_op_threads": (["--intra-op-threads", "1"], {"IMGCLS_RUNTIME__INTRA_OP_THREADS": "1"}, 1),
    "runtime.inter_op_threads": (["--inter-op-threads", "2"], {"IMGCLS_RUNTIME__INTER_OP_THREADS": "2"}, 2),
    "runtime.instances": (["--instances", "2"], {"IMGCLS_RUNTIME__INSTANCES": "2"}, 2),
    "runtime.providers": (
        ["--providers", "CUDAExecutionProvider, CPUExecutionProvider"],
        {"IMGCLS_RUNTIME__PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider"},
        ("CUDAExecutionProvider", "CPUExecutionProvider"),
    ),
    "max_message_bytes": (["--max-message-bytes", "2048"], {"IMGCLS_MAX_MESSAGE_BYTES": "2048"}, 2048),
    "max_inputs_per_request": (["--max-inputs-per-request", "3"], {"IMGCLS_MAX_INPUTS_PER_REQUEST": "3"}, 3),
    "max_image_pixels": (["--max-image-pixels", "100"], {"IMGCLS_MAX_IMAGE_PIXELS": "100"}, 100),
    "max_tensor_elements": (["--max-tensor-elements", "1000"], {"IMGCLS_MAX_TENSOR_ELEMENTS": "1000"}, 1000),
    "preprocess_threads": (["--preprocess-threads", "2"], {"IMGCLS_PREPROCESS_THREADS": "2"}, 2),
    "jpeg_draft": (["--jpeg-draft", "fast"], {"IMGCLS_JPEG_DRAFT": "fast"}, "fast"),
    "stream_max_in_flight": (["--stream-max-in-flight", "4"], {"IMGCLS_STREAM_MAX_IN_FLIGHT": "4"}, 4),
    "memory_budget_bytes": (["--memory-budget", "123456789"], {"IMGCLS_MEMORY_BUDGET_BYTES": "123456789"}, 123456789),
    "message_timeout_s": (["--message-timeout", "2.5"], {"IMGCLS_MESSAGE_TIMEOUT_S": "2.5"}, 2.5),
    "read_wait_s": (["--read-wait", "1.5"], {"IMGCLS_READ_WAIT_S": "1.5"}, 1.5),
    "max_streams": (["--max-streams", "9"], {"IMGCLS_MAX_STREAMS": "9"}, 9),
    "max_calls_per_connection": (
        ["--max-calls-per-connection", "7"],
        {"IMGCLS_MAX_CALLS_PER_CONNECTION": "7"},
        7,
    ),
    "grace_period_s": (["--grace-period", "2.5"], {"IMGCLS_GRACE_PERIOD_S": "2.5"}, 2.5),
    "max_connection_age_s": (["--max-connection-age-s", "30"], {"IMGCLS_MAX_CONNECTION_AGE_S": "30"}, 30.0),
    "max_connection_age_grace_s": (
        ["--max-connection-age-s", "30", "--max-connection-age-grace-s", "5"],
        {"IMGCLS_MAX_CONNECTION_AGE_S": "30", "IMGCLS_MAX_CONNECTION_AGE_GRACE_S": "5"},
        5.0,
    ),
    "metrics_port": (["--metrics-port", "9091"], {"IMGCLS_METRICS_PORT": "9091"}, 9091),
    "http_port": (["--http-port", "8081"], {"IMGCLS_HTTP_PORT": "8081"}, 8081),
    "http_max_connections": (
        ["--http-max-connections", "2000"],
        {"IMGCLS_HTTP_MAX_CONNECTIONS": "2000"},
        2000,
    ),
    "max_json_bytes": (["--max-json-bytes", "4096"], {"IMGCLS_MAX_JSON_BYTES": "4096"}, 4096),
    "tls.cert_file": (
        ["--tls-cert", "c.pem", "--tls-key", "k.pem"],
        {"IMGCLS_TLS__CERT_FILE": "c.pem", "IMGCLS_TLS__KEY_FILE": "k.pem"},
        Path("c.pem"),
    ),
    "tls.key_file": (
        ["--tls-cert", "c.pem", "--tls-key", "k.pem"],
        {"IMGCLS_TLS__CERT_FILE": "c.pem", "IMGCLS_TLS__KEY_FILE": "k.pem"},
        Path("k.pem"),
    ),
    "tls.client_ca_file": (
        ["--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem"],
        {"IMGCLS_TLS__CERT_FILE": "c.pem", "IMGCLS_TLS__KEY_FILE": "k.pem", "IMGCLS_TLS__CLIENT_CA_FILE": "ca.pem"},
        Path("ca.pem"),
    ),
    "auth_tokens": (["--auth-token-file", "{tmp}/tokens"], {"IMGCLS_AUTH_TOKENS": "tok-1"}, ("tok-1",)),
    "auth_open_health": (["--auth-close-health"], {"IMGCLS_AUTH_OPEN_HEALTH": "false"}, False),
    "hf_token": (["--hf-token", "hf_x"], {"HF_TOKEN": "hf_x"}, "hf_x"),
    "cache_dir": (["--cache-dir", "/c"], {"IMGCLS_CACHE_DIR": "/c"}, Path("/c")),
    "log_level": (["--log-level", "debug"], {"IMGCLS_LOG_LEVEL": "debug"}, "debug"),
    "log_format": (["--log-format", "json"], {"IMGCLS_LOG_FORMAT": "json"}, "json"),
}

# Settings with no flag of their own, and why.
FILE_ONLY = {
    "models[].batching.": "per-model batching is a table of a [[models]] entry in the config file; the flags "
    "set the server-wide batching that every model inherits",
    "models[].runtime.": "per-model threads and providers are a table of a [[models]] entry in the config file; "
    "the flags set the server-wide runtime that every model inherits",
}
NO_ENVIRONMENT = {
    "models[].dtype": "IMGCLS_MODELS holds NAME=SOURCE pairs; a per-model dtype needs --dtype or the config file",
}


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [t for arg in get_args(annotation) for t in _model_types(arg)]


def leaf_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every setting of model, nested models walked into: "batching.queue_limit", "models[].dtype"."""
    for name, field in model.model_fields.items():
        nested = _model_types(field.annotation)
        if nested:
            (inner,) = set(nested)
            yield from leaf_paths(inner, f"{prefix}{name}{'[]' if get_origin(field.annotation) is tuple else ''}.")
        else:
            yield f"{prefix}{name}"


def value_at(settings: ServerSettings, path: str) -> Any:
    value: Any = settings
    for part in path.split("."):
        value = getattr(value, part.removesuffix("[]"))
        if part.endswith("[]"):
            value = value[0]
    return value


def serve_help() -> str:
    parser = cli.build_parser()
    with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit):
        parser.parse_args(["serve", "--help"])
    return out.getvalue()


def test_every_setting_has_a_flag_in_serve_help() -> None:
    leaves = set(leaf_paths(ServerSettings))
    exempt = {leaf for leaf in leaves if leaf.startswith(tuple(FILE_ONLY))}
    assert exempt, "FILE_ONLY names settings that no longer exist"
    missing = leaves - exempt - set(SETTABLE)
    assert not missing, f"settings without a flag (add one, or to FILE_ONLY with the reason): {sorted(missing)}"
    assert set(SETTABLE) <= leaves, f"SETTABLE names unknown settings: {sorted(set(SETTABLE) - leaves)}"
    help_text = serve_help()
    flags = {arg for argv, _, _ in SETTABLE.values() for arg in argv if arg.startswith("--")}
    # The whole flag, not the start of a longer one.
    assert not [flag for flag in flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text)]


@pytest.mark.usefixtures("clean_environ")
@pytest.mark.parametrize("path", sorted(SETTABLE))
def test_flag_sets_the_setting(path: str, tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("tok-1\n")
    argv, _, expected = SETTABLE[path]
    args = cli.build_parser().parse_args(["serve", *(a.replace("{tmp}", str(tmp_path)) for a in argv)])
    assert value_at(cli.serve_settings_from_args(args), path) == expected


@pytest.mark.parametrize("path", sorted(SETTABLE))
def test_environment_sets_the_setting(path: str) -> None:
    _, environ, expected = SETTABLE[path]
    if environ is None:
        assert path in NO_ENVIRONMENT
        return
    assert value_at(load_settings(environ=environ), path) == expected


# -- invalid configurations stop the start, naming the key and where it was set ---------------------------


def test_toml_bad_value_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'port = "fifty"\n[batching]\nqueue_limit = 0\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(config_file=path, environ={})
    assert_config_error(exc, "port: Input should be a valid integer", "batching.queue_limit", f"config file {path}")


def test_toml_bad_model_value_names_the_entry(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[[models]]\nname = "a"\nsource = "/m/a"\n[models.batching]\nmax_batch_size = -1\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(config_file=path, environ={})
    assert_config_error(exc, "models.0.batching.max_batch_size", str(path))


def test_env_bad_value_names_the_variable() -> None:
    # What Kubernetes would inject for a (non-headless) Service named imgcls: refused, not misread.
    with pytest.raises(ConfigError) as exc:
        load_settings(environ={"IMGCLS_PORT": "tcp://10.0.0.1:50051"})
    assert_config_error(exc, "port: Input should be a valid integer", "(from IMGCLS_PORT)")


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"IMGCLS_JPEG_DRAFT": "maybe"}, "jpeg_draft"),
        ({"IMGCLS_LOG_LEVEL": "verbose"}, "log_level"),
        ({"IMGCLS_LOG_FORMAT": "xml"}, "log_format"),
        ({"IMGCLS_MAX_CONNECTION_AGE_S": "soon"}, "max_connection_age_s"),
        ({"IMGCLS_TLS__CERT_FILE": "c.pem"}, "tls.key_file"),
        ({"IMGCLS_MODELS": "bad/name=/m/a"}, "models.0.name"),
    ],
)
def test_env_bad_values_name_the_key(environ: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ=environ)
    assert_config_error(exc, key)


def test_cli_value_error_says_it_came_from_the_command_line() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings({"port": 70000}, environ={"IMGCLS_PORT": "1"})
    assert_config_error(exc, "port", "(from the command line)")


@pytest.mark.usefixtures("clean_environ")
def test_serve_with_a_bad_config_file_exits_2_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def refuse(settings: Any) -> None:
        raise AssertionError(f"serve() was reached with {settings!r}")

    monkeypatch.setattr("imgcls.server.server.serve", refuse)
    path = write_toml(tmp_path, "[batching]\nmax_batch = 4\n")
    assert cli.main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgcls serve: invalid configuration: batching.max_batch: Extra inputs are not permitted")
    assert str(path) in err


@pytest.mark.usefixtures("clean_environ")
def test_dtype_without_model_is_refused() -> None:
    # The embedded (or an IMGCLS_MODELS / file) model would be served in another variant than asked for.
    args = cli.build_parser().parse_args(["serve", "--dtype", "q8"])
    with pytest.raises(ConfigError) as exc:
        cli.serve_settings_from_args(args)
    assert_config_error(exc, "--dtype", "--model")


@pytest.mark.usefixtures("clean_environ")
def test_tls_flags_merge_with_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # --tls-client-ca alone turns on mTLS for a certificate configured elsewhere, instead of being dropped.
    monkeypatch.setenv("IMGCLS_TLS__CERT_FILE", "c.pem")
    monkeypatch.setenv("IMGCLS_TLS__KEY_FILE", "k.pem")
    settings = cli.serve_settings_from_args(cli.build_parser().parse_args(["serve", "--tls-client-ca", "ca.pem"]))
    assert settings.tls == TlsSettings(cert_file=Path("c.pem"), key_file=Path("k.pem"), client_ca_file=Path("ca.pem"))


def test_auto_instances_share_the_cores_and_keep_every_core_for_a_lone_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from imgcls.server import settings as settings_module

    monkeypatch.setattr(settings_module.cpus, "available_cpus", lambda: 2)
    runtime = RuntimeSettings()
    assert runtime.resolved_instances() == 2
    options = runtime.options()
    assert options.intra_op_threads == 1  # one core per instance
    assert options.solo_intra_op_threads == 2  # a lone run gets every usable core

    monkeypatch.setattr(settings_module.cpus, "available_cpus", lambda: 64)
    assert RuntimeSettings().resolved_instances() == settings_module.AUTO_MAX_INSTANCES
    assert RuntimeSettings().options().intra_op_threads == 64 // settings_module.AUTO_MAX_INSTANCES


def test_explicit_threads_or_one_instance_build_no_solo_session(monkeypatch: pytest.MonkeyPatch) -> None:
    from imgcls.server import settings as settings_module

    monkeypatch.setattr(settings_module.cpus, "available_cpus", lambda: 2)
    assert RuntimeSettings(instances=1).options() == RuntimeOptions(2, 0, ("CPUExecutionProvider",))
    assert RuntimeSettings(intra_op_threads=2).options().solo_intra_op_threads is None
    gpu = RuntimeSettings(providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert gpu.resolved_instances() == 1 and gpu.options().solo_intra_op_threads is None
