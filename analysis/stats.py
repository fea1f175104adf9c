"""Statistics on tidy run tables: bootstrap CIs over seeds, partial eta^2 from an ANOVA, Spearman trends.

Seeds are the replicates. Every function takes plain columns and returns numbers (NaN where the data cannot
answer), so the verdicts built on them stay pure functions of a table.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

FACTORS = ("batch_size", "num_steps", "cell")


def _finite(values: Any) -> np.ndarray:
    arr = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    return arr[np.isfinite(arr)]


def _bootstrap(data: tuple[np.ndarray, ...], statistic, th: dict[str, Any]) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples (2 seeds) warn; the interval is still defined
        res = stats.bootstrap(
            data,
            statistic,
            n_resamples=int(th["n_resamples"]),
            confidence_level=float(th["confidence"]),
            method=th["bootstrap_method"],
            random_state=np.random.default_rng(int(th["bootstrap_seed"])),
            vectorized=True,
            paired=False,
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_ci(values: Any, th: dict[str, Any]) -> tuple[float, float, float, int]:
    """Mean over seeds with its bootstrap CI: (mean, low, high, n). One value has no interval (NaN bounds)."""
    x = _finite(values)
    if x.size == 0:
        return np.nan, np.nan, np.nan, 0
    mean = float(x.mean())
    if x.size < 2:
        return mean, np.nan, np.nan, 1
    if np.ptp(x) == 0:
        return mean, mean, mean, int(x.size)
    low, high = _bootstrap((x,), lambda a, axis: np.mean(a, axis=axis), th)
    return mean, low, high, int(x.size)


def ratio_ci(num: Any, den: Any, th: dict[str, Any]) -> tuple[float, float, float]:
    """mean(num) / mean(den) with a two-sample bootstrap CI (independent seeds on each side)."""
    a, b = _finite(num), _finite(den)
    if a.size == 0 or b.size == 0 or b.mean() <= 0:
        return np.nan, np.nan, np.nan
    ratio = float(a.mean() / b.mean())
    if a.size < 2 or b.size < 2:
        return ratio, np.nan, np.nan
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return ratio, ratio, ratio
    low, high = _bootstrap((a, b), lambda x, y, axis: np.mean(x, axis=axis) / np.mean(y, axis=axis), th)
    return ratio, low, high


def partial_eta2(df: pd.DataFrame, outcome: str, factors: tuple[str, ...] = FACTORS) -> dict[str, float]:
    """Partial eta^2 of each factor on `outcome`: type-II OLS ANOVA of main effects, factors as categories.

    Factors with a single level are left out (they explain nothing and would make the design singular); a
    factor that cannot be estimated, or a model without residual degrees of freedom, gives NaN.
    """
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    out = dict.fromkeys(factors, np.nan)
    data = df[[outcome, *factors]].copy()
    data[outcome] = pd.to_numeric(data[outcome], errors="coerce")
    data = data[np.isfinite(data[outcome])].dropna()
    for f in factors:
        data[f] = data[f].astype(str)  # levels, not magnitudes; also keeps pandas' nullable dtypes out of patsy
    used = [f for f in factors if data[f].nunique() > 1]
    if not used or len(data) <= 1 + sum(data[f].nunique() - 1 for f in used):
        return out  # no residual degrees of freedom: no error term to compare against
    if data[outcome].nunique() == 1:
        return {f: (0.0 if f in used else np.nan) for f in factors}
    formula = f"{outcome} ~ " + " + ".join(f"C({f})" for f in used)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = anova_lm(smf.ols(formula, data=data).fit(), typ=2)
    ss_resid = float(table.loc["Residual", "sum_sq"])
    for f in used:
        ss = float(table.loc[f"C({f})", "sum_sq"])
        total = ss + ss_resid
        out[f] = ss / total if total > 0 and np.isfinite(ss) else np.nan
    return out


def spearman(x: Any, y: Any) -> tuple[float, float]:
    """Spearman rho and p-value; NaN when either side is constant (no ranking to compare).

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


def group_spearman(df: pd.DataFrame, x: str, y: str, by: list[str]) -> pd.DataFrame:
    """Spearman of y against x within each group of `by` (seeds pooled as replicates)."""
    rows = []
    for key, g in df.groupby(by, observed=True, sort=True):
        if g[x].nunique() < 2:
            continue
        rho, p = spearman(g[x], g[y])
        rows.append(
            {
                **dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)),
                "rho": rho,
                "p": p,
                "n": len(g),
            }
        )
    return pd.DataFrame(rows, columns=[*by, "rho", "p", "n"])


def cv(values: Any) -> float:
    """Coefficient of variation (sample sd / mean): the timing noise of one grid point across seeds."""
    x = _finite(values)
    if x.size < 2 or x.mean() == 0:
        return np.nan
    return float(x.std(ddof=1) / x.mean())


def cell_means(df: pd.DataFrame, outcomes: list[str], by: list[str], th: dict[str, Any]) -> pd.DataFrame:
    """Mean ± bootstrap CI over seeds of each outcome, per grid cell (tidy: one row per cell and outcome)."""
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
