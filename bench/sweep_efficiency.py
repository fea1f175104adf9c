"""Sweep efficiency: the smoke grid through the default launcher (hydra/launcher=forkserver), as a user runs it,
against its jobs' own training time.

    harness overhead = 1 - (sum of the jobs' train_seconds / workers) / wall-clock of `python -m sweep ...`

The wall-clock is split into phases read off the files the sweep writes (their modification times):
- launch -> multirun.yaml: the parent's interpreter start-up, imports, compose of the config and of every grid
  point;
- multirun.yaml -> first job start: waiting for the fork server's imports (torch, the runner; started by the
  entry point, so they overlap the phase before), the fork, the job's compose of its config;
- per job, .hydra/config.yaml -> run.json: train_seconds (the timed updates) + the rest of the job (data,
  model, evaluation, measures, record writes);
- last run.json -> sweep_summary.json: results back to the parent, the sweep summary;
- sweep_summary.json -> exit: interpreter exit (the fork server is killed, not waited for).
A probe in a fresh interpreter (bench/_probe.py: the imports a worker would make) times the pieces directly.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO

TARGET = 0.25  # bench/README.md: harness overhead <= 25 % of the sweep's wall-clock

SMOKE = ["experiment=smoke"]


def _python_startup() -> dict[str, float]:
    def wall(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)
        return time.perf_counter() - t0

    return {
        "python_bare_s": wall("pass"),
        "python_import_torch_s": wall("import torch"),
        "python_import_sweep_cli_s": wall("import sweep.cli"),
        "python_import_sweep_run_s": wall("import sweep.cli, sweep.run"),
    }


def probe_job(overrides: list[str], workers: int) -> dict[str, Any]:
    """bench._probe in a fresh interpreter (what a worker would import); adds its interpreter-exit time."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "BENCH_PROBE_WORKERS": str(workers),
    }
    cmd = [sys.executable, "-m", "bench._probe", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    gone = time.time()
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE"))
    out = json.loads(line[len("PROBE") :])
    out["exit_s"] = gone - out["end_time"]
    return out


def run_sweep(extra: list[str], results_dir: Path) -> dict[str, Any]:
    """`python -m sweep -m experiment=smoke results_dir=... <extra>` as a subprocess: wall-clock, phases."""
    cmd = [sys.executable, "-m", "sweep", "-m", *SMOKE, f"results_dir={results_dir}", *extra]
    t_launch = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    t_exit = t_launch + wall
    if proc.returncode != 0:
        raise RuntimeError(f"sweep failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    sweep_dir = next(p.parent for p in results_dir.rglob("multirun.yaml"))
    jobs = []
    for run_json in sorted(sweep_dir.glob("*/run.json")):
        rec = json.loads(run_json.read_text())
        start = (run_json.parent / ".hydra" / "config.yaml").stat().st_mtime
        end = run_json.stat().st_mtime
        s = rec["summary"]
        jobs.append(
            {
                "job": run_json.parent.name,
                "status": rec["status"],
                "train_seconds": s["train_seconds"],
                "updates": s["updates"],
                "tokens_per_s": s["tokens_per_s"],
                "tokens": s["tokens"],
                "span_s": end - start,
                "start": start,
                "end": end,
                "parallel_jobs": rec["env"]["parallel_jobs"],
                "threads": rec["env"]["threads"],
            }
        )
    if not jobs:
        raise RuntimeError(f"the sweep wrote no run records under {sweep_dir}")
    workers = jobs[0]["parallel_jobs"]
    sum_train = sum(j["train_seconds"] for j in jobs)
    sum_span = sum(j["span_s"] for j in jobs)
    t_multirun = (sweep_dir / "multirun.yaml").stat().st_mtime
    first_start = min(j["start"] for j in jobs)
    last_end = max(j["end"] for j in jobs)
    t_summary = (sweep_dir / "sweep_summary.json").stat().st_mtime
    phases = {
        "parent start-up, imports, compose grid": t_multirun - t_launch,
        "waiting for the fork server + fork + job compose": first_start - t_multirun,
        "training (sum train_seconds / workers)": sum_train / workers,
        "rest of each job (sum / workers)": (sum_span - sum_train) / workers,
        "job imbalance / dispatch between jobs": (last_end - first_start) - sum_span / workers,
        "results back to the parent, sweep summary": t_summary - last_end,
        "interpreter exit (fork server killed)": t_exit - t_summary,
    }
    return {
        "command": "python -m sweep -m " + " ".join([*SMOKE, "results_dir=<tmp>", *extra]),
        "wall_s": wall,
        "jobs": jobs,
        "n_jobs": len(jobs),
        "workers": workers,
        "sum_train_seconds": sum_train,
        "sum_job_span_s": sum_span,
        "overhead": 1 - (sum_train / workers) / wall,
        "phases_s": phases,
        "mean_s_per_update": sum(j["train_seconds"] for j in jobs) / sum(j["updates"] for j in jobs),
        # after warm-up (the runner's tokens_per_s): what a longer run of the same jobs costs per update
        "steady_s_per_update": sum(j["tokens"] / j["updates"] / j["tokens_per_s"] for j in jobs) / len(jobs),
    }


def updates_to_meet(smoke: dict[str, Any], target: float = TARGET, margin: float = 1.5) -> int:
    """Updates per job at which the smoke grid's fixed cost F (wall - training/workers, independent of the
    budget) is <= target of the wall-clock: training/workers >= F (1 - target) / target."""
    fixed = smoke["wall_s"] - smoke["sum_train_seconds"] / smoke["workers"]
    need_train_per_worker = fixed * (1 - target) / target
    per_job = need_train_per_worker * smoke["workers"] / smoke["n_jobs"]
    return int(math.ceil(margin * per_job / smoke["steady_s_per_update"] / 100.0) * 100)


def fit_two_sizes(small: dict[str, Any], big: dict[str, Any], target: float = TARGET) -> dict[str, float]:
    """wall = F + a U and training/workers = c U (U = updates per job), from the two measured sweeps; the
    smallest U with overhead <= target solves c U >= (1 - target)(F + a U)."""
    u1 = sum(j["updates"] for j in small["jobs"]) / small["n_jobs"]
    u2 = sum(j["updates"] for j in big["jobs"]) / big["n_jobs"]
    a = (big["wall_s"] - small["wall_s"]) / (u2 - u1)
    fixed = small["wall_s"] - a * u1
    c = big["sum_train_seconds"] / big["workers"] / u2
    keep = 1 - target
    need = keep * fixed / (c - keep * a) if c > keep * a else math.inf
    return {
        "fixed_s": fixed,
        "wall_s_per_update": a,
        "train_s_per_update_per_worker": c,
        "updates_per_job": need,
    }


def run(*, scaled: bool, probe: bool, deadline: float | None = None, log=print) -> dict[str, Any]:
    """Smoke grid; the probe; then, if time is left before `deadline` (a perf_counter time), the smoke grid
    again with the budget that the smoke figures predict meets the target, to check the prediction."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        smoke = run_sweep([], Path(tmp) / "smoke")
        out["smoke"] = smoke
        log(
            f"  smoke: wall {smoke['wall_s']:.1f}s, sum train {smoke['sum_train_seconds']:.2f}s on "
            f"{smoke['workers']} workers -> overhead {100 * smoke['overhead']:.1f}%"
        )
        need = updates_to_meet(smoke)
        fixed = smoke["wall_s"] - smoke["sum_train_seconds"] / smoke["workers"]
        predicted_wall = fixed + need * smoke["steady_s_per_update"] * smoke["n_jobs"] / smoke["workers"]
        out["meets_target_at_updates"] = {"updates_per_job": need, "predicted_wall_s": predicted_wall}
        if probe:
            out["startup"] = _python_startup()
            # the largest smoke job (the probe runs it in a fresh interpreter)
            out["probe"] = probe_job(
                # start-up costs do not depend on the training length: a short budget keeps the probe quick
                ["experiment=smoke", "model=lstm", "batch_size=8", "num_steps=4", "budget.amount=300"],
                out["smoke"]["workers"],
            )
        left = math.inf if deadline is None else deadline - time.perf_counter()
        if scaled and smoke["overhead"] <= TARGET:
            log("  the smoke grid meets the target as it is: no scaled run needed")
        elif scaled and 1.3 * predicted_wall <= left:
            s = run_sweep([f"budget.amount={need}"], Path(tmp) / "scaled")
            out["scaled"] = s
            out["fit"] = fit_two_sizes(smoke, s)
            log(f"  budget.amount={need}: wall {s['wall_s']:.1f}s -> overhead {100 * s['overhead']:.1f}%")
        elif scaled:
            out["scaled_skipped"] = f"predicted {predicted_wall:.0f} s, {left:.0f} s left in the bench's time limit"
            log(f"  scaled run skipped: {out['scaled_skipped']}")
    return out


def tables(res: dict[str, Any]) -> str:
    head = (
        "| sweep | jobs | workers | wall-clock s | Σ train_seconds | Σ train / workers | harness overhead | ≤ 25 %? |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for key in ("smoke", "scaled"):
        if key not in res:
            continue
        s = res[key]
        ok = "yes" if s["overhead"] <= TARGET else "**no**"
        cells = [
            f"`{s['command']}`",
            s["n_jobs"],
            s["workers"],
            f"{s['wall_s']:.1f}",
            f"{s['sum_train_seconds']:.2f}",
            f"{s['sum_train_seconds'] / s['workers']:.2f}",
            f"**{100 * s['overhead']:.1f} %**",
            ok,
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", "Where the wall-clock goes (phases from the files the sweep writes):", ""]
    keys = [k for k in ("smoke", "scaled") if k in res]
    lines.append("| phase | " + " | ".join(f"{k} s (share)" for k in keys) + " |")
    lines.append("|---|" + "---|" * len(keys))
    for phase in res["smoke"]["phases_s"]:
        cells = [
            f"{res[k]['phases_s'][phase]:.2f} ({100 * res[k]['phases_s'][phase] / res[k]['wall_s']:.0f} %)"
            for k in keys
        ]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    m, sm = res["meets_target_at_updates"], res["smoke"]
    fixed = sm["wall_s"] - sm["sum_train_seconds"] / sm["workers"]
    lines += [
        "",
        f"Fixed cost of the smoke grid (wall − training/workers) = {fixed:.1f} s; at "
        f"{1e3 * sm['steady_s_per_update']:.2f} ms/update (after warm-up) the overhead falls to ≤ 25 % from about "
        f"`budget.amount={m['updates_per_job']}` updates per job (predicted wall-clock "
        f"{m['predicted_wall_s']:.0f} s)"
        + (f"; that run was skipped: {res['scaled_skipped']}." if "scaled_skipped" in res else "."),
    ]
    if "fit" in res:
        f = res["fit"]
        lines += [
            "",
            f"Fit through both measured sizes (wall = F + a·U, training/workers = c·U, U = updates per job): "
            f"F = {f['fixed_s']:.1f} s, a = {1e3 * f['wall_s_per_update']:.2f} ms, c = "
            f"{1e3 * f['train_s_per_update_per_worker']:.2f} ms → overhead ≤ 25 % from U ≈ "
            f"{f['updates_per_job']:.0f} updates per job.",
        ]
    if "startup" in res:
        st, pr = res["startup"], res["probe"]
        rows = [
            ("`python -c pass`", f"{st['python_bare_s']:.2f}"),
            ("`python -c 'import torch'`", f"{st['python_import_torch_s']:.2f}"),
            ("`python -c 'import sweep.cli'` (the parent's imports)", f"{st['python_import_sweep_cli_s']:.2f}"),
            (
                "`python -c 'import sweep.cli, sweep.run'` (a worker's: + torch, pandas)",
                f"{st['python_import_sweep_run_s']:.2f}",
            ),
            (
                "Hydra compose of one smoke job: first / again",
                f"{pr['compose_first_s']:.2f} / {pr['compose_again_s']:.3f}",
            ),
            (
                "first `torch.optim.Adam(...)` in a process (imports torch._dynamo)",
                f"{pr['first_optimizer_s']:.2f}",
            ),
            (
                "`import pyarrow.parquet, sweep.measures` after sweep.cli",
                f"{pr['import_pyarrow_measures_s']:.2f}",
            ),
            (
                "run_job of one smoke job after those: first / again",
                f"{pr['run_job_first_s']:.2f} / {pr['run_job_again_s']:.2f}",
            ),
            ("… of which timed training (train_seconds)", f"{pr['train_seconds_again']:.3f}"),
            (
                f"train() call (data, model, training, {pr['evals_per_job']} evaluations)",
                f"{pr['train_call_s']:.3f}",
            ),
            ("one evaluation", f"{pr['one_eval_s']:.3f}"),
            ("measures (measure_all)", f"{pr['measures_s']:.3f}"),
            ("interpreter exit of that process (torch, dynamo loaded)", f"{pr['exit_s']:.2f}"),
        ]
        lines += [
            "",
            "Pieces, timed directly (fresh interpreters; the probe runs one smoke job twice in a new process):",
            "",
            "| piece | seconds |",
            "|---|---|",
            *(f"| {a} | {b} |" for a, b in rows),
        ]
    return "\n".join(lines)
