"""Summary tables of a run table: effect sizes, per-cell means ± CI, protocol facts, run accounting."""

from __future__ import annotations

import importlib.metadata as md
from typing import Any

import numpy as np
import pandas as pd

from analysis.stats import cell_means, partial_eta2
from analysis.verdicts import prepare

# outcome column -> label a reader understands (the ANOVA and the mean tables use the same list)
OUTCOMES = {
    "log_tokens_per_s": "log tokens/s",
    "valid_loss": "final held-out loss",
    "span": "learned span",
    "effective_context": "effective context",
    "gradient_horizon": "gradient horizon",
    "log_grad_norm_max": "log max grad norm",
}
MEAN_OUTCOMES = {
    "tokens_per_s": "tokens/s",
    "valid_loss": "held-out loss",
    "valid_accuracy": "held-out accuracy",
    "span": "span",
    "memory_capacity": "memory capacity",
    "effective_context": "effective context",
    "gradient_horizon": "gradient horizon",
    "grad_norm_max": "max grad norm",
    "grad_norm_median": "median grad norm",
}


def effect_sizes(runs: pd.DataFrame) -> pd.DataFrame:
    """Partial eta^2 of batch_size, num_steps and cell on each outcome, per setting (complete runs)."""
    df = prepare(runs)
    df = df[df["status"] == "complete"]
    rows = []
    for split, part in df.groupby("split"):
        for outcome, label in OUTCOMES.items():
            if outcome not in part or pd.to_numeric(part[outcome], errors="coerce").notna().sum() < 3:
                continue
            eta = partial_eta2(part, outcome)
            rows.append({"split": split, "outcome": label, **{f"η² {k}": v for k, v in eta.items()},
                         "runs": int(part[outcome].notna().sum())})  # fmt: skip
    return pd.DataFrame(rows)


def means_table(runs: pd.DataFrame, th: dict[str, Any]) -> pd.DataFrame:
    """Tidy: per setting, cell, batch_size, num_steps and outcome, the mean over seeds with a bootstrap CI."""
    df = prepare(runs)
    df = df[df["status"] == "complete"]
    outcomes = [o for o in MEAN_OUTCOMES if o in df and pd.to_numeric(df[o], errors="coerce").notna().any()]
    for o in outcomes:
        df[o] = pd.to_numeric(df[o], errors="coerce")
    return cell_means(df, outcomes, ["split", "cell", "batch_size", "num_steps"], th)


def means_wide(means: pd.DataFrame) -> pd.DataFrame:
    """The tidy means as a table to read: one row per grid point, 'mean [low, high]' per outcome."""
    if means.empty:
        return means

    def show(r: pd.Series) -> str:
        fmt = _fmt_for(r["mean"])
        ci = f" [{format(r['ci_low'], fmt)}, {format(r['ci_high'], fmt)}]" if np.isfinite(r["ci_low"]) else ""
        return f"{format(r['mean'], fmt)}{ci}"

    m = means.assign(text=means.apply(show, axis=1), outcome=means["outcome"].map(MEAN_OUTCOMES))
    wide = m.pivot_table(
        index=["split", "cell", "batch_size", "num_steps"], columns="outcome", values="text", aggfunc="first"
    )
    seeds = means.groupby(["split", "cell", "batch_size", "num_steps"])["n"].max().rename("seeds")
    wide = wide.join(seeds)
    order = [MEAN_OUTCOMES[o] for o in MEAN_OUTCOMES if MEAN_OUTCOMES[o] in wide.columns]
    wide = wide[["seeds", *order]].reset_index()
    wide["batch_size"] = wide["batch_size"].astype(int)
    wide["num_steps"] = wide["num_steps"].astype(int)
    return wide


def _fmt_for(x: float) -> str:
    a = abs(x) if np.isfinite(x) else 0
    return ".0f" if a >= 100 else ".2f" if a >= 1 else ".3f"


def run_counts(runs: pd.DataFrame, skipped: pd.DataFrame, missing: pd.DataFrame, planned: int) -> pd.DataFrame:
    counts = runs["status"].value_counts()
    left_out = int((~runs["in_verdicts"] & runs["status"].isin(["complete", "diverged"])).sum())
    rows = [
        ("records read", len(runs)),
        ("complete", int(counts.get("complete", 0))),
        ("diverged", int(counts.get("diverged", 0))),
        ("failed", int(counts.get("failed", 0))),
        ("tuning trials left out (not the best of their cell)", left_out),
        ("records skipped (corrupt or partial)", len(skipped)),
        ("grid points planned (sweep files)", planned),
        ("grid points without a usable record", len(missing)),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["runs", "count"])


def protocol(runs: pd.DataFrame) -> pd.DataFrame:
    """What produced the numbers: tasks, budgets, lr protocols, model, hardware and versions."""

    def uniq(col: str) -> str:
        if col not in runs:
            return "n/a"
        vals = runs[col].dropna().astype(str)
        counts = vals.value_counts()
        return "; ".join(f"{v} ({n} runs)" if len(counts) > 1 else v for v, n in counts.items()) or "n/a"

    env_rows = runs.dropna(subset=["env.device"]) if "env.device" in runs else runs.iloc[0:0]
    hardware = "n/a"
    if not env_rows.empty:
        combos = env_rows.groupby(
            ["env.device", "env.cpu", "env.gpu", "env.threads", "env.parallel_jobs", "env.cpu_count"],
            dropna=False,
        ).size()
        hardware = "; ".join(
            f"{dev}{f' ({gpu})' if isinstance(gpu, str) else ''}, CPU {cpu} × {_int(ncpu)} cores, "
            f"{_int(threads)} torch thread(s) per job, {_int(jobs)} job(s) in parallel ({n} runs)"
            for (dev, cpu, gpu, threads, jobs, ncpu), n in combos.items()
        )
    rows = [
        ("task(s)", uniq("task_label")),
        ("budget(s)", uniq("budget")),
        ("learning-rate protocol(s)", uniq("protocol")),
        ("optimizer, base lr", _optim(runs)),
        ("other settings that vary", uniq("variant") if runs["variant"].astype(bool).any() else "none"),
        ("cells", ", ".join(sorted(runs["cell"].dropna().astype(str).unique()))),
        ("batch sizes", _levels(runs, "batch_size")),
        ("num_steps", _levels(runs, "num_steps")),
        ("seeds", _levels(runs, "seed")),
        ("hidden size", uniq("cfg.model.hidden_size")),
        ("learned span from", uniq("span_source")),
        ("hardware", hardware),
        ("versions (runs)", _versions(runs)),
        (
            "versions (analysis)",
            ", ".join(f"{p} {_pkg(p)}" for p in ("scipy", "statsmodels", "seaborn", "pandas")),
        ),
    ]
    return pd.DataFrame(rows, columns=["item", "value"])


def shared_cores_note(runs: pd.DataFrame) -> str:
    """Speeds timed while jobs shared the machine are lower than alone: say so where it happened."""
    if "env.parallel_jobs" not in runs:
        return ""
    jobs = pd.to_numeric(runs["env.parallel_jobs"], errors="coerce")
    if not (jobs > 1).any():
        return ""
    return (
        f"{int((jobs > 1).sum())} runs were timed while up to {int(jobs.max())} jobs ran in parallel: their "
        "absolute tokens/s are lower than a lone run's, and speed ratios are fair only between runs timed "
        "under the same load."
    )


def _int(x: Any) -> str:
    return str(int(x)) if isinstance(x, (int, float, np.integer, np.floating)) and np.isfinite(x) else "?"


def _levels(runs: pd.DataFrame, col: str) -> str:
    vals = sorted({int(v) for v in runs[col].dropna()})
    return ", ".join(map(str, vals)) or "n/a"


def _optim(runs: pd.DataFrame) -> str:
    if "cfg.optim.lr" not in runs:
        return "n/a"
    combos = runs.groupby(["optimizer", "cfg.optim.lr", "lr_scaling"], dropna=False).size()
    return "; ".join(f"{o} lr {lr:g} (scaling {s})" for (o, lr, s), _ in combos.items())


def _versions(runs: pd.DataFrame) -> str:
    parts = []
    for col, name in (("env.python", "python"), ("env.torch", "torch"), ("env.hydra-core", "hydra-core"),
                      ("env.numpy", "numpy"), ("env.rnn-sweep", "rnn-sweep")):  # fmt: skip
        if col in runs:
            vals = sorted(runs[col].dropna().astype(str).unique())
            if vals:
                parts.append(f"{name} {'/'.join(vals)}")
    return ", ".join(parts) or "n/a"


def _pkg(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "?"


def problem_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Failed and diverged runs, with what went wrong: listed, never dropped in silence."""
    bad = runs[runs["status"].isin(["failed", "diverged"])]
    if bad.empty:
        return pd.DataFrame(columns=["run", "status", "what happened"])

    def what(r: pd.Series) -> str:
        if r["status"] == "failed":
            return str(r.get("error") or "no error message recorded")
        at = r.get("diverged_at_step")
        return f"loss or gradient non-finite at update {int(at)}" if pd.notna(at) else "loss or gradient non-finite"

    return pd.DataFrame({"run": bad["run_id"], "status": bad["status"], "what happened": bad.apply(what, axis=1)})
