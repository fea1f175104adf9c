"""Cost to result: updates, tokens and wall-clock to a target against batch size, the critical batch size those
curves give, and the gradient noise scale where each run crossed its target.

Shallue et al. (2019, "Measuring the Effects of Data Parallelism on Neural Network Training") and McCandlish et
al. (2018, "An Empirical Model of Large-Batch Training") describe the steps S and the examples E needed to reach a
fixed result as

    S(B) = S_min (1 + B_crit / B),    E(B) = E_min (1 + B / B_crit):

below B_crit a bigger batch cuts the updates almost in proportion (perfect scaling), above it hardly at all, and
the tokens spent grow. In that model the two share B_crit, and B_crit ≈ B_simple, the gradient noise scale
tr(Σ)/|G|² measured at the point of training where the target is met (docs/measures.md, section 6). Here each
curve is fitted on its own and both are reported, beside B_simple at the target.

The per-run crossings are tables.time_to_target_runs (interpolated in log updates between the evaluations around
the crossing; tables.TARGET_RULE says how); this module adds the fits, B_simple at the target, and the list of
plateau runs that stopped at their cap.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from analysis.tables import aggregate_ttt, log_t_interval, time_to_target_runs
from sweep.record import JUDGED_STATUSES

GROUP = ["split", "task", "cell", "num_steps"]  # one cost curve per group: batch size on its x axis
MIN_BATCH_SIZES = 4  # a two-parameter curve through fewer points says nothing about its shape
N_BOOT = 1000  # bootstrap refits per curve: percentiles at 2.5 % / 97.5 % rest on ~25 values each
BOOT_SEED = 0  # fixed, so a report rebuilt from the same records gives the same interval
# B_crit is searched this far (a factor) beyond the grid on either side: far enough that a fit running into the
# bound is one the grid cannot pin down, which is reported as beyond the grid rather than as a number
_SEARCH = 1e3
FIT_RULE = (
    "Per (setting, cell, num_steps) with at least {n} batch sizes whose every seed reached the target: "
    "S(B) = S_min (1 + B_crit / B) fitted to updates to target and E(B) = E_min (1 + B / B_crit) to tokens to "
    "target (Shallue et al. 2019; McCandlish et al. 2018), each on its own, by least squares on the log of the "
    "per-batch geometric mean over seeds (scipy least_squares). Where tokens = updates × batch size × num_steps "
    "exactly, the two fits are the same problem in log space and give the same B_crit; they part where tokens per "
    "update vary. B_crit's interval: percentile bootstrap, seeds resampled within each batch size and the curve "
    "refitted ({boot} times, the same objective minimised over a fine grid of B_crit; fixed RNG seed {seed}); it "
    "covers seed-to-seed spread, not the error of interpolating each crossing. A B_crit beyond the batch sizes "
    "tried is not a number the data give: reported as > largest batch or < smallest batch (an interval end "
    "beyond the grid likewise). B_simple at target: per run, the gradient noise scale interpolated in log "
    "updates between the two noise measurements around the crossing (the nearest one, its distance noted, when "
    "the crossing is not bracketed), then the geometric mean over the group's runs (every batch size) with a "
    "t-interval on logs. McCandlish et al. predict B_crit ≈ B_simple."
)


# --------------------------------------------------------------------------------------------------- fits
def _shape(kind: str, b: np.ndarray, b_crit: np.ndarray) -> np.ndarray:
    """log(1 + B_crit/B) for steps, log(1 + B/B_crit) for tokens: the curve's log, less log S_min (E_min)."""
    return np.log1p(b_crit / b) if kind == "steps" else np.log1p(b / b_crit)


def _fit_once(kind: str, b: np.ndarray, y: np.ndarray, lo: float, hi: float) -> tuple[float, float, float]:
    """(log S_min, log B_crit, rms log residual) of one least-squares fit in log space, started from the best
    of a grid over log B_crit (for a fixed B_crit the best log S_min is the mean residual: a 1-D profile, so
    the start cannot sit in the wrong valley)."""
    grid = np.linspace(lo, hi, 97)
    resid = y[None, :] - _shape(kind, b[None, :], np.exp(grid)[:, None])
    start = resid.mean(axis=1)
    j = int(np.argmin(((resid - start[:, None]) ** 2).sum(axis=1)))
    x0 = np.array([start[j], np.clip(grid[j], lo + 1e-9, hi - 1e-9)])
    fit = least_squares(
        lambda p: p[0] + _shape(kind, b, np.exp(p[1])) - y, x0, bounds=([-np.inf, lo], [np.inf, hi]), method="trf"
    )
    return float(fit.x[0]), float(fit.x[1]), float(np.sqrt(np.mean(fit.fun**2)))


def _profile_argmin(kind: str, b: np.ndarray, ys: np.ndarray, lo: float, hi: float, n: int = 4001) -> np.ndarray:
    """log B_crit minimising the same least-squares objective for every row of `ys` at once (the bootstrap
    refits): the profile over a fine grid of log B_crit (steps of ~0.5 %), refined by a parabola through the
    best grid point and its neighbours. One least_squares call per refit would cost ~1 s per curve."""
    grid = np.linspace(lo, hi, n)
    f = _shape(kind, b[None, :], np.exp(grid)[:, None])  # [grid, batch]
    fc = f - f.mean(axis=1, keepdims=True)
    yc = ys - ys.mean(axis=1, keepdims=True)
    # sum over batch sizes of (yc - fc)^2, less the term that does not depend on the grid point
    sse = (fc**2).sum(axis=1)[None, :] - 2 * yc @ fc.T
    j = np.clip(np.argmin(sse, axis=1), 1, n - 2)
    rows = np.arange(len(ys))
    s0, s1, s2 = sse[rows, j - 1], sse[rows, j], sse[rows, j + 1]
    curv = s0 - 2 * s1 + s2
    shift = np.where(curv > 0, 0.5 * (s0 - s2) / np.where(curv > 0, curv, 1.0), 0.0)
    return grid[j] + np.clip(shift, -1, 1) * (grid[1] - grid[0])


def _side(b_crit: float, b_min: float, b_max: float) -> str:
    if b_crit > b_max:
        return f"> largest batch ({b_max:g})"
    if b_crit < b_min:
        return f"< smallest batch ({b_min:g})"
    return ""


def fit_critical_batch(
    values: dict[int, Any], kind: str = "steps", level: float = 0.95, n_boot: int = N_BOOT, seed: int = BOOT_SEED
) -> dict[str, Any]:
    """Fit S(B) = S_min (1 + B_crit/B) (kind "steps") or E(B) = E_min (1 + B/B_crit) (kind "tokens") to
    `values` {batch size: the seeds' values to target}.

    Returns b_crit (NaN when not identified), its percentile-bootstrap interval (ci_low / ci_high: 0 or inf
    where that end lies beyond the grid), the scale (S_min or E_min), the rms log residual, the batch sizes
    used, and `status`: "fitted", or why not ("> largest batch (64)", "< smallest batch (1)", too few batch
    sizes)."""
    pts = {int(bs): np.log(np.asarray(v, dtype=float)) for bs, v in values.items()}
    pts = {bs: v[np.isfinite(v)] for bs, v in pts.items() if bs > 0}
    pts = {bs: v for bs, v in sorted(pts.items()) if len(v)}
    out: dict[str, Any] = {"b_crit": np.nan, "ci_low": np.nan, "ci_high": np.nan, "scale": np.nan, "rms": np.nan,
                           "batch_sizes": ", ".join(map(str, pts)), "status": ""}  # fmt: skip
    if len(pts) < MIN_BATCH_SIZES:
        out["status"] = f"not fitted: {len(pts)} batch size(s) with the target reached, {MIN_BATCH_SIZES} needed"
        return out
    b = np.array(list(pts), dtype=float)
    b_min, b_max = float(b.min()), float(b.max())
    lo, hi = np.log(b_min / _SEARCH), np.log(b_max * _SEARCH)
    y = np.array([v.mean() for v in pts.values()])
    log_scale, log_bc, rms = _fit_once(kind, b, y, lo, hi)
    bc = float(np.exp(log_bc))
    out.update(scale=float(np.exp(log_scale)), rms=rms)
    side = _side(bc, b_min, b_max)
    out["status"] = f"not identified: B_crit {side}" if side else "fitted"
    out["b_crit"] = np.nan if side else bc
    gen = np.random.default_rng(seed)
    y_star = np.column_stack([v[gen.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1) for v in pts.values()])
    bc_star = np.exp(_profile_argmin(kind, b, y_star, lo, hi))
    # an end beyond the grid is a bound, not a value: inf (or 0) keeps it from posing as a number
    boots = np.where(bc_star > b_max, np.inf, np.where(bc_star < b_min, 0.0, bc_star))
    alpha = (1 - level) / 2
    out["ci_low"], out["ci_high"] = (float(q) for q in np.quantile(boots, [alpha, 1 - alpha], method="inverted_cdf"))
    return out


# ---------------------------------------------------------------------------------------- B_simple at target
def b_simple_at(steps: Any, b_simple: Any, crossing: float) -> tuple[float, str, float]:
    """The gradient noise scale at update `crossing` from a run's noise measurements (steps, B_simple):
    (value, how, distance). Bracketed: interpolated linearly in log updates on log B between the measurements
    just before and just after (distance 1); otherwise the nearest measurement in log updates, its distance the
    factor between its update and the crossing (> 1: measured later)."""
    u = np.asarray(steps, dtype=float)
    v = np.asarray(b_simple, dtype=float)
    ok = np.isfinite(u) & (u > 0) & np.isfinite(v) & (v > 0)
    u, v = u[ok], v[ok]
    if not len(u) or not np.isfinite(crossing) or crossing <= 0:
        return np.nan, "no noise measurement", np.nan
    order = np.argsort(u)
    u, v = u[order], v[order]
    at = np.isclose(u, crossing)
    if at.any():
        return float(v[at][0]), "at the crossing", 1.0
    before, after = u < crossing, u > crossing
    if before.any() and after.any():
        i, j = int(np.flatnonzero(before)[-1]), int(np.flatnonzero(after)[0])
        frac = (np.log(crossing) - np.log(u[i])) / (np.log(u[j]) - np.log(u[i]))
        return float(np.exp(np.log(v[i]) + frac * (np.log(v[j]) - np.log(v[i])))), "interpolated", 1.0
    k = int(np.argmin(np.abs(np.log(u) - np.log(crossing))))
    side = "after" if u[k] > crossing else "before"
    return float(v[k]), f"nearest ({side} the crossing)", float(u[k] / crossing)


def b_simple_runs(per_run: pd.DataFrame, evals: pd.DataFrame) -> pd.DataFrame:
    """Per run that reached its target: B_simple at the crossing (b_simple_at), how and how far."""
    cols = ["run_id", "b_simple", "b_simple_how", "b_simple_distance"]
    if per_run.empty or evals.empty or "noise_b_simple" not in evals or "step" not in evals:
        return pd.DataFrame(columns=cols)
    noise = evals.assign(b=pd.to_numeric(evals["noise_b_simple"], errors="coerce")).dropna(subset=["b"])
    by_run = dict(tuple(noise.groupby("run_id"))) if not noise.empty else {}
    rows = []
    for r in per_run[per_run["reached"]].itertuples(index=False):
        ev = by_run.get(r.run_id)
        if ev is None:
            rows.append({"run_id": r.run_id, "b_simple": np.nan, "b_simple_how": "no noise measurement",
                         "b_simple_distance": np.nan})  # fmt: skip
            continue
        value, how, dist = b_simple_at(ev["step"], ev["b"], float(r.updates))
        rows.append({"run_id": r.run_id, "b_simple": value, "b_simple_how": how, "b_simple_distance": dist})
    return pd.DataFrame(rows, columns=cols)


def _b_simple_summary(g: pd.DataFrame, level: float) -> dict[str, Any]:
    """Geometric mean of the runs' B_simple at target with a t-interval on logs, and how they were read."""
    none = {"b_simple": np.nan, "b_simple_ci_low": np.nan, "b_simple_ci_high": np.nan, "b_simple_runs": 0,
            "b_simple_how": "no noise measurement at the target"}  # fmt: skip
    if "b_simple" not in g:
        return none
    c, lo, hi, n = log_t_interval(g["b_simple"], level)
    if not n:
        return none
    got = g[pd.to_numeric(g["b_simple"], errors="coerce") > 0]
    far = got["b_simple_distance"].map(lambda d: max(d, 1 / d) if d > 0 else np.nan)
    nearest = int(got["b_simple_how"].astype(str).str.startswith("nearest").sum())
    how = f"{n - nearest}/{n} bracketed" + (f", {nearest} nearest (up to ×{far.max():.2g} away)" if nearest else "")
    return {"b_simple": c, "b_simple_ci_low": lo, "b_simple_ci_high": hi, "b_simple_runs": n, "b_simple_how": how}


# --------------------------------------------------------------------------------------------- the tables
def crossings(
    runs: pd.DataFrame, evals: pd.DataFrame, speed: pd.DataFrame | None, targets: dict[str, Any] | None = None
) -> pd.DataFrame:
    """Per run: tables.time_to_target_runs, with B_simple at its crossing."""
    per_run = time_to_target_runs(runs, evals, speed, targets)
    return per_run.merge(b_simple_runs(per_run, evals), on="run_id", how="left")


def cost_to_result(per_run: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per (split, task, cell, num_steps, batch size): the time-to-target aggregate (tables.aggregate_ttt:
    updates, tokens, wall-clock with intervals over seeds, censored where seeds did not reach it) and the
    geometric mean B_simple at the crossings."""
    ttt = aggregate_ttt(per_run, level)
    if ttt.empty:
        return ttt.assign(b_simple=[], b_simple_ci_low=[], b_simple_ci_high=[], b_simple_runs=[], b_simple_how=[])
    keys = ["split", "cell", "batch_size", "num_steps"]
    noise = pd.DataFrame([{**dict(zip(keys, k, strict=True)), **_b_simple_summary(g, level)}
                          for k, g in per_run[per_run["reached"]].groupby(keys)], columns=[*keys, "b_simple",
                          "b_simple_ci_low", "b_simple_ci_high", "b_simple_runs", "b_simple_how"])  # fmt: skip
    out = ttt.merge(noise, on=keys, how="left")
    order = ["split", "regime", "task", "cell", "num_steps", "batch_size"]
    return out[order + [c for c in out.columns if c not in order]].sort_values(order, ignore_index=True)


def b_crit_table(
    per_run: pd.DataFrame, level: float = 0.95, n_boot: int = N_BOOT, seed: int = BOOT_SEED
) -> pd.DataFrame:
    """Per (split, task, cell, num_steps): B_crit from the steps curve and from the tokens curve (each fitted on
    its own, with a bootstrap interval or the reason it is not identified) beside B_simple at the target.
    Only batch sizes whose every seed reached the target enter a fit (a censored point has no value)."""
    cols = [*GROUP, "regime", "target", "batch sizes fitted", "left out (not every seed reached)", "S_min",
            "B_crit (steps)", "B_crit (steps) ci_low", "B_crit (steps) ci_high", "steps fit", "steps rms log",
            "E_min", "B_crit (tokens)", "B_crit (tokens) ci_low", "B_crit (tokens) ci_high", "tokens fit",
            "tokens rms log", "B_simple at target", "B_simple ci_low", "B_simple ci_high", "B_simple runs",
            "B_simple measured"]  # fmt: skip
    if per_run.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for key, g in per_run.groupby(GROUP, sort=True):
        every = g.groupby("batch_size")["reached"].all()
        full = g[g["batch_size"].isin(every.index[every])]
        left = sorted(int(b) for b in every.index[~every])
        steps = fit_critical_batch(_by_batch(full, "updates"), "steps", level, n_boot, seed)
        tokens = fit_critical_batch(_by_batch(full, "tokens"), "tokens", level, n_boot, seed)
        noise = _b_simple_summary(g[g["reached"]], level)
        rows.append({
            **dict(zip(GROUP, key, strict=True)), "regime": g["regime"].iloc[0], "target": g["target"].iloc[0],
            "batch sizes fitted": steps["batch_sizes"], "left out (not every seed reached)": ", ".join(map(str, left)),
            "S_min": steps["scale"], "B_crit (steps)": steps["b_crit"], "B_crit (steps) ci_low": steps["ci_low"],
            "B_crit (steps) ci_high": steps["ci_high"], "steps fit": steps["status"], "steps rms log": steps["rms"],
            "E_min": tokens["scale"], "B_crit (tokens)": tokens["b_crit"], "B_crit (tokens) ci_low": tokens["ci_low"],
            "B_crit (tokens) ci_high": tokens["ci_high"], "tokens fit": tokens["status"],
            "tokens rms log": tokens["rms"], "B_simple at target": noise["b_simple"],
            "B_simple ci_low": noise["b_simple_ci_low"], "B_simple ci_high": noise["b_simple_ci_high"],
            "B_simple runs": noise["b_simple_runs"], "B_simple measured": noise["b_simple_how"],
        })  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def _by_batch(g: pd.DataFrame, col: str) -> dict[int, np.ndarray]:
    return {int(bs): p[col].to_numpy(float) for bs, p in g.groupby("batch_size")}


def show_b_crit(table: pd.DataFrame) -> pd.DataFrame:
    """b_crit_table as text: 'B [low, high]' (ends beyond the grid as > / <), or why it was not fitted."""
    if table.empty:
        return table

    def crit(r: pd.Series, kind: str) -> str:
        v, lo, hi = r[f"B_crit ({kind})"], r[f"B_crit ({kind}) ci_low"], r[f"B_crit ({kind}) ci_high"]
        if not np.isfinite(v):
            return str(r[f"{kind} fit"])
        sizes = [float(s) for s in str(r["batch sizes fitted"]).split(", ")]
        low = f"< {min(sizes):g}" if lo == 0 else f"{lo:.3g}"
        high = f"> {max(sizes):g}" if np.isinf(hi) else f"{hi:.3g}"
        return f"{v:.3g} [{low}, {high}]"

    def noise(r: pd.Series) -> str:
        v = r["B_simple at target"]
        if not np.isfinite(v):
            return str(r["B_simple measured"])
        ci = f" [{r['B_simple ci_low']:.3g}, {r['B_simple ci_high']:.3g}]" if np.isfinite(r["B_simple ci_low"]) else ""
        return f"{v:.3g}{ci} ({r['B_simple measured']})"

    return pd.DataFrame({
        "split": table["split"], "cell": table["cell"], "num_steps": table["num_steps"].astype(int),
        "batch sizes fitted": table["batch sizes fitted"],
        "B_crit from updates (S)": table.apply(crit, axis=1, kind="steps"),
        "B_crit from tokens (E)": table.apply(crit, axis=1, kind="tokens"),
        "B_simple at target": table.apply(noise, axis=1),
        "left out (not every seed reached)": table["left out (not every seed reached)"],
    })  # fmt: skip


# ------------------------------------------------------------------------------------ plateau runs at the cap
def _is_false(v: Any) -> bool:
    return v is False or v is np.False_


def cap_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Plateau runs (finished, judged statuses) that stopped at their cap without their held-out loss levelling
    off (stop_reason "cap", or converged False where the reason is missing), grouped per (split, cell,
    num_steps, batch size): how many of the point's seeds, which, where they stopped, their best loss."""
    cols = ["split", "cell", "num_steps", "batch_size", "at the cap", "seeds", "stopped at update",
            "best held-out loss (mean)"]  # fmt: skip
    if runs.empty or "regime" not in runs:
        return pd.DataFrame(columns=cols)
    plateau = runs[(runs["regime"] == "plateau") & runs["status"].isin(JUDGED_STATUSES)]
    if plateau.empty:
        return pd.DataFrame(columns=cols)
    reason = plateau["stop_reason"] if "stop_reason" in plateau else pd.Series(None, index=plateau.index)
    conv = plateau["converged"] if "converged" in plateau else pd.Series(None, index=plateau.index)
    capped = (reason == "cap") | (reason.isna() & conv.map(_is_false))
    rows = []
    keys = ["split", "cell", "num_steps", "batch_size"]
    for key, g in plateau.groupby(keys, sort=True):
        hit = g[capped.loc[g.index]]
        if hit.empty:
            continue
        stopped = pd.to_numeric(hit.get("stopped_at_update"), errors="coerce")
        best = pd.to_numeric(hit.get("best_valid_loss"), errors="coerce")
        rows.append({
            **dict(zip(keys, key, strict=True)), "at the cap": f"{len(hit)}/{len(g)}",
            "seeds": ", ".join(str(int(s)) for s in sorted(hit["seed"].dropna())),
            "stopped at update": "/".join(sorted({f"{x:g}" for x in stopped.dropna()})) or "?",
            "best held-out loss (mean)": float(best.mean()) if best.notna().any() else np.nan,
        })  # fmt: skip
    out = pd.DataFrame(rows, columns=cols)
    if not out.empty:
        out["num_steps"] = out["num_steps"].astype(int)
        out["batch_size"] = out["batch_size"].astype(int)
    return out


def cap_sentence(runs: pd.DataFrame, caps: pd.DataFrame) -> str:
    """One line: no plateau runs, every plateau run converged, or how many hit the cap."""
    plateau = runs[(runs.get("regime") == "plateau") & runs["status"].isin(JUDGED_STATUSES)] if "regime" in runs else []
    if len(plateau) == 0:
        return "No run in this folder was trained to a plateau."
    if caps.empty:
        return f"Every plateau run converged ({len(plateau)} runs: the held-out loss levelled off before the cap)."
    n = sum(int(str(x).split("/")[0]) for x in caps["at the cap"])
    return (f"{n} of {len(plateau)} plateau runs hit their cap before the held-out loss levelled off (not "
            "converged): what they learned is a lower bound on what the setting learns.")  # fmt: skip
