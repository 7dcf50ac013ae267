"""A model source is a local path or a Hugging Face repo id; when it is neither, the error says both.

`models/efficientnet-lite0` is a relative path and a valid repo id at once: the local path wins when it
exists, and relative paths in a config file are relative to that file's folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants
from imgcls.server.domain.errors import ModelLoadError
from imgcls.server.settings import load_settings
from imgcls.server.sources.resolve import local_path, resolve_model_files
from support.fake_hub import FakeHub
from support.paths import EFFICIENTNET
from support.serve_process import ServeProcess


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """HF_HUB_OFFLINE with an empty cache: every repo id fails, and nothing is fetched."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def empty_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """A reachable Hub that has no repos."""
    with FakeHub() as fake:
        monkeypatch.setattr(constants, "ENDPOINT", fake.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        yield fake


def write_config(folder: Path, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "imgcls.toml"
    path.write_text(f'[[models]]\nname = "m"\nsource = "{source}"\n')
    return path


def resolve_error(source: str, config_file: Path | None = None) -> str:
    with pytest.raises(ModelLoadError) as info:
        resolve_model_files(source, "fp32", config_file=config_file)
    return info.value.message


# -- missing local paths: the message says where it looked, relative to what, and why the Hub failed ---------


def test_missing_absolute_path_that_is_no_repo_id(tmp_path: Path) -> None:
    message = resolve_error(str(tmp_path / "nonexistent" / "dir"))
    assert f"no such file or folder {tmp_path / 'nonexistent' / 'dir'}" in message
    assert "not a Hugging Face repo id" in message


def test_missing_relative_path_that_is_also_a_repo_id_says_both(
    offline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    message = resolve_error("models/efficientnet-lite0")
    assert f"no such file or folder {tmp_path / 'models' / 'efficientnet-lite0'}" in message
    assert f"relative to the working directory {tmp_path}" in message
    # ... and why the Hub lookup failed.
    assert "as a repo id, repo models/efficientnet-lite0 is not in the local Hugging Face cache" in message
    assert "HF_HUB_OFFLINE is set" in message


def test_missing_relative_path_from_a_config_file_is_relative_to_the_file(offline: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "conf", "models/efficientnet-lite0")
    message = resolve_error("models/efficientnet-lite0", config_file=config)
    assert f"no such file or folder {tmp_path / 'conf' / 'models' / 'efficientnet-lite0'}" in message
    assert f"relative to the folder of the config file {config}" in message
    assert "is not in the local Hugging Face cache" in message


def test_repo_not_on_the_hub_and_not_a_local_folder(empty_hub: FakeHub, tmp_path: Path) -> None:
    message = resolve_error("owner/missing", config_file=write_config(tmp_path, "owner/missing"))
    assert f"no such file or folder {tmp_path / 'owner' / 'missing'}" in message
    assert "repo owner/missing not found on the Hub" in message


def test_path_like_sources_never_reach_the_hub(
    empty_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # relative sources name nothing that exists, wherever the suite runs
    for source in ("./models/x", "../x", "a/b/c", str(tmp_path / "x")):
        assert "not a Hugging Face repo id" in resolve_error(source)
    assert empty_hub.requests == []


def test_existing_relative_path_is_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "efficientnet-lite0").symlink_to(EFFICIENTNET)
    monkeypatch.chdir(tmp_path)
    files = resolve_model_files("models/efficientnet-lite0", "fp32")
    assert files.onnx_path.name == "model.onnx" and files.source == "models/efficientnet-lite0"


def test_local_path_expands_home_and_takes_the_config_folder(tmp_path: Path) -> None:
    assert local_path("~/m") == Path(os.path.expanduser("~/m"))
    assert local_path("m", tmp_path / "c.toml") == tmp_path / "m"
    assert local_path("/abs/m", tmp_path / "c.toml") == Path("/abs/m")


# -- relative paths in a config file ---------------------------------------------------------------------


def test_config_file_relative_source_resolves_against_the_file_s_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: Path
) -> None:
    conf = tmp_path / "conf"
    (conf / "models").mkdir(parents=True)
    (conf / "models" / "lite").symlink_to(EFFICIENTNET)
    config = write_config(conf, "models/lite")
    monkeypatch.chdir(tmp_path)  # not the config file's folder
    model = load_settings(config_file=Path("conf/imgcls.toml"), environ={}).models[0]
    assert model.source == str(conf / "models" / "lite")
    assert model.config_file == config
    files = resolve_model_files(model.source, model.dtype, config_file=model.config_file)
    assert files.onnx_path.resolve() == (EFFICIENTNET / "onnx" / "model.onnx").resolve()


def test_config_file_source_that_is_not_beside_the_file_stays_a_possible_repo_id(tmp_path: Path) -> None:
    config = write_config(tmp_path, "owner/repo")
    model = load_settings(config_file=config, environ={}).models[0]
    assert model.source == "owner/repo"
    assert model.config_file == config


def test_models_from_the_command_line_are_relative_to_the_working_directory(tmp_path: Path) -> None:
    config = write_config(tmp_path, "owner/repo")
    settings = load_settings({"models": [{"name": "x", "source": "rel/x"}]}, config_file=config, environ={})
    assert settings.models[0].source == "rel/x"
    assert settings.models[0].config_file is None


def test_serve_a_config_file_with_relative_paths_from_another_folder(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "models").mkdir(parents=True)
    (conf / "models" / "lite").symlink_to(EFFICIENTNET)
    config = write_config(conf, "models/lite")
    server = ServeProcess(tmp_path / "serve.log", "--config", str(config)).start()  # started in the clone root
    try:
        assert "imgcls serving on" in server.output()
    finally:
        assert server.stop() == 0, server.output()
