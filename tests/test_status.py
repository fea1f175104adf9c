"""Where a sweep stands: the plan written before the first job, one progress line as each job ends with an ETA
from measured durations, `python -m sweep.status` (plan against records), and `hydra.sweeper.dry_run`."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher

from sweep import lease, record
from sweep.cpus import usable_cpus
from sweep.plan import PlannedJob, SweepFailed
from sweep.status import Progress, eta_seconds, format_eta, main, progress_line, sweep_status
from tests.conftest import TINY, run_cli

LINE = re.compile(r"^(\d+)/(\d+) done \(complete (\d+), diverged (\d+), failed (\d+)\), ETA (\d\d:\d\d:\d\d)$")


def _write_record(folder: Path, signature: str, status: str, train_seconds: float = 1.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rec = {"signature": signature, "status": status, "summary": {"train_seconds": train_seconds}, "config": {}}
    record.write_json(folder / record.RUN_FILE, rec)


# ------------------------------------------------------------------------------------------------------- ETA
def test_eta_is_measured_seconds_per_cost_times_the_cost_left_over_the_parallel_jobs():
    # 10 s per unit of cost; left: 3 units not started and 1 unit with 5 s already spent -> 30 + 5 s of work
    assert eta_seconds([(10.0, 1.0), (20.0, 2.0)], [(3.0, 0.0), (1.0, 5.0)], parallel=1) == pytest.approx(35.0)
    # two at once halve the total, but never below the longest job left (30 s)
    assert eta_seconds([(10.0, 1.0), (20.0, 2.0)], [(3.0, 0.0), (1.0, 5.0)], parallel=2) == pytest.approx(30.0)
    assert eta_seconds([(10.0, 1.0)], [(1.0, 0.0), (1.0, 0.0), (1.0, 0.0), (1.0, 0.0)], parallel=2) == 20.0
    assert eta_seconds([], [(1.0, 0.0)], parallel=1) is None  # nothing measured yet
    assert eta_seconds([(10.0, 1.0)], [], parallel=4) == 0.0
    assert format_eta(3725.4) == "01:02:05" and format_eta(None) == "--:--:--"


def test_progress_measures_a_job_from_its_lease_to_its_record(tmp_path):
    now = [0.0]
    jobs = [PlannedJob([f"x={i}"], tmp_path / f"p{i}", f"sig{i}", cost=c) for i, c in enumerate((1.0, 2.0, 3.0))]
    for job in jobs[:2]:
        job.out_dir.mkdir()
    lines: list[str] = []
    with Progress(jobs, parallel=2, emit=lines.append, poll_s=3600, clock=lambda: now[0]) as progress:
        lease.acquire(jobs[0].out_dir, 60)  # jobs 0 and 1 start at t=0
        lease.acquire(jobs[1].out_dir, 60)
        progress.poll()
        now[0] = 10.0
        # train_seconds is what a record without an observed start falls back on; a wrong duration shows in the ETA
        _write_record(jobs[0].out_dir, "sig0", record.COMPLETE, train_seconds=999.0)
        progress.poll()
        assert lines == [progress_line(progress.counts, 3, 30.0)]
        # 10 s per unit: job 1 has 20 - 10 s left, job 2 (not started) 30 s; two at once: max(40 / 2, 30)
        assert lines[0] == "1/3 done (complete 1, diverged 0, failed 0), ETA 00:00:30"
        now[0] = 25.0
        _write_record(jobs[1].out_dir, "sig1", record.DIVERGED)
        _write_record(jobs[2].out_dir, "other config", record.COMPLETE)  # not this point's record: not done
    # measured: 10 s for 1 unit, 25 s for 2 units -> 35 s for 3 units left, one job, so no halving
    assert lines[1:] == ["2/3 done (complete 1, diverged 1, failed 0), ETA 00:00:35"]


def test_progress_counts_points_complete_before_the_sweep_and_ignores_an_old_failed_record(tmp_path):
    jobs = [PlannedJob([f"x={i}"], tmp_path / f"p{i}", f"sig{i}") for i in range(3)]
    _write_record(jobs[0].out_dir, "sig0", record.COMPLETE)
    _write_record(jobs[1].out_dir, "sig1", record.FAILED)  # a failed point runs again: its old record is no end
    lines: list[str] = []
    with Progress(jobs, parallel=1, emit=lines.append, poll_s=3600) as progress:
        progress.poll()
        assert lines == []
        _write_record(jobs[2].out_dir, "sig2", record.COMPLETE)
        progress.poll()
    assert [LINE.match(ln).groups()[:5] for ln in lines] == [("2", "3", "2", "0", "0")]


# ----------------------------------------------------------------------------- the sweeper: plan and progress
class RecordingLauncher(Launcher):
    """Stands in for a launcher: checks the plan is on disk before any job, then writes each job's record with a
    status chosen by the test (a fake job: no training)."""

    def __init__(self, statuses: dict[str, str]) -> None:
        self.statuses = statuses
        self.plans: list[dict[str, Any]] = []

    def setup(self, **kwargs: Any) -> None:
        pass

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        plan_file = Path(self.sweep_dir) / record.SWEEP_PLAN_FILE
        assert plan_file.exists(), "a job was launched before sweep_plan.json was written"
        plan = json.loads(plan_file.read_text())
        self.plans.append(plan)
        by_overrides = {tuple(p["overrides"]): p for p in plan["points"]}
        returns = []
        for overrides in job_overrides:
            point = by_overrides[tuple(overrides)]
            model = next(o.split("=")[1] for o in overrides if o.startswith("model="))
            _write_record(Path(self.sweep_dir) / point["folder"], point["signature"], self.statuses[model])
            ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            ret._return_value = self.statuses[model]
            returns.append(ret)
        return returns


def _grid_sweeper(tmp_path: Path, launcher: Launcher, **settings: Any):
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import HydraContext

    from hydra_plugins.rnn_sweep_sweeper._impl import GridSweeperImpl

    cfg = _compose(tmp_path)
    sweeper = GridSweeperImpl(**settings)
    sweeper.hydra_context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=None)
    sweeper.config = cfg
    sweeper.launcher = launcher
    launcher.sweep_dir = cfg.hydra.sweep.dir
    return sweeper


def _compose(tmp_path: Path):
    from hydra import compose

    return compose("config", overrides=_fixed(tmp_path), return_hydra_config=True)


def _fixed(tmp_path: Path) -> list[str]:
    """The command line's fixed overrides: Hydra hands them to the sweeper with the swept ones."""
    return [f"results_dir={tmp_path}", "name=s", *TINY]


def test_the_sweeper_writes_the_plan_before_the_first_job_and_one_line_as_each_job_ends(tmp_path, make_cfg, caplog):
    make_cfg()  # enters the config dir
    statuses = {"rnn": "complete", "gru": "diverged", "lstm": "failed"}
    launcher = RecordingLauncher(statuses)
    sweeper = _grid_sweeper(tmp_path, launcher)
    caplog.set_level("INFO")
    with pytest.raises(SweepFailed, match="2 of 6 jobs not complete"):
        sweeper.sweep([*_fixed(tmp_path), "model=rnn,gru,lstm", "batch_size=2,4"])
    plan = launcher.plans[0]
    assert len(plan["points"]) == 6
    assert {p["phase"] for p in plan["points"]} == {"grid"}
    for p in plan["points"]:
        folder = tmp_path / "s" / p["folder"]
        assert folder.parent == tmp_path / "s"
        assert json.loads((folder / record.RUN_FILE).read_text())["signature"] == p["signature"]
        assert any(o.startswith("batch_size=") for o in p["overrides"]) and p["cost"] > 0
    lines = [r.getMessage() for r in caplog.records if " done (" in r.getMessage()]
    parsed = [LINE.match(ln) for ln in lines]
    assert all(parsed), lines
    assert [int(m.group(1)) for m in parsed] == [1, 2, 3, 4, 5, 6]
    assert all(int(m.group(2)) == 6 for m in parsed)
    assert all(sum(int(x) for x in m.groups()[2:5]) == int(m.group(1)) for m in parsed)
    assert parsed[-1].groups()[2:] == ("2", "2", "2", "00:00:00")

    # a rerun: the complete and diverged points count as done from the start; only the failed ones run again
    launcher2 = RecordingLauncher({**statuses, "lstm": "complete"})
    caplog.clear()
    _grid_sweeper(tmp_path, launcher2).sweep([*_fixed(tmp_path), "model=rnn,gru,lstm", "batch_size=2,4"])
    lines = [r.getMessage() for r in caplog.records if " done (" in r.getMessage()]
    assert [LINE.match(ln).groups()[:5] for ln in lines] == [("5", "6", "3", "2", "0"), ("6", "6", "4", "2", "0")]


# --------------------------------------------------------------------------------------- python -m sweep.status
def _plan(sweep_dir: Path, names: list[str]) -> None:
    points = [{"folder": n, "overrides": [f"x={n}"], "signature": f"sig-{n}", "phase": "grid", "ttl_s": 60}
              for n in names]  # fmt: skip
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record.write_json(sweep_dir / record.SWEEP_PLAN_FILE, {"points": points})


def test_status_prints_every_planned_point_against_its_record_and_the_totals(tmp_path, capsys):
    names = ["done", "div", "bad", "held", "retry", "stale", "none"]
    _plan(tmp_path, names)
    _write_record(tmp_path / "done", "sig-done", record.COMPLETE)
    _write_record(tmp_path / "div", "sig-div", record.DIVERGED)
    _write_record(tmp_path / "bad", "sig-bad", record.FAILED)
    (tmp_path / "held").mkdir()
    lease.acquire(tmp_path / "held", 60)  # a job running on another machine: its live lease
    _write_record(tmp_path / "retry", "sig-retry", record.FAILED)
    lease.acquire(tmp_path / "retry", 60)  # a failed point being run again
    _write_record(tmp_path / "stale", "another config", record.COMPLETE)  # a rerun replaces it: missing
    main([str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    status = {ln.split()[-1] if "lease:" not in ln else ln.split()[2]: ln.split()[1] for ln in out[:-1]}
    assert status == {"done": "complete", "div": "diverged", "bad": "failed", "held": "running",
                      "retry": "running", "stale": "missing", "none": "missing"}  # fmt: skip
    assert out[-1] == "grid: 7 points: 1 complete, 1 diverged, 1 failed, 2 running, 2 missing"
    rows = {r["folder"]: r for r in sweep_status(tmp_path)}
    assert rows["held"]["holder"] and rows["none"]["holder"] is None


def test_status_shows_the_lr_search_phase_apart_and_the_totals_alone(tmp_path, capsys):
    points = [{"folder": f"lr_search/{i}", "overrides": [], "signature": f"s{i}", "phase": "lr_search"} for i in "ab"]
    points.append({"folder": "g", "overrides": [], "signature": "sg", "phase": "grid"})
    record.write_json(tmp_path / record.SWEEP_PLAN_FILE, {"points": points})
    _write_record(tmp_path / "lr_search" / "a", "sa", record.COMPLETE)
    main([str(tmp_path), "--totals"])
    assert capsys.readouterr().out.splitlines() == [
        "lr_search: 2 points: 1 complete, 0 failed, 1 missing",
        "grid: 1 point: 0 complete, 0 failed, 1 missing",
        "all: 3 points: 1 complete, 0 failed, 2 missing",
    ]


@pytest.mark.parametrize("case", ["no folder", "no plan", "bad plan"])
def test_status_of_a_folder_that_is_not_a_sweep_is_one_line_and_exit_2(tmp_path, case):
    import subprocess
    import sys

    target = tmp_path / "results"
    if case != "no folder":
        (target / "claim").mkdir(parents=True)
    if case == "no plan":
        (target / "claim" / record.SWEEP_PLAN_FILE).write_text('{"points": []}')  # a sweep one level down
    if case == "bad plan":
        target = target / "claim"
        (target / record.SWEEP_PLAN_FILE).write_text('{"points": [{"folder": "x"}]')
    proc = subprocess.run([sys.executable, "-m", "sweep.status", str(target)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and str(target) in lines[0], proc.stderr
    if case == "no plan":
        assert "no sweep_plan.json" in lines[0] and str(target / "claim") in lines[0]  # names the sweep inside


# ---------------------------------------------------------------------------------------------------- dry run
def _tree(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


def test_dry_run_prints_the_points_how_many_are_complete_and_jobs_x_threads_and_writes_nothing(tmp_path):
    results = tmp_path / "results"
    first = run_cli("-m", *TINY, "model=rnn", "batch_size=2", f"results_dir={results}", "name=d")
    assert first.returncode == 0, first.stderr[-2000:]
    before = _tree(tmp_path)
    grid = ["model=rnn,gru", "batch_size=2,4", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    proc = run_cli("-m", *TINY, *grid, f"results_dir={results}", "name=d", "hydra.sweeper.dry_run=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _tree(tmp_path) == before  # nothing written, nothing touched
    out = proc.stdout.splitlines()
    points = sorted(ln.strip() for ln in out if ln.startswith("  "))
    assert points == sorted([
        "complete  model=rnn batch_size=2", "to run    model=rnn batch_size=4",
        "to run    model=gru batch_size=2", "to run    model=gru batch_size=4",
    ])  # fmt: skip
    summary = out[-1]
    assert summary.startswith("4 points: 1 already complete, 3 to run; 2 jobs at once x ")
    assert summary.endswith("(JoblibLauncher)")


def test_dry_run_into_a_new_results_dir_creates_nothing(tmp_path):
    results = tmp_path / "new" / "results"
    proc = run_cli("-m", *TINY, "model=rnn,gru", f"results_dir={results}", "hydra.sweeper.dry_run=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "new").exists()
    cores = usable_cpus()  # the default launcher (forkserver) runs one job per usable CPU, one thread each
    jobs = f"{cores} job{'s' if cores > 1 else ''} at once x 1 thread each (ForkserverLauncher)"
    assert f"2 points: 0 already complete, 2 to run; {jobs}" in proc.stdout


def test_dry_run_of_a_tuned_grid_hands_nothing_to_the_tuner_and_writes_nothing(tmp_path):
    results = tmp_path / "results"
    grid = ["experiment=tune", "model=lstm", "batch_size=1,4", "num_steps=16", "seed=0"]
    proc = run_cli("-m", *TINY, *grid, f"results_dir={results}", "hydra.sweeper.dry_run=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not results.exists()  # no study storage, no folders
    out = proc.stdout.splitlines()
    assert any(ln.startswith("tuning first: optim.lr searched in every cell") for ln in out), out
    assert out[-1].startswith("2 points: how many are complete is known after the phases above;")
