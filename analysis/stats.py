"""Statistics on tidy run tables: t-intervals over seeds, equivalence tests, log-ratio intervals, trend tests
and effect sizes from models that fit the design (docs/claims.md says which verdict uses which).

Seeds (and speed-phase rounds) are the replicates. Every function takes plain columns and returns numbers (NaN
where the data cannot answer), so the verdicts built on them stay pure functions of a table.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

FACTORS = ("batch_size", "num_steps", "cell")


def finite(values: Any) -> np.ndarray:
    arr = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    return arr[np.isfinite(arr)]


# ------------------------------------------------------------------------------------------------ intervals
def t_interval(values: Any, confidence: float) -> tuple[float, float, float, int]:
    """Mean with its Student-t interval: (mean, low, high, n). Fewer than two values have no interval (NaN)."""
    x = finite(values)
    if x.size == 0:
        return np.nan, np.nan, np.nan, 0
    mean = float(x.mean())
    if x.size < 2:
        return mean, np.nan, np.nan, 1
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return mean, mean - half, mean + half, int(x.size)


def mean_ci(values: Any, th: dict[str, Any]) -> tuple[float, float, float, int]:
    """Mean over seeds with its t-interval at th["confidence"] (the tables' "mean [low, high]")."""
    return t_interval(values, float(th["confidence"]))


def welch_diff_ci(a: Any, b: Any, confidence: float) -> tuple[float, float, float]:
    """mean(a) - mean(b) with a Welch t-interval (unequal variances, Welch-Satterthwaite df)."""
    x, y = finite(a), finite(b)
    if x.size < 2 or y.size < 2:
        diff = float(x.mean() - y.mean()) if x.size and y.size else np.nan
        return diff, np.nan, np.nan
    diff = float(x.mean() - y.mean())
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = float(np.sqrt(vx + vy))
    if se == 0:
        return diff, diff, diff
    df = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df) * se)
    return diff, diff - half, diff + half


def paired_by_round(g: pd.DataFrame, small: float, big: float, col: str) -> tuple[pd.Series, pd.Series]:
    """Values of `col` at batch sizes `big` and `small`, aligned by round (speed-phase rounds are interleaved
    round-robin passes, so the two batch sizes of one round shared the machine's state): (big, small)."""
    a = g[g["batch_size"] == big].set_index("round")[col]
    b = g[g["batch_size"] == small].set_index("round")[col]
    common = a.index.intersection(b.index)
    return a.loc[common], b.loc[common]


def log_ratio_ci(num: Any, den: Any, confidence: float, paired: bool) -> tuple[float, float, float, int]:
    """Ratio of geometric means num/den with a t-interval on the log scale: (ratio, low, high, n).

    paired=True: `num` and `den` are aligned replicates (speed rounds timed in the same round-robin pass), the
    interval comes from the per-pair log differences. paired=False: Welch on the logs (independent seeds).
    """
    x = np.log(np.asarray(pd.to_numeric(pd.Series(num), errors="coerce"), dtype=float))
    y = np.log(np.asarray(pd.to_numeric(pd.Series(den), errors="coerce"), dtype=float))
    if paired:
        ok = np.isfinite(x) & np.isfinite(y)
        mean, low, high, n = t_interval(x[ok] - y[ok], confidence)
    else:
        mean, low, high = welch_diff_ci(x[np.isfinite(x)], y[np.isfinite(y)], confidence)
        n = int(min(np.isfinite(x).sum(), np.isfinite(y).sum()))
    return float(np.exp(mean)), float(np.exp(low)), float(np.exp(high)), n


def ratio_ci(num: Any, den: Any, th: dict[str, Any]) -> tuple[float, float, float]:
    """Independent-seed ratio of geometric means with a Welch interval on logs (kept for callers of old)."""
    ratio, low, high, _ = log_ratio_ci(num, den, float(th["confidence"]), paired=False)
    return ratio, low, high


# ------------------------------------------------------------------------------------------------ equivalence
@dataclass(frozen=True)
class Equivalence:
    """Two one-sided tests (TOST) of |mean(a) - mean(b)| < margin, read from the (1 - 2 alpha) Welch interval.

    state: "equivalent" (interval inside (-margin, margin)), "different" (interval wholly beyond the margin on
    one side: the gap is larger than the margin), "undecided" (the interval straddles a margin).
    """

    diff: float
    low: float
    high: float
    margin: float
    p_tost: float
    state: str


def tost(a: Any, b: Any, margin: float, alpha: float) -> Equivalence:
    from statsmodels.stats.weightstats import ttost_ind

    x, y = finite(a), finite(b)
    diff, low, high = welch_diff_ci(x, y, 1 - 2 * alpha)
    if not np.isfinite(low):
        return Equivalence(diff, low, high, margin, np.nan, "undecided")
    if np.ptp(x) == 0 and np.ptp(y) == 0:  # no spread at all: the interval is the point
        p = 0.0 if abs(diff) < margin else 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(ttost_ind(x, y, -margin, margin, usevar="unequal")[0])
    if -margin < low and high < margin:
        state = "equivalent"
    elif low > margin or high < -margin:
        state = "different"
    else:
        state = "undecided"
    return Equivalence(diff, low, high, margin, p, state)


# ------------------------------------------------------------------------------------------------ trends
def spearman(x: Any, y: Any) -> tuple[float, float]:
    """Spearman rho and its asymptotic p-value; NaN when either side is constant (no ranking to compare).

    Infinite y values (a diverged run's gradient norm) rank above every finite one, as they should.
    """
    xs = pd.to_numeric(pd.Series(x), errors="coerce").to_numpy(dtype=float)
    ys = pd.to_numeric(pd.Series(y), errors="coerce").to_numpy(dtype=float)
    ok = ~np.isnan(xs) & ~np.isnan(ys)
    xs, ys = xs[ok], ys[ok]
    if xs.size < 3 or np.unique(xs).size < 2 or np.unique(ys).size < 2:
        return np.nan, np.nan
    ys = np.where(np.isposinf(ys), np.nanmax(ys[np.isfinite(ys)], initial=0) + 1e6, ys)
    ys = np.where(np.isneginf(ys), np.nanmin(ys[np.isfinite(ys)], initial=0) - 1e6, ys)
    res = stats.spearmanr(xs, ys)
    return float(res.statistic), float(res.pvalue)


def spearman_permutation(x: Any, y: Any, n_resamples: int, seed: int) -> tuple[float, float]:
    """Spearman rho with a one-sided permutation p-value for an increasing trend (ties and few levels make the
    asymptotic p-value unreliable). NaN when either side is constant."""
    xs = pd.to_numeric(pd.Series(x), errors="coerce").to_numpy(dtype=float)
    ys = pd.to_numeric(pd.Series(y), errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[ok], ys[ok]
    if xs.size < 3 or np.unique(xs).size < 2 or np.unique(ys).size < 2:
        return np.nan, np.nan
    # Spearman's rho is Pearson's r of the (average) ranks, and permuting y permutes its ranks: all resamples
    # at once as one matrix product.
    rx, ry = stats.rankdata(xs), stats.rankdata(ys)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    scale = float(np.sqrt((rx**2).sum() * (ry**2).sum()))
    rho = float(rx @ ry / scale)
    perms = np.random.default_rng(seed).permuted(np.tile(ry, (n_resamples, 1)), axis=1)
    null = perms @ rx / scale
    p = (1 + int((null >= rho - 1e-12).sum())) / (n_resamples + 1)
    return rho, float(p)


def loglog_slope(x: Any, y: Any, confidence: float) -> tuple[float, float, float, int]:
    """OLS slope of log y on log x with its t-interval (df = n - 2): (slope, low, high, n)."""
    xs = np.log(pd.to_numeric(pd.Series(x), errors="coerce").to_numpy(dtype=float))
    ys = np.log(pd.to_numeric(pd.Series(y), errors="coerce").to_numpy(dtype=float))
    ok = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[ok], ys[ok]
    if xs.size < 3 or np.unique(xs).size < 2:
        return np.nan, np.nan, np.nan, int(xs.size)
    res = stats.linregress(xs, ys)
    half = float(stats.t.ppf(0.5 + confidence / 2, xs.size - 2) * res.stderr)
    return float(res.slope), float(res.slope - half), float(res.slope + half), int(xs.size)


def group_spearman(df: pd.DataFrame, x: str, y: str, by: list[str]) -> pd.DataFrame:
    """Spearman of y against x within each group of `by` (seeds pooled as replicates)."""
    rows = []
    for key, g in df.groupby(by, observed=True, sort=True):
        if g[x].nunique() < 2:
            continue
        rho, p = spearman(g[x], g[y])
        ident = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        rows.append({**ident, "rho": rho, "p": p, "n": len(g)})
    return pd.DataFrame(rows, columns=[*by, "rho", "p", "n"])


def cv(values: Any) -> float:
    """Coefficient of variation (sample sd / mean): e.g. the round-to-round timing noise of one grid point."""
    x = finite(values)
    if x.size < 2 or x.mean() == 0:
        return np.nan
    return float(x.std(ddof=1) / x.mean())


# ------------------------------------------------------------------------------------------------ effect sizes
def anova_formula(outcome: str, factors: list[str]) -> str:
    """The full factorial: every main effect and every interaction. A main-effects-only model would push the
    interactions into the residual and understate (or misattribute) every effect (docs/claims.md)."""
    return f"{outcome} ~ " + " * ".join(f"C({f})" for f in factors)


def partial_eta2(df: pd.DataFrame, outcome: str, factors: tuple[str, ...] = FACTORS) -> dict[str, float]:
    """Partial eta^2 of every term (main effects and interactions, e.g. "batch_size:num_steps") of a type-II OLS
    ANOVA of `outcome` on the full factorial of `factors` (as categories). For continuous outcomes only
    (log tokens/s, loss, log gradient norms): bounded or binary outcomes go to `deviance_shares`.

    Factors with one level are left out; without residual degrees of freedom every term is NaN.
    """
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    out: dict[str, float] = dict.fromkeys(factors, np.nan)
    data = df[[outcome, *factors]].copy()
    data[outcome] = pd.to_numeric(data[outcome], errors="coerce")
    data = data[np.isfinite(data[outcome])].dropna()
    for f in factors:
        data[f] = data[f].astype(str)  # levels, not magnitudes; also keeps pandas' nullable dtypes out of patsy
    used = [f for f in factors if data[f].nunique() > 1]
    cells = data.groupby(used).ngroups if used else 1
    if not used or len(data) <= cells:
        return out  # no replicate inside a cell of the design: no error term to compare against
    if data[outcome].nunique() == 1:
        return {**out, **dict.fromkeys(used, 0.0)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = anova_lm(smf.ols(anova_formula(outcome, used), data=data).fit(), typ=2)
    ss_resid = float(table.loc["Residual", "sum_sq"])
    for term in table.index:
        if term == "Residual":
            continue
        name = ":".join(t.removeprefix("C(").removesuffix(")") for t in term.split(":"))
        ss = float(table.loc[term, "sum_sq"])
        total = ss + ss_resid
        out[name] = ss / total if total > 0 and np.isfinite(ss) else np.nan
    return out


def deviance_shares(
    df: pd.DataFrame, outcome: str, factors: tuple[str, ...] = FACTORS, trials: float = 1.0
) -> dict[str, float]:
    """For a proportion in [0, 1] (accuracy, a recalled yes/no): a binomial GLM (logit link) of main effects and
    two-way interactions; per factor, the share of deviance that dropping every term containing it adds,
    (D_without - D_full) / D_without (a likelihood-ratio analogue of partial eta^2). `trials` weights each
    row (e.g. held-out targets per run). NaN when the model cannot be fitted (complete separation)."""
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    out: dict[str, float] = dict.fromkeys(factors, np.nan)
    data = df[[outcome, *factors]].copy()
    data[outcome] = pd.to_numeric(data[outcome], errors="coerce").clip(0, 1)
    data = data[np.isfinite(data[outcome])].dropna()
    for f in factors:
        data[f] = data[f].astype(str)
    used = [f for f in factors if data[f].nunique() > 1]
    if not used or data[outcome].nunique() == 1:
        return out

    def deviance(terms: list[str]) -> float:
        rhs = " + ".join(terms) if terms else "1"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = smf.glm(f"{outcome} ~ {rhs}", data=data, family=sm.families.Binomial(),
                          var_weights=np.full(len(data), trials)).fit()  # fmt: skip
        return float(fit.deviance)

    mains = [f"C({f})" for f in used]
    pairs = [f"C({a}):C({b})" for i, a in enumerate(used) for b in used[i + 1 :]]
    try:
        full = deviance(mains + pairs)
        for f in used:
            reduced = deviance([t for t in mains + pairs if f"C({f})" not in t])
            out[f] = (reduced - full) / reduced if reduced > 0 else np.nan
    except (ValueError, np.linalg.LinAlgError):
        return dict.fromkeys(factors, np.nan)
    return out


def level_range(values: Any, name: str) -> str:
    """How far a factor was moved, for any comparison of effects across factors: "batch 1–64 (64×)"."""
    x = finite(values)
    if x.size == 0:
        return f"{name} n/a"
    lo, hi = float(x.min()), float(x.max())
    factor = f" ({hi / lo:g}×)" if lo > 0 else ""
    return f"{name} {lo:g}–{hi:g}{factor}"


def cell_means(df: pd.DataFrame, outcomes: list[str], by: list[str], th: dict[str, Any]) -> pd.DataFrame:
    """Mean ± t-interval over seeds of each outcome, per grid cell (tidy: one row per cell and outcome)."""
    rows = []
    for key, g in df.groupby(by, observed=True, sort=True):
        ident = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        for outcome in outcomes:
            if outcome not in g:
                continue
            mean, low, high, n = mean_ci(g[outcome], th)
            if n:
                rows.append({**ident, "outcome": outcome, "mean": mean, "ci_low": low, "ci_high": high, "n": n})
    return pd.DataFrame(rows, columns=[*by, "outcome", "mean", "ci_low", "ci_high", "n"])
