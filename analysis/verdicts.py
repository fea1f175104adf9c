"""Claim verdicts C1-C7 as pure functions of a tidy run table, the speed-phase table and the thresholds.

Input: one row per run with at least `cell, batch_size, num_steps, seed, status` and the outcomes a claim reads;
`split` (or `task_label`/`budget`/`protocol`) names the setting a row belongs to, and each claim is judged within
every split. `regime` says what a split measures: "plateau" (trained until the held-out loss levels off: what is
learned) or "budget" (a fixed budget of tokens, updates or seconds: how fast it is learned). Speed claims (C1's
wall-clock, C3, C7's "cost per update") read only the speed phase (`speed.parquet`: one row per task, cell,
batch_size, num_steps, round), never the tokens/s of runs trained side by side.

Judges return numbers (SplitResult: verdict, numbers, details, deciding runs, uninformative groups); every
sentence is written in analysis/wording.py. Each decision rule is a module-level function (`c2_pairs`,
`pair_at_chance`, `c1_quality`, `c5_measure`, `enough_settings`, ...) so that a test can swap in a wrong rule and
see the verdict change (tests/test_verdict_rules.py). The rules are stated in docs/claims.md; their numbers live in
thresholds.yaml.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis import stats
from analysis import wording as say
from sweep.record import COMPLETE, JUDGED_STATUSES

SUPPORTED, REFUTED, MIXED, INCONCLUSIVE = "supported", "refuted", "mixed", "inconclusive"
FINISHED = JUDGED_STATUSES  # sweep.record: the statuses a verdict reads (a pruned trial never is)
SPLIT_COLUMNS = ("task_label", "budget", "protocol", "variant")
NO_SPEED = say.REASONS["no_speed"]  # the sentence, for callers that look for it
DECIDING_COLUMNS = ["split", "folder", "why"]
UNINFORMATIVE_COLUMNS = ["split", "group", "reason"]
PLATEAU, BUDGET = "plateau", "budget"  # analysis/load.py's `regime` values
# "can" claims: one setting that shows it is enough, and a setting that does not show it refutes nothing
EXISTENTIAL = ("C5",)
# C2's outcomes: whether a larger value is a better network (the direction C1 reads)
HIGHER_IS_BETTER = {"valid_loss": False, "valid_accuracy": True, "memory_capacity": True}


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
    # False where the claim is not judged in this kind of setting by design (C2 at a fixed budget): such a split
    # neither decides the claim nor counts as one that could not judge it
    applicable: bool = True


@dataclass
class Verdict:
    claim: Claim
    verdict: str
    statistic: str
    sentence: str
    splits: pd.DataFrame  # split, verdict, statistic, sentence, runs, applies
    details: pd.DataFrame  # the per-group numbers behind the statistic, with a split column
    deciding: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DECIDING_COLUMNS))
    uninformative: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=UNINFORMATIVE_COLUMNS))
    decided_in: tuple[str, ...] = ()  # the settings whose verdicts make the claim's verdict
    undecided_in: tuple[str, ...] = ()  # settings where the claim applies but the evidence did not decide


Why = tuple[str, dict[str, Any]]  # (reason code, the numbers its sentence quotes): analysis/wording.py REASONS


def _why(code: str, **values: Any) -> Why:
    return code, values


def _inconclusive(why: Why, **kw: Any) -> SplitResult:
    code, values = why
    return SplitResult(INCONCLUSIVE, reason=say.reason(code, **values), reason_code=code, **kw)


def _not_applicable(why: Why, **kw: Any) -> SplitResult:
    return _inconclusive(why, applicable=False, **kw)


# ------------------------------------------------------------------------------------------------- the table
def regime_of(df: pd.DataFrame) -> pd.Series:
    """Each run's regime: analysis/load.py's `regime` column where the table has it, else from the budget kind
    (hand-made tables and tables loaded before the column existed)."""
    if "regime" in df:
        return df["regime"].where(df["regime"].isin([PLATEAU, BUDGET]), BUDGET).astype(str)
    kind = df["budget_kind"].astype(str).str.split().str[0] if "budget_kind" in df else pd.Series("", index=df.index)
    return pd.Series(np.where(kind == PLATEAU, PLATEAU, BUDGET), index=df.index)


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
    df["regime"] = regime_of(df)
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


def _family(df: pd.DataFrame) -> str:
    tasks = df["task"].dropna().astype(str).unique()
    return str(tasks[0]) if len(tasks) == 1 else "default"


def _regime(df: pd.DataFrame) -> str:
    return PLATEAU if (df["regime"] == PLATEAU).all() and len(df) else BUDGET


def _seeds_short(df: pd.DataFrame, th: dict[str, Any], statuses: tuple[str, ...] = (COMPLETE,)) -> Why | None:
    """Why this split cannot answer for want of seeds, or None."""
    d = df[df["status"].isin(statuses)]
    if d.empty:
        return _why("no_complete_runs")
    seeds = d.groupby(["cell", "batch_size", "num_steps"], observed=True)["seed"].nunique().median()
    if seeds < th["min_seeds"]:
        return _why("few_seeds", seeds=float(seeds), need=th["min_seeds"])
    return None


# -------------------------------------------------------------------------------------------- aggregation
def combine(verdicts: list[str]) -> str:
    """The agreement of the settings that decided: one verdict -> that verdict, two or more -> "mixed"; none
    (every one inconclusive), inconclusive. How many settings must decide is `enough_settings`."""
    conclusive = {v for v in verdicts if v != INCONCLUSIVE}
    if not conclusive:
        return INCONCLUSIVE
    return conclusive.pop() if len(conclusive) == 1 else MIXED


def enough_settings(decided: int, applicable: int, th: dict[str, Any]) -> bool:
    """Rule: the settings that reached a verdict speak for the claim only when they are more than `majority` of
    the settings where the claim applies; otherwise one conclusive setting would outvote the ones that could not
    judge (the overall verdict is then inconclusive, and says which settings decided what)."""
    return applicable > 0 and decided / applicable > th["majority"]


def aggregate(cid: str, results: dict[str, SplitResult], th: dict[str, Any]) -> tuple[str, list[str], list[str]]:
    """(the claim's verdict across settings, the settings that decided, the applicable ones that did not)."""
    applicable = {s: r for s, r in results.items() if r.applicable}
    decided = sorted(s for s, r in applicable.items() if r.verdict != INCONCLUSIVE)
    undecided = sorted(s for s in applicable if s not in decided)
    if cid in EXISTENTIAL:  # "can": one setting that shows it decides; absence elsewhere is no refutation
        shown = sorted(s for s in decided if applicable[s].verdict == SUPPORTED)
        return (SUPPORTED, shown, undecided) if shown else (INCONCLUSIVE, [], undecided)
    if not enough_settings(len(decided), len(applicable), th):
        return INCONCLUSIVE, decided, undecided
    return combine([applicable[s].verdict for s in decided]), decided, undecided


def by_fractions(n_for: int, n_against: int, n: int, th: dict[str, Any]) -> str:
    """The shared "usually" rule: more than `majority` of the informative groups for the claim -> supported; more
    than `majority` against -> refuted; otherwise (a tie, or too many undecided groups) inconclusive."""
    if n == 0:
        return INCONCLUSIVE
    if n_for / n > th["majority"]:
        return SUPPORTED
    if n_against / n > th["majority"]:
        return REFUTED
    return INCONCLUSIVE


def _median(x: pd.Series) -> float:
    return float(x.median()) if x.notna().any() else np.nan


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


# ------------------------------------------------------------------------------------------------------- C2
@dataclass(frozen=True)
class PairTest:
    """One outcome of one pair of batch sizes: the difference big - small with its 90 % Welch interval, the TOST
    p-value of |difference| < margin (the larger of the two one-sided p's) and the one-sided p-value of
    |difference| > margin on the side of the estimate; `state` as stats.Equivalence (before any correction)."""

    diff: float
    low: float
    high: float
    margin: float
    p_equivalent: float
    p_different: float
    state: str


def _p_beyond(a: Any, b: Any, margin: float) -> float:
    """Welch one-sided p-value that mean(a) - mean(b) lies beyond the margin on the side of its estimate."""
    x, y = stats.finite(a), stats.finite(b)
    if x.size < 2 or y.size < 2:
        return np.nan
    diff = float(x.mean() - y.mean())
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = float(np.sqrt(vx + vy))
    if se == 0:  # no spread: the difference is what it is
        return 0.0 if abs(diff) > margin else 1.0
    df = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    return float(min(sps.t.sf((diff - margin) / se, df), sps.t.cdf((diff + margin) / se, df)))


def c2_difference(big: Any, small: Any, margin: float, alpha: float) -> PairTest:
    """Rule: TOST on the ABSOLUTE difference of means (never a relative gap: 0.0077 vs 0.0002 nats is 0.0075
    nats, not 3700 %)."""
    eq = stats.tost(big, small, margin, alpha)
    return PairTest(eq.diff, eq.low, eq.high, margin, eq.p_tost, _p_beyond(big, small, margin), eq.state)


def c2_pairs(sizes: list[float]) -> list[tuple[float, float]]:
    """Rule: the pairs C2 compares in a cell x num_steps group: every neighbouring pair on the batch grid, and
    the thread's own pair (1, 4) where the grid has both (never only the smallest against the largest, which
    leaves the thread's pair untested)."""
    pairs = list(itertools.pairwise(sizes))
    if 1.0 in sizes and 4.0 in sizes and (1.0, 4.0) not in pairs:
        pairs.insert(0, (1.0, 4.0))
    return pairs


def c2_outcomes(d: pd.DataFrame, th: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(column, margin, unit) of every outcome C2 compares in this split."""
    c = th["c2"]
    fam = _family(d)
    loss = c["loss_margin"].get(fam, c["loss_margin"]["default"])
    out = [("valid_loss", float(loss), "nats")]
    if fam != "text" and _num(d, "valid_accuracy").notna().any():
        out.append(("valid_accuracy", float(c["accuracy_margin"]), "accuracy"))
    if fam == "lags" and _num(d, "memory_capacity").notna().any():
        out.append(("memory_capacity", float(c["capacity_margin"]), "lags"))
    return out


def clearly_learned(b: pd.DataFrame, th: dict[str, Any]) -> bool | None:
    """Whether the runs of one batch size clearly learned something (None: no chance level recorded).

    echo/lags: the lower end of the accuracy t-interval over seeds lies above chance + chance_margin. Text (and
    any task without accuracy): the upper end of the loss interval lies below ln V - the loss margin (a
    language model beats 1/V accuracy as soon as it learns token frequencies, so only a loss clearly below
    the uniform guess ln V counts)."""
    conf = float(th["confidence"])
    chance = _num(b, "chance_accuracy").dropna()
    if chance.empty:
        return None
    level = float(chance.iloc[0])
    acc = _num(b, "valid_accuracy")
    if _family(b) == "text" or acc.isna().all():
        loss_margin = th["c2"]["loss_margin"].get(_family(b), th["c2"]["loss_margin"]["default"])
        _, _, high, _ = stats.t_interval(_num(b, "valid_loss"), conf)
        return bool(np.isfinite(high) and high < math.log(1.0 / level) - loss_margin)
    _, low, _, _ = stats.t_interval(acc, conf)
    return bool(np.isfinite(low) and low > level + float(th["c2"]["chance_margin"]))


def pair_at_chance(g: pd.DataFrame, pair: tuple[float, float], th: dict[str, Any]) -> Why | None:
    """Rule: why the PAIR compared says nothing, or None. A pair is informative only where at least one of its
    two batch sizes clearly learned (clearly_learned); other batch sizes of the group play no part, so a group
    where batch 64 learns does not make two batch sizes at chance "equivalent"."""
    learned = [clearly_learned(g[g["batch_size"] == bs], th) for bs in pair]
    if any(v is None for v in learned) or any(learned):
        return None
    chance = float(_num(g, "chance_accuracy").dropna().iloc[0])
    if _family(g) == "text" or _num(g, "valid_accuracy").isna().all():
        return _why("pair_uniform_guess", small=pair[0], big=pair[1], ln_v=math.log(1.0 / chance))
    return _why("pair_at_chance", small=pair[0], big=pair[1], bound=chance + float(th["c2"]["chance_margin"]))


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted in the family)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out.tolist()
    order = ok[np.argsort(p[ok])]
    m = order.size
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def _better(outcome: str, diff: float) -> bool:
    return diff > 0 if HIGHER_IS_BETTER.get(outcome, False) else diff < 0


def judge_c2(df: pd.DataFrame, th: dict[str, Any]) -> SplitResult:
    if _regime(df) != PLATEAU:
        return _not_applicable(_why("c2_plateau_only"))
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
        seeds = g.groupby("batch_size")["seed"].nunique()
        for small, big in c2_pairs(sorted(g["batch_size"].unique())):
            group = f"cell={cell}, num_steps={ns:g}, batch {small:g} vs {big:g}"
            if seeds[[small, big]].min() < th["min_seeds"]:
                unin.append((group, say.reason("few_seeds_at_batch", need=th["min_seeds"], small=small, big=big)))
                continue
            why = pair_at_chance(g, (small, big), th)
            if why:
                unin.append((group, say.reason(why[0], **why[1])))
                continue
            for col, margin, unit in outcomes:
                a, b = _num(g[g["batch_size"] == big], col), _num(g[g["batch_size"] == small], col)
                if a.notna().sum() < 2 or b.notna().sum() < 2:
                    continue
                t = c2_difference(a, b, margin, alpha)
                rows.append(
                    {
                        "cell": cell,
                        "num_steps": ns,
                        "group": group,
                        "outcome": col,
                        "unit": unit,
                        "bs_small": small,
                        "bs_large": big,
                        "thread_pair": (small, big) == (1.0, 4.0),
                        "mean_small": float(b.mean()),
                        "mean_large": float(a.mean()),
                        "diff": t.diff,
                        "ci90_low": t.low,
                        "ci90_high": t.high,
                        "margin": margin,
                        "p_tost": t.p_equivalent,
                        "p_different": t.p_different,
                        "state": t.state,
                        "larger_better": _better(col, t.diff),
                        "folders": list(g.loc[g["batch_size"].isin([small, big]), "folder"]),
                    }
                )
    details = pd.DataFrame(rows)
    uninformative = pd.DataFrame(unin, columns=["group", "reason"])
    if details.empty:
        return _inconclusive(_why("no_informative_c2_group"), uninformative=uninformative)
    details = _c2_corrected(details, alpha)
    pairs = details.drop_duplicates("group")
    n = len(pairs)
    k = {s: int((pairs["group_state"] == s).sum()) for s in ("equivalent", "different", "undecided")}
    n_better = int((pairs["direction"] == "better").sum())
    verdict = by_fractions(k["equivalent"], k["different"], n, th)
    want = {SUPPORTED: "equivalent", REFUTED: "different"}.get(verdict)
    dec = details if want is None else details[details["group_state"] == want]
    deciding = _deciding([(f, say.why_c2(r)) for r in dec.itertuples() for f in r.folders])
    thread = pairs[pairs["thread_pair"]]
    numbers = {
        "groups": n,
        **k,
        "larger_better": n_better,
        "larger_worse": k["different"] - n_better,
        "uninformative": len(uninformative),
        "thread_pairs": len(thread),
        "thread_equivalent": int((thread["group_state"] == "equivalent").sum()),
        "thread_different": int((thread["group_state"] == "different").sum()),
        "outcomes": [o for o, _, _ in outcomes],
        "margins": {o: (m, u) for o, m, u in outcomes},
        "tests": len(details),
    }
    return SplitResult(verdict, numbers, details.drop(columns=["folders"]), deciding, uninformative)


def _c2_corrected(details: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Pair states after Holm's correction across the pairs of the split.

    Equivalence of a pair needs every outcome equivalent (an intersection-union test: its p-value is the largest
    outcome p_tost, no correction within the pair); one family of these p-values per split. Difference: any
    outcome beyond its margin; one family of every (pair, outcome) p_different per split. `direction` says which
    way a different pair went: "better" when the larger batch's network is the better one on every outcome that
    differs, "worse" otherwise."""
    out = details.copy()
    pair_p = out.groupby("group", sort=False)["p_tost"].agg(lambda p: p.max() if p.notna().all() else np.nan)
    adj_eq = dict(zip(pair_p.index, holm(pair_p.tolist()), strict=True))
    out["p_tost_holm"] = out["group"].map(adj_eq)
    out["p_different_holm"] = holm(out["p_different"].tolist())
    states, directions = {}, {}
    for group, g in out.groupby("group", sort=False):
        beyond = g[g["p_different_holm"] < alpha]
        if not beyond.empty:
            states[group] = "different"
            directions[group] = "better" if beyond["larger_better"].all() else "worse"
        elif adj_eq[group] < alpha:
            states[group], directions[group] = "equivalent", "equivalent"
        else:
            states[group], directions[group] = "undecided", "undecided"
    out["group_state"] = out["group"].map(states)
    out["direction"] = out["group"].map(directions)
    return out


# ------------------------------------------------------------------------------------------------------- C1
def c1_times(part: pd.DataFrame, sp: pd.DataFrame | None, cost: pd.DataFrame | None) -> pd.DataFrame:
    """Per run of the split: wall-clock seconds to target and whether it was reached (cell, num_steps,
    batch_size, seed, reached, seconds).

    From `cost` (analysis/cost.py's crossings: one row per run with split, reached, seconds) where given; else
    from the runs' own `updates_to_target` column, as updates x batch_size x num_steps tokens at the speed
    phase's median tokens/s of that (task, cell, batch_size, num_steps), never a run's own clock."""
    cols = ["cell", "num_steps", "batch_size", "seed", "reached", "seconds"]
    if cost is not None:
        c = cost[cost["split"].isin(part["split"].unique())].copy()
        if c.empty:
            return pd.DataFrame(columns=cols)
        for col in ("batch_size", "num_steps", "seed", "seconds"):
            c[col] = pd.to_numeric(c[col], errors="coerce").astype(float)
        c["reached"] = c["reached"].astype(bool)
        return c[cols]
    if "updates_to_target" not in part or sp is None:
        return pd.DataFrame(columns=cols)
    keys = ["task", "cell", "batch_size", "num_steps"]
    tps = sp.groupby(keys, observed=True)["tokens_per_s"].median().rename("_tps").reset_index()
    d = part[part["status"] == COMPLETE].merge(tps, on=keys, how="left")
    updates = _num(d, "updates_to_target")
    d["reached"] = updates.notna() & np.isfinite(updates)
    d["seconds"] = updates * d["batch_size"] * d["num_steps"] / d["_tps"]
    return d[cols]


def c1_time_state(big: pd.DataFrame, small: pd.DataFrame, th: dict[str, Any]) -> tuple[str, float, float, float]:
    """Whether wall-clock time to target falls from the smaller to the larger batch: (state, ratio big/small,
    low, high). Every seed reached at both: Welch interval on the log ratio, "faster" when it lies below 1,
    "slower" when above. A batch size where fewer than half the seeds reached the target took longer than any
    that did: the other is faster (or slower) for it. Neither reached: "not reached"; a run that reached it
    without a wall-clock time (the speed phase did not time its point): "not timed"."""
    conf = float(th["confidence"])
    got_big, got_small = big["reached"].mean(), small["reached"].mean()
    if any(g.loc[g["reached"], "seconds"].isna().any() for g in (big, small)):
        return "not timed", np.nan, np.nan, np.nan  # the speed phase did not time this point: no wall-clock
    if got_big < 0.5 and got_small < 0.5:
        return "not reached", np.nan, np.nan, np.nan
    if got_big == 1 and got_small == 1:
        ratio, low, high, _ = stats.log_ratio_ci(big["seconds"], small["seconds"], conf, paired=False)
        if not np.isfinite(low):
            return "undecided", ratio, low, high
        return ("faster" if high < 1 else "slower" if low > 1 else "undecided"), ratio, low, high
    if got_big == 1 and got_small < 0.5:
        return "faster", np.nan, np.nan, np.nan
    if got_small == 1 and got_big < 0.5:
        return "slower", np.nan, np.nan, np.nan
    return "undecided", np.nan, np.nan, np.nan


def c1_quality(pair: pd.DataFrame, c2: SplitResult) -> str:
    """Rule: the plateau quality of one pair as C1 reads it: the DIRECTION of C2's test on that pair
    ("equivalent", "better" when the larger batch learned more, "worse", "undecided"), never C2's verdict in the
    split: a larger batch that learns more is no evidence against "batch size mainly buys speed"."""
    return str(pair["direction"].iloc[0]) if not pair.empty else "uninformative"


def c1_pair_state(time: str, quality: str) -> str:
    """ "buys speed": faster to the target and no worse once trained; "no speed": slower, no worse; "costs
    quality": the larger batch ends worse; "uninformative": no target reached or quality not comparable."""
    if quality == "uninformative" or time in ("not reached", "not timed"):
        return "uninformative"
    if quality == "worse":
        return "costs quality"
    if quality in ("equivalent", "better"):
        return {"faster": "buys speed", "slower": "no speed"}.get(time, "undecided")
    return "undecided"


def judge_c1(
    part: pd.DataFrame,
    c2: SplitResult,
    times: pd.DataFrame,
    points: pd.DataFrame,
    b_crit: pd.DataFrame | None,
    th: dict[str, Any],
) -> SplitResult:
    """Wall-clock time to target falls with batch size at matched final quality (C2's pair), pair by pair."""
    if _regime(part) != PLATEAU:
        return _not_applicable(_why("c1_plateau_only"))
    if times.empty:
        return _inconclusive(_why("no_time_to_target"))
    quality = c2.details if "direction" in c2.details else pd.DataFrame(columns=["group", "direction"])
    rows, unin = [], []
    for (cell, ns), g in times.groupby(["cell", "num_steps"], observed=True):
        for small, big in c2_pairs(sorted(g["batch_size"].unique())):
            group = f"cell={cell}, num_steps={ns:g}, batch {small:g} vs {big:g}"
            a, b = g[g["batch_size"] == big], g[g["batch_size"] == small]
            if min(a["seed"].nunique(), b["seed"].nunique()) < th["min_seeds"]:
                unin.append((group, say.reason("few_seeds_at_batch", need=th["min_seeds"], small=small, big=big)))
                continue
            time, ratio, low, high = c1_time_state(a, b, th)
            q = c1_quality(quality[quality["group"] == group], c2)
            state = c1_pair_state(time, q)
            if state == "uninformative":
                missing = (
                    say.reason("c1_no_target")
                    if time == "not reached"
                    else say.reason("c1_not_timed")
                    if time == "not timed"
                    else say.reason("c1_no_quality")
                )
                unin.append((group, missing))
                continue
            runs = part[(part["cell"] == cell) & (part["num_steps"] == ns) & part["batch_size"].isin([small, big])]
            rows.append({"cell": cell, "num_steps": ns, "group": group, "bs_small": small, "bs_large": big,
                         "time": time, "seconds_ratio": ratio, "ci_low": low, "ci_high": high, "quality": q,
                         "state": state, "folders": list(runs["folder"])})  # fmt: skip
    details = pd.DataFrame(rows)
    uninformative = pd.DataFrame(unin, columns=["group", "reason"])
    if details.empty:
        return _inconclusive(_why("no_informative_c1_pair"), uninformative=uninformative)
    n = len(details)
    n_for = int((details["state"] == "buys speed").sum())
    n_against = int(details["state"].isin(["no speed", "costs quality"]).sum())
    verdict = by_fractions(n_for, n_against, n, th)
    want = {SUPPORTED: ["buys speed"], REFUTED: ["no speed", "costs quality"]}.get(verdict)
    dec = details if want is None else details[details["state"].isin(want)]
    deciding = _deciding([(f, say.why_c1(r)) for r in dec.itertuples() for f in r.folders])
    task = str(part["task"].iloc[0])
    pts = points[points["task"] == task] if not points.empty else points
    numbers = {
        "pairs": n,
        "buys_speed": n_for,
        "no_speed": int((details["state"] == "no speed").sum()),
        "costs_quality": int((details["state"] == "costs quality").sum()),
        "undecided": n - n_for - n_against,
        "uninformative": len(uninformative),
        "learns_more": int(((details["state"] == "buys speed") & (details["quality"] == "better")).sum()),
        "up_to": c1_up_to(details),
        "b_crit": c1_b_crit(b_crit, part),
        "c2": c2.verdict,
        **_speed_evidence(pts, th),
    }
    return SplitResult(verdict, numbers, details.drop(columns=["folders"]), deciding, uninformative)


def c1_up_to(details: pd.DataFrame) -> dict[str, float]:
    """Per cell x num_steps: the largest batch size reached from the smallest through neighbouring pairs that
    all buy speed ("buys speed up to about this many rows"); NaN where the first pair does not."""
    out = {}
    for (cell, ns), g in details.groupby(["cell", "num_steps"], observed=True):
        state = {(r.bs_small, r.bs_large): r.state for r in g.itertuples()}
        sizes = sorted(set(g["bs_small"]) | set(g["bs_large"]))
        reached = np.nan
        for small, big in itertools.pairwise(sizes):
            if state.get((small, big)) != "buys speed":
                break
            reached = big
        out[f"{cell}, num_steps {ns:g}"] = float(reached)
    return out


def c1_b_crit(b_crit: pd.DataFrame | None, part: pd.DataFrame) -> dict[str, float]:
    """The fitted critical batch size from updates to target per cell x num_steps of this split
    (analysis/cost.py's b_crit_table, column "B_crit (steps)"; NaN where not identified), or {} without it."""
    if b_crit is None or b_crit.empty or "B_crit (steps)" not in b_crit:
        return {}
    t = b_crit[b_crit["split"].isin(part["split"].unique())]
    return {f"{r['cell']}, num_steps {float(r['num_steps']):g}": float(r["B_crit (steps)"]) for _, r in t.iterrows()}


def _speed_evidence(points: pd.DataFrame, th: dict[str, Any]) -> dict[str, Any]:
    """The speed phase's throughput beside C1's verdict (evidence, never the decision): "rose" where at least
    `c1.min_fraction_faster` of the points are faster beyond noise."""
    if points.empty:
        return {"speed_points": 0}
    return {
        "speed_points": len(points),
        "speed_rose": bool(points["faster"].mean() >= th["c1"]["min_fraction_faster"]),
        "speed_faster": int(points["faster"].sum()),
        "median_slope": float(points["slope"].median()),
        "median_ratio": float(points["ratio"].median()),
        "bs_small": float(points["bs_small"].min()),
        "bs_large": float(points["bs_large"].max()),
        "max_round_cv": float(points["max_round_cv"].max()),
    }


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


def c4_reading_kind(d: pd.DataFrame) -> str:
    """Which reading a task can test: "floor" on a task of ONE lag (echo: its span is 0 or the lag, so a bound
    on it cannot fail where every window is longer than the lag), "length" on tasks with a graded learned length
    (lags: memory capacity and span; text: effective context)."""
    lag_cols = [c for c in d.columns if c.startswith("acc_lag_") and _num(d, c).notna().any()]
    return "floor" if _family(d) == "echo" or len(lag_cols) == 1 else "length"


def c4_length(d: pd.DataFrame) -> tuple[pd.Series, str]:
    """The learned length C4 reads: memory capacity (from the per-lag accuracy curve) when the task has lags;
    otherwise the effective context, and only where measured with the warm-state unigram ablation."""
    mc = _num(d, "memory_capacity")
    if mc.notna().any():
        return mc, "memory_capacity"
    ec = _num(d, "effective_context")
    method = d["context_method"] if "context_method" in d else pd.Series(None, index=d.index)
    return ec.where(method == "warm-unigram"), "effective_context (warm-unigram)"


def c4_bound_length(d: pd.DataFrame) -> tuple[pd.Series, str]:
    """The length compared with num_steps for the bound: the recalled span (lags, echo), else the effective
    context (warm-unigram; text)."""
    span = _num(d, "span")
    if span.notna().any():
        return span, "span"
    ec = _num(d, "effective_context")
    method = d["context_method"] if "context_method" in d else pd.Series(None, index=d.index)
    return ec.where(method == "warm-unigram"), "effective_context (warm-unigram)"


def judge_c4_floor(d: pd.DataFrame, th: dict[str, Any]) -> tuple[str, dict[str, Any], list, list]:
    """Per cell x batch_size: windows no longer than the lag (num_steps <= lag: the gradient reaches back
    num_steps - 1 positions, docs/protocol.md) at chance while a longer window learns -> "floor"; a window no
    longer than the lag that clearly learns -> "broken"; anything else (a long window that did not learn, seeds
    that scatter) is undecided and not counted against."""
    conf, margin = float(th["confidence"]), float(th["c2"]["chance_margin"])
    lag = longest_lag(d)
    col = f"acc_lag_{lag:g}" if np.isfinite(lag) and f"acc_lag_{lag:g}" in d else "valid_accuracy"
    chance = _num(d, "chance_accuracy").dropna()
    if not np.isfinite(lag) or chance.empty or _num(d, col).isna().all():
        return INCONCLUSIVE, {"floor_reason": "no_floor_measure"}, [], []
    level = float(chance.iloc[0])
    d = d.assign(_acc=_num(d, col))
    rows, unin = [], []
    for (cell, bs), g in d.groupby(["cell", "batch_size"], observed=True):
        group = f"cell={cell}, batch_size={bs:g}"
        if g.groupby("num_steps")["seed"].nunique().min() < th["min_seeds"]:
            unin.append((group, say.reason("few_seeds_at_num_steps", need=th["min_seeds"])))
            continue
        short, long = g[g["num_steps"] <= lag], g[g["num_steps"] > lag]
        if short.empty:
            unin.append((group, say.reason("beyond_longest_lag", lag=lag)))
            continue
        if long.empty:
            unin.append((group, say.reason("floor_no_long_window", lag=lag)))
            continue
        ivals = {ns: stats.t_interval(x["_acc"], conf) for ns, x in g.groupby("num_steps")}
        at_chance = all(ivals[ns][2] < level + margin for ns in short["num_steps"].unique())
        short_learns = any(ivals[ns][1] > level + margin for ns in short["num_steps"].unique())
        long_learns = any(ivals[ns][1] > level + margin for ns in long["num_steps"].unique())
        state = "broken" if short_learns else "floor" if at_chance and long_learns else "undecided"
        rows.append({"cell": cell, "batch_size": bs, "group": group, "measure": col, "lag": lag, "state": state,
                     "short_max": float(max(ivals[ns][0] for ns in short["num_steps"].unique())),
                     "long_max": float(max(ivals[ns][0] for ns in long["num_steps"].unique())),
                     "ns_short": float(short["num_steps"].max()), "ns_long": float(long["num_steps"].min()),
                     "chance": level, "folders": list(g["folder"])})  # fmt: skip
    if not rows:
        return INCONCLUSIVE, {"floor_reason": "no_informative_c4_group"}, rows, unin
    n = len(rows)
    k_floor = sum(r["state"] == "floor" for r in rows)
    k_broken = sum(r["state"] == "broken" for r in rows)
    return by_fractions(k_floor, k_broken, n, th), {"floor_groups": n, "floor": k_floor, "broken": k_broken}, rows, unin


def judge_c4_growth(d: pd.DataFrame, th: dict[str, Any]) -> tuple[str, dict[str, Any], list, list]:
    """Per cell x batch_size: Spearman rho of the learned length against num_steps, with one-sided permutation
    p-values for a rise and for a fall. "grows": rho >= min_rho and p(rise) < alpha; "shrinks": p(fall) < alpha
    (evidence against); a group merely not significant is undecided and not counted against."""
    c = th["c4"]
    length, name = c4_length(d)
    d = d.assign(_len=length)
    rows, unin = [], []
    for (cell, bs), g in d[d["_len"].notna()].groupby(["cell", "batch_size"], observed=True):
        group = f"cell={cell}, batch_size={bs:g}"
        if g["num_steps"].nunique() < th["min_levels"]:
            continue
        if g.groupby("num_steps")["seed"].nunique().min() < th["min_seeds"]:
            unin.append((group, say.reason("few_seeds_at_num_steps", need=th["min_seeds"])))
            continue
        means = g.groupby("num_steps")["_len"].mean()
        if (means < c["min_length"]).all():
            unin.append((group, say.reason("nothing_learned", measure=name, floor=c["min_length"])))
            continue
        n_res, seed = int(th["n_resamples"]), int(th["bootstrap_seed"])
        rho, p = stats.spearman_permutation(g["num_steps"], g["_len"], n_res, seed)
        _, p_fall = stats.spearman_permutation(g["num_steps"], -g["_len"], n_res, seed)
        grows = bool(np.isfinite(rho) and rho >= c["min_rho"] and p < th["alpha"])
        shrinks = bool(np.isfinite(p_fall) and p_fall < th["alpha"])
        rows.append(
            {
                "cell": cell,
                "batch_size": bs,
                "group": group,
                "measure": name,
                "rho": rho,
                "p": p,
                "p_fall": p_fall,
                "grows": grows,
                "state": "grows" if grows else "shrinks" if shrinks else "undecided",
                "ns_low": g["num_steps"].min(),
                "ns_high": g["num_steps"].max(),
                "mean_low": float(means.iloc[0]),
                "mean_high": float(means.iloc[-1]),
                "folders": list(g["folder"]),
            }
        )
    if not rows:
        return INCONCLUSIVE, {"growth_reason": "no_informative_c4_group"}, rows, unin
    n = len(rows)
    k = sum(r["state"] == "grows" for r in rows)
    k_against = sum(r["state"] == "shrinks" for r in rows)
    numbers = {"growth_groups": n, "growing": k, "shrinking": k_against, "measure": name}
    return by_fractions(k, k_against, n, th), numbers, rows, unin


def judge_c4_bound(d: pd.DataFrame, th: dict[str, Any]) -> tuple[str, dict[str, Any], pd.DataFrame]:
    """Share of runs whose learned length (span; text: effective context) exceeds their num_steps: at most
    `bound_ok` -> bounded, at least `bound_broken` -> broken (the carried state learns past the window)."""
    c = th["c4"]
    length, name = c4_bound_length(d)
    runs = d.assign(span_value=length)[length.notna()]
    if runs.empty:
        return INCONCLUSIVE, {"bound_reason": "no_span"}, runs
    excess = runs["span_value"] - runs["num_steps"]
    over = runs[excess > 0]
    share = len(over) / len(runs)
    verdict = SUPPORTED if share <= c["bound_ok"] else REFUTED if share >= c["bound_broken"] else MIXED
    numbers = {"runs": len(runs), "exceeding": len(over), "share_exceeding": share,
               "max_excess": float(excess.max()), "bound_measure": name}  # fmt: skip
    return verdict, numbers, over


def secondary_lengths(d: pd.DataFrame) -> dict[str, Any]:
    """Which gradient horizons and effective contexts could be used (never decide; reported beside)."""
    gh = _num(d, "gradient_horizon")
    cens, flat = _flag(d, "gradient_horizon_censored"), _flag(d, "gradient_flat")
    usable = gh.notna() & (cens == 0) & (flat == 0)
    method = d["context_method"] if "context_method" in d else pd.Series(None, index=d.index)
    ec = _num(d, "effective_context")
    warm = ec.notna() & (method == "warm-unigram")
    return {
        "horizon_usable": int(usable.sum()),
        "horizon_censored": int((cens == 1).sum()),
        "horizon_flat": int((flat == 1).sum()),
        "horizon_unflagged": int((gh.notna() & (cens.isna() | flat.isna())).sum()),
        "horizon_rho": stats.spearman(d.loc[usable, "num_steps"], gh[usable])[0],
        "context_usable": int(warm.sum()),
        "context_old": int((ec.notna() & (method != "warm-unigram")).sum()),
        "context_rho": stats.spearman(d.loc[warm, "num_steps"], ec[warm])[0],
        "context_over": int((ec[warm] > d.loc[warm, "num_steps"]).sum()),
    }


def judge_c4(df: pd.DataFrame, th: dict[str, Any]) -> SplitResult:
    """Which reading the split supports: "floor" (a window no longer than the dependency cannot learn it),
    "setting" (the learned length follows num_steps: it grows with num_steps and stays within it), "neither"
    (the carried state learns past the window)."""
    if _regime(df) != PLATEAU and not str(df["budget_kind"].iloc[0]).startswith("tokens"):
        # at equal updates a longer window also sees more data
        return _not_applicable(_why("c4_not_at_equal_updates"))
    reason = _seeds_short(df, th)
    if reason:
        return _inconclusive(reason)
    d = df[df["status"] == COMPLETE]
    if d["num_steps"].nunique() < th["min_levels"]:
        return _inconclusive(_why("few_num_steps", n=d["num_steps"].nunique()))
    bound, bnum, over = judge_c4_bound(d, th)
    kind = c4_reading_kind(d)
    if kind == "floor":
        part, pnum, rows, unin = judge_c4_floor(d, th)
        reading = {SUPPORTED: "floor", REFUTED: "neither"}.get(part)
        verdict = part  # echo's bound is reported as what it is (0 or the lag) and never decides
        dec = [(f, say.why_c4_floor(r)) for r in rows if r["state"] == {SUPPORTED: "floor"}.get(part, "broken")
               for f in r["folders"]]  # fmt: skip
        numbers = {"kind": kind, "reading": reading, "floor_part": part, "bound": bound, **pnum, **bnum}
    else:
        growth, gnum, rows, unin = judge_c4_growth(d, th)
        if bound == REFUTED or growth == REFUTED:
            verdict, reading = REFUTED, "neither"
        elif growth == SUPPORTED and bound == SUPPORTED:
            verdict, reading = SUPPORTED, "setting"
        else:
            verdict, reading = INCONCLUSIVE, None
        want = "grows" if verdict == SUPPORTED else "shrinks"
        dec = [(f, say.why_c4_growth(r)) for r in rows if r["state"] == want for f in r["folders"]]
        dec += [(r.folder, say.why_c4_bound(r)) for r in over.itertuples()]
        numbers = {"kind": kind, "reading": reading, "growth": growth, "bound": bound, **gnum, **bnum}
    numbers.update(secondary_lengths(d))
    details = pd.DataFrame([{k: v for k, v in r.items() if k != "folders"} for r in rows])
    return SplitResult(verdict, numbers, details, _deciding(dec), pd.DataFrame(unin, columns=["group", "reason"]))


# ------------------------------------------------------------------------------------------------------- C5
def loss_reduction(d: pd.DataFrame) -> pd.Series:
    """Each run's loss reduction (cfg.optim.loss_reduction; "mean", the default, where the record has none)."""
    if "cfg.optim.loss_reduction" not in d:
        return pd.Series("mean", index=d.index)
    return d["cfg.optim.loss_reduction"].where(d["cfg.optim.loss_reduction"].notna(), "mean").astype(str)


def c5_measure(d: pd.DataFrame) -> pd.DataFrame:
    """Rule: the growth of a window's gradient norm with window length at FIXED parameters, one slope per run
    (never the max grad norm over training, which spikes while a network learns), read as under a MEAN loss: a
    summed loss adds exactly 1 to the log-log slope (a sum of L terms; docs/measures.md, section 5), so a
    summed-loss run's slope has 1 subtracted before any comparison. Columns slope, initial."""
    shift = np.where(loss_reduction(d) == "sum", 1.0, 0.0)
    return pd.DataFrame(
        {"slope": _num(d, "growth_slope") - shift, "initial": _num(d, "growth_slope_initial") - shift}, index=d.index
    )


def c5_jacobian_explodes(slope_low: float, max_l_low: float, th: dict[str, Any]) -> bool:
    """Rule: the state-to-state Jacobian product explodes at a grid point when the lower end of the t-interval
    over seeds of its per-step log-norm slope lies above `c5.min_jacobian_slope` AND the lower end of its
    log-norm at the largest L lies above 0 (larger than norm-preserving, and larger still the longer the
    window; docs/measures.md, section 6)."""
    floor = float(th["c5"]["min_jacobian_slope"])
    return bool(np.isfinite(slope_low) and slope_low > floor and np.isfinite(max_l_low) and max_l_low > 0)


def _rising(x: pd.Series, y: pd.Series, th: dict[str, Any]) -> tuple[float, float, bool]:
    """Spearman rho of y on x with its one-sided permutation p-value: (rho, p, rising at alpha)."""
    rho, p = stats.spearman_permutation(x, y, int(th["n_resamples"]), int(th["bootstrap_seed"]))
    return rho, p, bool(np.isfinite(rho) and rho > 0 and p < th["alpha"])


def judge_c5(df: pd.DataFrame, th: dict[str, Any]) -> SplitResult:
    """A "can" claim: supported where this setting shows explosion by any of three routes; otherwise "not seen"
    here (inconclusive, never refuted). Routes: (a) the Jacobian product (c5_jacobian_explodes), trained or
    initial network; (b) the window-gradient growth slope (as under a mean loss) with its t-interval over seeds
    above `c5.min_slope` at `c5.min_num_steps` or more num_steps of one cell x batch_size (a positive slope at a
    single num_steps is the step where a window first holds the lag, not growth); (c) divergences or the clip
    fraction rising with num_steps (one-sided permutation test at alpha)."""
    reason = _seeds_short(df, th, FINISHED)
    if reason:
        return _inconclusive(reason)
    d = df[df["status"].isin(FINISHED)]
    m = c5_measure(d)
    diverged = (d["status"] == "diverged").astype(float)
    jac = _num(d, "jacobian_slope")
    if m["slope"].notna().sum() == 0 and jac.notna().sum() == 0 and not diverged.any():
        return _inconclusive(_why("no_growth_slope"))
    conf, floor = float(th["confidence"]), float(th["c5"]["min_slope"])
    d = d.assign(_slope=m["slope"], _initial=m["initial"], _clip=_num(d, "clip_fraction"), _jac=jac,
                 _jac_l=_num(d, "jacobian_log_norm_max_L"), _jac_i=_num(d, "jacobian_slope_initial"),
                 _jac_li=_num(d, "jacobian_log_norm_max_L_initial"), _reduction=loss_reduction(d))  # fmt: skip
    rows = []
    for (cell, bs, ns), g in d.groupby(["cell", "batch_size", "num_steps"], observed=True):
        mean, low, high, n = stats.t_interval(g["_slope"], conf)
        imean, ilow, ihigh, _ = stats.t_interval(g["_initial"], conf)
        jmean, jlow, jhigh, jn = stats.t_interval(g["_jac"], conf)
        _, jl_low, _, _ = stats.t_interval(g["_jac_l"], conf)
        jimean, jilow, _, _ = stats.t_interval(g["_jac_i"], conf)
        _, jil_low, _, _ = stats.t_interval(g["_jac_li"], conf)
        enough = n >= th["min_seeds"]
        rows.append(
            {
                "cell": cell,
                "batch_size": bs,
                "num_steps": ns,
                "loss_reduction": ",".join(sorted(g["_reduction"].unique())),
                "slope": mean,
                "ci_low": low,
                "ci_high": high,
                "slope_initial": imean,
                "initial_ci_low": ilow,
                "initial_ci_high": ihigh,
                "seeds": n,
                "amplifies": bool(enough and np.isfinite(low) and low > floor),
                "jacobian_slope": jmean,
                "jacobian_ci_low": jlow,
                "jacobian_ci_high": jhigh,
                "jacobian_slope_initial": jimean,
                "jacobian_explodes": bool(jn >= th["min_seeds"] and c5_jacobian_explodes(jlow, jl_low, th)),
                "jacobian_explodes_initial": bool(jn >= th["min_seeds"] and c5_jacobian_explodes(jilow, jil_low, th)),
                "diverged": int((g["status"] == "diverged").sum()),
                "clip_fraction": float(g["_clip"].mean()),
                "folders": list(g["folder"]),
            }
        )
    details = pd.DataFrame(rows)
    need = int(th["c5"]["min_num_steps"])
    per_group = details.groupby(["cell", "batch_size"], observed=True)["amplifies"].sum()
    growth_groups = [k for k, v in per_group.items() if v >= need]
    details["growth_explodes"] = [(r.cell, r.batch_size) in growth_groups and r.amplifies for r in details.itertuples()]
    details["state"] = np.where(
        details["jacobian_explodes"] | details["jacobian_explodes_initial"] | details["growth_explodes"],
        "explodes",
        "not seen",
    )
    div_rho, _, div_rising = _rising(d["num_steps"], diverged, th)
    clip_rho, _, clip_rising = _rising(d["num_steps"], d["_clip"], th)
    shown = details[details["state"] == "explodes"]
    routes = {
        "jacobian": int((details["jacobian_explodes"] | details["jacobian_explodes_initial"]).sum()),
        "growth": int(details["growth_explodes"].sum()),
        "divergence": div_rising,
        "clipping": clip_rising,
    }
    verdict = SUPPORTED if not shown.empty or div_rising or clip_rising else INCONCLUSIVE
    deciding = [(f, say.why_c5(r)) for r in shown.itertuples() for f in r.folders]
    if div_rising:
        deciding += [(r.folder, say.reason("diverged")) for r in d[diverged == 1].itertuples()]
    div = details.groupby("num_steps")["diverged"].sum()
    numbers = {
        "points": len(details),
        "explodes": len(shown),
        "routes": routes,
        "diverged": int(diverged.sum()),
        "diverged_by_ns": {float(k): int(v) for k, v in div.items()},
        "divergence_rho": div_rho,
        "clip_rho": clip_rho,
        "min_slope": floor,
        "min_jacobian_slope": float(th["c5"]["min_jacobian_slope"]),
        "min_num_steps": need,
        "amplifying_points": int(details["amplifies"].sum()),
        "max_low": float(details["ci_low"].max()) if details["ci_low"].notna().any() else np.nan,
        "jacobian_measured": int(jac.notna().sum()),
        "cells": sorted(map(str, d["cell"].unique())),
        "num_steps": sorted(float(x) for x in d["num_steps"].unique()),
        "loss_reductions": sorted(d["_reduction"].unique()),
    }
    result = SplitResult(verdict, numbers, details.drop(columns=["folders"]), _deciding(deciding))
    if verdict == INCONCLUSIVE:
        result.reason_code = "not_seen"
        result.reason = say.reason("not_seen")
    return result


# ------------------------------------------------------------------------------------------------------- C7
def judge_c7(df: pd.DataFrame, sp: pd.DataFrame | None, th: dict[str, Any]) -> SplitResult:
    """Erratic: batch 1's param_jitter (the loss of ONE fixed held-out batch, update to update: how far the
    parameters move) over batch b's, beside the sampling jitter at fixed parameters (different minibatches: the
    1/sqrt(b L) noise of the loss estimate, which says nothing about the parameters). Cheap: the speed phase."""
    reason = _seeds_short(df, th)
    if reason:
        return _inconclusive(reason)
    d = df[df["status"] == COMPLETE]
    outcome = str(th["c7"].get("outcome", "param_jitter"))
    jitter = _num(d, outcome)
    if jitter.notna().sum() == 0:
        return _inconclusive(_why("no_jitter", outcome=outcome))
    if not (d["batch_size"] == 1).any():
        return _inconclusive(_why("no_batch_1"))
    conf, factor = float(th["confidence"]), float(th["c7"]["min_factor"])
    d = d.assign(_j=jitter, _s=_num(d, "sampling_jitter"))
    rows = []
    for (cell, ns), g in d.groupby(["cell", "num_steps"], observed=True):
        one = g[g["batch_size"] == 1]
        for bs in sorted(b for b in g["batch_size"].unique() if b > 1):
            other = g[g["batch_size"] == bs]
            if min(one["_j"].notna().sum(), other["_j"].notna().sum()) < th["min_seeds"]:
                continue
            ratio, low, high, _ = stats.log_ratio_ci(one["_j"], other["_j"], conf, paired=False)
            s_ratio, s_low, s_high, _ = stats.log_ratio_ci(one["_s"], other["_s"], conf, paired=False)
            state = "erratic" if low > factor else "calm" if high < factor else "undecided"
            rows.append(
                {
                    "cell": cell,
                    "num_steps": ns,
                    "batch_size": bs,
                    "outcome": outcome,
                    "ratio": ratio,
                    "ci_low": low,
                    "ci_high": high,
                    "sampling_ratio": s_ratio,
                    "sampling_ci_low": s_low,
                    "sampling_ci_high": s_high,
                    "sampling_expected": math.sqrt(bs),  # 1/sqrt(1 L) over 1/sqrt(b L)
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
        "outcome": outcome,
        "groups": n,
        "erratic": n_err,
        "calm": n_calm,
        "median_ratio": float(details["ratio"].median()),
        "median_sampling_ratio": _median(details["sampling_ratio"]),
        "median_sampling_expected": float(details["sampling_expected"].median()),
        "median_jitter_ratio_b1": _median(_num(d[d["batch_size"] == 1], "jitter_ratio")),
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
def judge(
    runs: pd.DataFrame,
    th: dict[str, Any],
    speed: pd.DataFrame | None = None,
    *,
    cost: pd.DataFrame | None = None,
    b_crit: pd.DataFrame | None = None,
) -> list[Verdict]:
    """Every claim, within every split (task · budget · lr protocol · variant), then across them.

    `cost`: per-run crossings of the target (analysis/cost.py `crossings`: split, cell, batch_size, num_steps,
    seed, reached, seconds) for C1's wall-clock to target; without it C1 reads a run column `updates_to_target`
    where the table has one. `b_crit`: analysis/cost.py `b_crit_table`, quoted beside C1."""
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
        if _regime(part) != PLATEAU:
            per["C1"][split] = _not_applicable(_why("c1_plateau_only"))
        elif sp is None and cost is None:
            per["C1"][split] = _inconclusive(_why("no_speed"))
        elif cost is None and task_sp.empty:
            per["C1"][split] = _inconclusive(_why("speed_no_task", task=task))
        else:
            times = c1_times(part, task_sp, cost)
            per["C1"][split] = judge_c1(part, c2, times, points, b_crit, th)
        per["C4"][split] = judge_c4(part, th)
        per["C5"][split] = judge_c5(part, th)
        per["C7"][split] = judge_c7(part, task_sp if task_sp is not None and not task_sp.empty else None, th)
    for split in splits:  # after every split: a fixed-budget split quotes its plateau twin
        per["C6"][split] = _judge_c6(df[df["split"] == split], split, per, df)
    if sp is None:
        for split in splits:
            per["C3"][split] = _inconclusive(_why("no_speed"))
    else:
        for task, g in sp.groupby("task"):
            labels = sorted(df.loc[df["task"] == task, "task_label"].astype(str).unique()) or [str(task)]
            per["C3"][f"{' / '.join(labels)} · speed phase"] = judge_c3(g, th)
    n_runs = df["split"].value_counts()
    return [_assemble(CLAIMS[cid], per[cid], n_runs, th) for cid in CLAIMS]


def _judge_c6(part: pd.DataFrame, split: str, per: dict[str, dict[str, SplitResult]], df: pd.DataFrame) -> SplitResult:
    trio = {k: per[k][split].verdict for k in ("C1", "C2", "C4")}
    if _regime(part) == PLATEAU:
        # the runs C6 rests on are those its three parts rest on
        parts = [per[k][split].deciding for k in ("C1", "C2", "C4") if not per[k][split].deciding.empty]
        deciding = pd.concat(parts, ignore_index=True).drop_duplicates() if parts else _deciding([])
        return SplitResult(synthesize(*trio.values()), {"parts": trio, "plateau": True}, deciding=deciding)
    # At a fixed budget C2 (what is learned) is not judged, so neither is C6: only how C4 moved, beside the
    # verdicts of the same task trained to a plateau.
    twin = df[(df["task_label"] == part["task_label"].iloc[0]) & (df["regime"] == PLATEAU)]
    ref = {k: per[k][s].verdict for s in sorted(twin["split"].unique()) for k in ("C1", "C2", "C4") if s in per[k]}
    return _not_applicable(_why("c6_plateau_only"), numbers={"parts": trio, "plateau": False, "at_plateau": ref})


def _assemble(claim: Claim, results: dict[str, SplitResult], n_runs: pd.Series, th: dict[str, Any]) -> Verdict:
    table = pd.DataFrame(
        [
            {
                "split": s,
                "verdict": r.verdict,
                "statistic": say.statistic(claim.id, r),
                "sentence": say.sentence(claim.id, r),
                "runs": int(n_runs.get(s, 0)),
                "applies": r.applicable,
            }
            for s, r in results.items()
        ],
        columns=["split", "verdict", "statistic", "sentence", "runs", "applies"],
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
    verdict, decided, undecided = aggregate(claim.id, results, th)
    statistic, sentence = say.overall(claim.id, verdict, table, decided, undecided)
    if decided and not deciding.empty:  # the runs of the settings that made the verdict
        deciding = deciding[deciding["split"].isin(decided)].reset_index(drop=True)
    return Verdict(
        claim, verdict, statistic, sentence, table, details, deciding, unin, tuple(decided), tuple(undecided)
    )


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
                "decided_in": "; ".join(v.decided_in),
            }
            for v in verdicts
        ]
    )


def split_table(verdicts: list[Verdict]) -> pd.DataFrame:
    frames = [v.splits.assign(claim=v.claim.id) for v in verdicts if not v.splits.empty]
    if not frames:
        return pd.DataFrame(columns=["claim", "split", "verdict", "statistic", "sentence", "runs"])
    return pd.concat(frames, ignore_index=True)[["claim", "split", "verdict", "statistic", "sentence", "runs"]]
