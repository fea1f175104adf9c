"""Threads per job come from the CPUs this process may use, not from the machine's core count."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sweep import cpus
from tests.conftest import TINY, run_cli


@pytest.mark.parametrize(
    ("line", "want"),
    [("max 100000", None), ("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1), ("garbage", None)],
)
def test_cgroup_v2_cpu_max_lines(line, want):
    assert cpus._quota(line) == want


def test_the_tightest_cgroup_quota_on_the_path_up_wins(tmp_path):
    root = tmp_path / "cgroup"
    job = root / "slurm" / "job_7" / "step_0"
    job.mkdir(parents=True)
    (root / "slurm" / "cpu.max").write_text("max 100000\n")
    (root / "slurm" / "job_7" / "cpu.max").write_text("300000 100000\n")
    (job / "cpu.max").write_text("max 100000\n")
    assert cpus._cgroup_quota(root, ["0::/slurm/job_7/step_0"]) == 3
    (job / "cpu.max").write_text("100000 100000\n")
    assert cpus._cgroup_quota(root, ["0::/slurm/job_7/step_0"]) == 1
    assert cpus._cgroup_quota(root, ["0::/elsewhere"]) is None


def test_slurm_cpus_per_task_caps_the_usable_cpus(monkeypatch):
    monkeypatch.setattr(cpus, "_affinity", lambda: 8)
    monkeypatch.setattr(cpus, "_cgroup_quota", lambda: None)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert cpus.usable_cpus() == 3
    assert cpus.default_threads(2) == 1
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert cpus.usable_cpus() == 8
    assert cpus.default_threads(2) == 4
    monkeypatch.setattr(cpus, "_cgroup_quota", lambda: 2)
    assert cpus.usable_cpus() == 2


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_the_affinity_mask_is_read():
    assert cpus._affinity() == len(os.sched_getaffinity(0))


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs a machine with 2 or more cores")
def test_a_job_under_slurm_without_threads_uses_its_allocation_not_the_node(tmp_path, monkeypatch):
    """`os.cpu_count()` would give every core of this machine to the single job."""
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    out = run_cli(*TINY, f"results_dir={tmp_path}", "name=slurm", "seed=3")
    assert out.returncode == 0, out.stderr[-2000:]
    (record,) = [json.loads(p.read_text()) for p in Path(tmp_path, "slurm").rglob("run.json")]
    assert record["env"]["threads"] == 1
