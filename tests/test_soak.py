"""Soak: three sweep processes on one 24-point grid, killed (SIGKILL of the sweep alone or of its whole process
group, or SIGTERM) at seeded random moments and restarted, for a bounded number of rounds. At the end every point
has exactly one complete record, bit-identical to an uninterrupted sweep's; nothing temporary is left, no process
of theirs runs on, and no point was trained to the end twice (steps unique and contiguous, one completion line)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, processes_with, run_cli, tagged_env

GRID = [
    "-m", "task=echo", "model=rnn,gru,lstm", "seed=0,1,2,3,4,5,6,7", "batch_size=4", "num_steps=8",
    "budget=updates", "budget.amount=300", "task.train_tokens=4096", "task.valid_tokens=1024",
    "model.hidden_size=8", "model.embedding_size=4", "measure.enabled=false", "measure.noise_scale=false",
    "warmup_updates=2", "eval.points=2", "threads=1", "checkpoint.every_s=0.1", "name=soak",
    "lease.ttl_s=600",  # no lease expires during the test: every takeover is of a holder that is gone
]  # fmt: skip
POINTS = 24
ROUNDS = 6
SEED = 20261202


def _losses(root: Path) -> dict[str, list[float]]:
    return {p.parent.name: pd.read_parquet(p)["loss"].tolist() for p in sorted(root.rglob("steps.parquet"))}


@pytest.mark.slow
def test_three_sweeps_killed_and_restarted_at_random_end_with_one_identical_record_per_point(tmp_path):
    t_start = time.monotonic()
    reference = run_cli(*GRID, "hydra.launcher.n_jobs=2", f"results_dir={tmp_path / 'reference'}", timeout=170)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = _losses(tmp_path / "reference")
    assert len(expected) == POINTS

    results, logs = tmp_path / "results", tmp_path / "logs"
    logs.mkdir()
    tag = uuid.uuid4().hex
    args = [sys.executable, "-m", "sweep", *GRID, "hydra.launcher.n_jobs=1", f"results_dir={results}"]
    starts = 0

    def start(slot: int) -> subprocess.Popen:
        nonlocal starts
        starts += 1
        # a session of its own: a SIGKILL of the group takes the sweep, its fork server and its job at once
        with open(logs / f"{slot}-{starts}.log", "w") as out:  # the child keeps its own copy of the file
            return subprocess.Popen(args, cwd=REPO, env=tagged_env(tag), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip

    rng = random.Random(SEED)
    procs = [start(slot) for slot in range(3)]
    kills: list[tuple[str, int | None]] = []
    for _ in range(ROUNDS):
        time.sleep(rng.uniform(1.0, 4.0))
        slot = rng.randrange(3)
        how = rng.choice(["KILL group", "KILL sweep", "TERM sweep"])
        proc = procs[slot]
        if proc.poll() is None:
            if how == "KILL group":
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.send_signal(signal.SIGKILL if how == "KILL sweep" else signal.SIGTERM)
            code = proc.wait(timeout=60)
            kills.append((how, code))
            if how == "TERM sweep":
                assert code in (143, 0), code  # 0: it had finished the grid just before
        procs[slot] = start(slot)
    codes = [p.wait(timeout=max(10.0, 175 - (time.monotonic() - t_start))) for p in procs]
    text = "\n".join(p.read_text() for p in sorted(logs.glob("*.log")))
    assert codes == [0, 0, 0], text[-5000:]
    assert len(kills) >= ROUNDS // 2, kills  # the rounds did hit running sweeps

    records = sorted(results.rglob("run.json"))
    assert len(records) == POINTS
    assert _losses(results) == expected  # every point, bit-identical to the uninterrupted sweep
    for p in results.rglob("steps.parquet"):
        steps = pd.read_parquet(p)["step"].tolist()
        assert steps == list(range(steps[0], steps[0] + 300)), p  # unique, contiguous: no update recorded twice
    for name in expected:  # each point trained to its end once, by one process
        assert len(re.findall(rf"\]\[INFO\] complete {re.escape(name)}: ", text)) == 1, name
    leftovers = [p for p in results.rglob("*") if p.is_file() and (
        p.name in ("lease.json", "checkpoint.pt") or p.name.startswith(".lease-takeover-") or ".tmp-" in p.name
        or ".new-" in p.name)]  # fmt: skip
    assert leftovers == []
    deadline = time.monotonic() + 10
    while processes_with(tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(tag) == []
    assert time.monotonic() - t_start < 180
