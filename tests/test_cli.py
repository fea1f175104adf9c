"""The command line as users meet it: bad input, records on disk, failures, divergence, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, TINY, run_cli

BAD_INPUTS = [
    (["batch_size=0"], "batch_size"),
    (["batch_size=-3"], "batch_size"),
    (["num_steps=0"], "num_steps"),
    (["model=transformer"], "model=transformer: must be one of gru, lstm, rnn"),
    (["task=vision"], "task=vision: must be one of echo, lags, lm, text"),
    (["task.lag=0"], "task.lag"),
    (["task=lags", "task.lags=[]"], "task.lags"),
    (["optim.lr=0"], "optim.lr"),
    (["optim.lr=-0.1"], "optim.lr"),
    (["budget=epochs"], "budget=epochs: must be one of plateau, seconds, tokens, updates"),
    (["budget.amount=0"], "budget.amount"),
    (["batch_size=four"], "batch_size"),
    (["hidden_size=4"], "hidden_size: no such key"),
    (["task=text", "task.path=/nonexistent/corpus.txt"], "task.path"),
    (["task=text", "task.path={empty}"], "task.path"),
    (["task=text", "task.path={short}"], "corpus too short"),
    (["-m", "batch_size=4,0"], "batch_size=0"),
    (["-m", "model=rnn,foo"], "model=foo"),
    (["-m", "task=text", "task.path={short}", "batch_size=1,8"], "corpus too short"),
]


@pytest.mark.parametrize(("args", "expected"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_gives_one_line_a_nonzero_exit_and_no_record(tmp_path, args, expected):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("just five words here\n")
    args = [a.format(empty=tmp_path / "empty.txt", short=tmp_path / "short.txt") for a in args]
    results = tmp_path / "results"
    flags = [a for a in args if a.startswith("-")]
    proc = run_cli(*flags, *TINY, *[a for a in args if a not in flags], f"results_dir={results}")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0]
    assert not results.exists() or not list(results.rglob("*")), list(results.rglob("*"))


def _records(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in root.rglob("run.json")}


def test_a_run_writes_its_record_in_a_folder_named_by_its_overrides(tmp_path):
    proc = run_cli(*TINY, "batch_size=4", "model=gru", f"results_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    folder = next(tmp_path.rglob("run.json")).parent
    assert folder.parent.name == "default"
    assert "batch_size=4" in folder.name and "model=gru" in folder.name
    rec = json.loads((folder / "run.json").read_text())
    assert rec["status"] == "complete"
    assert rec["config"]["batch_size"] == 4 and rec["config"]["model"]["cell"] == "gru"
    assert rec["env"]["torch"] and rec["env"]["threads"] >= 1 and rec["env"]["cpu"]
    summary = rec["summary"]
    for key in ("tokens_per_s", "train_loss", "valid_loss", "updates", "tokens", "train_seconds",
                "grad_norm_max", "grad_norm_p99", "clip_fraction", "lag_accuracy"):  # fmt: skip
        assert summary[key] is not None, key
    assert set(summary["lag_accuracy"]) == {"8"}
    steps = pd.read_parquet(folder / "steps.parquet")
    assert list(steps.columns[:6]) == ["step", "tokens", "time_s", "loss", "grad_norm", "clipped"]
    assert len(steps) == summary["updates"] == 20
    assert steps["time_s"].is_monotonic_increasing
    assert steps["grad_norm_recurrent"].notna().sum() >= 2  # per-group norms every few updates
    evals = pd.read_parquet(folder / "evals.parquet")
    assert len(evals) == 2 and "acc_lag_8" in evals
    assert not list(folder.glob(".*tmp*"))


def test_cli_multirun_from_the_command_line(tmp_path):
    """The README's multirun command works."""
    proc = run_cli(
        "-m",
        "model=rnn,lstm",
        "batch_size=1,4",
        "num_steps=4,8",
        "experiment=smoke",
        "budget.amount=30",  # the preset trains ~10 s a job; the point here is the command line
        f"results_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = _records(tmp_path / "smoke")
    assert len(recs) == 8 and all(r["status"] == "complete" for r in recs.values())
    points = {
        (r["config"]["model"]["cell"], r["config"]["batch_size"], r["config"]["num_steps"]) for r in recs.values()
    }
    assert points == {(c, b, n) for c in ("rnn", "lstm") for b in (1, 4) for n in (4, 8)}
    assert all(r["env"]["parallel_jobs"] == os.cpu_count() and r["env"]["threads"] == 1 for r in recs.values())
    summary = json.loads((tmp_path / "smoke" / "sweep_summary.json").read_text())
    assert summary["counts"] == {"complete": 8}


def test_a_failing_and_a_diverging_job_are_recorded_and_the_others_run(tmp_path):
    env = {**os.environ, "RNN_SWEEP_FAIL_IF": "batch_size=2,"}
    grid = ["-m", "experiment=smoke", "budget.amount=30", "model=rnn", "batch_size=2,4,8", "optim=sgd",
            "optim.lr=1,1e12", "optim.clip=0"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "sweep", *grid, f"results_dir={tmp_path}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "2 of 6 jobs not complete" in proc.stderr and "batch_size=2," in proc.stderr
    recs = _records(tmp_path)
    assert len(recs) == 6
    by_status = {}
    for name, rec in recs.items():
        by_status.setdefault(rec["status"], []).append(name)
    assert all("batch_size=2," in n for n in by_status["failed"]) and len(by_status["failed"]) == 2
    assert "injected failure" in recs[by_status["failed"][0]]["error"]
    assert len(by_status["diverged"]) == 2
    assert all(recs[n]["config"]["optim"]["lr"] == 1e12 for n in by_status["diverged"])
    assert len(by_status["complete"]) == 2
    # the rerun re-does the failed jobs only; with the fault gone, the sweep ends clean
    proc = run_cli(*grid, f"results_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 already complete, 2 to run" in proc.stdout + proc.stderr
    assert sorted(r["status"] for r in _records(tmp_path).values()) == ["complete"] * 3 + ["diverged"] * 3


def test_kill_9_during_a_multirun_then_rerun_gives_one_complete_record_per_point(tmp_path):
    """A sweep killed with kill -9 and rerun ends with one complete record per point (README, Resume)."""
    args = [sys.executable, "-m", "sweep", "-m", "experiment=smoke", "model=rnn,gru,lstm", "batch_size=2,8",
            "num_steps=4,8", "budget.amount=150", f"results_dir={tmp_path}"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(tmp_path.rglob("run.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker processes, mid-write or mid-training
    proc.wait()
    done_before = len(list(tmp_path.rglob("run.json")))
    assert 2 <= done_before < 12, "the kill must land mid-sweep"

    rerun = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    recs = _records(tmp_path / "smoke")
    assert len(recs) == 12 and all(r["status"] == "complete" for r in recs.values())
    assert len({r["signature"] for r in recs.values()}) == 12
    assert not list(tmp_path.rglob(".*.tmp-*")), "no temp file survives the rerun"
    for folder in (tmp_path / "smoke").iterdir():
        if folder.is_dir():
            assert len(pd.read_parquet(folder / "steps.parquet")) == 150
    # and a third run has nothing left to do
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "12 already complete, 0 to run" in again.stdout + again.stderr


def test_a_changed_config_reruns_a_point_whose_folder_exists(tmp_path):
    base = [*TINY, "batch_size=4", f"results_dir={tmp_path}"]
    assert run_cli(*base).returncode == 0
    rec_path = next(tmp_path.rglob("run.json"))
    first = json.loads(rec_path.read_text())
    rec_path.write_text(json.dumps({**first, "signature": "0000"}))  # as if the defaults had changed since
    proc = run_cli(*base)
    assert proc.returncode == 0
    assert json.loads(rec_path.read_text())["signature"] == first["signature"]
    proc = run_cli(*base)
    assert "skip" in proc.stderr + proc.stdout
