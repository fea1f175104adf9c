"""Claim verdicts C1-C6 as pure functions of a tidy run table and the thresholds.

Input: one row per run with at least `cell, batch_size, num_steps, seed, status` and the outcomes a claim
reads (`tokens_per_s`, `valid_loss`, `valid_accuracy`, `span`, `effective_context`, `gradient_horizon`,
`grad_norm_max`, ...); `split` (or `task`/`budget`/`protocol`) names the setting a row belongs to. Each claim
is judged within every split; when the splits disagree the claim is "mixed" and the split table says where.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.stats import cv, group_spearman, partial_eta2, ratio_ci, spearman

SUPPORTED, REFUTED, MIXED, INCONCLUSIVE = "supported", "refuted", "mixed", "inconclusive"
FINISHED = ("complete", "diverged")
SPLIT_COLUMNS = ("task_label", "budget", "protocol", "variant")


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    metric: str
    comparison: str


CLAIMS = {
    c.id: c
    for c in (
        Claim(
            "C1",
            "batch size mainly buys speed: more parallel rows per step, higher throughput",
            "training tokens/s (after warm-up, evaluation excluded)",
            "Spearman ρ of log tokens/s vs log batch size within each cell × num_steps; partial η² of "
            "batch_size on log tokens/s; throughput ratio largest/smallest batch with bootstrap CI vs "
            "timing noise",
        ),
        Claim(
            "C2",
            "batch size does not change what the network learns (“their loss is usually very close”)",
            "final held-out loss and accuracy; learned span, effective context, gradient horizon",
            "gap between batch sizes within each cell × num_steps (median over groups) vs tolerance; "
            "partial η² of batch_size",
        ),
        Claim(
            "C3",
            "batch_size=4 is about 4 times faster than batch_size=1",
            "training tokens/s",
            "bootstrap CI of tokens/s(4b) / tokens/s(b) per cell × num_steps vs the band around 4",
        ),
        Claim(
            "C4",
            "num_steps sets how long a dependency the network learns",
            "learned span (recall), effective context (ablation), gradient horizon",
            "Spearman ρ vs num_steps within each cell × batch_size; partial η² of num_steps vs batch_size",
        ),
        Claim(
            "C5",
            "a large num_steps can make gradients explode",
            "max global grad norm per run (pre-clip; loss is a per-token mean); diverged runs",
            "Spearman ρ of log max grad norm vs num_steps per cell; growth factor largest/smallest num_steps",
        ),
        Claim(
            "C6",
            "so: choose num_steps by the dependency length, batch_size by the hardware and data",
            "the verdicts of C1, C2 and C4",
            "supported only where C1, C2 and C4 all are; refuted where one of them is",
        ),
    )
}


@dataclass
class SplitResult:
    verdict: str
    statistic: str
    sentence: str
    details: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass
class Verdict:
    claim: Claim
    verdict: str
    statistic: str
    sentence: str
    splits: pd.DataFrame  # split, verdict, statistic, sentence, runs
    details: pd.DataFrame  # the per-group numbers behind the statistic, with a split column


# ------------------------------------------------------------------------------------------------- helpers
def _f(x: float, fmt: str = ".2f") -> str:
    return "n/a" if x is None or not np.isfinite(x) else format(x, fmt)


def _inconclusive(reason: str) -> SplitResult:
    return SplitResult(INCONCLUSIVE, "—", f"Inconclusive: {reason}.")


def prepare(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows a verdict may read, with the derived columns the claims use (for hand-made tables too)."""
    df = runs.copy()
    if "in_verdicts" in df:
        df = df[df["in_verdicts"].astype(bool)]
    elif "status" in df:
        df = df[df["status"].isin(FINISHED)]
    else:
        df["status"] = "complete"
    if "split" not in df:
        present = [c for c in SPLIT_COLUMNS if c in df]
        if "task_label" not in df and "task" in df:  # hand-made tables name the task only
            present.insert(0, "task")
        df["split"] = df[present].astype(str).agg(" · ".join, axis=1) if present else "all runs"
    for col in ("batch_size", "num_steps", "seed"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    if "log_tokens_per_s" not in df and "tokens_per_s" in df:
        tps = pd.to_numeric(df["tokens_per_s"], errors="coerce")
        df["log_tokens_per_s"] = np.log(tps.where(tps > 0))
    if "log_grad_norm_max" not in df and "grad_norm_max" in df:
        g = pd.to_numeric(df["grad_norm_max"], errors="coerce")
        df["log_grad_norm_max"] = np.log(g.where(g > 0)).where(df["status"] != "diverged", np.inf)
    return df


def _evidence(df: pd.DataFrame, factor: str, th: dict[str, Any], statuses=("complete",)) -> str | None:
    """Why this split cannot answer (too few seeds or levels), or None when it can."""
    d = df[df["status"].isin(statuses)]
    if d.empty:
        return "no complete runs"
    seeds = d.groupby(["cell", "batch_size", "num_steps"], observed=True)["seed"].nunique().median()
    if seeds < th["min_seeds"]:
        return f"only {seeds:g} seed(s) per grid point (need {th['min_seeds']} to separate effects from noise)"
    levels = d[factor].nunique()
    if levels < th["min_levels"]:
        return f"only {levels} value(s) of {factor} (need {th['min_levels']})"
    return None


def _complete(df: pd.DataFrame, outcome: str) -> pd.DataFrame:
    d = df[df["status"] == "complete"].copy()
    if outcome not in d:
        return d.iloc[0:0]
    d[outcome] = pd.to_numeric(d[outcome], errors="coerce")
    return d[np.isfinite(d[outcome])]


def combine(verdicts: list[str]) -> str:
    """Across splits (or measures): agreement gives that verdict, disagreement "mixed"; none, inconclusive."""
    conclusive = {v for v in verdicts if v != INCONCLUSIVE}
    if not conclusive:
        return INCONCLUSIVE
    return conclusive.pop() if len(conclusive) == 1 else MIXED


# ------------------------------------------------------------------------------------------------------- C1
def judge_c1(df: pd.DataFrame, th: dict[str, Any], bench_cv: float = 0.0) -> SplitResult:
    reason = _evidence(df, "batch_size", th)
    if reason:
        return _inconclusive(reason)
    c = th["c1"]
    d = _complete(df, "log_tokens_per_s")
    rows = []
    for (cell, ns), g in d.groupby(["cell", "num_steps"], observed=True):
        if g["batch_size"].nunique() < 2:
            continue
        lo, hi = g["batch_size"].min(), g["batch_size"].max()
        rho, _ = spearman(np.log(g["batch_size"]), g["log_tokens_per_s"])
        ratio, low, high = ratio_ci(
            g.loc[g["batch_size"] == hi, "tokens_per_s"], g.loc[g["batch_size"] == lo, "tokens_per_s"], th
        )
        noise = float(np.nanmedian([cv(s) for _, s in g.groupby("batch_size")["tokens_per_s"]] or [np.nan]))
        rows.append(
            {
                "cell": cell,
                "num_steps": ns,
                "rho": rho,
                "bs_small": lo,
                "bs_large": hi,
                "ratio": ratio,
                "ci_low": low,
                "ci_high": high,
                "seed_cv": noise,
                # faster beyond noise: the CI clears 1, widened by the bench's run-to-run spread when known
                "faster": bool(np.isfinite(low) and low > 1 + 2 * bench_cv),
            }
        )
    details = pd.DataFrame(rows)
    if details.empty:
        return _inconclusive("no cell × num_steps group has two batch sizes")
    med_rho = float(details["rho"].fillna(0).median())
    eta = partial_eta2(d, "log_tokens_per_s")["batch_size"]
    frac = float(details["faster"].mean())
    ok = med_rho >= c["min_rho"] and np.isfinite(eta) and eta >= c["min_eta2"] and frac >= c["min_fraction_faster"]
    lo, hi = int(details["bs_small"].min()), int(details["bs_large"].max())
    noise = float(np.nanmedian(details["seed_cv"])) if details["seed_cv"].notna().any() else np.nan
    noise_txt = f"timing noise across seeds {_f(100 * noise, '.1f')} %" + (
        f", bench {_f(100 * bench_cv, '.1f')} %" if bench_cv else ""
    )
    stat = (
        f"median ρ = {_f(med_rho)} ({len(details)} groups); η²(batch_size) = {_f(eta)}; "
        f"bs{hi}/bs{lo} = {_f(details['ratio'].median(), '.1f')}× (median); "
        f"{int(details['faster'].sum())}/{len(details)} faster beyond noise"
    )
    lead = "Throughput rose with batch size" if ok else "Throughput did not rise reliably with batch size"
    ratio = _f(details["ratio"].median(), ".1f")
    faster = f"{int(details['faster'].sum())}/{len(details)} groups faster beyond noise"
    sentence = (
        f"{lead}: median Spearman ρ = {_f(med_rho)} over {len(details)} cell × num_steps groups, partial "
        f"η²(batch_size) = {_f(eta)}, and batch {hi} ran {ratio}× the tokens/s of batch {lo} "
        f"(median; {faster}; {noise_txt})."
    )
    return SplitResult(SUPPORTED if ok else REFUTED, stat, sentence, details)


# ------------------------------------------------------------------------------------------------------- C2
# outcome -> (how a gap between batch sizes is measured, its threshold key)
C2_OUTCOMES: dict[str, tuple[str, str]] = {
    "valid_loss": ("relative", "max_rel_loss_gap"),
    "valid_accuracy": ("absolute", "max_acc_gap"),
    "span": ("octaves", "max_log2_gap"),
    "effective_context": ("octaves", "max_log2_gap"),
    "gradient_horizon": ("octaves", "max_log2_gap"),
}


def _gap(means: pd.Series, kind: str) -> float:
    lo, hi = float(means.min()), float(means.max())
    if kind == "relative":
        return hi / lo - 1 if lo > 0 else np.nan
    if kind == "absolute":
        return hi - lo
    return float(np.log2((1 + max(hi, 0)) / (1 + max(lo, 0))))


def _show_gap(gap: float, kind: str) -> str:
    if kind == "relative":
        return f"{_f(100 * gap, '.1f')} %"
    if kind == "absolute":
        return f"{_f(100 * gap, '.1f')} pts"
    return f"{_f(gap)} octaves"


def judge_c2(df: pd.DataFrame, th: dict[str, Any]) -> SplitResult:
    reason = _evidence(df, "batch_size", th)
    if reason:
        return _inconclusive(reason)
    c = th["c2"]
    rows = []
    for outcome, (kind, key) in C2_OUTCOMES.items():
        d = _complete(df, outcome)
        if d.empty:
            continue
        gaps = [
            _gap(g.groupby("batch_size")[outcome].mean(), kind)
            for _, g in d.groupby(["cell", "num_steps"], observed=True)
            if g["batch_size"].nunique() >= 2
        ]
        gaps = [x for x in gaps if np.isfinite(x)]
        if not gaps:
            continue
        gap = float(np.median(gaps))
        eta = partial_eta2(d, outcome)["batch_size"]
        if gap <= c[key]:
            state = "same"
        elif np.isfinite(eta) and eta >= c["max_eta2"]:
            state = "differs"
        else:
            state = "unclear"  # a gap larger than the tolerance, but no larger than the spread between seeds
        rows.append(
            {
                "outcome": outcome,
                "gap": gap,
                "gap_kind": kind,
                "tolerance": c[key],
                "eta2_batch_size": eta,
                "state": state,
                "groups": len(gaps),
            }
        )
    details = pd.DataFrame(rows)
    if details.empty:
        return _inconclusive("no outcome was measured at two batch sizes")
    states = set(details["state"])
    verdict = REFUTED if "differs" in states else SUPPORTED if states == {"same"} else INCONCLUSIVE
    parts = [f"{r.outcome} {_show_gap(r.gap, r.gap_kind)} (η² {_f(r.eta2_batch_size)})" for r in details.itertuples()]
    stat = "median gap between batch sizes: " + "; ".join(parts)
    differ = details[details["state"] == "differs"]
    unclear = details[details["state"] == "unclear"]
    if verdict == REFUTED:
        what = ", ".join(
            f"{r.outcome} by {_show_gap(r.gap, r.gap_kind)} (tolerance {_show_gap(r.tolerance, r.gap_kind)}, "
            f"partial η²(batch_size) = {_f(r.eta2_batch_size)})"
            for r in differ.itertuples()
        )
        sentence = f"Batch size changed what was learned: {what}."
    elif verdict == SUPPORTED:
        sentence = "Batch sizes ended close on every outcome: " + "; ".join(parts) + ", all within tolerance."
    else:
        what = ", ".join(f"{r.outcome} ({_show_gap(r.gap, r.gap_kind)})" for r in unclear.itertuples())
        sentence = f"Inconclusive: gaps above tolerance in {what}, but no larger than the spread between seeds."
    return SplitResult(verdict, stat, sentence, details)


# ------------------------------------------------------------------------------------------------------- C3
def judge_c3(df: pd.DataFrame, th: dict[str, Any], bench_cv: float = 0.0) -> SplitResult:
    reason = _evidence(df, "batch_size", th)
    if reason:
        return _inconclusive(reason)
    c = th["c3"]
    target = float(c["ratio"])
    d = _complete(df, "tokens_per_s")
    sizes = sorted(int(b) for b in d["batch_size"].unique())
    pairs = [(b, round(b * target)) for b in sizes if round(b * target) in sizes]
    if not pairs:
        return _inconclusive(f"the grid has no pair of batch sizes b and {target:g}·b")
    small, big = pairs[0]
    band = (target * (1 - c["tolerance"]), target * (1 + c["tolerance"]))
    rows = []
    for (cell, ns), g in d.groupby(["cell", "num_steps"], observed=True):
        a, b = g.loc[g["batch_size"] == big, "tokens_per_s"], g.loc[g["batch_size"] == small, "tokens_per_s"]
        if a.empty or b.empty:
            continue
        ratio, low, high = ratio_ci(a, b, th)
        low, high = (ratio, ratio) if not np.isfinite(low) else (low, high)
        low, high = (
            low * (1 - 2 * bench_cv),
            high * (1 + 2 * bench_cv),
        )  # run-to-run timing spread, if benched
        state = "within" if low <= band[1] and high >= band[0] else "below" if high < band[0] else "above"
        rows.append(
            {
                "cell": cell,
                "num_steps": ns,
                "bs_small": small,
                "bs_large": big,
                "ratio": ratio,
                "ci_low": low,
                "ci_high": high,
                "state": state,
            }
        )
    details = pd.DataFrame(rows)
    if details.empty:
        return _inconclusive(f"no cell × num_steps group ran both batch {small} and batch {big}")
    within = int((details["state"] == "within").sum())
    verdict = SUPPORTED if within == len(details) else REFUTED if within == 0 else MIXED
    med, rmin, rmax = details["ratio"].median(), details["ratio"].min(), details["ratio"].max()
    stat = (
        f"tokens/s bs{big}/bs{small} = {_f(med, '.2f')}× (median; range "
        f"{_f(rmin, '.2f')}–{_f(rmax, '.2f')}); "
        f"{within}/{len(details)} CIs meet [{band[0]:g}, {band[1]:g}]"
    )
    sentence = (
        f"Batch {big} ran {_f(med, '.2f')}× the tokens/s of batch {small} (median over {len(details)} cell × "
        f"num_steps groups, range {_f(rmin, '.2f')}–{_f(rmax, '.2f')}); {within} of {len(details)} "
        "bootstrap CIs "
        f"meet the band [{band[0]:g}, {band[1]:g}] around {target:g}×."
    )
    return SplitResult(verdict, stat, sentence, details)


# ------------------------------------------------------------------------------------------------------- C4
C4_OUTCOMES = ("span", "effective_context", "gradient_horizon")


def judge_c4(df: pd.DataFrame, th: dict[str, Any]) -> SplitResult:
    reason = _evidence(df, "num_steps", th)
    if reason:
        return _inconclusive(reason)
    c = th["c4"]
    rows = []
    for outcome in C4_OUTCOMES:
        d = _complete(df, outcome)
        if d.empty or d["num_steps"].nunique() < 2:
            continue
        ns_lo, ns_hi = d["num_steps"].min(), d["num_steps"].max()
        mean_lo = float(d.loc[d["num_steps"] == ns_lo, outcome].mean())
        mean_hi = float(d.loc[d["num_steps"] == ns_hi, outcome].mean())
        gs = group_spearman(d, "num_steps", outcome, ["cell", "batch_size"])
        rho = float(gs["rho"].fillna(0).median()) if not gs.empty else np.nan  # constant within a group: no trend
        eta = partial_eta2(d, outcome)
        e_ns, e_bs = eta["num_steps"], eta["batch_size"]
        if (d[outcome] == 0).all():
            state = INCONCLUSIVE  # nothing learned anywhere: the budget, not num_steps, is the limit
        else:
            ok = (
                np.isfinite(rho)
                and rho >= c["min_rho"]
                and np.isfinite(e_ns)
                and e_ns >= c["min_eta2"]
                and not (np.isfinite(e_bs) and e_bs >= e_ns)
            )
            state = SUPPORTED if ok else REFUTED
        censored = f"{outcome}_censored"  # the measure hit its largest probe distance: a lower bound
        n_censored = int(d[censored].map(lambda v: v is True or v == 1).sum()) if censored in d else 0
        rows.append(
            {
                "outcome": outcome,
                "censored_runs": n_censored,
                "rho": rho,
                "eta2_num_steps": e_ns,
                "eta2_batch_size": e_bs,
                "num_steps_low": ns_lo,
                "mean_low": mean_lo,
                "num_steps_high": ns_hi,
                "mean_high": mean_hi,
                "state": state,
                "source": _source(d, outcome),
            }
        )
    details = pd.DataFrame(rows)
    if details.empty:
        return _inconclusive("no learned-length measure (span, effective context, gradient horizon) was recorded")
    verdict = combine(list(details["state"]))
    parts = [
        f"{r.outcome} ρ {_f(r.rho)}, η² ns {_f(r.eta2_num_steps)} vs bs {_f(r.eta2_batch_size)}"
        for r in details.itertuples()
    ]
    stat = "; ".join(parts)
    said = []
    for r in details.itertuples():
        verb = {SUPPORTED: "grew with", REFUTED: "did not follow", INCONCLUSIVE: "stayed at 0 for every"}[r.state]
        said.append(
            f"{r.outcome} {verb} num_steps ({_f(r.mean_low, '.1f')} at {r.num_steps_low:g} → "
            f"{_f(r.mean_high, '.1f')} at {r.num_steps_high:g}; median ρ = {_f(r.rho)}, partial η² "
            f"num_steps {_f(r.eta2_num_steps)} vs batch_size {_f(r.eta2_batch_size)}"
            + (f"; {r.censored_runs} runs at the measure's ceiling" if r.censored_runs else "")
            + ")"
        )
    sentence = "; ".join(said) + "."
    return SplitResult(verdict, stat, sentence[0].upper() + sentence[1:], details)


def _source(d: pd.DataFrame, outcome: str) -> str:
    if outcome == "span" and "span_source" in d:
        sources = d["span_source"].dropna().unique()
        return ", ".join(map(str, sources)) or "measures"
    return "measures"


# ------------------------------------------------------------------------------------------------------- C5
def judge_c5(df: pd.DataFrame, th: dict[str, Any]) -> SplitResult:
    reason = _evidence(df, "num_steps", th, statuses=FINISHED)
    if reason:
        return _inconclusive(reason)
    c = th["c5"]
    d = df[df["status"].isin(FINISHED)].copy()
    d["log_grad_norm_max"] = pd.to_numeric(d.get("log_grad_norm_max"), errors="coerce")
    d = d[d["log_grad_norm_max"].notna()]
    explodes = d["gradient_explodes"].map(lambda v: v is True or v == 1) if "gradient_explodes" in d else False
    d["exploded"] = (d["status"] == "diverged") | explodes
    rows = []
    for cell, g in d.groupby("cell", observed=True):
        if g["num_steps"].nunique() < 2:
            continue
        gs = group_spearman(g, "num_steps", "log_grad_norm_max", ["batch_size"])
        rho = float(gs["rho"].fillna(0).median()) if not gs.empty else np.nan
        ns_lo, ns_hi = g["num_steps"].min(), g["num_steps"].max()
        fin = g[np.isfinite(g["log_grad_norm_max"])]
        lo_vals = fin.loc[fin["num_steps"] == ns_lo, "log_grad_norm_max"]
        hi_vals = fin.loc[fin["num_steps"] == ns_hi, "log_grad_norm_max"]
        growth = float(np.exp(hi_vals.mean() - lo_vals.mean())) if len(lo_vals) and len(hi_vals) else np.nan
        n_exploded = int(g.loc[g["num_steps"] > ns_lo, "exploded"].sum())
        grows = np.isfinite(rho) and rho >= c["min_rho"] and np.isfinite(growth) and growth >= c["min_growth"]
        # A run that diverged (or whose measured gradient profile grows) is an explosion outright, when long
        # windows do it more often than the shortest ones.
        blows_up = (
            n_exploded > 0
            and g.loc[g["num_steps"] == ns_hi, "exploded"].mean() > g.loc[g["num_steps"] == ns_lo, "exploded"].mean()
        )
        shows = bool(grows or blows_up)
        rows.append(
            {
                "cell": cell,
                "rho": rho,
                "num_steps_low": ns_lo,
                "num_steps_high": ns_hi,
                "growth": growth,
                "exploded_runs": n_exploded,
                "explodes": shows,
            }
        )
    details = pd.DataFrame(rows)
    if details.empty:
        return _inconclusive("no cell ran two values of num_steps")
    verdict = SUPPORTED if details["explodes"].any() else REFUTED
    stat = "; ".join(
        f"{r.cell}: ρ {_f(r.rho)}, ×{_f(r.growth, '.2f')}"
        + (f", {r.exploded_runs} diverged/exploding" if r.exploded_runs else "")
        for r in details.itertuples()
    )
    said = []
    for r in details.itertuples():
        blew = f", {r.exploded_runs} runs diverged or exploded" if r.exploded_runs else ""
        said.append(
            f"{r.cell} ×{_f(r.growth, '.2f')} from num_steps {r.num_steps_low:g} to {r.num_steps_high:g} "
            f"(median ρ = {_f(r.rho)}{blew})"
        )
    lead = (
        "Max grad norm grew with num_steps beyond the threshold in "
        + ", ".join(details.loc[details["explodes"], "cell"].astype(str))
        if verdict == SUPPORTED
        else "No cell's max grad norm grew enough with num_steps to count as an explosion"
    )
    why = "the loss is a per-token mean, so no growth comes from summing over steps"
    sentence = f"{lead}: {'; '.join(said)}; {why}."
    return SplitResult(verdict, stat, sentence, details)


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
def judge(runs: pd.DataFrame, th: dict[str, Any], bench_cv: float | None = None) -> list[Verdict]:
    """Every claim, within every split, then across them."""
    df = prepare(runs)
    noise = float(bench_cv or 0.0)
    judges: dict[str, Callable[[pd.DataFrame], SplitResult]] = {
        "C1": lambda d: judge_c1(d, th, noise),
        "C2": lambda d: judge_c2(d, th),
        "C3": lambda d: judge_c3(d, th, noise),
        "C4": lambda d: judge_c4(d, th),
        "C5": lambda d: judge_c5(d, th),
    }
    splits = sorted(df["split"].unique()) if not df.empty else []
    per_split: dict[str, dict[str, SplitResult]] = {cid: {} for cid in CLAIMS}
    for split in splits:
        part = df[df["split"] == split]
        for cid, fn in judges.items():
            per_split[cid][split] = fn(part)
        trio = [per_split[k][split].verdict for k in ("C1", "C2", "C4")]
        v6 = synthesize(*trio)
        text = f"C1 {trio[0]}, C2 {trio[1]}, C4 {trio[2]}"
        per_split["C6"][split] = SplitResult(v6, text, f"{v6.capitalize()}: {text}.")
    out = []
    for cid, claim in CLAIMS.items():
        results = per_split[cid]
        n_runs = df["split"].value_counts()
        table = pd.DataFrame(
            [
                {
                    "split": s,
                    "verdict": r.verdict,
                    "statistic": r.statistic,
                    "sentence": r.sentence,
                    "runs": int(n_runs.get(s, 0)),
                }
                for s, r in results.items()
            ],
            columns=["split", "verdict", "statistic", "sentence", "runs"],
        )
        details = (
            pd.concat(
                [r.details.assign(split=s) for s, r in results.items() if not r.details.empty],
                ignore_index=True,
            )
            if any(not r.details.empty for r in results.values())
            else pd.DataFrame()
        )
        out.append(_overall(claim, results, table, details))
    return out


def _overall(claim: Claim, results: dict[str, SplitResult], table: pd.DataFrame, details: pd.DataFrame) -> Verdict:
    if not results:
        return Verdict(claim, INCONCLUSIVE, "—", "Inconclusive: no finished run to judge.", table, details)
    verdict = combine([r.verdict for r in results.values()])
    if len(results) == 1:
        (r,) = results.values()
        return Verdict(claim, verdict, r.statistic, r.sentence, table, details)
    by_verdict: dict[str, list[str]] = {}
    for split, r in results.items():
        by_verdict.setdefault(r.verdict, []).append(split)
    statistic = "\n".join(f"{split}: {r.statistic}" for split, r in results.items())  # a line per setting
    if verdict != MIXED:
        split, r = next((s, r) for s, r in results.items() if r.verdict == verdict)
        rest = len(results) - len(by_verdict.get(verdict, []))
        also = f" ({rest} inconclusive)" if rest else ""
        count = f"{len(by_verdict[verdict])} of {len(results)} settings{also}"
        sentence = f"{verdict.capitalize()} in {count}. In {split}: {r.sentence}"
        return Verdict(claim, verdict, statistic, sentence, table, details)
    where = "; ".join(f"{v} in {', '.join(s)}" for v, s in by_verdict.items())
    examples = " ".join(
        f"In {splits[0]}: {results[splits[0]].sentence}" for v, splits in by_verdict.items() if v != INCONCLUSIVE
    )
    return Verdict(claim, verdict, statistic, f"Mixed — {where}. {examples}", table, details)


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
