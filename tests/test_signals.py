"""Clean stops (sweep/stop.py): SIGTERM, and SIGINT in a single run, checkpoint at the next update boundary, release
the lease, say so in one line and exit 128 + signal; a rerun resumes and ends bit-identical to an uninterrupted
run. Also: a SIGKILL'd run resumes at once (its lease names a process that is gone), a sweep's jobs stop when
the sweep is killed, submitit's preemption signal requeues a job that checkpointed first, and an interrupted
analysis leaves the previous report whole (analysis/_atomic_dir.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from sweep import checkpoint, lease, stop
from tests.conftest import REPO, TINY, processes_with, run_cli, tagged_env

# Long enough to be stopped mid-run (a few seconds here), small enough to rerun whole in a test.
RUN = [*TINY, "budget.amount=500", "threads=1", "checkpoint.every_s=0.2"]


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as in a terminal, also when CI runs pytest in the background


def _popen(args: list[str], tag: str, out: Path) -> subprocess.Popen:
    # output to files: a fork server or a job left behind would hold a pipe open and hide the sweep's own exit
    return subprocess.Popen(
        [sys.executable, "-m", "sweep", *args], cwd=REPO, env=tagged_env(tag),
        stdout=open(out.with_suffix(".out"), "w"), stderr=open(out.with_suffix(".err"), "w"),
        preexec_fn=_sigint_default,
    )  # fmt: skip


def _wait_for(what: Callable[[], object], proc: subprocess.Popen | None = None, timeout: float = 120) -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = what()
        if found:
            return found
        assert proc is None or proc.poll() is None, f"exited {proc.returncode} before it was signalled"
        time.sleep(0.02)
    raise AssertionError("timed out")


def _training(results: Path) -> list[Path]:
    """Run folders whose job has saved a checkpoint and holds its lease: stopped there, it is truly mid-run."""
    return [p.parent for p in results.rglob(checkpoint.CHECKPOINT_FILE) if (p.parent / lease.LEASE_FILE).exists()]


def _losses(results: Path) -> dict[str, list[float]]:
    return {p.parent.name: pd.read_parquet(p)["loss"].tolist() for p in sorted(results.rglob("steps.parquet"))}


def _assert_steps_whole(results: Path) -> None:
    for p in results.rglob("steps.parquet"):
        steps = pd.read_parquet(p)["step"].tolist()
        assert steps == list(range(steps[0], steps[0] + len(steps))), p  # unique, contiguous: none trained twice


def _leftovers(results: Path) -> list[Path]:
    return [p for p in results.rglob("*") if p.name.startswith((".lease-takeover-", lease.LEASE_FILE))
            or ".tmp-" in p.name or ".new-" in p.name]  # fmt: skip


# ------------------------------------------------------------------------------------- stop.handling, fast
def test_a_signal_sets_the_flag_once_and_the_handlers_are_restored(monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    with stop.handling():
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # a second signal: the first decides
        assert stop.requested and stop.signal_number == signal.SIGTERM
        stop.settle()
    assert signal.getsignal(signal.SIGTERM) == before
    stop.reset()


def test_a_loop_that_never_reaches_a_boundary_is_stopped_after_the_grace(monkeypatch):
    monkeypatch.setattr(stop, "GRACE_S", 0.2)
    t0 = time.monotonic()
    with pytest.raises(stop.Stopped) as info, stop.handling():
        os.kill(os.getpid(), signal.SIGTERM)
        while time.monotonic() - t0 < 10:  # busy, never reading stop.requested
            pass
    assert info.value.signum == signal.SIGTERM and info.value.update == -1
    assert time.monotonic() - t0 < 2
    stop.reset()


def test_a_schedulers_handler_is_called_once_the_stop_is_handled():
    """submitit's handler for its preemption signal requeues and exits: it must run after the checkpoint."""
    calls: list[tuple[int, bool]] = []

    def scheduler(signum, frame):
        calls.append((signum, stop.requested))

    previous = signal.signal(signal.SIGUSR2, scheduler)
    try:
        with pytest.raises(stop.Stopped), stop.handling():
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop.requested and calls == []  # not yet: the loop saves its checkpoint first
            raise stop.Stopped(stop.signal_number, 7)
        assert calls == [(signal.SIGUSR2, True)]
        assert signal.getsignal(signal.SIGUSR2) is scheduler
    finally:
        signal.signal(signal.SIGUSR2, previous)
        stop.reset()


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a job started in the background
    try:
        with stop.handling():
            os.kill(os.getpid(), signal.SIGINT)
            assert not stop.requested
    finally:
        signal.signal(signal.SIGINT, previous)


def test_run_job_stopped_mid_run_releases_its_lease_and_resumes_bit_identical(tmp_path, make_cfg):
    from sweep.run import run_job

    cfg = make_cfg(*RUN, f"results_dir={tmp_path}")
    reference = run_job(cfg, tmp_path / "reference")
    out = tmp_path / "stopped"
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    with pytest.raises(stop.Stopped) as info:
        run_job(cfg, out)
    timer.join()
    assert info.value.update > 0 and "rerun the same command to resume" in info.value.line
    assert not (out / lease.LEASE_FILE).exists() and not (out / "run.json").exists()
    assert (out / checkpoint.CHECKPOINT_FILE).exists()
    assert signal.getsignal(signal.SIGTERM) is not stop._on_signal  # handlers back as they were
    stop.reset()
    rec = run_job(cfg, out)
    assert rec["status"] == "complete" and rec["summary"]["updates"] == reference["summary"]["updates"]
    a, b = (pd.read_parquet(d / "steps.parquet") for d in (tmp_path / "reference", out))
    assert a["loss"].tolist() == b["loss"].tolist() and a["step"].tolist() == b["step"].tolist()


# ------------------------------------------------------------------------------------------- single runs
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_single_run_stops_cleanly_and_a_rerun_ends_bit_identical(tmp_path, signum):
    reference = run_cli(*RUN, f"results_dir={tmp_path / 'reference'}", timeout=300)
    assert reference.returncode == 0, reference.stderr
    results = tmp_path / "results"
    tag = uuid.uuid4().hex
    proc = _popen([*RUN, f"results_dir={results}"], tag, tmp_path / "run")
    (folder,) = _wait_for(lambda: _training(results), proc)
    t0 = time.monotonic()
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 128 + signum
    assert time.monotonic() - t0 < 5
    lines = [ln for ln in (tmp_path / "run.err").read_text().splitlines() if ln.strip()]
    assert len(lines) == 1 and re.fullmatch(
        rf"stopped by {signal.Signals(signum).name} at update (\d+): checkpoint in {re.escape(str(folder))}, lease "
        r"released; rerun the same command to resume",
        lines[0],
    ), lines
    assert not (folder / lease.LEASE_FILE).exists() and not (folder / "run.json").exists()
    stopped_at = int(re.search(r"at update (\d+)", lines[0]).group(1))
    assert torch_load_updates(folder) == stopped_at  # the checkpoint is the one saved at the stop

    rerun = run_cli(*RUN, f"results_dir={results}", timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"at update {stopped_at}" in rerun.stdout  # resumed where it stopped, not from scratch
    assert _losses(results) == _losses(tmp_path / "reference") != {}
    _assert_steps_whole(results)
    assert _leftovers(results) == [] and not (folder / checkpoint.CHECKPOINT_FILE).exists()


def torch_load_updates(folder: Path) -> int:
    import torch

    return int(torch.load(folder / checkpoint.CHECKPOINT_FILE, weights_only=False)["updates"])


@pytest.mark.slow
def test_a_sigkilled_single_run_is_resumed_at_once_by_an_immediate_rerun(tmp_path):
    """Its lease has minutes to live (lease.ttl_s=600), but its holder is gone: the rerun takes it over at once."""
    args = [*RUN, "lease.ttl_s=600"]
    reference = run_cli(*args, f"results_dir={tmp_path / 'reference'}", timeout=300)
    assert reference.returncode == 0, reference.stderr
    results = tmp_path / "results"
    proc = _popen([*args, f"results_dir={results}"], uuid.uuid4().hex, tmp_path / "run")
    (folder,) = _wait_for(lambda: _training(results), proc)
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    assert lease.read(folder, 600)["expires_at"] > time.time() + 500  # left behind, far from expiring
    t0 = time.monotonic()
    rerun = run_cli(*args, f"results_dir={results}", timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr
    assert "is no longer running" in rerun.stdout and "being trained" not in rerun.stdout
    resumed = re.search(r"resuming \S+ at update (\d+)", rerun.stdout)
    assert resumed and int(resumed.group(1)) > 0, rerun.stdout[-3000:]
    assert time.monotonic() - t0 < 120
    assert _losses(results) == _losses(tmp_path / "reference") != {}
    _assert_steps_whole(results)
    assert _leftovers(results) == []


# ----------------------------------------------------------------------------------------------- sweeps
SWEEP = ["-m", "seed=0,1", "hydra.launcher.n_jobs=2", "name=s", *RUN]


@pytest.mark.slow
def test_sigterm_stops_every_running_job_of_a_sweep_and_a_rerun_ends_bit_identical(tmp_path):
    reference = run_cli(*SWEEP, f"results_dir={tmp_path / 'reference'}", timeout=300)
    assert reference.returncode == 0, reference.stderr
    results = tmp_path / "results"
    tag = uuid.uuid4().hex
    proc = _popen([*SWEEP, f"results_dir={results}"], tag, tmp_path / "sweep")
    _wait_for(lambda: len(_training(results)) == 2, proc)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # the sweep alone: it forwards the signal to its jobs
    assert proc.wait(timeout=60) == 143
    assert time.monotonic() - t0 < 5
    lines = [ln for ln in (tmp_path / "sweep.err").read_text().splitlines() if ln.strip()]
    assert lines == ["interrupted: 0 of 2 points complete, 0 not started (rerun the same command to resume)"]
    out = (tmp_path / "sweep.out").read_text()
    assert len(re.findall(r"stopped by SIGTERM at update \d+: checkpoint in", out)) == 2, out[-3000:]
    assert not list(results.rglob(lease.LEASE_FILE)) and len(list(results.rglob(checkpoint.CHECKPOINT_FILE))) == 2
    _wait_for(lambda: processes_with(tag) == [], timeout=10)

    rerun = run_cli(*SWEEP, f"results_dir={results}", timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert len(re.findall(r"resuming \S+ at update [1-9]", rerun.stdout + rerun.stderr)) == 2
    assert _losses(results) == _losses(tmp_path / "reference") and len(_losses(results)) == 2
    _assert_steps_whole(results)
    assert _leftovers(results) == []


@pytest.mark.slow
def test_a_sweep_killed_with_sigkill_leaves_no_job_training(tmp_path):
    """kill -9 of the sweep alone: its fork server ends, and each job (told by the kernel, PR_SET_PDEATHSIG)
    saves a checkpoint, releases its lease and exits; nothing trains on unseen."""
    results = tmp_path / "results"
    tag = uuid.uuid4().hex
    args = [*SWEEP, f"results_dir={results}", "budget.amount=100000"]
    proc = _popen(args, tag, tmp_path / "sweep")
    _wait_for(lambda: len(_training(results)) == 2, proc)
    proc.kill()
    proc.wait()
    _wait_for(lambda: processes_with(tag) == [], timeout=15)
    assert not list(results.rglob(lease.LEASE_FILE))
    assert len(list(results.rglob(checkpoint.CHECKPOINT_FILE))) == 2
    assert not list(results.rglob("run.json"))


@pytest.mark.slow
def test_submitit_preemption_checkpoints_requeues_and_resumes(tmp_path):
    """submitit's local executor sends its preemption signal (SIGUSR2) to a job: the job checkpoints at the next
    update, releases its lease, then submitit's own handler requeues it; the requeued job resumes there."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = ["-m", "seed=0", "name=p", "hydra/launcher=submitit_local", *RUN, "budget.amount=1500"]
    reference = run_cli(*args, f"results_dir={tmp_path / 'reference'}", timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]
    results = tmp_path / "results"
    proc = _popen([*args, f"results_dir={results}"], uuid.uuid4().hex, tmp_path / "sweep")
    (folder,) = _wait_for(lambda: _training(results), proc, timeout=180)
    holder = lease.read(folder, 120)
    os.kill(int(holder["owner"].split(":")[1]), signal.SIGUSR2)
    assert proc.wait(timeout=300) == 0, (tmp_path / "sweep.err").read_text()[-3000:]
    logs = "\n".join(p.read_text() for p in results.rglob("*.log")) + "\n".join(
        p.read_text(errors="replace") for p in results.rglob(".submitit/**/*_log.*"))  # fmt: skip
    stopped = re.search(r"stopped by SIGUSR2 at update (\d+): checkpoint in", logs)
    assert stopped, logs[-3000:]
    assert "Requeued job" in logs, logs[-3000:]
    assert f"at update {stopped.group(1)}" in logs  # the requeued job resumed from the stop's checkpoint
    assert json.loads((folder / "run.json").read_text())["status"] == "complete"
    assert _losses(results) == _losses(tmp_path / "reference") != {}
    _assert_steps_whole(results)


# ------------------------------------------------------------------------------------------------ report
def _previous_report(out: Path) -> dict[str, bytes]:
    out.mkdir(parents=True)
    (out / "figures").mkdir()
    files = {"index.html": b"<html>old</html>", "report.md": b"# old", "figures/a.png": b"png"}
    for name, data in files.items():
        (out / name).write_bytes(data)
    return files


def _tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt], ids=["error", "interrupt"])
def test_a_report_writer_that_raises_half_way_leaves_the_previous_report_and_no_temp_folder(tmp_path, monkeypatch,
                                                                                           error):  # fmt: skip
    from analysis.__main__ import main

    results = tmp_path / "results"
    old = _previous_report(results / "report")

    def half_way(results_dir, out, thresholds):
        (Path(out) / "runs.csv").write_text("new")
        (Path(out) / "index.html").write_text("<html>half</html>")
        raise error("killed half-way")

    monkeypatch.setattr("analysis.__main__.build_report", half_way)
    with pytest.raises(error):
        main([str(results)])
    assert _tree(results / "report") == old
    assert [p.name for p in results.iterdir()] == ["report"]


@pytest.mark.slow
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt], ids=["error", "interrupt"])
def test_an_analysis_that_fails_half_way_leaves_the_previous_report_whole(tmp_path, monkeypatch, error):
    from analysis import synthetic
    from analysis.__main__ import main

    results = tmp_path / "results"
    synthetic.write_results(results, synthetic.runs_table(cells=("gru",), batch_sizes=(1, 4), num_steps=(4,),
                                                          seeds=(0, 1, 2)), updates=20, profiles=False)  # fmt: skip
    old = _previous_report(results / "report")

    def half_way(blocks, title):  # the tables and figures are written by then, index.html is not
        raise error("killed half-way")

    monkeypatch.setattr("analysis.report.to_html", half_way)
    with pytest.raises(error):
        main([str(results), "-q"])
    assert _tree(results / "report") == old
    assert sorted(p.name for p in results.iterdir() if p.name.startswith(".")) == []  # no temp folder left

    monkeypatch.undo()
    assert main([str(results), "-q"]) == 0  # and a whole run replaces it as a whole
    new = _tree(results / "report")
    assert "index.html" in new and new["index.html"] != old["index.html"] and "figures/a.png" not in new
    assert sorted(p.name for p in results.iterdir() if p.name.startswith(".")) == []


def test_a_temp_folder_of_a_killed_analysis_is_cleaned_up_by_the_next(tmp_path):
    from analysis._atomic_dir import replacing

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f".report.new-{dead.stdout.strip()}-abc"
    left.mkdir()
    (left / "index.html").write_text("half")
    with replacing(tmp_path / "report") as tmp:
        (tmp / "index.html").write_text("whole")
    assert not left.exists() and (tmp_path / "report" / "index.html").read_text() == "whole"
