"""How many CPUs this process may use: the default torch thread count of a job is its share of these.

`os.cpu_count()` counts the machine's cores, not the ones this process is allowed: a SLURM job without
`cpus_per_task`, a container with a CPU quota or a `taskset` would each otherwise take every core of the node.
The smallest of these limits wins:
- the CPU affinity mask (`taskset`, SLURM's cgroup cpuset, `docker --cpuset-cpus`);
- the cgroup CPU quota (`docker --cpus`, Kubernetes limits): cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` /
  `cpu.cfs_period_us`, rounded up;
- `SLURM_CPUS_PER_TASK`, when SLURM sets it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _affinity() -> int | None:
    try:
        return len(os.sched_getaffinity(0)) or None
    except (AttributeError, OSError):  # not on Linux
        return None


def _quota(cpu_max: str) -> int | None:
    """CPUs allowed by a cgroup v2 `cpu.max` line ("max 100000" = no limit, "150000 100000" = 1.5 -> 2)."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def _own_cgroups() -> list[str]:
    try:
        return Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []


def _cgroup_quota(root: Path = CGROUP_ROOT, own: list[str] | None = None) -> int | None:
    own = _own_cgroups() if own is None else own
    # cgroup v2: one line "0::/path"; the limit may be set on this group or any group above it
    for line in own:
        if line.startswith("0::"):
            group = root / line[3:].lstrip("/")
            limits = []
            for folder in (group, *group.parents):
                if not folder.is_relative_to(root):
                    break
                try:
                    limits.append(_quota((folder / "cpu.max").read_text()))
                except OSError:
                    continue
            found = [x for x in limits if x]
            if found:
                return min(found)
    try:  # cgroup v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def _slurm() -> int | None:
    value = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def usable_cpus() -> int:
    """CPUs this process may use: the smallest of the affinity mask, the cgroup quota and SLURM's allocation."""
    limits = [x for x in (_affinity(), _cgroup_quota(), _slurm()) if x]
    return min(limits) if limits else (os.cpu_count() or 1)


def default_threads(parallel_jobs: int) -> int:
    """Torch threads of one job when `threads` is not set: its share of the usable CPUs, at least one."""
    return max(1, usable_cpus() // max(1, parallel_jobs))
