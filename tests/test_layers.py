"""The architecture as a checked fact: import-linter's contracts in pyproject.toml hold."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def run_lint_imports(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_layer_contracts_hold() -> None:
    result = run_lint_imports(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_violated_contract_is_reported(tmp_path: Path) -> None:
    """The check can fail: the same tree against layers in the wrong order is a broken contract."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")
    inverted = tmp_path / "inverted.toml"
    inverted.write_text(
        "[tool.importlinter]\n"
        'root_packages = ["imgcls"]\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "inverted"\n'
        'type = "layers"\n'
        "layers = [" + ", ".join(f'"{layer}"' for layer in reversed(layers["layers"])) + "]\n"
    )
    result = run_lint_imports(inverted)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout


def test_engine_modules_do_not_import_grpc() -> None:
    """Stated directly too: no module outside the gRPC front door imports grpc (issue: one engine, many doors)."""
    offenders = []
    for path in (ROOT / "server" / "imgcls" / "server").rglob("*.py"):
        if "grpc" in path.relative_to(ROOT / "server" / "imgcls" / "server").parts[:1]:
            continue
        text = path.read_text()
        if "\nimport grpc" in text or "\nfrom grpc" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_the_no_cycles_contract_catches_a_cycle(tmp_path: Path) -> None:
    """The same kind of contract as pyproject.toml's, on a package with one: reported broken."""
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    # A type-checking import counts: a cycle for the reader, and one import away from a runtime one.
    (package / "first.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cyclic import second\n"
    )
    (package / "second.py").write_text("from cyclic import first\n")
    config = tmp_path / "cycles.toml"
    config.write_text(
        '[tool.importlinter]\nroot_packages = ["cyclic"]\n'
        '[[tool.importlinter.contracts]]\nname = "no cycles"\ntype = "acyclic_siblings"\nancestors = ["cyclic"]\n'
    )
    result = subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout + result.stderr
