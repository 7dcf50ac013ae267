"""How many CPUs this process may really use: affinity and the cgroup CPU quota, not the host's count.

In a container with a CPU limit os.cpu_count() reports the node's cores; sizing ONNX Runtime
instances, intra-op threads and the preprocessing pool by it would oversubscribe the quota.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def cgroup_cpu_limit(
    cpu_max: Path = CGROUP_V2_CPU_MAX, quota_file: Path = CGROUP_V1_QUOTA, period_file: Path = CGROUP_V1_PERIOD
) -> int | None:
    """The CPU quota rounded up to whole CPUs, or None where there is none (or it cannot be read)."""
    try:
        quota, _, period = cpu_max.read_text().strip().partition(" ")
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period or "100000")))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(quota_file.read_text())
        period_us = int(period_file.read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None


def available_cpus() -> int:
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    return max(1, min(count, limit) if limit else count)


CGROUP_V2_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")
CGROUP_V1_MEMORY_LIMIT = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
# cgroup v1 reports "no limit" as a huge number (the page-rounded max of a signed 64-bit integer).
_NO_LIMIT = 1 << 60


def memory_limit_bytes(v2: Path = CGROUP_V2_MEMORY_MAX, v1: Path = CGROUP_V1_MEMORY_LIMIT) -> int | None:
    """The container's memory limit, or None where there is none (or it cannot be read)."""
    for path in (v2, v1):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return value if 0 < value < _NO_LIMIT else None
    return None
