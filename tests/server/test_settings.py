"""Settings: precedence of CLI > environment > TOML file > defaults, validation that names the bad key,
per-model overrides, the example config file, immutability and secrets kept out of repr."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from conftest import ROOT
from imgcls.server.errors import ConfigError
from imgcls.server.settings import (
    DEFAULT_MODEL_NAME,
    BatchingSettings,
    ModelSettings,
    RuntimeSettings,
    load_settings,
)
from pydantic import ValidationError

EXAMPLE_CONFIG = ROOT / "examples" / "imgcls.toml"


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "imgcls.toml"
    path.write_text(text)
    return path


def assert_config_error(exc: pytest.ExceptionInfo[ConfigError], *fragments: str) -> None:
    assert exc.value.status_code == grpc.StatusCode.INVALID_ARGUMENT
    for fragment in fragments:
        assert fragment in exc.value.message


# -- precedence ---------------------------------------------------------------------------------------


@pytest.fixture
def port_file(tmp_path: Path) -> Path:
    return write_toml(tmp_path, "port = 1111\n[batching]\nmax_batch_size = 11\nqueue_limit = 111\n")


def test_defaults_without_any_layer() -> None:
    settings = load_settings(environ={})
    assert settings.port == 50051
    assert settings.batching == BatchingSettings(max_batch_size=8, max_queue_delay_us=0, queue_limit=256)
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


def test_toml_unknown_nested_key_names_it(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[batching]\nmax_batch = 4\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(config_file=path, environ={})
    assert_config_error(exc, "batching.max_batch")


def test_toml_unknown_top_level_key_names_it(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "prot = 50052\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(config_file=path, environ={})
    assert_config_error(exc, "prot")


def test_toml_unknown_model_key_names_it(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[[models]]\nname = "a"\nsource = "/m/a"\ndtyp = "fp16"\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(config_file=path, environ={})
    assert_config_error(exc, "models.0.dtyp")


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
