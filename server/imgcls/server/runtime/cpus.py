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
