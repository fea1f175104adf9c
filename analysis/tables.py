"""Summary tables of a run table: effect sizes, per-cell means ± CI, protocol facts, run accounting."""

from __future__ import annotations

import importlib.metadata as md
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from sweep.record import COMPLETE, DIVERGED, FAILED, JUDGED_STATUSES, PRUNED

# outcome column -> label a reader understands (the ANOVA and the mean tables use the same list)
# Effect sizes: continuous outcomes get partial eta^2 from a full-factorial OLS ANOVA (interactions included);
# proportions get deviance shares from a binomial GLM. Capped or discrete outcomes (span, horizon, effective
# context) get neither: a linear model of a count stuck at its ceiling says little (docs/claims.md).
OUTCOMES = {
    "valid_loss": "final held-out loss",
    "memory_capacity": "memory capacity",
    "log_loss_jitter": "log loss jitter (nats)",
    "growth_slope": "window-gradient growth slope",
}
PROPORTIONS = {"valid_accuracy": "held-out accuracy"}
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
    """Per setting and outcome: partial eta^2 of every term of the full factorial batch_size x num_steps x cell
    (continuous outcomes), or the deviance share of each factor in a binomial GLM (accuracy), with the range
    over which each factor was moved (an effect over 64x of batch size and one over 4x of num_steps are not
    the same comparison)."""
    from analysis.stats import deviance_shares, level_range, partial_eta2
    from analysis.verdicts import prepare

    df = prepare(runs)
    df = df[df["status"] == "complete"].copy()
    if "loss_jitter" in df:
        jitter = pd.to_numeric(df["loss_jitter"], errors="coerce")
        df["log_loss_jitter"] = np.log(jitter.where(jitter > 0))
    rows = []
    for split, part in df.groupby("split"):
        ranges = f"{level_range(part['batch_size'], 'batch')}; {level_range(part['num_steps'], 'num_steps')}"
        for outcome, label in {**OUTCOMES, **PROPORTIONS}.items():
            if outcome not in part or pd.to_numeric(part[outcome], errors="coerce").notna().sum() < 3:
                continue
            if outcome in PROPORTIONS:
                shares = deviance_shares(part, outcome)
                values, model = {f"share {k}": v for k, v in shares.items()}, "binomial GLM, deviance share"
            else:
                eta = partial_eta2(part, outcome)
                values, model = {f"η² {k}": v for k, v in eta.items()}, "full-factorial OLS, partial η²"
            rows.append({"split": split, "outcome": label, "model": model, **values, "levels": ranges,
                         "runs": int(pd.to_numeric(part[outcome], errors="coerce").notna().sum())})  # fmt: skip
    return pd.DataFrame(rows)


def means_table(runs: pd.DataFrame, th: dict[str, Any]) -> pd.DataFrame:
    """Tidy: per setting, cell, batch_size, num_steps and outcome, the mean over seeds with a bootstrap CI."""
    from analysis.stats import cell_means
    from analysis.verdicts import prepare

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
    left_out = int((~runs["in_verdicts"] & runs["status"].isin(JUDGED_STATUSES)).sum())
    rows = [
        ("records read", len(runs)),
        ("complete", int(counts.get(COMPLETE, 0))),
        ("diverged", int(counts.get(DIVERGED, 0))),
        ("failed", int(counts.get(FAILED, 0))),
        ("pruned (stopped early by the tuner, never judged)", int(counts.get(PRUNED, 0))),
        ("tuning trials left out (not the best of their cell)", left_out),
        ("records skipped (corrupt or partial)", len(skipped)),
        ("grid points planned (sweep files)", planned),
        ("grid points without a usable record", len(missing)),
    ]  # fmt: skip
    rows = [r for r in rows if r[1] or not r[0].startswith("pruned")]  # only tuning sweeps prune
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
        ("measures these records lack (shown as missing)", missing_measures(runs)),
        ("hardware", hardware),
        ("versions (runs)", _versions(runs)),
        (
            "versions (analysis)",
            ", ".join(f"{p} {_pkg(p)}" for p in ("scipy", "statsmodels", "seaborn", "pandas")),
        ),
    ]
    return pd.DataFrame(rows, columns=["item", "value"])


# measures added after the first record version: an older record leaves them empty, and the report says so
NEW_MEASURES = ("effective_context_censored", "gradient_flat", "gradient_horizon_censored", "growth_slope",
                "growth_slope_initial", "loss_jitter", "loss_jitter_rel", "grad_norm_cv_late")  # fmt: skip


def missing_measures(runs: pd.DataFrame) -> str:
    """The newer measures no finished record carries (records written before they existed)."""
    done = runs[runs["status"].isin(JUDGED_STATUSES)]
    absent = [m for m in NEW_MEASURES if m not in done or done[m].isna().all()]
    return ", ".join(absent) or "none"


def _int(x: Any) -> str:
    return str(int(x)) if isinstance(x, (int, float, np.integer, np.floating)) and np.isfinite(x) else "?"


def _levels(runs: pd.DataFrame, col: str) -> str:
    vals = sorted({int(v) for v in runs[col].dropna()})
    return ", ".join(map(str, vals)) or "n/a"


def _optim(runs: pd.DataFrame) -> str:
    """One entry per optimizer and lr rule: a searched or tuned lr is named once (its values are in the lr
    table), never listed run by run."""
    if "cfg.optim.lr" not in runs:
        return "n/a"
    chosen = runs["lr_protocol"].isin(["searched", "tuned"]) | runs["tuning_trial"].astype(bool)
    fixed = runs[~chosen].groupby(["optimizer", "cfg.optim.lr", "lr_scaling"], dropna=False).size()
    parts = [f"{o} lr {lr:g} (scaling {s})" for (o, lr, s), _ in fixed.items()]
    for (o, proto), _ in runs[chosen].groupby(["optimizer", "protocol"], dropna=False).size().items():
        parts.append(f"{o}, {proto} per grid cell (values: lr table below)")
    return "; ".join(parts)


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


# --------------------------------------------------------------------------------------------- speed phase
SPEED_KEYS = ["task", "cell", "batch_size", "num_steps"]


def log_t_interval(values: Any, level: float = 0.95) -> tuple[float, float, float, int]:
    """Geometric mean of positive values with a t-interval computed on their logs (NaN bounds below 2)."""
    x = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    x = x[np.isfinite(x) & (x > 0)]
    if len(x) == 0:
        return np.nan, np.nan, np.nan, 0
    if len(x) == 1:
        return float(x[0]), np.nan, np.nan, 1
    logs = np.log(x)
    centre = float(np.exp(logs.mean()))
    if np.ptp(logs) == 0:  # identical values: a zero-width interval (scipy would return NaN)
        return float(x[0]), float(x[0]), float(x[0]), len(x)
    low, high = stats.ttest_1samp(logs, 0.0).confidence_interval(confidence_level=level)
    return centre, float(np.exp(low)), float(np.exp(high)), len(x)


def speed_table(speed: pd.DataFrame | None, level: float = 0.95) -> pd.DataFrame:
    """Per (task, cell, batch_size, num_steps) of the speed phase: median tokens/s and µs per update over the
    rounds, their round-to-round CV, and the speed-up over the smallest batch of the same (task, cell,
    num_steps) — per-round ratios paired by round, t-interval on their logs. `superlinear` flags a speed-up
    whose interval lies wholly above the batch ratio: more than linear scaling is a measurement problem."""
    cols = [*SPEED_KEYS, "rounds", "tokens_per_s", "us_per_update", "cv", "batch_ratio", "speedup",
            "speedup_ci_low", "speedup_ci_high", "superlinear"]  # fmt: skip
    if speed is None or speed.empty:
        return pd.DataFrame(columns=cols)
    missing = [c for c in [*SPEED_KEYS, "round", "tokens_per_s"] if c not in speed]
    if missing:
        raise ValueError(f"speed.parquet lacks column {missing[0]}")
    df = speed.copy()
    df["tokens_per_s"] = pd.to_numeric(df["tokens_per_s"], errors="coerce")
    if "us_per_update" not in df:
        df["us_per_update"] = np.nan
    rows = []
    for (task, cell, ns), group in df.groupby(["task", "cell", "num_steps"], sort=True):
        base_bs = group["batch_size"].min()
        base = group[group["batch_size"] == base_bs].groupby("round")["tokens_per_s"].median()
        for bs, point in group.groupby("batch_size", sort=True):
            tps = point["tokens_per_s"].dropna()
            by_round = point.groupby("round")["tokens_per_s"].median()
            paired = (by_round / base).dropna()
            ratio = float(bs) / float(base_bs)
            if bs == base_bs:
                up, lo, hi = 1.0, np.nan, np.nan
            else:
                up, lo, hi, _ = log_t_interval(paired, level)
            mean = tps.mean()
            rows.append({
                "task": task, "cell": cell, "batch_size": int(bs), "num_steps": int(ns), "rounds": len(tps),
                "tokens_per_s": float(tps.median()) if len(tps) else np.nan,
                "us_per_update": float(pd.to_numeric(point["us_per_update"], errors="coerce").median()),
                "cv": float(tps.std(ddof=1) / mean) if len(tps) > 1 and mean > 0 else np.nan,
                "batch_ratio": ratio, "speedup": up, "speedup_ci_low": lo, "speedup_ci_high": hi,
                "superlinear": bool(np.isfinite(lo) and lo > ratio),
            })  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def speed_settings(speed: pd.DataFrame | None, plan: dict[str, Any] | None) -> str:
    """Rounds, timed-segment length, threads and device of the speed phase, in one line."""
    if speed is None or speed.empty:
        return "no speed phase (speed.parquet absent): no speed verdict can be decided"
    plan = plan or {}
    inner = plan.get("plan") if isinstance(plan.get("plan"), dict) else plan

    def uniq(col: str) -> str:
        return "/".join(sorted(speed[col].dropna().astype(str).unique())) if col in speed else "?"

    rounds = int(speed["round"].nunique()) if "round" in speed else "?"
    seg = ""
    if {"seconds", "updates"} <= set(speed.columns):
        seg = (f"; timed segments {speed['seconds'].min():.2f}–{speed['seconds'].max():.2f} s, "
               f"{int(speed['updates'].min())}–{int(speed['updates'].max())} updates")  # fmt: skip
    asked = ""
    if "min_seconds" in inner or "min_updates" in inner:
        asked = (f" (asked: ≥ {inner.get('min_seconds', '?')} s and ≥ {inner.get('min_updates', '?')} updates, "
                 f"{inner.get('warmup_updates', '?')} warm-up updates excluded)")  # fmt: skip
    cpu = f", CPU {uniq('cpu')}" if "cpu" in speed else ""
    return (f"{rounds} rounds interleaved round-robin, {len(speed.groupby(SPEED_KEYS))} points{seg}{asked}; "
            f"{uniq('threads')} torch thread(s), device {uniq('device')}{cpu}, one job at a time")  # fmt: skip


# ----------------------------------------------------------------------------------------- time to target
TARGETS = {"echo_accuracy": 0.9, "lags_span": 8, "text_perplexity": None}
# nats added to the worst batch size's plateau loss when a text preset sets no target: C2's equivalence margin
# for text (docs/claims.md), exp(0.02) = 2 % perplexity, so a batch size "as good as the worst" reaches it
TEXT_MARGIN = 0.02
TARGET_RULE = (
    "A run reaches its target between the last held-out evaluation that misses it and the first that meets it "
    "— echo: accuracy at its lag ≥ {echo_accuracy:g}; lags: recalled span ≥ {lags_span:g} (a lag counts when its "
    "accuracy is ≥ chance + measure.chance_margin and every shorter lag does too; the evaluations store no "
    "counts, so the Wilson condition of the final span is not applied; the metric interpolated is the smallest "
    "margin above chance + chance_margin over the lags the span needs); text: perplexity ≤ the preset's "
    "eval.target_perplexity, or, where the preset sets none, a held-out loss derived per (setting, cell, "
    "num_steps): the worst seed-mean best held-out loss among the batch sizes (runs that converged, for plateau "
    "runs) + {text_margin:g} nats, so every batch size that converged can reach it. The crossing is "
    "**interpolated**, linear in log updates on the metric, between those two evaluations (not read at the "
    "evaluation's step); a target met at the very first evaluation is read there (an upper bound). Tokens are "
    "interpolated alike; wall-clock = tokens × the speed phase's median seconds per token of the same (task, "
    "cell, batch_size, num_steps) (— where the speed phase did not time that point), never a run's own clock. "
    "Per grid point: k/n seeds reached; the geometric mean of the crossings over seeds when every seed reached "
    "it, its interval the t-interval on logs widened to cover the seeds' bracketing evaluations (the previous "
    "one below, the one that met the target above), since the crossing lies somewhere in between; otherwise the "
    'median with the runs that did not reach it counted as later than any that did ("not reached" when fewer '
    'than half reached). A fixed budget censors a run at its end: "not reached" there means not within the '
    "budget."
)


def _eval_span(row: pd.Series, lag_cols: list[str], chance: float, margin: float) -> float:
    span = 0
    for col in lag_cols:
        acc = row.get(col)
        if acc is None or pd.isna(acc):
            continue  # a head with no target is skipped, as in the final span
        if acc < chance + margin:
            break
        span = int(col.removeprefix("acc_lag_"))
    return float(span)


def _span_margin(ev: pd.DataFrame, lag_cols: list[str], threshold: float, span: float) -> pd.Series:
    """Per evaluation: the smallest accuracy - threshold over the lags up to the first measured lag >= span.
    It is >= 0 exactly when the recalled span (_eval_span) is >= span, and it moves continuously, so the
    crossing can be interpolated (the span itself jumps between lags)."""
    ks = np.array([int(c.removeprefix("acc_lag_")) for c in lag_cols])
    acc = ev[lag_cols].apply(pd.to_numeric, errors="coerce").to_numpy(float) - threshold
    running = np.minimum.accumulate(np.where(np.isnan(acc), np.inf, acc), axis=1)
    # per row: the first lag >= span that has a value (a head with no target is skipped, as in the span)
    usable = (ks >= span)[None, :] & ~np.isnan(acc)
    first = np.where(usable.any(axis=1), usable.argmax(axis=1), -1)
    out = np.where(first >= 0, running[np.arange(len(acc)), np.maximum(first, 0)], np.nan)
    return pd.Series(out, index=ev.index)


def _target_metric(run: pd.Series, ev: pd.DataFrame, targets: dict[str, Any], derived: dict[tuple, float]) -> tuple:
    """Per evaluation row of one run: (metric, threshold, higher_is_better, target in words, target source);
    metric None when the run has no target."""
    task = run.get("task")
    if task == "echo":
        lag = run.get("cfg.task.lag")
        col = "accuracy" if "accuracy" in ev and ev["accuracy"].notna().any() else f"acc_lag_{_int(lag)}"
        if col not in ev:
            return None, np.nan, True, "no accuracy column", ""
        thr = float(targets["echo_accuracy"])
        return pd.to_numeric(ev[col], errors="coerce"), thr, True, f"accuracy ≥ {thr:g}", "fixed"
    if task == "lags":
        lag_cols = sorted((c for c in ev if c.startswith("acc_lag_")), key=lambda c: int(c.removeprefix("acc_lag_")))
        chance = pd.to_numeric(pd.Series([run.get("chance_accuracy")]), errors="coerce").iloc[0]
        margin = pd.to_numeric(pd.Series([run.get("cfg.measure.chance_margin", 0.1)]), errors="coerce").iloc[0]
        if not lag_cols or pd.isna(chance):
            return None, np.nan, True, "no accuracy per lag", ""
        margin = 0.1 if pd.isna(margin) else float(margin)
        span = float(targets["lags_span"])
        metric = _span_margin(ev, lag_cols, float(chance) + margin, span)
        return metric, 0.0, True, f"span ≥ {span:g}", "fixed"
    if task == "text":
        if "loss" not in ev:
            return None, np.nan, False, "no held-out loss", ""
        loss = pd.to_numeric(ev["loss"], errors="coerce")
        target = run.get("cfg.eval.target_perplexity", targets.get("text_perplexity"))
        target = pd.to_numeric(pd.Series([target]), errors="coerce").iloc[0]
        if pd.notna(target) and target > 0:
            return loss, float(np.log(target)), False, f"perplexity ≤ {target:g}", "preset (eval.target_perplexity)"
        ns = pd.to_numeric(pd.Series([run.get("num_steps")]), errors="coerce").iloc[0]
        key = (run.get("split"), run.get("cell"), int(ns) if pd.notna(ns) else None)
        if key not in derived:
            return None, np.nan, False, "no target perplexity in the preset, none derivable", ""
        thr, worst = derived[key]
        return loss, thr, False, f"loss ≤ {thr:.3f} nats (perplexity ≤ {np.exp(thr):.3g})", (
            f"derived: worst seed-mean best loss (batch {worst}) + {TEXT_MARGIN:g} nats")  # fmt: skip
    return None, np.nan, True, f"no target for task {task}", ""


def _reached_mask(run: pd.Series, ev: pd.DataFrame, targets: dict[str, Any]) -> tuple[pd.Series | None, str]:
    """Per evaluation row of one run: whether the target is met, and the target in words (None: no target)."""
    metric, thr, higher, text, _ = _target_metric(run, ev, {**TARGETS, **targets}, {})
    if metric is None:
        return None, text
    return (metric >= thr) if higher else (metric <= thr), text


def text_targets(runs: pd.DataFrame, evals: pd.DataFrame) -> dict[tuple, tuple[float, int]]:
    """Per (split, cell, num_steps) of text runs whose preset sets no target perplexity: (the target loss, the
    batch size that set it) = the worst seed-mean plateau loss among the batch sizes + TEXT_MARGIN. A run's
    plateau loss is its best held-out loss (summary best_valid_loss, else the lowest evaluation); plateau runs
    that hit their cap or diverged are left out, so the target is one every converged batch size can reach."""
    if runs.empty or "task" not in runs:
        return {}
    text = runs[runs["task"] == "text"].copy()
    if "cfg.eval.target_perplexity" in text:
        text = text[pd.to_numeric(text["cfg.eval.target_perplexity"], errors="coerce").isna()]
    if text.empty:
        return {}
    best = pd.to_numeric(text.get("best_valid_loss", pd.Series(np.nan, index=text.index)), errors="coerce")
    if not evals.empty and {"run_id", "loss"} <= set(evals.columns):
        low = pd.to_numeric(evals["loss"], errors="coerce").groupby(evals["run_id"]).min()
        best = best.fillna(text["run_id"].map(low))
    text["plateau_loss"] = best
    if "regime" in text and "converged" in text:
        plateau = text["regime"] == "plateau"
        text = text[~plateau | text["converged"].map(lambda v: v is True or v is np.True_)]
    text = text[np.isfinite(text["plateau_loss"].astype(float))]
    out = {}
    for (split, cell, ns), g in text.groupby(["split", "cell", "num_steps"]):
        means = g.groupby("batch_size")["plateau_loss"].mean()
        if means.empty:
            continue
        out[(split, cell, int(ns))] = (float(means.max()) + TEXT_MARGIN, int(means.idxmax()))
    return out


def interpolate_crossing(
    steps: Any, metric: Any, threshold: float, higher: bool = True
) -> tuple[float, float, float, str]:
    """Where a run's evaluation curve first meets `threshold`: (crossing, the previous evaluation's step,
    the meeting evaluation's step, how). The crossing is linear in log updates on the metric between the
    last evaluation before the first that meets it and that one; met at the first evaluation (or after one
    without a value, or at step 0): that evaluation's step, an upper bound. Never met: NaNs, "not reached"."""
    u = np.asarray(steps, dtype=float)
    m = np.asarray(metric, dtype=float)
    met = (m >= threshold) if higher else (m <= threshold)
    met &= np.isfinite(m)
    if not met.any():
        return np.nan, np.nan, np.nan, "not reached"
    i = int(np.argmax(met))
    u1 = float(u[i])
    if i == 0:
        return u1, 0.0, u1, "first evaluation"
    u0, m0, m1 = float(u[i - 1]), float(m[i - 1]), float(m[i])
    if not np.isfinite(m0) or u0 <= 0 or u1 <= u0 or m1 == m0:
        return u1, u0, u1, "at the evaluation"
    frac = float(np.clip((threshold - m0) / (m1 - m0), 0.0, 1.0))
    return float(np.exp(np.log(u0) + frac * (np.log(u1) - np.log(u0)))), u0, u1, "interpolated"


def time_to_target_runs(runs: pd.DataFrame, evals: pd.DataFrame, speed: pd.DataFrame | None,
                        targets: dict[str, Any] | None = None) -> pd.DataFrame:  # fmt: skip
    """One row per run: the target (and where it came from), whether it was reached, and the interpolated
    crossing in updates, tokens and wall-clock seconds, with the bracketing evaluations (`*_prev`: the last
    that missed it, `*_eval`: the first that met it)."""
    targets = {**TARGETS, **(targets or {})}
    sec_per_token = {}
    st = speed_table(speed)
    for r in st.itertuples(index=False):
        if r.tokens_per_s > 0:
            sec_per_token[(r.task, r.cell, int(r.batch_size), int(r.num_steps))] = 1.0 / r.tokens_per_s
    cols = ["run_id", "split", "regime", "task", "cell", "batch_size", "num_steps", "seed", "target",
            "target_source", "reached", "crossing", "updates", "tokens", "seconds", "updates_prev", "tokens_prev",
            "seconds_prev", "updates_eval", "tokens_eval", "seconds_eval"]  # fmt: skip
    rows = []
    by_run = dict(tuple(evals.groupby("run_id"))) if not evals.empty and "run_id" in evals else {}
    derived = text_targets(runs, evals) if "task" in runs and (runs["task"] == "text").any() else {}
    for _, run in runs.iterrows():
        ev = by_run.get(run["run_id"])
        if ev is None or ev.empty or "step" not in ev:
            continue
        ev = ev.sort_values("step")
        metric, thr, higher, target, source = _target_metric(run, ev, targets, derived)
        if metric is None:
            continue
        steps = pd.to_numeric(ev["step"], errors="coerce").to_numpy(float)
        u, u0, u1, how = interpolate_crossing(steps, metric.to_numpy(float), thr, higher)
        reached = how != "not reached"
        tok = pd.to_numeric(ev["tokens"], errors="coerce").to_numpy(float) if "tokens" in ev else steps * np.nan
        t1 = float(tok[np.searchsorted(steps, u1)]) if reached else np.nan
        t0 = float(tok[np.searchsorted(steps, u0)]) if reached and u0 > 0 else 0.0 if reached else np.nan
        tokens = t0 + (t1 - t0) * (u - u0) / (u1 - u0) if reached and u1 > u0 else t1
        key = (run["task"], run["cell"], int(run["batch_size"]), int(run["num_steps"]))
        spt = sec_per_token.get(key, np.nan)
        rows.append({
            "run_id": run["run_id"], "split": run["split"], "regime": run.get("regime", "budget"),
            "task": run["task"], "cell": run["cell"], "batch_size": int(run["batch_size"]),
            "num_steps": int(run["num_steps"]), "seed": run["seed"], "target": target, "target_source": source,
            "reached": reached, "crossing": how, "updates": u, "tokens": tokens, "seconds": tokens * spt,
            "updates_prev": u0, "tokens_prev": t0, "seconds_prev": t0 * spt,
            "updates_eval": u1, "tokens_eval": t1, "seconds_eval": t1 * spt,
        })  # fmt: skip
    df = pd.DataFrame(rows, columns=cols)
    df["reached"] = df["reached"].astype(bool)
    return df


def _censored_median(values: pd.Series, reached: pd.Series) -> float:
    """Median where runs that did not reach the target count as later than every run that did: NaN (not
    reached) when fewer than half reached, and NaN when a run that reached it has no value (not timed)."""
    hit = reached.to_numpy(bool)
    vals = values.to_numpy(float)
    if np.isnan(vals[hit]).any() or len(vals) == 0:
        return np.nan
    med = float(np.median(np.where(hit, vals, np.inf)))
    return med if np.isfinite(med) else np.nan


TTT_KEYS = ["split", "cell", "batch_size", "num_steps"]
TTT_MEASURES = ("updates", "tokens", "seconds")


def aggregate_ttt(per_run: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per (split, cell, batch_size, num_steps) of time_to_target_runs: seeds reached k/n and, per measure, the
    geometric mean of the crossings with a log-scale t-interval widened to the bracketing evaluations (all
    seeds reached), or a censored median."""
    out = []
    for key, g in per_run.groupby(TTT_KEYS, sort=True):
        n, k = len(g), int(g["reached"].sum())
        row: dict[str, Any] = dict(zip(TTT_KEYS, key, strict=True))
        row.update(task=g["task"].iloc[0], regime=g["regime"].iloc[0], target=g["target"].iloc[0],
                   target_source=g["target_source"].iloc[0], seeds=n, reached=k)  # fmt: skip
        for m in TTT_MEASURES:
            vals = g[m]
            if k == n and vals.notna().all():
                c, lo, hi, _ = log_t_interval(vals, level)
                # interval-censored: each run crossed somewhere after its previous evaluation (0 when the first
                # evaluation already met the target) and by the one that met it, so the interval covers both
                prev, at = g[f"{m}_prev"], g[f"{m}_eval"]
                if prev.notna().all():
                    low_prev = log_t_interval(prev, level)[1] if (prev > 0).all() else 0.0
                    lo = np.nanmin([lo, low_prev, c]) if np.isfinite(low_prev) else lo
                if at.notna().all():
                    c_at, _, high_at, _ = log_t_interval(at, level)
                    hi = np.nanmax([hi, high_at if np.isfinite(high_at) else c_at, c])
            else:
                c, lo, hi = _censored_median(vals, g["reached"]), np.nan, np.nan
            row.update({m: c, f"{m}_ci_low": lo, f"{m}_ci_high": hi})
        row["all_reached"] = k == n
        row["interpolated"] = f"{int((g['crossing'] == 'interpolated').sum())}/{k}"
        out.append(row)
    cols = [*TTT_KEYS, "task", "regime", "target", "target_source", "seeds", "reached", "all_reached",
            "interpolated"] + [f"{m}{s}" for m in TTT_MEASURES for s in ("", "_ci_low", "_ci_high")]  # fmt: skip
    return pd.DataFrame(out, columns=cols)


def time_to_target(runs: pd.DataFrame, evals: pd.DataFrame, speed: pd.DataFrame | None,
                   targets: dict[str, Any] | None = None, level: float = 0.95) -> pd.DataFrame:  # fmt: skip
    """Per (split, cell, batch_size, num_steps): seeds reached k/n and, per measure (updates, tokens,
    seconds), the geometric mean with a log-scale t-interval (all seeds reached) or a censored median."""
    return aggregate_ttt(time_to_target_runs(runs, evals, speed, targets), level)


def _first(ok: pd.DataFrame, m: str) -> tuple[int | str | None, float]:
    """The batch size with the smallest `m`, or the tied ones: every point whose interval (or, without one,
    its value) reaches down to the best point's upper end is a contender."""
    pts = ok.dropna(subset=[m])
    if pts.empty:
        return None, np.nan
    best = pts.loc[pts[m].idxmin()]
    upper = best[f"{m}_ci_high"] if np.isfinite(best[f"{m}_ci_high"]) else best[m]
    low = pts[f"{m}_ci_low"].where(np.isfinite(pts[f"{m}_ci_low"]), pts[m])
    tied = sorted(int(b) for b in pts.loc[low <= upper, "batch_size"])
    if len(tied) == 1:
        return tied[0], float(best[m])
    return " = ".join(map(str, tied)) + " (intervals overlap)", float(best[m])


def fastest_batch(ttt: pd.DataFrame) -> pd.DataFrame:
    """Per (split, cell, num_steps): the batch size that reaches the target first in wall-clock (and in
    updates), among grid points whose seeds all reached it; ties where the intervals overlap the best one."""
    cols = ["split", "cell", "num_steps", "first in wall-clock", "seconds", "first in updates", "updates",
            "points reached (all seeds)"]  # fmt: skip
    rows = []
    for (split, cell, ns), g in ttt.groupby(["split", "cell", "num_steps"], sort=True):
        ok = g[g["all_reached"]]
        by_time, sec = _first(ok, "seconds")
        by_upd, upd = _first(ok, "updates")
        rows.append({
            "split": split, "cell": cell, "num_steps": int(ns),
            "first in wall-clock": by_time if by_time is not None else "none timed and reached",
            "seconds": sec, "first in updates": by_upd if by_upd is not None else "none reached", "updates": upd,
            "points reached (all seeds)": f"{len(ok)}/{len(g)}",
        })  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def show_ttt(ttt: pd.DataFrame) -> pd.DataFrame:
    """The time-to-target table as text: 'value [low, high]', 'median ≥ ... (censored)' or 'not reached'."""
    if ttt.empty:
        return ttt

    def cell(r: pd.Series, m: str) -> str:
        v = r[m]
        if not np.isfinite(v):
            return "— (not timed)" if m == "seconds" and np.isfinite(r["updates"]) else "not reached"
        fmt = ".3g"
        if r["all_reached"] and np.isfinite(r[f"{m}_ci_low"]):
            return f"{v:{fmt}} [{r[f'{m}_ci_low']:{fmt}}, {r[f'{m}_ci_high']:{fmt}}]"
        if r["all_reached"]:
            return f"{v:{fmt}}"
        return f"median {v:{fmt}} (censored)"

    return _show_ttt_long(ttt, cell)


def ttt_wide(ttt: pd.DataFrame, measure: str) -> pd.DataFrame:
    """One row per (split, cell, num_steps), a column per batch size: the measure ("updates" or "seconds") as
    text, with k/n seeds where not every seed reached the target."""
    if ttt.empty:
        return ttt
    long = show_ttt(ttt)
    col = {"updates": "updates", "tokens": "tokens", "seconds": "wall-clock s"}[measure]
    text = long[col].where(ttt["all_reached"].to_numpy(), long[col] + " (" + long["reached"] + ")")
    wide = long.assign(text=text, bs="batch " + long["batch_size"].astype(str)).pivot_table(
        index=["split", "cell", "num_steps"], columns="bs", values="text", aggfunc="first"
    )
    order = sorted(wide.columns, key=lambda c: int(c.split()[1]))
    return wide[order].reset_index().rename_axis(columns=None)


def _show_ttt_long(ttt: pd.DataFrame, cell) -> pd.DataFrame:
    return pd.DataFrame({
        "split": ttt["split"], "cell": ttt["cell"], "batch_size": ttt["batch_size"].astype(int),
        "num_steps": ttt["num_steps"].astype(int), "target": ttt["target"],
        "reached": [f"{k}/{n}" for k, n in zip(ttt["reached"], ttt["seeds"], strict=True)],
        "updates": ttt.apply(cell, axis=1, m="updates"), "tokens": ttt.apply(cell, axis=1, m="tokens"),
        "wall-clock s": ttt.apply(cell, axis=1, m="seconds"),
    })  # fmt: skip


# ----------------------------------------------------------------------------------------- noise scale
NOISE_COLUMNS = ("noise_b_simple", "noise_g2", "noise_trace")


def noise_scale_table(runs: pd.DataFrame, evals: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Gradient noise scale B_simple = tr(Σ)/|G|² (McCandlish et al. 2018) per (split, cell, num_steps) at each
    stage of training (fraction of the run's budget at the evaluation, to 0.05): per seed the median over the
    batch sizes, then the geometric mean over seeds with a t-interval on logs. `above` lists the grid's batch
    sizes above the interval: there more batch stops saving updates."""
    cols = ["split", "cell", "num_steps", "progress", "b_simple", "ci_low", "ci_high", "seeds", "g2", "trace",
            "grid batch sizes", "above B_simple"]  # fmt: skip
    if evals.empty or "noise_b_simple" not in evals:
        return pd.DataFrame(columns=cols)
    ev = evals.copy()
    for c in NOISE_COLUMNS:
        ev[c] = pd.to_numeric(ev[c], errors="coerce") if c in ev else np.nan
    ev = ev[ev["noise_b_simple"].notna()]
    if ev.empty:
        return pd.DataFrame(columns=cols)
    last = ev.groupby("run_id")["step"].transform("max") if "step" in ev else None
    ev["progress"] = (ev["step"] / last).round(2) if last is not None else np.nan
    ev["progress"] = (ev["progress"] / 0.05).round() * 0.05
    grid = runs.groupby(["split", "cell", "num_steps"])["batch_size"].agg(lambda s: sorted({int(v) for v in s}))
    rows = []
    for (split, cell, ns, prog), g in ev.groupby(["split", "cell", "num_steps", "progress"], sort=True):
        per_seed = g.groupby("seed")["noise_b_simple"].median()
        c, lo, hi, n = log_t_interval(per_seed, level)
        sizes = grid.get((split, cell, ns), [])
        bound = hi if np.isfinite(hi) else c
        rows.append({
            "split": split, "cell": cell, "num_steps": int(ns), "progress": float(prog), "b_simple": c,
            "ci_low": lo, "ci_high": hi, "seeds": n, "g2": float(g["noise_g2"].median()),
            "trace": float(g["noise_trace"].median()), "grid batch sizes": ", ".join(map(str, sizes)),
            "above B_simple": ", ".join(str(b) for b in sizes if np.isfinite(bound) and b > bound) or "none",
        })  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------------------ lr protocol
def noise_wide(noise: pd.DataFrame) -> pd.DataFrame:
    """One row per (split, cell, num_steps), a column per stage of training: 'B [low, high]', and the grid's
    batch sizes above B_simple at the last stage."""
    if noise.empty:
        return noise

    def show(r: pd.Series) -> str:
        ci = f" [{r['ci_low']:.3g}, {r['ci_high']:.3g}]" if np.isfinite(r["ci_low"]) else ""
        return f"{r['b_simple']:.3g}{ci}"

    keys = ["split", "cell", "num_steps"]
    df = noise.assign(text=noise.apply(show, axis=1), stage="at " + noise["progress"].map(lambda p: f"{p:.0%}"))
    wide = df.pivot_table(index=keys, columns="stage", values="text", aggfunc="first")
    wide = wide[sorted(wide.columns, key=lambda c: float(c[3:-1]))]
    last = df.sort_values("progress").groupby(keys)[["seeds", "grid batch sizes", "above B_simple"]].last()
    return wide.join(last.rename(columns={"above B_simple": "above B_simple (last stage)"})).reset_index()


def lr_summary(lr_search: dict[str, Any] | None, level: float = 0.95) -> pd.DataFrame:
    """Per (task, cell) of lr_search.json's chosen learning rates: lr at each batch size and the fitted
    exponent a of lr ∝ batch_size^a (least squares on logs, t-interval when three or more batch sizes). A tuned
    sweep chooses per (cell, batch_size, num_steps, ...): its other varying keys (num_steps, budget) become
    columns of their own, so no batch size appears twice in one row."""
    extra = [k for k in ("num_steps", "budget") if lr_search and any(k in c for c in lr_search.get("chosen") or [])]
    cols = ["task", "cell", *extra, "lr by batch size", "exponent", "exponent CI", "seeds per lr"]
    if not lr_search or not lr_search.get("chosen"):
        return pd.DataFrame(columns=cols)
    chosen = pd.DataFrame(lr_search["chosen"])
    for c in ("task", "cell", "batch_size", "lr"):
        if c not in chosen:
            raise ValueError(f"lr_search.json: chosen rows lack field {c}")
    chosen["batch_size"] = pd.to_numeric(chosen["batch_size"], errors="coerce")
    chosen["lr"] = pd.to_numeric(chosen["lr"], errors="coerce")
    extra = [k for k in extra if chosen[k].nunique(dropna=True) > 1]
    cols = ["task", "cell", *extra, "lr by batch size", "exponent", "exponent CI", "seeds per lr"]
    rows = []
    for key, g in chosen.groupby(["task", "cell", *extra], sort=True):
        task, cell = key[0], key[1]
        g = g.dropna(subset=["batch_size", "lr"]).sort_values("batch_size")
        g = g[(g["batch_size"] > 0) & (g["lr"] > 0)]
        slope, ci = np.nan, ""
        if g["batch_size"].nunique() >= 2:
            fit = stats.linregress(np.log(g["batch_size"]), np.log(g["lr"]))
            slope = float(fit.slope)
            if len(g) >= 3:
                half = stats.t.ppf(0.5 + level / 2, len(g) - 2) * fit.stderr
                ci = f"[{slope - half:.2f}, {slope + half:.2f}]"
        rows.append({
            "task": task, "cell": cell, **dict(zip(extra, key[2:], strict=True)),
            "lr by batch size": ", ".join(f"{int(b)}: {x:.3g}" for b, x in zip(g["batch_size"], g["lr"], strict=True)),
            "exponent": slope, "exponent CI": ci,
            "seeds per lr": "/".join(sorted({str(int(n)) for n in g["n"].dropna()})) if "n" in g else "?",
        })  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def seeds_per_point(runs: pd.DataFrame) -> str:
    """How many seeds each grid point has (e.g. "5 (all 96 points)" or "3-5")."""
    judged = runs[runs["in_verdicts"]] if "in_verdicts" in runs else runs
    n = judged.groupby(["split", "cell", "batch_size", "num_steps"])["seed"].nunique()
    if n.empty:
        return "n/a"
    return f"{n.min()} ({len(n)} points)" if n.min() == n.max() else f"{n.min()}–{n.max()} over {len(n)} points"
