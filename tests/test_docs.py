"""The documentation site (docs/, mkdocs.yml) builds strictly (a broken link fails), and its reference pages are
generated from the code: every setting and every command is in them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from imgcls.cli import build_parser
from imgcls.server.settings import ServerSettings
from support.paths import ROOT

MKDOCS = Path(sys.executable).parent / "mkdocs"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [str(MKDOCS), "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def test_the_configuration_reference_has_every_setting(site: Path) -> None:
    html = (site / "configuration" / "index.html").read_text()
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import hooks  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "docs"))
    paths = [path for path, _ in hooks._leaves(ServerSettings)]
    assert "http_max_connections" in paths and "batching.max_batch_size" in paths
    for path in paths:
        assert f"<code>{path}</code>" in html, path
    assert "IMGCLS_BATCHING__MAX_BATCH_SIZE" in html and "--max-json-bytes" in html


def test_the_cli_reference_has_every_command_and_option(site: Path) -> None:
    html = (site / "cli" / "index.html").read_text()
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    for name, command in commands.choices.items():  # type: ignore[attr-defined]
        assert f"imgcls {name}" in html
        for action in command._actions:
            for option in action.option_strings:
                assert option in html, (name, option)


def test_the_client_api_reference_is_rendered_from_the_docstrings(site: Path) -> None:
    html = (site / "client-api" / "index.html").read_text()
    for name in ("Client", "AsyncClient", "classify_batch", "classify_stream", "ClientError", "Prediction"):
        assert name in html, name


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """The check can fail: the same site with a link to a page that does not exist."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# x\n\nSee [nowhere](nowhere.md).\n")
    (tmp_path / "mkdocs.yml").write_text("site_name: x\nstrict: true\n")
    built = subprocess.run(
        [str(MKDOCS), "build", "--strict", "-d", str(tmp_path / "out")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode != 0 and "nowhere.md" in built.stdout + built.stderr
