"""Claim verdicts C1-C7 as pure functions of a tidy run table, the speed-phase table and the thresholds.

Input: one row per run with at least `cell, batch_size, num_steps, seed, status` and the outcomes a claim reads;
`split` (or `task_label`/`budget`/`protocol`) names the setting a row belongs to, and each claim is judged within
every split. Speed claims (C1, C3, C7's "cost per update") read only the speed phase (`speed.parquet`: one row
per task, cell, batch_size, num_steps, round), never the tokens/s of runs trained side by side.

Judges return numbers (SplitResult: verdict, numbers, details, deciding runs, uninformative groups); every
sentence is written in analysis/wording.py. Each decision rule is a module-level function (`c2_difference`,
`c3_state`, `c5_measure`, ...) so that a test can swap in a wrong rule and see the verdict change. The rules
are stated in docs/claims.md; their numbers live in thresholds.yaml.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis import stats
from analysis import wording as say
from sweep.record import COMPLETE, JUDGED_STATUSES

SUPPORTED, REFUTED, MIXED, INCONCLUSIVE = "supported", "refuted", "mixed", "inconclusive"
FINISHED = JUDGED_STATUSES  # sweep.record: the statuses a verdict reads (a pruned trial never is)
SPLIT_COLUMNS = ("task_label", "budget", "protocol", "variant")
NO_SPEED = say.REASONS["no_speed"]  # the sentence, for callers that look for it
DECIDING_COLUMNS = ["split", "folder", "why"]
UNINFORMATIVE_COLUMNS = ["split", "group", "reason"]


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    metric: str
    comparison: str


CLAIM_IDS = ("C1", "C2", "C3", "C4", "C5", "C6", "C7")
# What each claim says, what is measured and how it is compared: prose, written in analysis/wording.py.
CLAIMS = {cid: Claim(cid, *say.CLAIM_TEXT[cid]) for cid in CLAIM_IDS}


@dataclass
class SplitResult:
    verdict: str
    numbers: dict[str, Any] = field(default_factory=dict)
    details: pd.DataFrame = field(default_factory=pd.DataFrame)
    deciding: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["folder", "why"]))
    uninformative: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["group", "reason"]))
    reason: str | None = None  # why the split is inconclusive, when it is for want of evidence (wording.reason)
    reason_code: str | None = None  # which reason (a key of wording.REASONS)


@dataclass
class Verdict:
    claim: Claim
    verdict: str
    statistic: str
    sentence: str
    splits: pd.DataFrame  # split, verdict, statistic, sentence, runs
    details: pd.DataFrame  # the per-group numbers behind the statistic, with a split column
    deciding: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DECIDING_COLUMNS))
    uninformative: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=UNINFORMATIVE_COLUMNS))


Why = tuple[str, dict[str, Any]]  # (reason code, the numbers its sentence quotes): analysis/wording.py REASONS


def _why(code: str, **values: Any) -> Why:
    return code, values


def _inconclusive(why: Why, **kw: Any) -> SplitResult:
    code, values = why
    return SplitResult(INCONCLUSIVE, reason=say.reason(code, **values), reason_code=code, **kw)


# ------------------------------------------------------------------------------------------------- the table
def prepare(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows a verdict may read, with the derived columns the claims use (for hand-made tables too)."""
    df = runs.copy()
    if "in_verdicts" in df:
        df = df[df["in_verdicts"].astype(bool)]
    elif "status" in df:
        df = df[df["status"].isin(FINISHED)]
    else:
        df["status"] = COMPLETE
    if "split" not in df:
        present = [c for c in SPLIT_COLUMNS if c in df]
        if "task_label" not in df and "task" in df:  # hand-made tables name the task only
            present.insert(0, "task")
        df["split"] = df[present].astype(str).agg(" · ".join, axis=1) if present else "all runs"
    for col in ("batch_size", "num_steps", "seed"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    if "task" not in df:
        df["task"] = df["task_label"].astype(str).str.split().str[0] if "task_label" in df else "task"
    if "task_label" not in df:
        df["task_label"] = df["task"]
    if "budget_kind" not in df:
        df["budget_kind"] = df["budget"].astype(str).str.split().str[0] if "budget" in df else "tokens"
    if "folder" not in df:
        df["folder"] = [_point(r) for r in df.to_dict("records")]
    if "log_tokens_per_s" not in df and "tokens_per_s" in df:
        tps = pd.to_numeric(df["tokens_per_s"], errors="coerce")
        df["log_tokens_per_s"] = np.log(tps.where(tps > 0))
    return df


def _point(row: dict[str, Any]) -> str:
    return (
        f"{row.get('task')}: cell={row.get('cell')},batch_size={row.get('batch_size'):g},"
        f"num_steps={row.get('num_steps'):g},seed={row.get('seed'):g}"
    )


def _num(df: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(df[col], errors="coerce") if col in df else pd.Series(np.nan, index=df.index)


def _flag(df: pd.DataFrame, col: str) -> pd.Series:
    """A boolean summary flag; None/NaN (older records) stays NaN so that "not recorded" is never "False"."""
    if col not in df:
        return pd.Series(np.nan, index=df.index)
    return df[col].map(lambda v: np.nan if v is None or (isinstance(v, float) and math.isnan(v)) else float(bool(v)))


def _complete(df: pd.DataFrame, outcome: str) -> pd.DataFrame:
    d = df[df["status"] == COMPLETE].copy()
    if outcome not in d:
        return d.iloc[0:0]
    d[outcome] = pd.to_numeric(d[outcome], errors="coerce")
    return d[np.isfinite(d[outcome])]


def _family(df: pd.DataFrame) -> str:
    tasks = df["task"].dropna().astype(str).unique()
    return str(tasks[0]) if len(tasks) == 1 else "default"


def _seeds_short(df: pd.DataFrame, th: dict[str, Any], statuses: tuple[str, ...] = (COMPLETE,)) -> Why | None:
    """Why this split cannot answer for want of seeds, or None."""
    d = df[df["status"].isin(statuses)]
    if d.empty:
        return _why("no_complete_runs")
    seeds = d.groupby(["cell", "batch_size", "num_steps"], observed=True)["seed"].nunique().median()
    if seeds < th["min_seeds"]:
        return _why("few_seeds", seeds=float(seeds), need=th["min_seeds"])
    return None


def combine(verdicts: list[str]) -> str:
    """Across splits (or parts): agreement gives that verdict, disagreement "mixed"; none, inconclusive."""
    conclusive = {v for v in verdicts if v != INCONCLUSIVE}
    if not conclusive:
        return INCONCLUSIVE
    return conclusive.pop() if len(conclusive) == 1 else MIXED


def by_fractions(n_for: int, n_against: int, n: int, th: dict[str, Any]) -> str:
    """The shared "usually" rule: more than `majority` of the informative groups for the claim -> supported; at
    least `majority` against -> refuted; otherwise inconclusive (too many undecided groups)."""
    if n == 0:
        return INCONCLUSIVE
    if n_for / n > th["majority"]:
        return SUPPORTED
    if n_against / n >= th["majority"]:
        return REFUTED
    return INCONCLUSIVE


def _deciding(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["folder", "why"]).drop_duplicates()


# ------------------------------------------------------------------------------------------------- speed phase
def prepare_speed(speed: pd.DataFrame | None) -> pd.DataFrame | None:
    if speed is None:
        return None
    if not isinstance(speed, pd.DataFrame):
        raise TypeError(f"speed: expected the speed.parquet DataFrame or None, got {type(speed).__name__}")
    need = ("task", "cell", "batch_size", "num_steps", "round", "tokens_per_s")
    for col in need:
        if col not in speed:
            raise ValueError(f"speed table: column '{col}' is missing")
    sp = speed.copy()
    if "finite" in sp:  # a segment whose loss went non-finite timed a broken update
        sp = sp[sp["finite"].astype(bool)]
    if "sweep" not in sp:
        sp["sweep"] = ""
    for col in ("batch_size", "num_steps", "round", "tokens_per_s", "us_per_update"):
        if col in sp:
            sp[col] = pd.to_numeric(sp[col], errors="coerce").astype(float)
    return sp


def speed_points(sp: pd.DataFrame, th: dict[str, Any]) -> pd.DataFrame:
    """Per (task, cell, num_steps): log-log slope of tokens/s on batch size, largest/smallest batch ratio
    (paired-by-round t-interval on log ratios) and the round-to-round CV of each batch size."""
    conf = float(th["confidence"])
    rows = []
    for (_, task, cell, ns), g in sp.groupby(["sweep", "task", "cell", "num_steps"], observed=True):
        sizes = sorted(g["batch_size"].unique())
        rounds = g.groupby("batch_size")["round"].nunique()
        if len(sizes) < 2 or rounds.min() < th["speed"]["min_rounds"]:
            continue
        slope, s_lo, s_hi, _ = stats.loglog_slope(g["batch_size"], g["tokens_per_s"], conf)
        big, small = stats.paired_by_round(g, sizes[0], sizes[-1], "tokens_per_s")
        ratio, r_lo, r_hi, n = stats.log_ratio_ci(big, small, conf, paired=True)
        cvs = g.groupby("batch_size")["tokens_per_s"].apply(stats.cv)
        rows.append(
            {
                "task": task,
                "cell": cell,
                "num_steps": ns,
                "bs_small": sizes[0],
                "bs_large": sizes[-1],
                "slope": slope,
                "slope_low": s_lo,
                "slope_high": s_hi,
                "ratio": ratio,
                "ratio_low": r_lo,
                "ratio_high": r_hi,
                "rounds": n,
                "max_round_cv": float(cvs.max()),
                "faster": bool(np.isfinite(s_lo) and s_lo > 0 and np.isfinite(r_lo) and r_lo > 1),
            }
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------------- C1
def judge_c1(points: pd.DataFrame, c2: SplitResult, th: dict[str, Any]) -> SplitResult:
    """Throughput rises with batch size at (nearly) every point AND batch size leaves learning alone (C2)."""
    if points.empty:
        return _inconclusive(_why("speed_no_pairs"))
    n, faster = len(points), int(points["faster"].sum())
    share = faster / n
    need = th["c1"]["min_fraction_faster"]
    speed_part = SUPPORTED if share >= need else REFUTED if share <= 1 - need else MIXED
    # "mainly": speed that comes with a change in what is learned (C2 refuted) is not mainly speed
    verdict = (MIXED if c2.verdict == REFUTED else SUPPORTED) if speed_part == SUPPORTED else speed_part
    numbers = {
        "points": n,
        "faster": faster,
        "speed_part": speed_part,
        "c2": c2.verdict,
        "median_slope": float(points["slope"].median()),
        "median_ratio": float(points["ratio"].median()),
        "bs_small": float(points["bs_small"].min()),
        "bs_large": float(points["bs_large"].max()),
        "max_round_cv": float(points["max_round_cv"].max()),
    }
    deciding = _deciding(
        [(f"speed.parquet: {r.task} {r.cell} num_steps={r.num_steps:g}", say.why_speed(r)) for r in points.itertuples()]
    )
    return SplitResult(verdict, numbers, points, deciding)


# ------------------------------------------------------------------------------------------------------- C2
def c2_difference(big: Any, small: Any, margin: float, alpha: float) -> stats.Equivalence:
    """Rule: TOST on the ABSOLUTE difference of means (never a relative gap: 0.0077 vs 0.0002 nats is 0.0075
    nats, not 3700 %)."""
    return stats.tost(big, small, margin, alpha)


def c2_outcomes(d: pd.DataFrame, th: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(column, margin, unit) of every outcome C2 compares in this split."""
    c = th["c2"]
    fam = _family(d)
    loss = c["loss_margin"].get(fam, c["loss_margin"]["default"])
    out = [("valid_loss", float(loss), "nats")]
    if _num(d, "valid_accuracy").notna().any():
        out.append(("valid_accuracy", float(c["accuracy_margin"]), "accuracy"))
    if fam == "lags" and _num(d, "memory_capacity").notna().any():
        out.append(("memory_capacity", float(c["capacity_margin"]), "lags"))
    return out


def at_chance(g: pd.DataFrame, th: dict[str, Any]) -> Why | None:
    """Why a group learned nothing at any of its batch sizes (so equal outcomes say nothing), or None.

    echo/lags: every batch size's accuracy interval lies below chance + margin. Text: a language model beats
    1/V accuracy as soon as it learns token frequencies, so only a loss within the margin of ln V (a uniform
    guess) counts as having learned nothing.
    """
    conf, margin = float(th["confidence"]), float(th["c2"]["chance_margin"])
    chance = _num(g, "chance_accuracy").dropna()
    if chance.empty:
        return None
    level = float(chance.iloc[0])
    if _family(g) == "text":
        ln_v = math.log(1.0 / level)  # chance_accuracy = 1 / V
        loss_margin = th["c2"]["loss_margin"].get("text", th["c2"]["loss_margin"]["default"])
        means = _num(g, "valid_loss").groupby(g["batch_size"]).mean()
        if not means.empty and (means >= ln_v - loss_margin).all():
            return _why("uniform_guess", ln_v=ln_v)
        return None
    acc = _num(g, "valid_accuracy")
    if acc.isna().all():
        return None
    uppers = []
    for _, b in g.assign(_acc=acc).groupby("batch_size"):
        mean, _, high, _ = stats.t_interval(b["_acc"], conf)
        uppers.append(high if np.isfinite(high) else mean)
    if all(u < level + margin for u in uppers):
        return _why("at_chance", bound=level + margin)
    return None


def judge_c2(df: pd.DataFrame, th: dict[str, Any]) -> SplitResult:
    reason = _seeds_short(df, th)
    if reason:
        return _inconclusive(reason)
    d = df[df["status"] == COMPLETE]
    if d["batch_size"].nunique() < th["min_levels"]:
        return _inconclusive(_why("few_batch_sizes", n=d["batch_size"].nunique()))
    outcomes = c2_outcomes(d, th)
    alpha = float(th["alpha"])
    rows, unin = [], []
    for (cell, ns), g in d.groupby(["cell", "num_steps"], observed=True):
        group = f"cell={cell}, num_steps={ns:g}"
        sizes = sorted(g["batch_size"].unique())
        if len(sizes) < 2:
            continue
        small, big = sizes[0], sizes[-1]
        seeds = g.groupby("batch_size")["seed"].nunique()
        if seeds[[small, big]].min() < th["min_seeds"]:
            unin.append((group, say.reason("few_seeds_at_batch", need=th["min_seeds"], small=small, big=big)))
            continue
        why = at_chance(g, th)
        if why:
            unin.append((group, say.reason(why[0], **why[1])))
            continue
        states = []
        for col, margin, unit in outcomes:
            a, b = _num(g[g["batch_size"] == big], col), _num(g[g["batch_size"] == small], col)
            if a.notna().sum() < 2 or b.notna().sum() < 2:
                continue
            eq = c2_difference(a, b, margin, alpha)
            states.append(eq.state)
            rows.append(
                {
                    "cell": cell,
                    "num_steps": ns,
                    "group": group,
                    "outcome": col,
                    "unit": unit,
                    "bs_small": small,
                    "bs_large": big,
                    "mean_small": float(b.mean()),
                    "mean_large": float(a.mean()),
                    "diff": eq.diff,
                    "ci90_low": eq.low,
                    "ci90_high": eq.high,
                    "margin": margin,
                    "p_tost": eq.p_tost,
                    "state": eq.state,
                    "folders": list(g.loc[g["batch_size"].isin([small, big]), "folder"]),
                }
            )
        if states:
            gstate = (
                "different" if "different" in states else "equivalent" if set(states) == {"equivalent"} else "undecided"
            )
            for r in rows:
                if r["group"] == group:
                    r["group_state"] = gstate
    details = pd.DataFrame(rows)
    uninformative = pd.DataFrame(unin, columns=["group", "reason"])
    if details.empty:
        return _inconclusive(_why("no_informative_c2_group"), uninformative=uninformative)
    groups = details.drop_duplicates("group")
    n = len(groups)
    n_eq = int((groups["group_state"] == "equivalent").sum())
    n_diff = int((groups["group_state"] == "different").sum())
    verdict = by_fractions(n_eq, n_diff, n, th)
    want = {SUPPORTED: "equivalent", REFUTED: "different"}.get(verdict)
    dec = details if want is None else details[details["group_state"] == want]
    deciding = _deciding([(f, say.why_c2(r)) for r in dec.itertuples() for f in r.folders])
    numbers = {
        "groups": n,
        "equivalent": n_eq,
        "different": n_diff,
        "undecided": n - n_eq - n_diff,
        "uninformative": len(uninformative),
        "outcomes": [o for o, _, _ in outcomes],
        "margins": {o: (m, u) for o, m, u in outcomes},
    }
    return SplitResult(verdict, numbers, details.drop(columns=["folders"]), deciding, uninformative)


# ------------------------------------------------------------------------------------------------------- C3
def c3_state(low: float, high: float, band: tuple[float, float]) -> str:
    """Rule: a point supports "about 4x" only when its whole interval lies INSIDE the band (an interval that
    merely overlaps it, e.g. 1.38-4.79 against [3, 5], says nothing)."""
    if band[0] <= low and high <= band[1]:
        return "inside"
    if high < band[0] or low > band[1]:
        return "outside"
    return "straddling"


def judge_c3(sp: pd.DataFrame, th: dict[str, Any]) -> SplitResult:
    c = th["c3"]
    target, conf = float(c["ratio"]), float(th["confidence"])
    sizes = sorted(sp["batch_size"].unique())
    pairs = [(b, b * target) for b in sizes if b * target in sizes]
    if not pairs:
        return _inconclusive(_why("speed_no_ratio_pair", target=target))
    small, big = pairs[0]
    band = (target * (1 - c["tolerance"]), target * (1 + c["tolerance"]))
    rows = []
    for (_, cell, ns), g in sp.groupby(["sweep", "cell", "num_steps"], observed=True):
        a, b = stats.paired_by_round(g, small, big, "tokens_per_s")
        if len(a) < th["speed"]["min_rounds"]:
            continue
        ratio, low, high, n = stats.log_ratio_ci(a, b, conf, paired=True)
        superlinear = bool(low > big / small)  # more than the extra rows can explain: timing, not batching
        rows.append(
            {
                "cell": cell,
                "num_steps": ns,
                "bs_small": small,
                "bs_large": big,
                "ratio": ratio,
                "ci_low": low,
                "ci_high": high,
                "rounds": n,
                "state": "flagged" if superlinear else c3_state(low, high, band),
                "superlinear": superlinear,
                "cv_small": stats.cv(b),
                "cv_large": stats.cv(a),
            }
        )
    details = pd.DataFrame(rows)
    if details.empty:
        return _inconclusive(_why("speed_too_few_rounds", small=small, big=big))
    counted = details[~details["superlinear"]]
    n = len(counted)
    k = {s: int((counted["state"] == s).sum()) for s in ("inside", "outside", "straddling")}
    if n == 0:
        verdict = INCONCLUSIVE
    elif k["inside"] / n > th["majority"]:
        verdict = SUPPORTED
    elif k["outside"] / n > th["majority"]:
        verdict = REFUTED
    elif k["inside"] and k["outside"]:
        verdict = MIXED
    else:
        verdict = INCONCLUSIVE
    numbers = {
        "points": n,
        **k,
        "flagged": int(details["superlinear"].sum()),
        "band": band,
        "small": small,
        "big": big,
        "median": float(details["ratio"].median()),
        "min": float(details["ratio"].min()),
        "max": float(details["ratio"].max()),
    }
    deciding = _deciding(
        [
            (f"speed.parquet: {r.cell} num_steps={r.num_steps:g} batch {small:g}/{big:g}", say.why_c3(r))
            for r in details.itertuples()
        ]
    )
    return SplitResult(verdict, numbers, details, deciding)


# ------------------------------------------------------------------------------------------------------- C4
def longest_lag(d: pd.DataFrame) -> float:
    """The longest lag the task tests (from the per-lag accuracy columns, else the config)."""
    lags = [int(c.removeprefix("acc_lag_")) for c in d.columns if c.startswith("acc_lag_") and _num(d, c).notna().any()]
    if lags:
        return float(max(lags))
    for col in ("cfg.task.lag",):
        if col in d and _num(d, col).notna().any():
            return float(_num(d, col).max())
    return np.nan


def c4_length(d: pd.DataFrame) -> tuple[pd.Series, str]:
    """The learned length C4 reads: memory capacity (from the per-lag accuracy curve) when the task has lags;
    otherwise the effective context, and only where measured with the warm-state unigram ablation."""
    mc = _num(d, "memory_capacity")
    if mc.notna().any():
        return mc, "memory_capacity"
    ec = _num(d, "effective_context")
    method = d["context_method"] if "context_method" in d else pd.Series(None, index=d.index)
    return ec.where(method == "warm-unigram"), "effective_context (warm-unigram)"


def judge_c4_growth(d: pd.DataFrame, th: dict[str, Any]) -> tuple[str, dict[str, Any], list, list]:
    c = th["c4"]
    if not str(d["budget_kind"].iloc[0]).startswith("tokens"):
        return INCONCLUSIVE, {"growth_reason": "growth_equal_tokens_only"}, [], []
    length, name = c4_length(d)
    d = d.assign(_len=length)
    lag = longest_lag(d)
    rows, unin = [], []
    for (cell, bs), g in d[d["_len"].notna()].groupby(["cell", "batch_size"], observed=True):
        group = f"cell={cell}, batch_size={bs:g}"
        if g["num_steps"].nunique() < th["min_levels"]:
            continue
        if g.groupby("num_steps")["seed"].nunique().min() < th["min_seeds"]:
            unin.append((group, say.reason("few_seeds_at_num_steps", need=th["min_seeds"])))
            continue
        if np.isfinite(lag) and g["num_steps"].min() > lag:
            unin.append((group, say.reason("beyond_longest_lag", lag=lag)))
            continue
        means = g.groupby("num_steps")["_len"].mean()
        if (means < c["min_length"]).all():
            unin.append((group, say.reason("nothing_learned", measure=name, floor=c["min_length"])))
            continue
        rho, p = stats.spearman_permutation(
            g["num_steps"], g["_len"], int(th["n_resamples"]), int(th["bootstrap_seed"])
        )
        grows = bool(np.isfinite(rho) and rho >= c["min_rho"] and p < th["alpha"])
        rows.append(
            {
                "cell": cell,
                "batch_size": bs,
                "group": group,
                "measure": name,
                "rho": rho,
                "p": p,
                "grows": grows,
                "ns_low": g["num_steps"].min(),
                "ns_high": g["num_steps"].max(),
                "mean_low": float(means.iloc[0]),
                "mean_high": float(means.iloc[-1]),
                "folders": list(g["folder"]),
            }
        )
    if not rows:
        return INCONCLUSIVE, {"growth_reason": "no_informative_c4_group"}, rows, unin
    n, k = len(rows), sum(r["grows"] for r in rows)
    return (
        by_fractions(k, n - k, n, th),
        {"growth_groups": n, "growing": k, "longest_lag": lag, "measure": name},
        rows,
        unin,
    )


def judge_c4_bound(d: pd.DataFrame, th: dict[str, Any]) -> tuple[str, dict[str, Any], pd.DataFrame]:
    c = th["c4"]
    span = _num(d, "span")
    runs = d.assign(span_value=span)[span.notna()]
    if runs.empty:
        return INCONCLUSIVE, {"bound_reason": "no_span"}, runs
    excess = runs["span_value"] - runs["num_steps"]
    over = runs[excess > 0]
    share = len(over) / len(runs)
    verdict = SUPPORTED if share <= c["bound_ok"] else REFUTED if share >= c["bound_broken"] else MIXED
    return (
        verdict,
        {"runs": len(runs), "exceeding": len(over), "share_exceeding": share, "max_excess": float(excess.max())},
        over,
    )


def secondary_lengths(d: pd.DataFrame) -> dict[str, Any]:
    """Which gradient horizons and effective contexts could be used (never decide; reported beside)."""
    gh = _num(d, "gradient_horizon")
    cens, flat = _flag(d, "gradient_horizon_censored"), _flag(d, "gradient_flat")
    usable = gh.notna() & (cens == 0) & (flat == 0)
    method = d["context_method"] if "context_method" in d else pd.Series(None, index=d.index)
    ec = _num(d, "effective_context")
    return {
        "horizon_usable": int(usable.sum()),
        "horizon_censored": int((cens == 1).sum()),
        "horizon_flat": int((flat == 1).sum()),
        "horizon_unflagged": int((gh.notna() & (cens.isna() | flat.isna())).sum()),
        "horizon_rho": stats.spearman(d.loc[usable, "num_steps"], gh[usable])[0],
        "context_usable": int((ec.notna() & (method == "warm-unigram")).sum()),
        "context_old": int((ec.notna() & (method != "warm-unigram")).sum()),
    }


def judge_c4(df: pd.DataFrame, th: dict[str, Any]) -> SplitResult:
    reason = _seeds_short(df, th)
    if reason:
        return _inconclusive(reason)
    d = df[df["status"] == COMPLETE]
    if d["num_steps"].nunique() < th["min_levels"]:
        return _inconclusive(_why("few_num_steps", n=d["num_steps"].nunique()))
    growth, gnum, grows, unin = judge_c4_growth(d, th)
    bound, bnum, over = judge_c4_bound(d, th)
    if growth == REFUTED or (bound == REFUTED and growth != SUPPORTED):
        verdict = REFUTED
    elif growth == SUPPORTED and bound == SUPPORTED:
        verdict = SUPPORTED
    elif growth == SUPPORTED:
        verdict = MIXED if bound in (REFUTED, MIXED) else INCONCLUSIVE
    else:
        verdict = INCONCLUSIVE
    details = pd.DataFrame([{k: v for k, v in r.items() if k != "folders"} for r in grows])
    dec = [(f, say.why_c4_growth(r)) for r in grows if r["grows"] == (growth != REFUTED) for f in r["folders"]]
    dec += [(r.folder, say.why_c4_bound(r)) for r in over.itertuples()]
    numbers = {"growth": growth, "bound": bound, **gnum, **bnum, **secondary_lengths(d)}
    return SplitResult(verdict, numbers, details, _deciding(dec), pd.DataFrame(unin, columns=["group", "reason"]))


# ------------------------------------------------------------------------------------------------------- C5
def c5_measure(d: pd.DataFrame) -> pd.DataFrame:
    """Rule: the growth of a window's gradient norm with window length at FIXED parameters, one slope per run
    (never the max grad norm over training, which spikes while a network learns). Columns slope, initial."""
    return pd.DataFrame({"slope": _num(d, "growth_slope"), "initial": _num(d, "growth_slope_initial")}, index=d.index)


def judge_c5(df: pd.DataFrame, th: dict[str, Any]) -> SplitResult:
    reason = _seeds_short(df, th, FINISHED)
    if reason:
        return _inconclusive(reason)
    d = df[df["status"].isin(FINISHED)]
    m = c5_measure(d)
    diverged = d["status"] == "diverged"
    if m["slope"].notna().sum() == 0 and not diverged.any():
        return _inconclusive(_why("no_growth_slope"))
    conf, floor = float(th["confidence"]), float(th["c5"]["min_slope"])
    d = d.assign(_slope=m["slope"], _initial=m["initial"], _clip=_num(d, "clip_fraction"))
    rows = []
    for (cell, bs, ns), g in d.groupby(["cell", "batch_size", "num_steps"], observed=True):
        mean, low, high, n = stats.t_interval(g["_slope"], conf)
        imean, ilow, ihigh, _ = stats.t_interval(g["_initial"], conf)
        if n < th["min_seeds"]:
            state = "too few seeds"
        else:
            state = "explodes" if low > floor else "bounded" if high < floor else "undecided"
        rows.append(
            {
                "cell": cell,
                "batch_size": bs,
                "num_steps": ns,
                "slope": mean,
                "ci_low": low,
                "ci_high": high,
                "slope_initial": imean,
                "initial_ci_low": ilow,
                "initial_ci_high": ihigh,
                "seeds": n,
                "state": state,
                "diverged": int((g["status"] == "diverged").sum()),
                "clip_fraction": float(g["_clip"].mean()),
                "folders": list(g["folder"]),
            }
        )
    details = pd.DataFrame(rows)
    div = details.groupby("num_steps")["diverged"].sum()
    more_at_long = bool(div.iloc[-1] > div.iloc[0]) if len(div) > 1 else False
    judged = details[details["state"] != "too few seeds"]
    if (judged["state"] == "explodes").any() or more_at_long:
        verdict = SUPPORTED
    elif not judged.empty and (judged["state"] == "bounded").all() and not diverged.any():
        verdict = REFUTED
    else:
        verdict = INCONCLUSIVE
    want = {SUPPORTED: "explodes", REFUTED: "bounded"}.get(verdict)
    dec = details if want is None else details[details["state"] == want]
    deciding = [(f, say.why_c5(r)) for r in dec.itertuples() for f in r.folders]
    deciding += [(r.folder, say.reason("diverged")) for r in d[diverged].itertuples()]
    clip_rho = stats.spearman(d["num_steps"], d["_clip"])[0]
    numbers = {
        "points": len(judged),
        "explodes": int((judged["state"] == "explodes").sum()),
        "bounded": int((judged["state"] == "bounded").sum()),
        "diverged": int(diverged.sum()),
        "diverged_by_ns": {float(k): int(v) for k, v in div.items()},
        "clip_rho": clip_rho,
        "min_slope": floor,
        "max_low": float(judged["ci_low"].max()) if not judged.empty else np.nan,
    }
    return SplitResult(verdict, numbers, details.drop(columns=["folders"]), _deciding(deciding))


# ------------------------------------------------------------------------------------------------------- C7
def judge_c7(df: pd.DataFrame, sp: pd.DataFrame | None, th: dict[str, Any]) -> SplitResult:
    reason = _seeds_short(df, th)
    if reason:
        return _inconclusive(reason)
    d = df[df["status"] == COMPLETE]
    outcome = str(th["c7"].get("outcome", "loss_jitter"))
    jitter = _num(d, outcome)
    if jitter.notna().sum() == 0:
        return _inconclusive(_why("no_jitter", outcome=outcome))
    if not (d["batch_size"] == 1).any():
        return _inconclusive(_why("no_batch_1"))
    conf, factor = float(th["confidence"]), float(th["c7"]["min_factor"])
    d = d.assign(_j=jitter)
    rows = []
    for (cell, ns), g in d.groupby(["cell", "num_steps"], observed=True):
        one = g.loc[g["batch_size"] == 1, "_j"]
        for bs in sorted(b for b in g["batch_size"].unique() if b > 1):
            other = g.loc[g["batch_size"] == bs, "_j"]
            if min(one.notna().sum(), other.notna().sum()) < th["min_seeds"]:
                continue
            ratio, low, high, _ = stats.log_ratio_ci(one, other, conf, paired=False)
            state = "erratic" if low > factor else "calm" if high < factor else "undecided"
            rows.append(
                {
                    "cell": cell,
                    "num_steps": ns,
                    "batch_size": bs,
                    "ratio": ratio,
                    "ci_low": low,
                    "ci_high": high,
                    "state": state,
                    "folders": list(g.loc[g["batch_size"].isin([1, bs]), "folder"]),
                }
            )
    details = pd.DataFrame(rows)
    if details.empty:
        return _inconclusive(_why("no_c7_group"))
    n = len(details)
    n_err, n_calm = int((details["state"] == "erratic").sum()), int((details["state"] == "calm").sum())
    erratic = by_fractions(n_err, n_calm, n, th)
    cheap, cheap_num = INCONCLUSIVE, {"cheap_reason": "no_speed"}
    if sp is not None and "us_per_update" in sp:
        res = []
        for _, g in sp.groupby(["sweep", "task", "cell", "num_steps"], observed=True):
            a, b = stats.paired_by_round(g, 4.0, 1.0, "us_per_update")  # batch 1 over batch 4
            if len(a) >= th["speed"]["min_rounds"]:
                res.append(stats.log_ratio_ci(a, b, conf, paired=True))
        if res:
            k_cheap = sum(r[2] < 1 for r in res)
            k_dear = sum(r[1] > 1 for r in res)
            cheap = by_fractions(k_cheap, k_dear, len(res), th)
            cheap_num = {
                "cheap_points": len(res),
                "cheaper": k_cheap,
                "median_us_ratio": float(np.median([r[0] for r in res])),
            }
    parts = (erratic, cheap)  # a conjunction: cheap per update AND very erratic
    if parts == (SUPPORTED, SUPPORTED):
        verdict = SUPPORTED
    elif REFUTED in parts:
        verdict = MIXED if SUPPORTED in parts else REFUTED
    else:
        verdict = INCONCLUSIVE
    want = {SUPPORTED: "erratic", REFUTED: "calm"}.get(erratic)
    dec = details if want is None else details[details["state"] == want]
    deciding = _deciding([(f, say.why_c7(r)) for r in dec.itertuples() for f in r.folders])
    numbers = {
        "erratic_part": erratic,
        "cheap_part": cheap,
        "groups": n,
        "erratic": n_err,
        "calm": n_calm,
        "median_ratio": float(details["ratio"].median()),
        "min_factor": factor,
        **cheap_num,
    }
    return SplitResult(verdict, numbers, details.drop(columns=["folders"]), deciding)


# ------------------------------------------------------------------------------------------------------- C6
def synthesize(c1: str, c2: str, c4: str) -> str:
    parts = (c1, c2, c4)
    if all(v == SUPPORTED for v in parts):
        return SUPPORTED
    if REFUTED in parts:
        return REFUTED
    if INCONCLUSIVE in parts:
        return INCONCLUSIVE
    return MIXED


# -------------------------------------------------------------------------------------------------- driver
def judge(runs: pd.DataFrame, th: dict[str, Any], speed: pd.DataFrame | None = None) -> list[Verdict]:
    """Every claim, within every split (task · budget · lr protocol), then across them."""
    df = prepare(runs)
    sp = prepare_speed(speed)
    splits = sorted(df["split"].unique()) if not df.empty else []
    per: dict[str, dict[str, SplitResult]] = {cid: {} for cid in CLAIMS}
    points = speed_points(sp, th) if sp is not None else pd.DataFrame()
    for split in splits:
        part = df[df["split"] == split]
        task = str(part["task"].iloc[0])
        task_sp = sp[sp["task"] == task] if sp is not None else None
        c2 = per["C2"][split] = judge_c2(part, th)
        if sp is None:
            per["C1"][split] = _inconclusive(_why("no_speed"))
        elif task_sp.empty:
            per["C1"][split] = _inconclusive(_why("speed_no_task", task=task))
        else:
            per["C1"][split] = judge_c1(points[points["task"] == task], c2, th)
        per["C4"][split] = judge_c4(part, th)
        per["C5"][split] = judge_c5(part, th)
        per["C7"][split] = judge_c7(part, task_sp if task_sp is not None and not task_sp.empty else None, th)
    for split in splits:  # after every split: an equal-updates split quotes its equal-tokens twin
        per["C6"][split] = _judge_c6(df[df["split"] == split], split, per, df)
    if sp is None:
        for split in splits:
            per["C3"][split] = _inconclusive(_why("no_speed"))
    else:
        for task, g in sp.groupby("task"):
            labels = sorted(df.loc[df["task"] == task, "task_label"].astype(str).unique()) or [str(task)]
            per["C3"][f"{' / '.join(labels)} · speed phase"] = judge_c3(g, th)
    n_runs = df["split"].value_counts()
    return [_assemble(CLAIMS[cid], per[cid], n_runs) for cid in CLAIMS]


def _judge_c6(part: pd.DataFrame, split: str, per: dict[str, dict[str, SplitResult]], df: pd.DataFrame) -> SplitResult:
    trio = {k: per[k][split].verdict for k in ("C1", "C2", "C4")}
    if str(part["budget_kind"].iloc[0]).startswith("tokens"):
        # the runs C6 rests on are those its three parts rest on
        parts = [per[k][split].deciding for k in ("C1", "C2", "C4") if not per[k][split].deciding.empty]
        deciding = pd.concat(parts, ignore_index=True).drop_duplicates() if parts else _deciding([])
        return SplitResult(synthesize(*trio.values()), {"parts": trio, "equal_tokens": True}, deciding=deciding)
    # At equal updates a bigger batch also sees more data: C6 is not judged here, only how C2/C4 moved.
    twin = df[(df["task_label"] == part["task_label"].iloc[0]) & df["budget_kind"].astype(str).str.startswith("tokens")]
    ref = {k: per[k].get(s).verdict for s in twin["split"].unique() for k in ("C2", "C4") if s in per[k]}
    return _inconclusive(
        _why("c6_equal_tokens_only"), numbers={"parts": trio, "equal_tokens": False, "at_equal_tokens": ref}
    )


def _assemble(claim: Claim, results: dict[str, SplitResult], n_runs: pd.Series) -> Verdict:
    table = pd.DataFrame(
        [
            {
                "split": s,
                "verdict": r.verdict,
                "statistic": say.statistic(claim.id, r),
                "sentence": say.sentence(claim.id, r),
                "runs": int(n_runs.get(s, 0)),
            }
            for s, r in results.items()
        ],
        columns=["split", "verdict", "statistic", "sentence", "runs"],
    )

    def stack(attr: str, columns: list[str]) -> pd.DataFrame:
        frames = [getattr(r, attr).assign(split=s) for s, r in results.items() if not getattr(r, attr).empty]
        if not frames:
            return pd.DataFrame(columns=columns)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # empty-or-NaN columns in concat
            out = pd.concat(frames, ignore_index=True)
        return out[["split", *[c for c in out.columns if c != "split"]]]

    details = stack("details", ["split"])
    deciding = stack("deciding", DECIDING_COLUMNS)
    unin = stack("uninformative", UNINFORMATIVE_COLUMNS)
    verdict = combine([r.verdict for r in results.values()])
    statistic, sentence = say.overall(claim.id, verdict, table)
    return Verdict(claim, verdict, statistic, sentence, table, details, deciding, unin)


def verdict_table(verdicts: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "claim": v.claim.id,
                "statement": v.claim.text,
                "verdict": v.verdict,
                "statistic": v.statistic,
                "evidence": v.sentence,
                "metric": v.claim.metric,
                "comparison": v.claim.comparison,
            }
            for v in verdicts
        ]
    )


def split_table(verdicts: list[Verdict]) -> pd.DataFrame:
    frames = [v.splits.assign(claim=v.claim.id) for v in verdicts if not v.splits.empty]
    if not frames:
        return pd.DataFrame(columns=["claim", "split", "verdict", "statistic", "sentence", "runs"])
    return pd.concat(frames, ignore_index=True)[["claim", "split", "verdict", "statistic", "sentence", "runs"]]
