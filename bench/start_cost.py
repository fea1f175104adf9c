"""The fixed cost of a sweep, this checkout against a baseline commit, interleaved in one bench process.

fixed cost = wall-clock of `python -m sweep -m experiment=smoke budget.amount=<small>` - (sum of the jobs'
train_seconds) / workers: interpreter start-up, imports, Hydra compose and planning, worker spawn and imports,
each job's untimed work (data, model, evaluation, measures, record writes), results back, shutdown.

The baseline is a `git worktree` of another commit (default: the commit before this bench's speed work), run
from its own folder with the same virtual environment, so both sides pay the same interpreter and libraries.
Sides alternate (ABAB...), `reps` times each; medians are compared. Nothing else should run meanwhile.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO

BASELINE = "ef27309"  # main before the runner and start-up work of bench/README.md ("Sweep start")
SWEEP = ["-m", "experiment=smoke", "budget.amount=200", "eval.points=2"]


def fixed_cost(tree: Path, results: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "sweep", *SWEEP, f"results_dir={results}"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"sweep in {tree} failed:\n{proc.stderr[-2000:]}")
    records = [json.loads(p.read_text()) for p in results.rglob("run.json")]
    train = sum(float(r["summary"]["train_seconds"]) for r in records)
    workers = max(int(r["env"].get("parallel_jobs") or 1) for r in records)
    commits = {(r.get("env") or {}).get("git_commit") for r in records}
    return {"wall_s": wall, "sum_train_s": train, "workers": workers, "fixed_s": wall - train / workers,
            "jobs": len(records), "commits": sorted(c for c in commits if c)}  # fmt: skip


def run(baseline: str = BASELINE, reps: int = 3, log=print) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        base_tree = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), baseline], cwd=REPO, check=True,
                       capture_output=True)  # fmt: skip
        try:
            sides: dict[str, list[dict[str, Any]]] = {"baseline": [], "this": []}
            for rep in range(reps):
                order = ("baseline", "this") if rep % 2 == 0 else ("this", "baseline")
                for side in order:
                    tree = base_tree if side == "baseline" else REPO
                    res = fixed_cost(tree, Path(tmp) / f"{side}-{rep}")
                    sides[side].append(res)
                    log(f"  {side:8s} rep {rep}: wall {res['wall_s']:.2f}s, fixed {res['fixed_s']:.2f}s")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=REPO, capture_output=True)
    med = {k: statistics.median(r["fixed_s"] for r in v) for k, v in sides.items()}
    return {
        "baseline": baseline,
        "reps": reps,
        "sweep": " ".join(SWEEP),
        "runs": sides,
        "fixed_s_median": med,
        "ratio": med["this"] / med["baseline"],
    }


def table(res: dict[str, Any]) -> str:
    lines = [
        "| side | fixed cost s (median) | each run: fixed s (wall s) |",
        "|---|---|---|",
    ]
    for side in ("baseline", "this"):
        runs = ", ".join(f"{r['fixed_s']:.2f} ({r['wall_s']:.2f})" for r in res["runs"][side])
        name = f"baseline {res['baseline']}" if side == "baseline" else "this checkout"
        lines.append(f"| {name} | **{res['fixed_s_median'][side]:.2f}** | {runs} |")
    lines.append("")
    lines.append(f"this / baseline = **{res['ratio']:.2f}** (`python -m sweep {res['sweep']}`, {res['reps']} "
                 f"interleaved runs per side; fixed = wall − Σ train_seconds / workers)")  # fmt: skip
    return "\n".join(lines)
