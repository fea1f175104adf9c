"""Launchers: forkserver (the default), joblib, submitit_local and ray run the same jobs and give the same
records; one failing job never stops the others, and the sweep ends with a summary that names it and a non-zero
exit. What only the forkserver launcher does is in tests/test_forkserver_launcher.py."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sweep.cpus import usable_cpus
from sweep.plan import batch_limit, launcher_parallelism
from tests.conftest import REPO, TINY

CORES = usable_cpus()
GRID = ["model=rnn,lstm", "batch_size=2,4", "num_steps=4"]
# no `threads=`: each job takes cores // (jobs at once), which the tests check (one thread each on 2 cores)
LAUNCHERS = {
    "forkserver": ["hydra/launcher=forkserver", "hydra.launcher.n_jobs=2"],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
    "ray": [
        "hydra/launcher=ray",
        "+hydra.launcher.ray.init.num_cpus=2",
        "+hydra.launcher.ray.init.include_dashboard=false",
        "+hydra.launcher.ray.init.log_to_driver=false",
    ],
}
TARGETS = {
    "forkserver": "hydra_plugins.rnn_sweep_launcher.forkserver_launcher.ForkserverLauncher",
    "joblib": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "submitit_local": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    "ray": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
}
COMPARED = (
    "train_loss",
    "valid_loss",
    "valid_accuracy",
    "updates",
    "tokens",
    "grad_norm_max",
    "clip_fraction",
)


def _available(launcher: str) -> str | None:
    """Why a launcher cannot run here (its package is missing), or None."""
    module = {
        "forkserver": "hydra_plugins.rnn_sweep_launcher",
        "joblib": "hydra_plugins.hydra_joblib_launcher",
        "submitit_local": "hydra_plugins.hydra_submitit_launcher",
        "ray": "hydra_plugins.hydra_ray_launcher",
    }[launcher]
    if importlib.util.find_spec(module) is None:
        extra = "pip install -e '.[ray]'" if launcher == "ray" else "pip install -e ."
        return f"{module} is not installed ({extra})"
    return None


def _sweep(results: Path, launcher: str, grid: list[str], env: dict[str, str] | None = None):
    reason = _available(launcher)
    if reason:
        pytest.skip(reason)
    extra_env = dict(env or {})
    ray_tmp = None
    if launcher == "ray":
        # Ray writes under HOME and /tmp/ray; its socket paths must stay short, so not under pytest's tmp_path
        ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        extra_env.update(HOME=ray_tmp, RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra_env}
    env.pop("HYDRA_FULL_ERROR", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "sweep", "-m", f"results_dir={results}", "name=l", *grid, *TINY,
             *LAUNCHERS[launcher]],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        proc.ray_sessions = sorted(p.name for p in Path(ray_tmp).rglob("session_2*")) if ray_tmp else []
        return proc
    finally:
        if ray_tmp:
            shutil.rmtree(ray_tmp, ignore_errors=True)


def _launchers_that_ran(proc, sweep_dir: Path) -> set[str]:
    """The launchers whose own traces this sweep left: each logs a line of its own when it launches, and
    submitit and Ray leave files (submitit's job folders in the sweep folder, Ray's session in its temp dir).
    An override the sweep ignored would show here as another launcher (or the basic one: none of these)."""
    out = proc.stdout + proc.stderr
    ran = set()
    if "Joblib.Parallel(" in out:
        ran.add("joblib")
    if re.search(r"launching \d+ jobs, \d+ at once \((forkserver|spawn)\)", out):
        ran.add("forkserver")
    submitit = sweep_dir / ".submitit"
    if "Submitit 'local' sweep output dir" in out and submitit.is_dir() and any(submitit.iterdir()):
        ran.add("submitit_local")
    if "Ray Launcher is launching" in out and proc.ray_sessions:
        ran.add("ray")
    return ran


def _records(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/run.json")}


@pytest.fixture(scope="module")
def joblib_records(tmp_path_factory) -> dict[str, dict]:
    results = tmp_path_factory.mktemp("joblib")
    proc = _sweep(results, "joblib", GRID)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _launchers_that_ran(proc, results / "l") == {"joblib"}
    recs = _records(results / "l")
    assert len(recs) == 4 and all(r["status"] == "complete" for r in recs.values())
    return recs


# ---------------------------------------------------------------------------------------- fast: no training
def test_parallelism_and_thread_caps_per_launcher():
    """Each job takes cores // (jobs running at once) torch threads: the count must fit each launcher."""
    cfg = OmegaConf.create
    assert launcher_parallelism(cfg({"_target_": TARGETS["joblib"], "n_jobs": 3})) == 3
    assert launcher_parallelism(cfg({"_target_": TARGETS["joblib"], "n_jobs": -1})) == CORES
    assert launcher_parallelism(cfg({"_target_": TARGETS["forkserver"], "n_jobs": -1})) == CORES
    assert launcher_parallelism(cfg({"_target_": TARGETS["forkserver"], "n_jobs": 3})) == 3
    assert batch_limit(cfg({"_target_": TARGETS["forkserver"], "n_jobs": -1}), None) is None  # it queues them
    local = cfg({"_target_": TARGETS["submitit_local"], "cpus_per_task": None})
    assert launcher_parallelism(local) == CORES  # submitit_local starts a whole batch at once ...
    assert batch_limit(local, None) == CORES  # ... so the sweepers hand it at most `cores` jobs at a time
    assert launcher_parallelism(local, max_batch_size=3) == 3 and batch_limit(local, 3) == 3
    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    # each SLURM job runs alone in its allocation, whose CPUs the job's usable_cpus() already counts
    assert launcher_parallelism(cfg({"_target_": slurm, "cpus_per_task": None})) == 1
    assert launcher_parallelism(cfg({"_target_": slurm, "cpus_per_task": 4})) == 1
    assert batch_limit(cfg({"_target_": slurm}), None) is None  # a cluster queues them
    ray = {"_target_": TARGETS["ray"], "ray": {"init": {"address": None}, "remote": {}}}
    assert launcher_parallelism(cfg(ray)) == CORES
    ray["ray"]["init"]["num_cpus"] = 8
    ray["ray"]["remote"]["num_cpus"] = 2
    assert launcher_parallelism(cfg(ray)) == 4
    assert batch_limit(cfg({"_target_": TARGETS["joblib"], "n_jobs": 2}), None) is None


@pytest.mark.parametrize("launcher", ["forkserver", "joblib", "submitit_local", "submitit_slurm", "ray"])
def test_the_tune_preset_composes_with_every_launcher(launcher):
    if _available(launcher.replace("submitit_slurm", "submitit_local")):
        pytest.skip(_available(launcher.replace("submitit_slurm", "submitit_local")))
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=tune", f"hydra/launcher={launcher}"], return_hydra_config=True)
    expected = {"forkserver": "ForkserverLauncher", "joblib": "JoblibLauncher", "submitit_local": "LocalLauncher",
                "submitit_slurm": "SlurmLauncher", "ray": "RayLauncher"}[launcher]  # fmt: skip
    assert cfg.hydra.launcher._target_.endswith(expected)  # the command line's launcher, not the preset's
    assert cfg.hydra.sweeper.search and cfg.hydra.sweeper.n_trials == 4
    assert list(cfg.hydra.sweeper.search_seeds) == [1000, 1001]


# ---------------------------------------------------------------------------------------- slow: real sweeps
@pytest.mark.slow
def test_joblib_runs_the_grid_with_one_thread_per_job(joblib_records):
    for rec in joblib_records.values():
        env = rec["env"]
        assert env["launcher"] == TARGETS["joblib"] and env["parallel_jobs"] == 2
        assert env["threads"] == max(1, CORES // 2)
        # the workers were started and warmed while the parent planned, and the launcher reused that pool
        assert env["warmed_worker"] is True


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["forkserver", "submitit_local", "ray"])
def test_each_launcher_gives_the_same_records_as_joblib(tmp_path, launcher, joblib_records):
    proc = _sweep(tmp_path, launcher, GRID)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _launchers_that_ran(proc, tmp_path / "l") == {launcher}
    recs = _records(tmp_path / "l")
    assert sorted(recs) == sorted(joblib_records)
    for name, rec in recs.items():
        ref = joblib_records[name]
        assert rec["status"] == ref["status"] == "complete"
        assert rec["signature"] == ref["signature"]
        for key in COMPARED:
            assert rec["summary"][key] == pytest.approx(ref["summary"][key], rel=1e-6, abs=1e-9), (name, key)
        env = rec["env"]
        assert env["launcher"] == TARGETS[launcher]
        # submitit_local runs a batch of `cores` jobs at once, forkserver n_jobs (2), ray as many as ray.init's
        # num_cpus (2): each job's torch threads are capped so that together they do not oversubscribe the cores
        assert env["parallel_jobs"] == (CORES if launcher == "submitit_local" else 2)
        assert env["threads"] == max(1, CORES // env["parallel_jobs"])
    summary = json.loads((tmp_path / "l" / "sweep_summary.json").read_text())
    assert summary["counts"] == {"complete": 4}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["forkserver", "joblib", "submitit_local", "ray"])
def test_one_failing_job_leaves_the_others_complete_and_the_sweep_exits_nonzero(tmp_path, launcher):
    grid = ["model=rnn,lstm", "batch_size=2", "num_steps=4,8"]
    # sweep/run.py's test hook: the run whose folder name holds this text raises in training
    proc = _sweep(tmp_path, launcher, grid, env={"RNN_SWEEP_FAIL_IF": "model=lstm,num_steps=8"})
    assert proc.returncode != 0
    assert _launchers_that_ran(proc, tmp_path / "l") == {launcher}
    recs = _records(tmp_path / "l")
    assert len(recs) == 4, sorted(recs)
    failed = [n for n, r in recs.items() if r["status"] == "failed"]
    assert len(failed) == 1 and "model=lstm,num_steps=8" in failed[0]
    assert "injected failure" in recs[failed[0]]["error"]
    assert sorted(r["status"] for r in recs.values()) == ["complete"] * 3 + ["failed"]
    summary = json.loads((tmp_path / "l" / "sweep_summary.json").read_text())
    assert summary["counts"] == {"complete": 3, "failed": 1}
    assert [Path(d).name for d, v in summary["jobs"].items() if v["status"] == "failed"] == failed
    last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
    assert "1 of 4 jobs not complete" in last and failed[0] in last
