"""Synthetic results whose truth is known: tidy tables for the verdict tests, and record folders on disk with
the schema sweep/run.py writes, for the loading and report tests (and to demo the report without
training).

Each outcome is a function of (cell, batch_size, num_steps, seed); the defaults make every claim true: an echo
task of lag 8 learned exactly when num_steps > 8 whatever the batch size, span never above num_steps, a window's
gradient norm growing like L^0.8, batch 1 twice as jittery as batch 4, and (speed_table) throughput close to
proportional to batch size. Multiplicative noise (sd `noise` in log space) plays the seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

Outcome = Callable[[str, int, int, int], float]

LAG = 8  # the echo task's lag in these tables: a window must be longer than it to learn it


def _learned(ns: int) -> bool:
    return ns > LAG


CLAIMS_TRUE: dict[str, Outcome] = {
    "tokens_per_s": lambda cell, bs, ns, seed: 2000.0 * bs,  # runs' own timing: never decides a speed claim
    "valid_loss": lambda cell, bs, ns, seed: 0.2 if _learned(ns) else 1.386,
    "valid_accuracy": lambda cell, bs, ns, seed: 0.95 if _learned(ns) else 0.25,
    "acc_lag_8": lambda cell, bs, ns, seed: 0.95 if _learned(ns) else 0.25,
    "chance_accuracy": lambda cell, bs, ns, seed: 0.25,
    "memory_capacity": lambda cell, bs, ns, seed: 0.93 if _learned(ns) else 0.0,
    "span": lambda cell, bs, ns, seed: float(LAG) if _learned(ns) else 0.0,
    "effective_context": lambda cell, bs, ns, seed: float(ns) / 2,
    "gradient_horizon": lambda cell, bs, ns, seed: float(ns),
    "grad_norm_max": lambda cell, bs, ns, seed: 0.5 * ns**0.8,
    "growth_slope": lambda cell, bs, ns, seed: 0.8,  # window gradient norm ~ L^0.8 at fixed parameters
    "growth_slope_initial": lambda cell, bs, ns, seed: 0.3,
    "clip_fraction": lambda cell, bs, ns, seed: 0.0,
    "loss_jitter": lambda cell, bs, ns, seed: 0.1 / bs**0.5,  # update-to-update spread ~ 1/sqrt(rows)
}
# outcomes left without noise: accuracies and the discrete span stay exact
DISCRETE = ("valid_accuracy", "acc_lag_8", "chance_accuracy", "span", "clip_fraction")


def speed_table(
    *,
    task: str = "echo",
    cells: Iterable[str] = ("rnn", "lstm"),
    batch_sizes: Iterable[int] = (1, 4, 16),
    num_steps: Iterable[int] = (4, 16),
    rounds: int = 5,
    tokens_per_s: Callable[[str, int, int], float] = lambda cell, bs, ns: 2000.0 * bs**0.9,
    noise: float = 0.02,
    rng: int = 0,
) -> pd.DataFrame:
    """A speed phase (speed.parquet's columns) whose truth is known: the default batch 4 / batch 1 ratio is
    4^0.9 = 3.48 (inside [3, 5]) and a batch-1 update is cheaper than a batch-4 one. Noise (sd in log space) is
    shared by all points of a round plus a point's own, as interleaved rounds on a real machine are."""
    gen = np.random.default_rng(rng)
    rows = []
    for r in range(rounds):
        shared = gen.normal(0.0, noise)
        for cell in cells:
            for bs in batch_sizes:
                for ns in num_steps:
                    tps = tokens_per_s(cell, bs, ns) * float(np.exp(shared + gen.normal(0.0, noise)))
                    rows.append({
                        "task": task, "cell": cell, "batch_size": bs, "num_steps": ns, "round": r, "order": len(rows),
                        "updates": 100, "seconds": 100 * bs * ns / tps, "tokens_per_s": tps,
                        "us_per_update": 1e6 * bs * ns / tps, "threads": 1, "device": "cpu",
                    })  # fmt: skip
    return pd.DataFrame(rows)


def runs_table(
    *,
    cells: Iterable[str] = ("rnn", "lstm"),
    batch_sizes: Iterable[int] = (1, 4, 16),
    num_steps: Iterable[int] = (4, 16),
    seeds: Iterable[int] = (0, 1, 2, 3, 4),
    task: str = "echo",
    budget: str = "tokens 65536",
    protocol: str = "fixed lr",
    noise: float = 0.02,
    rng: int = 0,
    **outcomes: Outcome | None,
) -> pd.DataFrame:
    """One row per run. `span=lambda cell, bs, ns, seed: ...` changes an outcome, `span=None` drops it."""
    funcs = {**CLAIMS_TRUE, **outcomes}
    gen = np.random.default_rng(rng)
    rows = []
    for cell in cells:
        for bs in batch_sizes:
            for ns in num_steps:
                for seed in seeds:
                    row: dict[str, Any] = {
                        "task": task, "budget": budget, "protocol": protocol, "cell": cell, "batch_size": bs,
                        "num_steps": ns, "seed": seed, "status": "complete",
                    }  # fmt: skip
                    for name, fn in funcs.items():
                        if fn is None:
                            continue
                        value = float(fn(cell, bs, ns, seed))
                        if name not in DISCRETE and math.isfinite(value):
                            value *= float(np.exp(gen.normal(0.0, noise)))
                        row[name] = value
                    rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------- records on disk
def _config(row: dict[str, Any], lags: list[int]) -> dict[str, Any]:
    kind, amount = str(row.get("budget", "tokens 65536")).split()
    plateau = kind == "plateau"  # the cap in updates, geometric evaluations (conf/budget/plateau.yaml)
    return {
        "batch_size": int(row["batch_size"]),
        "num_steps": int(row["num_steps"]),
        "seed": int(row["seed"]),
        "device": "auto",
        "threads": 1,
        "name": "synthetic",
        "results_dir": "results",
        "warmup_updates": 10,
        "group_norm_every": 10,
        "progress_every_s": 15.0,
        "task": {
            "name": row["task"],
            "vocab_size": 4,
            "lag": 8,
            "lags": lags,
            "train_tokens": 16384,
            "valid_tokens": 4096,
            "path": None,
            "valid_path": None,
            "level": "word",
            "valid_fraction": 0.1,
            "max_vocab": 0,
        },
        "model": {"cell": row["cell"], "hidden_size": 64, "num_layers": 1, "embedding_size": 32},
        "optim": {
            "name": "adam",
            "lr": 0.01,
            "momentum": 0.0,
            "clip": 5.0,
            "lr_scaling": "none",
            "base_batch_size": 16,
        },
        "budget": {"kind": kind, "amount": float(amount), **({"patience": 4, "min_delta": 0.01} if plateau else {})},
        "eval": {
            "points": 4,
            "rows": 32,
            **({"spacing": "geometric", "first": 16, "per_doubling": 4} if plateau else {}),
        },
        "measure": {
            "enabled": True,
            "chance_margin": 0.1,
            "contexts": [1, 2, 4, 8, 16, 32],
            "context_tolerance": 0.01,
            "context_positions": 512,
            "horizon_max_k": 32,
            "horizon_fraction": 0.01,
            "horizon_windows": 16,
            "probe": True,
            "probe_max_k": 32,
            "checkpoints": 0,
        },
    }


ENV = {
    "device": "cpu",
    "gpu": None,
    "cpu": "synthetic CPU",
    "cpu_count": 2,
    "threads": 1,
    "parallel_jobs": 1,
    "launcher": None,
    "hostname": "synthetic",
    "platform": "synthetic",
    "python": "3.11",
    "torch": "2.13.0+cpu",
    "cuda": None,
    "cudnn": None,
    "versions": {"hydra-core": "1.3.8", "numpy": "2", "rnn-sweep": "0.1.0"},
    "git_commit": None,
    "argv": [],
}


def folder_name(row: dict[str, Any]) -> str:
    return (
        f"batch_size={int(row['batch_size'])},model={row['cell']},num_steps={int(row['num_steps'])},"
        f"seed={int(row['seed'])},task={row['task']}"
    )


def write_results(
    root: str | Path, table: pd.DataFrame, updates: int = 40, profiles: bool = True, summary_file: bool = True
) -> list[Path]:
    """Write one record folder per row of `table` (as `runs_table` makes) and the sweep's summary file."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folders = []
    jobs = {}
    for i, row in enumerate(table.to_dict("records")):
        folder = root / folder_name(row)
        write_record(folder, row, updates=updates, profiles=profiles, rng=i)
        folders.append(folder)
        jobs[str(folder)] = {"status": row.get("status", "complete"), "overrides": folder.name.split(",")}
    if summary_file:
        counts: dict[str, int] = {}
        for job in jobs.values():
            counts[job["status"]] = counts.get(job["status"], 0) + 1
        (root / "sweep_summary.json").write_text(json.dumps({"counts": counts, "jobs": jobs}, indent=2))
    return folders


def write_record(folder: Path, row: dict[str, Any], updates: int = 40, profiles: bool = True, rng: int = 0) -> None:
    """run.json, steps.parquet, evals.parquet (and profiles.parquet) in the layout sweep/run.py writes."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(rng)
    status = row.get("status", "complete")
    lags = [1, 2, 4, 8, 16, 32] if row["task"] == "lags" else [8]
    bs, ns = int(row["batch_size"]), int(row["num_steps"])
    chance = 0.25
    span = float(row.get("span", ns))
    rec: dict[str, Any] = {"version": 1, "signature": f"synthetic{rng:08d}", "config": _config(row, lags)}
    if status == "failed":
        rec.update(status="failed", error="RuntimeError: synthetic failure", env=None, summary={})
        (folder / "run.json").write_text(json.dumps(rec, indent=2))
        return
    gmax = float(row.get("grad_norm_max", 1.0))
    norms = np.abs(gen.normal(gmax / 3, gmax / 10, updates)).astype("float32")
    norms[int(gen.integers(updates))] = gmax
    losses = (1.4 * np.exp(-np.arange(updates) / updates) + gen.normal(0, 0.02, updates)).astype("float32")
    if status == "diverged":
        norms[-1], losses[-1] = np.inf, np.nan
    steps = pd.DataFrame({
        "step": np.arange(updates), "tokens": (np.arange(updates) + 1) * bs * ns,
        "time_s": (np.arange(updates) + 1) * bs * ns / float(row.get("tokens_per_s", 1000.0)),
        "loss": losses, "grad_norm": norms, "clipped": norms > 5.0,
    })  # fmt: skip
    for group in ("input", "recurrent", "output"):
        steps[f"grad_norm_{group}"] = np.where(steps["step"] % 10 == 0, norms / 2, np.nan)
    steps.to_parquet(folder / "steps.parquet", index=False)
    acc = {str(k): (0.95 if k <= span else chance + 0.01) for k in lags}
    evals = pd.DataFrame([
        {"step": s, "tokens": s * bs * ns, "time_s": s * bs * ns / 1000.0,
         "loss": float(row.get("valid_loss", 1.0)) * (1 + 0.1 * (updates - s) / updates),
         **{f"acc_lag_{k}": a for k, a in acc.items()}}
        for s in (updates // 2, updates)
    ])  # fmt: skip
    evals.to_parquet(folder / "evals.parquet", index=False)
    if profiles and status == "complete":
        _profiles(row, lags, acc, gen).to_parquet(folder / "profiles.parquet", index=False)
    summary: dict[str, Any] = {
        "tokens_per_s": float(row.get("tokens_per_s", 1000.0)),
        "train_loss": float(np.nanmean(losses[-4:])) if status == "complete" else None,
        "valid_loss": float(row.get("valid_loss", 1.0)) if status == "complete" else None,
        "updates": updates, "tokens": updates * bs * ns, "passes": 1, "train_seconds": 1.0,
        "warmup_updates": 10, "grad_norm_max": gmax if status == "complete" else None,
        "grad_norm_p99": gmax * 0.9, "grad_norm_median": gmax / 3, "clip_fraction": 0.0, "lr": 0.01,
        "chance_accuracy": chance, "task_info": {},
        "diverged_at_step": updates - 1 if status == "diverged" else None,
        "valid_accuracy": float(row.get("valid_accuracy", np.mean(list(acc.values())))),
        "lag_accuracy": acc, "lag_count": {k: 1024.0 for k in acc}, "valid_perplexity": 2.7,
    }  # fmt: skip
    for key in (
        "span",
        "effective_context",
        "gradient_horizon",
        "memory_capacity",
        "growth_slope",
        "growth_slope_initial",
        "loss_jitter",
    ):
        if key in row and pd.notna(row[key]) and status == "complete":
            summary[key] = float(row[key])
    for key in STOP_KEYS:  # how a plateau run ended (records of a fixed budget may leave them out)
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            summary[key] = bool(value) if key == "converged" else value
    rec.update(status=status, env=ENV, summary=summary)
    (folder / "run.json").write_text(json.dumps(rec, indent=2))


STOP_KEYS = ("stop_reason", "converged", "stopped_at_update", "best_valid_loss", "best_valid_update")


# ---------------------------------------------------------------------------------------------- cost curves
def cost_table(
    *,
    cells: Iterable[str] = ("gru",),
    batch_sizes: Iterable[int] = (1, 2, 4, 8, 16, 32, 64),
    num_steps: Iterable[int] = (32,),
    seeds: Iterable[int] = (0, 1, 2, 3, 4),
    s_min: float = 100.0,
    b_crit: float = 12.0,
    noise: float = 0.05,
    cap: int = 8192,
    rng: int = 0,
) -> pd.DataFrame:
    """Plateau runs on echo whose updates to 0.9 accuracy follow S(B) = s_min (1 + b_crit / B) (Shallue et al.
    2019) times exp(N(0, noise)) per seed: column `updates_to_target`, the truth a fit must recover. A run whose
    crossing lies beyond `cap` never reaches the target and stops at the cap, not converged."""
    gen = np.random.default_rng(rng)
    rows = []
    for cell in cells:
        for bs in batch_sizes:
            for ns in num_steps:
                for seed in seeds:
                    u = s_min * (1 + b_crit / bs) * float(np.exp(gen.normal(0.0, noise)))
                    rows.append({"task": "echo", "budget": f"plateau {cap}", "protocol": "fixed lr", "cell": cell,
                                 "batch_size": bs, "num_steps": ns, "seed": seed, "status": "complete",
                                 "updates_to_target": u, "valid_loss": 0.2, "valid_accuracy": 0.95,
                                 "tokens_per_s": 2000.0 * bs})  # fmt: skip
    return pd.DataFrame(rows)


def cost_evals(
    row: dict[str, Any],
    cap: int,
    b_simple: Callable[[float], float],
    first: int = 16,
    per_doubling: int = 4,
    noise_every: int = 3,
) -> tuple[pd.DataFrame, int]:
    """A plateau run's evaluations (geometric, as eval.spacing=geometric) whose accuracy at lag 8 rises smoothly
    in log updates through 0.9 at row["updates_to_target"], held-out loss falling with it, and the gradient
    noise scale b_simple(update / crossing) at every `noise_every`-th evaluation and the last. The run stops two
    doublings after its crossing (its plateau), or at the cap. Returns (evals, the update it stopped at)."""
    target = float(row["updates_to_target"])
    stop = min(cap, int(2 ** np.ceil(np.log2(4 * target))))
    steps = [p for k in range(200) if (p := round(first * 2 ** (k / per_doubling))) < stop]
    steps = [*sorted(set(steps)), stop]
    logit = math.log((0.9 - 0.25) / (1 - 0.9))  # accuracy 0.25 + 0.75 sigmoid(.) is 0.9 at the crossing
    bs, ns = int(row["batch_size"]), int(row["num_steps"])
    rows = []
    for i, u in enumerate(steps):
        acc = 0.25 + 0.75 / (1 + math.exp(-(2.5 * math.log(u / target) + logit)))
        measured = i % noise_every == 0 or i == len(steps) - 1
        rows.append({"step": u, "tokens": u * bs * ns, "time_s": u * bs * ns / 1000.0, "loss": -math.log(acc),
                     "acc_lag_8": acc, "noise_b_simple": b_simple(u / target) if measured else np.nan,
                     "noise_g2": 1.0 if measured else np.nan,
                     "noise_trace": b_simple(u / target) if measured else np.nan})  # fmt: skip
    return pd.DataFrame(rows), stop


def write_cost_results(
    root: str | Path, table: pd.DataFrame, b_simple: Callable[[float], float] = lambda rel: 12.0, noise_every: int = 3
) -> list[Path]:
    """write_results for a cost_table, each run's evals.parquet replaced by cost_evals and its summary saying
    how it stopped (plateau, or the cap, its budget's amount, when it got there first)."""
    folders = write_results(root, table, updates=20, profiles=False)
    for folder, row in zip(folders, table.to_dict("records"), strict=True):
        cap = int(float(str(row["budget"]).split()[1]))
        evals, stop = cost_evals(row, cap, b_simple, noise_every=noise_every)
        evals.to_parquet(folder / "evals.parquet", index=False)
        rec = json.loads((folder / "run.json").read_text())
        best = int(evals["loss"].idxmin())
        rec["summary"].update(
            stop_reason="plateau" if stop < cap else "cap", converged=stop < cap, stopped_at_update=stop,
            best_valid_loss=float(evals["loss"].iloc[best]), best_valid_update=int(evals["step"].iloc[best]),
            updates=stop,
        )  # fmt: skip
        (folder / "run.json").write_text(json.dumps(rec, indent=2))
    return folders


def _profiles(row: dict[str, Any], lags: list[int], acc: dict[str, float], gen) -> pd.DataFrame:
    """Tidy profiles (measure, k, value, ci_low, ci_high) consistent with the run's scalar measures."""
    ctx = float(row.get("effective_context", 4.0))
    horizon = max(float(row.get("gradient_horizon", 4.0)), 1.0)
    rows = [("recall", k, acc[str(k)]) for k in lags]
    rows += [("context", d, 1.0 + 0.4 * math.exp(-d / ctx)) for d in (1, 2, 4, 8, 16, 32)]
    rows += [("gradient", k, math.exp(-k * 4.6 / horizon)) for k in range(0, 33, 2)]
    rows += [("probe", k, max(0.25, 1 - k / (2 * horizon))) for k in (0, 1, 2, 4, 8, 16, 32)]
    df = pd.DataFrame(rows, columns=["measure", "k", "value"])
    df["value"] = df["value"] * np.exp(gen.normal(0, 0.01, len(df)))
    df["ci_low"], df["ci_high"] = df["value"] * 0.95, df["value"] * 1.05
    return df
