"""CPU detection: the cgroup quota (v2 and v1) caps the host's count, as in a container with a CPU limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from imgcls.server.runtime import cpus


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("200000 100000\n", 2), ("150000 100000\n", 2), ("50000 100000\n", 1), ("max 100000\n", None)],
)
def test_cgroup_v2_quota_rounds_up_to_whole_cpus(tmp_path: Path, cpu_max: str, expected: int | None) -> None:
    missing = tmp_path / "missing"
    assert cpus.cgroup_cpu_limit(write(tmp_path / "cpu.max", cpu_max), missing, missing) == expected


def test_cgroup_v1_quota_when_there_is_no_v2_file(tmp_path: Path) -> None:
    quota, period = write(tmp_path / "q", "300000\n"), write(tmp_path / "p", "100000\n")
    assert cpus.cgroup_cpu_limit(tmp_path / "missing", quota, period) == 3
    unlimited = write(tmp_path / "u", "-1\n")
    assert cpus.cgroup_cpu_limit(tmp_path / "missing", unlimited, period) is None


def test_unreadable_or_garbled_files_mean_no_limit(tmp_path: Path) -> None:
    garbled = write(tmp_path / "cpu.max", "lots\n")
    assert cpus.cgroup_cpu_limit(garbled, tmp_path / "a", tmp_path / "b") is None


def test_available_cpus_is_the_smaller_of_affinity_and_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: 2)
    assert cpus.available_cpus() == 2
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: None)
    assert cpus.available_cpus() == 8
