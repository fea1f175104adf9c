"""Mid-run checkpoints (sweep/checkpoint.py): a run killed at any update and started again ends bit for bit as the
uninterrupted run does (CPU; wall-clock fields aside)."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import sweep.stop
import sweep.train
from sweep import checkpoint, record
from sweep.model import token_loss
from sweep.run import _measure_fn
from sweep.train import TrainResult, train
from tests.conftest import REPO, TINY

WALL = ("time_s", "train_seconds", "tokens_per_s", "measure_seconds")


def _tiny(*overrides: str) -> list[str]:
    """TINY with some of its values replaced."""
    keys = {o.split("=", 1)[0] for o in overrides}
    return [*(o for o in TINY if o.split("=", 1)[0] not in keys), *overrides]


# 30 updates; evaluations after updates 6, 12, 18, 24 and 30; measures after 10, 20 and 30
BASE = _tiny("batch_size=4", "eval.points=5", "budget.amount=30", "measure.noise_scale=true")
CASES = {
    "echo": [*BASE, "model=lstm", "measure.enabled=true", "measure.checkpoints=2"],
    "lags": [*BASE, "task=lags", "model=gru", "measure.enabled=true", "measure.checkpoints=2"],
}
# budget=plateau: evaluations at 4, 6, 8, 11, 16, 23 updates, the rule stops the run at 23 (of a cap of 2000)
PLATEAU = [
    "budget=plateau",
    "budget.amount=2000",
    "eval.first=4",
    "eval.per_doubling=2",
    "budget.patience=3",
    "budget.min_delta=0.01",
    "budget.min_updates=0",
]  # the rule as this test counts it, not the preset's
CASES["plateau"] = [*_tiny("batch_size=4", *PLATEAU, "measure.noise_scale=true"), "model=lstm", "measure.enabled=true"]
PLAIN = [o.replace("measure.enabled=true", "measure.enabled=false") for o in CASES["echo"]]


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing on the way up handles it."""


def _strip(obj: Any) -> Any:
    """The result less its wall-clock fields, at any depth (measure_seconds sits inside measure_checkpoints)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in WALL}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _frames(steps: pd.DataFrame, evals: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return tuple(f.drop(columns=[c for c in WALL if c in f.columns]) for f in (steps, evals))  # type: ignore[return-value]


def assert_same(a: TrainResult, b: TrainResult) -> None:
    for fa, fb in zip(_frames(a.steps, a.evals), _frames(b.steps, b.evals), strict=True):
        pd.testing.assert_frame_equal(fa, fb, check_exact=True)
    assert a.status == b.status
    assert _strip(a.summary) == _strip(b.summary)
    prof_a, prof_b = (p.drop(columns=[c for c in WALL if c in p.columns]) for p in (a.profiles, b.profiles))
    pd.testing.assert_frame_equal(prof_a, prof_b, check_exact=True)


def _count_updates(monkeypatch, kill_after: int | None = None) -> list[int]:
    """Count training updates (each calls sweep.train.token_loss once); raise Killed in update kill_after + 1.
    The end-of-run jitter (sweep.train.erratic_end: updates and losses on a copy) is not counted."""
    calls = [0]
    counting_on = [True]
    real, real_erratic = token_loss, sweep.train.erratic_end

    def counting(logits, targets):
        if counting_on[0]:
            if kill_after is not None and calls[0] >= kill_after:
                raise Killed
            calls[0] += 1
        return real(logits, targets)

    def erratic(*args, **kwargs):
        counting_on[0] = False
        try:
            return real_erratic(*args, **kwargs)
        finally:
            counting_on[0] = True

    monkeypatch.setattr(sweep.train, "token_loss", counting)
    monkeypatch.setattr(sweep.train, "erratic_end", erratic)
    return calls


_REFERENCE: dict[str, TrainResult] = {}


def _reference(make_cfg, case: str) -> TrainResult:
    if case not in _REFERENCE:
        cfg = make_cfg(*CASES[case], "checkpoint.every_s=0")
        _REFERENCE[case] = train(cfg, measure_fn=_measure_fn(cfg))
    return _REFERENCE[case]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kills", [[1], [6], [12], [13, 20], [29], [3, 9, 17, 25]])
def test_a_run_killed_and_restarted_ends_as_the_uninterrupted_run(make_cfg, monkeypatch, tmp_path, case, kills):
    reference = _reference(make_cfg, case)
    kills = [k for k in kills if k < reference.summary["updates"]] or [reference.summary["updates"] - 1]
    cfg = make_cfg(*CASES[case], "checkpoint.every_s=1e-9")  # a checkpoint after every update
    done = 0
    for kill in kills:  # kill = the update (counted over the whole run) that is interrupted part-way
        with monkeypatch.context() as m:
            calls = _count_updates(m, kill_after=kill - done)
            with pytest.raises(Killed):
                train(cfg, measure_fn=_measure_fn(cfg), checkpoint_dir=tmp_path)
        assert (tmp_path / checkpoint.CHECKPOINT_FILE).is_file()
        assert calls[0] == kill - done  # resumed where the previous call's last checkpoint left it
        done = kill
    with monkeypatch.context() as m:
        calls = _count_updates(m)
        resumed = train(cfg, measure_fn=_measure_fn(cfg), checkpoint_dir=tmp_path)
    assert calls[0] == reference.summary["updates"] - kills[-1]  # it went on from the last update before the kill
    assert_same(resumed, reference)
    assert resumed.summary["train_seconds"] > 0
    if case == "plateau":  # the rule read the evaluations before the kill from the checkpoint
        assert resumed.summary["stop_reason"] == "plateau" and resumed.summary["updates"] == 23


def test_a_stop_request_saves_a_checkpoint_and_a_rerun_ends_as_the_uninterrupted_run(make_cfg, monkeypatch, tmp_path):
    reference = _reference(make_cfg, "echo")
    cfg = make_cfg(*CASES["echo"], "checkpoint.every_s=3600")  # the timer never fires: the stop saves regardless

    def request_at_12(update: int, metrics: dict) -> bool:
        if update == 12:  # as the signal handler would (sweep/stop.py), between two updates
            monkeypatch.setattr(sweep.stop, "requested", True)
            monkeypatch.setattr(sweep.stop, "signal_number", 15)
        return False

    with pytest.raises(sweep.stop.Stopped) as stopped:
        train(cfg, measure_fn=_measure_fn(cfg), checkpoint_dir=tmp_path, on_eval=request_at_12)
    assert (stopped.value.signum, stopped.value.update) == (15, 12)
    saved = checkpoint.load(tmp_path, record.signature(cfg))
    assert saved is not None and saved["updates"] == 12 and [e["step"] for e in saved["evals"]] == [6, 12]
    monkeypatch.setattr(sweep.stop, "requested", False)
    calls = _count_updates(monkeypatch)
    resumed = train(cfg, measure_fn=_measure_fn(cfg), checkpoint_dir=tmp_path)
    assert calls[0] == 30 - 12
    assert_same(resumed, reference)


def test_a_stop_request_without_checkpointing_stops_and_saves_nothing(make_cfg, monkeypatch, tmp_path):
    monkeypatch.setattr(sweep.stop, "requested", True)  # already set before the first update
    for cfg, folder in ((make_cfg(*PLAIN, "checkpoint.every_s=0"), tmp_path), (make_cfg(*PLAIN), None)):
        with pytest.raises(sweep.stop.Stopped) as stopped:
            train(cfg, checkpoint_dir=folder)
        assert stopped.value.update == 1
    assert not (tmp_path / checkpoint.CHECKPOINT_FILE).exists()


def test_random_draws_during_training_go_on_as_in_the_uninterrupted_run(make_cfg, monkeypatch, tmp_path):
    """No update draws random numbers today; one that did (dropout) would resume its torch, numpy and Python
    streams where the checkpoint left them."""
    import random as pyrandom

    import numpy as np
    import torch

    def drawing(draws: list, kill_after: int | None = None):
        def loss(logits, targets):
            if kill_after is not None and len(draws) >= kill_after:
                raise Killed
            draws.append((torch.rand(1).item(), np.random.rand(), pyrandom.random()))
            return token_loss(logits, targets)

        return loss

    plain = [*PLAIN, "measure.jitter_updates=0"]  # the training loop's draws only
    cfg = make_cfg(*plain, "checkpoint.every_s=1e-9")
    want: list = []
    monkeypatch.setattr(sweep.train, "token_loss", drawing(want))
    train(make_cfg(*plain))
    first: list = []
    monkeypatch.setattr(sweep.train, "token_loss", drawing(first, kill_after=17))
    with pytest.raises(Killed):
        train(cfg, checkpoint_dir=tmp_path)
    rest: list = []
    monkeypatch.setattr(sweep.train, "token_loss", drawing(rest))
    train(cfg, checkpoint_dir=tmp_path)
    assert first + rest == want and len(rest) == 13


def test_checkpoints_are_only_written_every_every_s(make_cfg, monkeypatch, tmp_path):
    cfg = make_cfg(*_tiny("batch_size=4", "budget.amount=30", "checkpoint.every_s=3600"))
    saves = []
    real_save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda *a, **k: (saves.append(1), real_save(*a, **k)))
    train(cfg, checkpoint_dir=tmp_path)
    assert saves == []
    off = make_cfg(*_tiny("batch_size=4", "budget.amount=30", "checkpoint.every_s=0"))
    train(off, checkpoint_dir=tmp_path)
    assert saves == [] and not (tmp_path / checkpoint.CHECKPOINT_FILE).exists()
    every = make_cfg(*_tiny("batch_size=4", "budget.amount=30", "checkpoint.every_s=1e-9"))
    train(every, checkpoint_dir=tmp_path)
    assert len(saves) == 29  # between every two updates, never after the last one


def _killed_run(make_cfg, monkeypatch, folder: Path, kill: int, *extra: str):
    cfg = make_cfg(*PLAIN, "checkpoint.every_s=1e-9", *extra)
    with monkeypatch.context() as m:
        _count_updates(m, kill_after=kill)
        with pytest.raises(Killed):
            train(cfg, checkpoint_dir=folder)
    return cfg


def test_a_checkpoint_of_another_config_is_ignored(make_cfg, monkeypatch, tmp_path):
    _killed_run(make_cfg, monkeypatch, tmp_path, 10, "optim.lr=0.03")
    cfg = make_cfg(*PLAIN, "checkpoint.every_s=1e-9")
    calls = _count_updates(monkeypatch)
    result = train(cfg, checkpoint_dir=tmp_path)
    assert calls[0] == 30  # from scratch
    assert_same(result, train(make_cfg(*PLAIN)))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_an_unreadable_checkpoint_is_ignored_with_a_warning(make_cfg, monkeypatch, tmp_path, caplog, damage):
    cfg = _killed_run(make_cfg, monkeypatch, tmp_path, 10)
    path = tmp_path / checkpoint.CHECKPOINT_FILE
    blob = path.read_bytes()
    path.write_bytes({"truncate": blob[: len(blob) // 2], "garbage": b"not a checkpoint" * 50, "empty": b""}[damage])
    calls = _count_updates(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="sweep.checkpoint"):
        result = train(cfg, checkpoint_dir=tmp_path)
    assert calls[0] == 30
    assert any("unreadable checkpoint" in r.message for r in caplog.records)
    assert_same(result, train(make_cfg(*PLAIN)))


def test_remove_deletes_the_checkpoint_and_leftover_temp_files(tmp_path):
    (tmp_path / checkpoint.CHECKPOINT_FILE).write_bytes(b"x")
    (tmp_path / f".{checkpoint.CHECKPOINT_FILE}.tmp-123").write_bytes(b"x")
    (tmp_path / "run.json").write_text("{}")
    checkpoint.remove(tmp_path)
    checkpoint.remove(tmp_path)  # nothing there: no error
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_clean_stale_keeps_the_checkpoint(tmp_path):
    from sweep import record

    (tmp_path / checkpoint.CHECKPOINT_FILE).write_bytes(b"x")
    record.clean_stale(tmp_path)
    assert (tmp_path / checkpoint.CHECKPOINT_FILE).exists()


# --- end to end: `python -m sweep` killed with SIGKILL at random moments, then started again ---------------------

E2E = _tiny("budget.amount=1500", "eval.points=6", "lease.ttl_s=0.6")  # a killed holder's lease expires soon


def _start(results: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "sweep", *E2E, f"results_dir={results}", *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill takes every process of the run
    )


def _run_folder(results: Path) -> Path:
    return next(results.rglob("run.json")).parent


def _load(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    import json

    steps, evals = _frames(pd.read_parquet(folder / "steps.parquet"), pd.read_parquet(folder / "evals.parquet"))
    rec = json.loads((folder / "run.json").read_text())
    return steps, evals, {"status": rec["status"], "summary": _strip(rec["summary"])}


@pytest.mark.slow
def test_sweep_killed_with_sigkill_at_random_moments_resumes_bit_for_bit(tmp_path):
    rng = random.Random(20261130)
    clean = _start(tmp_path / "clean", "checkpoint.every_s=0")
    _, err = clean.communicate(timeout=300)
    assert clean.returncode == 0, err

    results = tmp_path / "killed"
    resumed = 0
    for _ in range(3):
        proc = _start(results, "checkpoint.every_s=0.2")
        deadline = time.monotonic() + 120
        while not list(results.rglob(checkpoint.CHECKPOINT_FILE)) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))  # somewhere in training, evaluation, a save or the record's writing
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        if proc.returncode == 0:
            break
        resumed += 1
        time.sleep(0.7)  # past the killed holder's lease
    proc = _start(results, "checkpoint.every_s=0.2")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert resumed >= 2, "the run finished before it could be killed twice: raise budget.amount"

    folder = _run_folder(results)
    if "skip" not in err:  # (a kill between run.json and the checkpoint's removal leaves it to a skipping rerun)
        assert not (folder / checkpoint.CHECKPOINT_FILE).exists()  # removed once the record was whole
    got, want = _load(folder), _load(_run_folder(tmp_path / "clean"))
    for a, b in zip(got[:2], want[:2], strict=True):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert got[2] == want[2]
