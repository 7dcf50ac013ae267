"""The environment a server or CLI under test reads: none of the test runner's own settings may leak in."""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytest

# Settings read IMGCLS_* (and HF_TOKEN); huggingface_hub reads HF_* (HF_HOME, HF_HUB_CACHE, HF_ENDPOINT,
# HF_HUB_OFFLINE, HF_XET_*, ...) and the legacy HUGGING_FACE_HUB_TOKEN.
SERVER_PREFIXES = ("IMGCLS_", "HF_", "HUGGING_FACE_")


def reads(key: str) -> bool:
    """Whether the server (or a library it uses) reads this environment variable."""
    return key.startswith(SERVER_PREFIXES)


def without_server_variables(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of environ (default os.environ) without the variables the server reads: for child processes."""
    return {k: v for k, v in (os.environ if environ is None else environ).items() if not reads(k)}


def remove_server_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Delete from os.environ, for this test, every variable the server reads."""
    for key in list(os.environ):
        if reads(key):
            monkeypatch.delenv(key)
