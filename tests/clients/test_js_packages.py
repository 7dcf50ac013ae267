"""The JavaScript packages (clients/js: imgcls-client; clients/node-red: node-red-contrib-imgcls) pass their own
mocha suites, which start real imgcls servers with this interpreter: run here so the README's one test command
covers them. Their npm dependencies are installed from the committed lockfiles (npm ci) when missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from support.environment import without_server_variables
from support.paths import ROOT

# In dependency order: the Node-RED package links to ../js, which needs its own node_modules.
PACKAGES = ("js", "node-red")
NPM = shutil.which("npm")

pytestmark = pytest.mark.skipif(NPM is None and not os.environ.get("CI"), reason="npm is not installed")


def install(package: str) -> None:
    folder = ROOT / "clients" / package
    if (folder / "node_modules" / ".package-lock.json").exists():
        return
    assert NPM is not None, "npm is required (CI installs Node.js)"
    done = subprocess.run(
        [NPM, "ci", "--no-audit", "--no-fund"], cwd=folder, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"npm ci in clients/{package} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("package", PACKAGES)
def test_mocha_suite(package: str) -> None:
    for needed in PACKAGES[: PACKAGES.index(package) + 1]:
        install(needed)
    assert NPM is not None
    env = {**without_server_variables(), "IMGCLS_PYTHON": sys.executable}
    run = subprocess.run(
        [NPM, "test"], cwd=ROOT / "clients" / package, capture_output=True, text=True, env=env, timeout=840
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"clients/{package}: npm test failed:\n{output[-8000:]}"
    assert " passing" in output and " failing" not in output, output[-4000:]
