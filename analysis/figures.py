"""Seaborn figures of a results folder. Each builder returns a Figure with its title and caption, or the
reason it was skipped (its data is absent): the report never shows an empty plot.

Facets: columns are cells, rows are settings (task · budget · lr protocol), so a figure never mixes runs that
a verdict would keep apart.
"""

from __future__ import annotations

import io
import itertools
import logging
import textwrap
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display: must precede pyplot

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm

from analysis import tables
from analysis.load import lag_columns
from sweep.record import COMPLETE

log = logging.getLogger(__name__)

CELL_ORDER = ["rnn", "gru", "lstm"]
MEASURE_LABELS = {
    "span": "learned span (longest recalled lag)",
    "effective_context": "effective context (tokens)",
    "gradient_horizon": "gradient horizon (steps)",
}
N_BOOT = 200  # seaborn's CI resamples: enough for a plotted band, cheap enough for ~200 runs


@dataclass
class Figure:
    name: str
    title: str
    caption: str
    fig: plt.Figure | None = None
    skipped: str = ""  # why there is no figure
    data: pd.DataFrame | None = None  # the numbers drawn (means, annotations): what a test or a reader checks
    _png: bytes | None = None

    def save(self, folder: Path) -> Path:
        """The PNG only: an SVG as well doubled the figures' share of a ~600-run report's build time."""
        assert self.fig is not None
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}.png"
        path.write_bytes(self.png_bytes())
        return path

    def png_bytes(self) -> bytes:
        """The PNG, rendered once: the file and the HTML embed the same bytes."""
        assert self.fig is not None
        if self._png is None:
            buf = io.BytesIO()
            self.fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
            self._png = buf.getvalue()
        return self._png

    def close(self) -> None:
        if self.fig is not None:
            plt.close(self.fig)


@dataclass
class Data:
    """What the builders read: the run table and, loaded once, the series they plot."""

    runs: pd.DataFrame  # the rows verdicts use (finished runs, best tuning trials)
    steps: pd.DataFrame
    evals: pd.DataFrame
    profiles: pd.DataFrame
    speed: pd.DataFrame | None = None  # speed.parquet (the speed phase), None without one
    lr_search: dict | None = None  # lr_search.json
    ttt: pd.DataFrame | None = None  # tables.time_to_target (per grid point)
    selection: pd.DataFrame | None = None  # records that chose an lr (search candidates, tuning trials)
    cost: pd.DataFrame | None = None  # cost.cost_to_result (per grid point, B_simple at target included)
    b_crit: pd.DataFrame | None = None  # cost.b_crit_table (per split, cell, num_steps)


# ------------------------------------------------------------------------------------------------- helpers
def _cells(df: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(df["cell"].dropna()))
    return [c for c in CELL_ORDER if c in present] + sorted(c for c in present if c not in CELL_ORDER)


def _finish(g: sns.FacetGrid, title: str, xlabel: str, ylabel: str) -> plt.Figure:
    g.set_axis_labels(xlabel, ylabel)
    # Facet titles: the cell on the first line, the (long) setting wrapped below it, small enough not to
    # collide.
    for key, ax in g.axes_dict.items():
        row, col = key if isinstance(key, tuple) else (None, key)
        text = str(col) if row is None else f"{col}\n" + "\n".join(textwrap.wrap(str(row), 44))
        ax.set_title(text, fontsize=9)
    g.tight_layout()  # FacetGrid's own: keeps room for the legend outside the axes
    _suptitle(g.figure, _with_setting(title, g.data))
    return g.figure


def _with_setting(title: str, df: pd.DataFrame) -> str:
    """With one setting the facets do not name it: the title does (which task, budget, lr protocol)."""
    if "split" in df and df["split"].nunique() == 1:
        return f"{title}\n{df['split'].iloc[0]}"
    return title


def _suptitle(fig: plt.Figure, text: str) -> None:
    """Above the laid-out facets, never on them: anchored by its bottom just over the figure's top edge
    (savefig's tight bounding box takes it in)."""
    fig.suptitle(text, y=1 + 0.08 / fig.get_figheight(), va="bottom", fontsize=13)


def _log2_axis(ax: plt.Axes, values) -> None:
    ticks = sorted({int(v) for v in values if v > 0})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.minorticks_off()


def _skip(name: str, title: str, caption: str, why: str) -> Figure:
    return Figure(name, title, caption, None, why)


def _grid_kwargs(df: pd.DataFrame) -> dict:
    rows = sorted(df["split"].unique())
    kw = {"col": "cell", "col_order": _cells(df)}
    if len(rows) > 1:
        kw.update(row="split", row_order=rows)
    return kw


def _hue_palette(values) -> dict:
    levels = sorted({int(v) for v in values})
    colors = sns.color_palette("viridis", n_colors=max(len(levels), 1))
    return {lv: colors[i] for i, lv in enumerate(levels)}


# ------------------------------------------------------------------------------------------------ builders
def throughput_heatmap(data: Data) -> Figure:
    name, title = "throughput_heatmap", "Training runs' throughput: tokens per second (mean over seeds)"
    caption = (
        "Each square is one batch_size × num_steps point; brighter is faster. These are the training runs' "
        "own tokens/s: where jobs ran in parallel they were timed under load and decide no speed verdict "
        "(the speed phase figure does)."
    )
    df = data.runs[(data.runs["status"] == "complete") & data.runs["tokens_per_s"].notna()]
    if df.empty:
        return _skip(name, title, caption, "no complete run recorded tokens/s")
    means = df.groupby(["split", "cell", "num_steps", "batch_size"], observed=True)["tokens_per_s"].mean()
    splits, cells = sorted(df["split"].unique()), _cells(df)
    norm = LogNorm(vmin=means.min(), vmax=means.max()) if means.min() > 0 else None
    fig, axes = plt.subplots(len(splits), len(cells), figsize=(4.2 * len(cells) + 1, 3.4 * len(splits)), squeeze=False)
    for i, split in enumerate(splits):
        for j, cell in enumerate(cells):
            ax = axes[i][j]
            try:
                table = means.loc[(split, cell)].unstack("batch_size").sort_index(ascending=False)
            except KeyError:
                ax.set_axis_off()
                continue
            sns.heatmap(
                table, ax=ax, norm=norm, cmap="magma", cbar=j == len(cells) - 1,
                annot=table.map(lambda v: f"{v / 1000:.1f}k" if np.isfinite(v) else ""), fmt="",
                cbar_kws={"label": "tokens/s (log colour scale)"}, linewidths=0.5,
            )  # fmt: skip
            ax.set_title(cell if len(splits) == 1 else f"{cell} — {split}", fontsize=9)
            ax.set_xlabel("batch size (parallel rows)")
            ax.set_ylabel("num_steps (BPTT length)" if j == 0 else "")
    _suptitle(fig, _with_setting(title, df))
    fig.tight_layout()
    return Figure(name, title, caption, fig)


def learned_length(data: Data) -> Figure:
    name, title = "learned_length", "Learned dependency length against the BPTT length num_steps"
    caption = (
        "Each measure of how far back the trained network reaches, per cell and batch size; the dashed line "
        "is y = num_steps; bands span the seeds. Censored or flat gradient profiles and censored context "
        "ablations are left out (a bound is not a length). C4 holds if the points climb with num_steps (and "
        "batch size does not move them)."
    )
    df = data.runs[data.runs["status"] == "complete"].copy()
    # A censored or flat profile gives a bound, not a length: left out rather than drawn as a value.
    for col, flags in (("gradient_horizon", ("gradient_horizon_censored", "gradient_flat")),
                       ("effective_context", ("effective_context_censored",))):  # fmt: skip
        for flag in flags:
            if col in df and flag in df:
                df.loc[df[flag].astype("boolean").fillna(False).astype(bool), col] = np.nan
    measures = [m for m in MEASURE_LABELS if m in df and df[m].notna().any()]
    if not measures or df.empty:
        return _skip(name, title, caption, "no run recorded a span, effective context or gradient horizon")
    long = df.melt(
        id_vars=["split", "cell", "batch_size", "num_steps", "seed"], value_vars=measures, var_name="measure"
    ).dropna(subset=["value"])
    long["measure"] = long["measure"].map(MEASURE_LABELS)
    multi = long["split"].nunique() > 1
    long["row"] = long["measure"] + (" — " + long["split"] if multi else "")
    long["batch_size"] = long["batch_size"].astype(int)
    g = sns.relplot(
        data=long, x="num_steps", y="value", hue="batch_size", palette=_hue_palette(long["batch_size"]),
        row="row", row_order=sorted(long["row"].unique()), col="cell", col_order=_cells(long), kind="line",
        marker="o", errorbar=("pi", 100), height=3.2, aspect=1.2, facet_kws={"sharey": "row"},
    )  # fmt: skip
    ns = np.array(sorted(long["num_steps"].unique()), dtype=float)
    for ax in g.axes.flat:
        _log2_axis(ax, ns)
        ax.plot(ns, ns, "k--", lw=1)
    g.legend.set_title("batch size")
    fig = _finish(g, title, "num_steps (BPTT length)", "steps back")
    return Figure(name, title, caption, fig)


def recall_curves(data: Data) -> Figure:
    name, title = "recall_curves", "Held-out recall accuracy per lag (final evaluation)"
    caption = (
        "Accuracy at predicting the input seen k steps earlier; the dotted line is chance. A curve that "
        "stays high further right has a longer memory; compare the colours (num_steps)."
    )
    prof = data.profiles
    if not prof.empty and (prof["measure"] == "recall").any():
        long = _last_profile(prof[prof["measure"] == "recall"]).rename(columns={"k": "lag", "value": "accuracy"})
    else:
        lags = lag_columns(data.runs)
        if len(lags) < 2:
            return _skip(name, title, caption, "no run measured accuracy at two or more lags")
        long = data.runs[data.runs["status"] == "complete"].melt(
            id_vars=["split", "cell", "batch_size", "num_steps", "seed"], value_vars=lags, var_name="lag",
            value_name="accuracy",
        )  # fmt: skip
        long["lag"] = long["lag"].str.removeprefix("acc_lag_").astype(int)
    long = long.dropna(subset=["accuracy"])
    long = long[long.groupby("split")["lag"].transform("nunique") >= 2]  # echo has one lag: no curve
    if long.empty:
        return _skip(name, title, caption, "no setting measured accuracy at two or more lags")
    long["num_steps"] = long["num_steps"].astype(int)
    g = sns.relplot(
        data=long, x="lag", y="accuracy", hue="num_steps", palette=_hue_palette(long["num_steps"]),
        kind="line", marker="o", errorbar=("ci", 95), n_boot=N_BOOT, seed=0, height=3.2, aspect=1.2,
        **_grid_kwargs(long),
    )  # fmt: skip
    chance = data.runs["chance_accuracy"].dropna()
    for ax in g.axes.flat:
        _log2_axis(ax, long["lag"])
        if not chance.empty:
            ax.axhline(float(chance.median()), color="grey", ls=":", lw=1)
    g.legend.set_title("num_steps")
    fig = _finish(g, title, "lag k (steps back)", "held-out accuracy")
    return Figure(name, title, caption, fig)


def _last_profile(prof: pd.DataFrame) -> pd.DataFrame:
    """A run measured at checkpoints has several profiles: the report plots the final one."""
    if "step" not in prof or prof["step"].isna().all():
        return prof
    last = prof.groupby("run_id")["step"].transform("max")
    return prof[prof["step"] == last]


def _profile_figure(data: Data, measure: str, name: str, title: str, caption: str, ylabel: str, xlabel: str,
                    logy: bool) -> Figure:  # fmt: skip
    # Profiles have up to ~100 distances per run: a ±2 standard-error band (closed form) instead of a
    # bootstrap per distance keeps the report fast; the caption says so.
    caption = f"{caption} Band: ±2 standard errors over runs."
    prof = data.profiles
    if prof.empty or not (prof["measure"] == measure).any():
        return _skip(name, title, caption, f"no run wrote a '{measure}' profile (profiles.parquet)")
    long = _last_profile(prof[prof["measure"] == measure]).dropna(subset=["value", "k"])
    if logy:
        long = long[long["value"] > 0]
    if long.empty:
        return _skip(name, title, caption, f"the '{measure}' profiles hold no plottable value")
    long["num_steps"] = long["num_steps"].astype(int)
    g = sns.relplot(
        data=long, x="k", y="value", hue="num_steps", palette=_hue_palette(long["num_steps"]), kind="line",
        errorbar=("se", 2), height=3.2, aspect=1.2, **_grid_kwargs(long),
    )  # fmt: skip
    for ax in g.axes.flat:
        if measure == "context":
            _log2_axis(ax, long["k"])
        if logy:
            ax.set_yscale("log")
    g.legend.set_title("num_steps")
    return Figure(name, title, caption, _finish(g, title, xlabel, ylabel))


def context_ablation(data: Data) -> Figure:
    return _profile_figure(
        data, "context", "context_ablation",
        "Context ablation: held-out loss when the network sees only d tokens",
        "Loss falls as the visible context d grows and flattens where extra context stops helping: that "
        "knee is the effective context (Khandelwal et al. 2018).",
        "held-out loss (nats per token)", "visible context d (tokens)", logy=False,
    )  # fmt: skip


def gradient_profiles(data: Data) -> Figure:
    return _profile_figure(
        data, "gradient", "gradient_horizon_profiles",
        "Gradient horizon: how much the loss at t depends on x(t−k)",
        "Mean norm of ∂loss_t/∂input_(t−k) (log scale): a steep fall means short memory, a rise means "
        "explosion through time.",
        "gradient norm (normalised)", "distance k (steps back)", logy=True,
    )  # fmt: skip


def probe_profiles(data: Data) -> Figure:
    return _profile_figure(
        data, "probe", "probe_profiles",
        "Linear probe: is the input k steps back still decodable from the state?",
        "Probe accuracy per distance k: information kept in the hidden state, whether or not the output "
        "uses it.",
        "probe accuracy", "distance k (steps back)", logy=False,
    )  # fmt: skip


BOX_POINTS = 200  # per run: enough for its quartiles, few enough that ~600 runs draw in seconds


def _thin(steps: pd.DataFrame, points: int) -> pd.DataFrame:
    """Every k-th update of each run (about `points` of them) plus its largest norm, so the box plot keeps
    each run's extreme while drawing a fraction of the updates."""
    n = steps.groupby("run_id")["grad_norm"].transform("size")
    every = (n // points).clip(lower=1)
    pos = steps.groupby("run_id").cumcount()
    top = steps["grad_norm"] == steps.groupby("run_id")["grad_norm"].transform("max")
    return steps[(pos % every == 0) | top].copy()


def grad_norm_distributions(data: Data) -> Figure:
    name, title = "grad_norm_distributions", "Gradient norm per update against num_steps (log scale)"
    caption = (
        "Box plots of the global gradient norm before clipping over training (about 200 evenly spaced updates "
        "of each run, plus its largest). A description only: C5 is judged from gradient growth with window "
        "length at fixed parameters, not from norms over training."
    )
    steps = data.steps
    if steps.empty or "grad_norm" not in steps:
        return _skip(name, title, caption, "no steps.parquet with grad_norm")
    df = steps[np.isfinite(steps["grad_norm"]) & (steps["grad_norm"] > 0)]
    if df.empty:
        return _skip(name, title, caption, "no finite gradient norm recorded")
    df = _thin(df, BOX_POINTS)
    df["num_steps"] = df["num_steps"].astype(int)
    df["batch_size"] = df["batch_size"].astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # seaborn 0.13 passes matplotlib's deprecated `vert`
        g = sns.catplot(
            data=df, x="num_steps", y="grad_norm", hue="batch_size", palette=_hue_palette(df["batch_size"]),
            kind="box", fliersize=1, linewidth=0.8, log_scale=True, height=3.3, aspect=1.2,
            **_grid_kwargs(df),
        )  # fmt: skip
    g.legend.set_title("batch size")
    return Figure(name, title, caption, _finish(g, title, "num_steps (BPTT length)", "gradient norm (pre-clip)"))


# ------------------------------------------------------------------------------ speed phase, targets, noise
def speed_phase(data: Data) -> Figure:
    name, title = "speed_phase", "Speed phase: tokens per second against batch size (each point timed alone)"
    caption = (
        "Median tokens/s over the rounds of the speed phase, bars: t-interval over rounds (log scale); the "
        "dashed line continues the smallest batch linearly (ideal scaling). C1 and C3 are judged from these "
        "numbers only, never from the tokens/s of runs trained in parallel. Independent of the training budget."
    )
    sp = data.speed
    if sp is None or sp.empty:
        return _skip(name, title, caption, "no speed.parquet (the sweep ran no speed phase)")
    tasks, cells = sorted(sp["task"].astype(str).unique()), _cells(sp)
    fig, axes = plt.subplots(len(tasks), len(cells), figsize=(3.8 * len(cells) + 1, 3.2 * len(tasks)), squeeze=False)
    palette = _hue_palette(sp["num_steps"])
    for (i, task), (j, cell) in itertools.product(enumerate(tasks), enumerate(cells)):
        ax = axes[i][j]
        part = sp[(sp["task"].astype(str) == task) & (sp["cell"] == cell)]
        if part.empty:
            ax.set_axis_off()
            continue
        for ns, g in part.groupby("num_steps"):
            pts = []
            for bs, p in g.groupby("batch_size"):
                _, lo, hi, _ = tables.log_t_interval(p["tokens_per_s"])
                pts.append((int(bs), float(p["tokens_per_s"].median()), lo, hi))
            bs, med, lo, hi = (np.array(v, dtype=float) for v in zip(*pts, strict=True))
            err = np.vstack([np.nan_to_num(med - lo), np.nan_to_num(hi - med)]).clip(min=0)
            ax.errorbar(bs, med, yerr=err, marker="o", ms=4, capsize=2, color=palette[int(ns)], label=str(int(ns)))
            ax.plot(bs, med[0] * bs / bs[0], ls="--", lw=0.8, color=palette[int(ns)], alpha=0.7)
        _log2_axis(ax, part["batch_size"])
        ax.set_yscale("log")
        ax.set_title(f"{cell} — {task}", fontsize=9)
        ax.set_xlabel("batch size (parallel rows)")
    for row in axes:
        row[0].set_ylabel("tokens/s (speed phase)")
    axes[0][-1].legend(title="num_steps", fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    _suptitle(fig, title)
    return Figure(name, title, caption, fig)


def time_to_target_fig(data: Data) -> Figure:
    name, title = "time_to_target", "Time to target against batch size: updates and wall-clock"
    caption = (
        "Per grid point: geometric mean over seeds with a log-scale t-interval when every seed reached the "
        "target; a hollow marker is the censored median when only some did; × at the top edge: fewer than half "
        "the seeds reached it. Wall-clock = tokens to target × the speed phase's seconds per token. "
        "Rows: setting (task · budget · lr protocol) and measure; columns: cell."
    )
    ttt = data.ttt
    if ttt is None or ttt.empty:
        return _skip(name, title, caption, "no run has a target and held-out evaluations (evals.parquet)")
    measures = [m for m in ("updates", "seconds") if ttt[m].notna().any() or m == "updates"]
    splits, cells = sorted(ttt["split"].unique()), _cells(ttt)
    rows = [(sp, m) for sp in splits for m in measures]
    fig, axes = plt.subplots(len(rows), len(cells), figsize=(3.8 * len(cells) + 1.2, 3.0 * len(rows)),
                             squeeze=False)  # fmt: skip
    palette = _hue_palette(ttt["num_steps"])
    for i, (split, m) in enumerate(rows):
        for j, cell in enumerate(cells):
            ax = axes[i][j]
            part = ttt[(ttt["split"] == split) & (ttt["cell"] == cell)]
            for k, (ns, g) in enumerate(part.groupby("num_steps")):
                g = g.sort_values("batch_size")
                color = palette[int(ns)]
                full = g[g["all_reached"] & g[m].notna()]
                err = np.vstack([(full[m] - full[f"{m}_ci_low"]).fillna(0), (full[f"{m}_ci_high"] - full[m]).fillna(0)])
                ax.errorbar(full["batch_size"], full[m], yerr=err.clip(min=0), marker="o", ms=4, capsize=2,
                            color=color, label=str(int(ns)))  # fmt: skip
                cens = g[~g["all_reached"] & g[m].notna()]
                ax.scatter(cens["batch_size"], cens[m], facecolors="none", edgecolors=color, s=30)
                nope = g[g[m].isna() & (g["reached"] * 2 < g["seeds"])]
                ax.scatter(nope["batch_size"], [1.0 + 0.04 * k] * len(nope), marker="x", color=color,
                           transform=ax.get_xaxis_transform(), clip_on=False)  # fmt: skip
            vals = part[m][part[m] > 0]
            if not vals.empty and vals.max() > 10 * vals.min():  # a log axis over a narrow range has no labels
                ax.set_yscale("log")
            _log2_axis(ax, ttt["batch_size"])
            ax.set_title(f"{cell}\n" + "\n".join(textwrap.wrap(split, 44)), fontsize=8)
            ax.set_xlabel("batch size")
            ax.set_ylabel(("updates to target" if m == "updates" else "wall-clock s to target") if j == 0 else "")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        axes[0][-1].legend(handles, labels, title="num_steps", fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    _suptitle(fig, _with_setting(title, ttt))
    return Figure(name, title, caption, fig)


def cost_to_result_values(cost: pd.DataFrame | None, b_crit: pd.DataFrame | None) -> pd.DataFrame:
    """What cost_to_result_fig draws, one row per (split, cell, num_steps, batch size) of the settings with at
    least cost.MIN_BATCH_SIZES batch sizes: updates to target with its interval (NaN: censored or not reached),
    the fitted S(B) there (NaN: not fitted), perfect scaling through the smallest batch, B_crit and B_simple."""
    from analysis.cost import MIN_BATCH_SIZES

    cols = ["split", "cell", "num_steps", "batch_size", "all_reached", "updates", "updates_ci_low",
            "updates_ci_high", "fit", "perfect", "s_min", "b_crit", "b_simple", "b_simple_ci_low",
            "b_simple_ci_high"]  # fmt: skip
    if cost is None or cost.empty:
        return pd.DataFrame(columns=cols)
    sizes = cost.groupby("split")["batch_size"].nunique()
    df = cost[cost["split"].isin(sizes.index[sizes >= MIN_BATCH_SIZES])].copy()
    df = df[df.groupby(["split", "cell", "num_steps"])["updates"].transform(lambda v: v.notna().any())]
    if df.empty:
        return pd.DataFrame(columns=cols)
    fits = b_crit.set_index(["split", "cell", "num_steps"]) if b_crit is not None and not b_crit.empty else None
    out = []
    for (split, cell, ns), g in df.groupby(["split", "cell", "num_steps"], sort=True):
        g = g.sort_values("batch_size")
        fit = fits.loc[(split, cell, ns)] if fits is not None and (split, cell, ns) in fits.index else None
        bc = float(fit["B_crit (steps)"]) if fit is not None else np.nan
        s_min = float(fit["S_min"]) if fit is not None else np.nan
        b = g["batch_size"].to_numpy(float)
        full = g["all_reached"].to_numpy(bool) & g["updates"].notna().to_numpy()
        base = g[full].iloc[0] if full.any() else None
        perfect = (
            float(base["updates"]) * float(base["batch_size"]) / b if base is not None else np.full(len(b), np.nan)
        )
        out.append(pd.DataFrame({
            "split": split, "cell": cell, "num_steps": int(ns), "batch_size": b.astype(int), "all_reached": full,
            "updates": g["updates"].where(full).to_numpy(float),
            "updates_ci_low": g["updates_ci_low"].where(full).to_numpy(float),
            "updates_ci_high": g["updates_ci_high"].where(full).to_numpy(float),
            "fit": s_min * (1 + bc / b) if np.isfinite(bc) else np.nan, "perfect": perfect, "s_min": s_min,
            "b_crit": bc,
            "b_simple": float(fit["B_simple at target"]) if fit is not None else np.nan,
            "b_simple_ci_low": float(fit["B_simple ci_low"]) if fit is not None else np.nan,
            "b_simple_ci_high": float(fit["B_simple ci_high"]) if fit is not None else np.nan,
        }))  # fmt: skip
    return pd.concat(out, ignore_index=True)[cols]


def cost_to_result_fig(data: Data) -> Figure:
    name, title = "cost_to_result", "Cost to result: updates to target against batch size"
    caption = (
        "Per cell (columns) and setting (rows) with at least 4 batch sizes: updates to the target (geometric mean "
        "over seeds, crossings interpolated in log updates; bars: interval over seeds and the bracketing "
        "evaluations), only where every seed reached it; solid: the fitted S(B) = S_min (1 + B_crit/B) (Shallue et "
        "al. 2019); dotted: perfect scaling through the smallest batch (half the updates per doubling); dashed "
        "vertical: B_crit of the fit; ▲ on the axis: B_simple at the target (McCandlish et al. 2018), bar: its "
        "interval. Colour: num_steps."
    )
    values = cost_to_result_values(data.cost, data.b_crit)
    if values.empty:
        why = (
            "no setting has 4 or more batch sizes with a time to target"
            if data.cost is not None and not data.cost.empty
            else "no run has a target and held-out evaluations (evals.parquet)"
        )
        return _skip(name, title, caption, why)
    splits = sorted(values["split"].unique())
    cells = _cells(values)
    fig, axes = plt.subplots(len(splits), len(cells), figsize=(3.9 * len(cells) + 1.2, 3.2 * len(splits)),
                             squeeze=False)  # fmt: skip
    palette = _hue_palette(values["num_steps"])
    for i, split in enumerate(splits):
        for j, cell in enumerate(cells):
            ax = axes[i][j]
            part = values[(values["split"] == split) & (values["cell"] == cell)]
            if part.empty:
                ax.set_axis_off()  # no panel without data: this cell was not run in this setting
                continue
            for ns, g in part.groupby("num_steps"):
                color = palette[int(ns)]
                pts = g[g["all_reached"]]
                err = np.vstack([(pts["updates"] - pts["updates_ci_low"]).fillna(0),
                                 (pts["updates_ci_high"] - pts["updates"]).fillna(0)]).clip(min=0)  # fmt: skip
                ax.errorbar(pts["batch_size"], pts["updates"], yerr=err, fmt="o", ms=4, capsize=2, color=color,
                            label=str(int(ns)))  # fmt: skip
                if g["fit"].notna().any():
                    bb = np.geomspace(g["batch_size"].min(), g["batch_size"].max(), 100)
                    s_min, bc = float(g["s_min"].iloc[0]), float(g["b_crit"].iloc[0])
                    ax.plot(bb, s_min * (1 + bc / bb), "-", lw=1.2, color=color)
                    ax.axvline(bc, ls="--", lw=0.9, color=color)
                ax.plot(g["batch_size"], g["perfect"], ":", lw=1, color=color)
                bs_ = float(g["b_simple"].iloc[0])
                if np.isfinite(bs_) and bs_ > 0:
                    lo, hi = float(g["b_simple_ci_low"].iloc[0]), float(g["b_simple_ci_high"].iloc[0])
                    xerr = [[bs_ - lo], [hi - bs_]] if np.isfinite(lo) and np.isfinite(hi) else None
                    ax.errorbar([bs_], [0.03], xerr=xerr, fmt="^", ms=7, color=color, capsize=2,
                                transform=ax.get_xaxis_transform(), clip_on=False)  # fmt: skip
            ax.set_yscale("log")
            _log2_axis(ax, part["batch_size"])
            ax.set_title(f"{cell}\n" + "\n".join(textwrap.wrap(split, 44)), fontsize=8)
            ax.set_xlabel("batch size")
            ax.set_ylabel("updates to target" if j == 0 else "")
    handles, labels = next(((a.get_legend_handles_labels()) for a in axes.flat if a.get_legend_handles_labels()[0]),
                           ([], []))  # fmt: skip
    if handles:
        axes[0][-1].legend(handles, labels, title="num_steps", fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    _suptitle(fig, _with_setting(title, values))
    return Figure(name, title, caption, fig, data=values)


def lr_vs_batch(data: Data) -> Figure:
    name, title = "lr_vs_batch", "Chosen learning rate against batch size (lr search)"
    caption = (
        "The lr the search picked per (cell, batch size), pooled over the search seeds on the validation "
        "stream (short runs of its own: independent of the training budget); dotted lines: lr ∝ batch size "
        "(linear scaling) and ∝ √batch size through the smallest batch."
    )
    chosen = pd.DataFrame((data.lr_search or {}).get("chosen") or [])
    if chosen.empty or not {"task", "cell", "batch_size", "lr"} <= set(chosen):
        return _skip(name, title, caption, "no lr_search.json with chosen learning rates")
    tasks = sorted(chosen["task"].astype(str).unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks) + 1, 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        part = chosen[chosen["task"].astype(str) == task].sort_values("batch_size")
        for cell in _cells(part):
            g = part[part["cell"] == cell]
            ax.plot(g["batch_size"], g["lr"], marker="o", label=cell)
        bs = np.array(sorted(part["batch_size"].unique()), dtype=float)
        lr0 = float(part[part["batch_size"] == bs[0]]["lr"].median())
        ax.plot(bs, lr0 * bs / bs[0], "k:", lw=0.8)
        ax.plot(bs, lr0 * np.sqrt(bs / bs[0]), "k:", lw=0.8, alpha=0.5)
        _log2_axis(ax, bs)
        ax.set_yscale("log")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("batch size")
        ax.set_ylabel("chosen lr")
        ax.legend(fontsize=8)
    fig.tight_layout()
    _suptitle(fig, title)
    return Figure(name, title, caption, fig)


def _eval_accuracy(data: Data) -> pd.DataFrame:
    """Held-out accuracy per evaluation row: echo at its lag (or `accuracy`), lags the mean over its lags."""
    ev = data.evals
    if ev.empty:
        return ev
    lag_cols = [c for c in ev if c.startswith("acc_lag_")]
    acc = pd.to_numeric(ev["accuracy"], errors="coerce") if "accuracy" in ev else pd.Series(np.nan, index=ev.index)
    if lag_cols:
        acc = acc.fillna(ev[lag_cols].apply(pd.to_numeric, errors="coerce").mean(axis=1))
    return ev.assign(held_out_accuracy=acc)


def held_out_curves(data: Data) -> Figure:
    name, title = "held_out_curves", "Held-out loss and accuracy against tokens seen"
    caption = (
        "Mean over seeds at each evaluation (the runs' evals.parquet). Accuracy: echo at its lag, lags the "
        "mean over its lags. At equal tokens the lines end at the same x; at equal updates bigger batches "
        "run further right."
    )
    ev = _eval_accuracy(data)
    if ev.empty or "tokens" not in ev:
        return _skip(name, title, caption, "no evals.parquet")
    ev = ev[ev["tokens"] > 0].copy()
    ev["batch size"] = ev["batch_size"].astype(int)
    long = ev.melt(id_vars=["split", "cell", "batch size", "num_steps", "tokens", "seed"],
                   value_vars=[c for c in ("loss", "held_out_accuracy") if c in ev and ev[c].notna().any()],
                   var_name="measure").dropna(subset=["value"])  # fmt: skip
    if long.empty:
        return _skip(name, title, caption, "no held-out loss or accuracy recorded")
    multi = long["split"].nunique() > 1
    long["row"] = long["measure"].map({"loss": "held-out loss", "held_out_accuracy": "held-out accuracy"}) + (
        " — " + long["split"] if multi else "")  # fmt: skip
    g = sns.relplot(
        data=long, x="tokens", y="value", hue="batch size", palette=_hue_palette(long["batch size"]),
        style="num_steps", row="row", row_order=sorted(long["row"].unique()), col="cell",
        col_order=_cells(long), kind="line", errorbar=None, height=3.0, aspect=1.3,
        facet_kws={"sharey": "row", "sharex": False},
    )  # fmt: skip
    for ax in g.axes.flat:
        ax.set_xscale("log")
    g.legend.set_title("")
    # one line per split (budget) x cell x batch size x num_steps: the mean over seeds at each evaluation
    drawn = (
        long.groupby(["split", "cell", "batch size", "num_steps", "measure", "tokens"], observed=True)["value"]
        .agg(mean="mean", seeds="count")
        .reset_index()
        .rename(columns={"batch size": "batch_size"})
    )
    return Figure(name, title, caption, _finish(g, title, "tokens seen (log scale)", ""), data=drawn)


def heatmap_values(runs: pd.DataFrame) -> pd.DataFrame:
    """What the heatmap shows per (split, cell, num_steps, batch_size): the mean over seeds of the final held-out
    accuracy (echo, lags) or, for text (whose accuracy says little) and runs without an accuracy, the final
    held-out loss. Complete runs only; `outcome` names which, `seeds` how many runs the mean is over."""
    df = runs[runs["status"] == COMPLETE].copy()
    if df.empty:
        return pd.DataFrame(columns=["split", "cell", "num_steps", "batch_size", "outcome", "mean", "seeds"])
    acc = pd.to_numeric(df.get("valid_accuracy"), errors="coerce")
    loss = pd.to_numeric(df.get("valid_loss"), errors="coerce")
    text = df["task"].astype(str).eq("text")
    # one outcome per split: a split whose every run has an accuracy (and is not text) shows accuracy
    use_acc = (~text & acc.notna()).groupby(df["split"]).transform("all")
    df["outcome"] = np.where(use_acc, "valid_accuracy", "valid_loss")
    df["value"] = np.where(use_acc, acc, loss)
    df = df[np.isfinite(df["value"].astype(float))]
    out = (
        df.groupby(["split", "cell", "num_steps", "batch_size", "outcome"], observed=True)["value"]
        .agg(mean="mean", seeds="count")
        .reset_index()
    )
    return out


def accuracy_heatmap(data: Data) -> Figure:
    name, title = "accuracy_heatmap", "Final held-out accuracy (text: loss) over batch_size × num_steps"
    caption = (
        "Mean over seeds, written in each cell. Echo: accuracy at its lag; lags: mean accuracy over its lags "
        "(chance is 1/vocabulary); text: held-out loss in nats (lower is better). One panel per cell and "
        "setting: the setting names the budget, so equal tokens and equal updates are never mixed."
    )
    values = heatmap_values(data.runs)
    if values.empty:
        return _skip(name, title, caption, "no complete run recorded a held-out accuracy or loss")
    splits, cells = sorted(values["split"].unique()), _cells(values)
    fig, axes = plt.subplots(len(splits), len(cells), figsize=(4.0 * len(cells) + 1, 3.3 * len(splits)),
                             squeeze=False)  # fmt: skip
    for i, split in enumerate(splits):
        for j, cell in enumerate(cells):
            ax = axes[i][j]
            part = values[(values["split"] == split) & (values["cell"] == cell)]
            if part.empty:
                ax.set_axis_off()
                continue
            table = part.pivot(index="num_steps", columns="batch_size", values="mean").sort_index(ascending=False)
            table.index = [int(v) for v in table.index]
            table.columns = [int(v) for v in table.columns]
            accuracy = part["outcome"].iloc[0] == "valid_accuracy"
            sns.heatmap(table, ax=ax, vmin=0 if accuracy else None, vmax=1 if accuracy else None,
                        cmap="viridis" if accuracy else "viridis_r", annot=True, fmt=".2f", linewidths=0.5,
                        cbar_kws={"label": "held-out accuracy" if accuracy else "held-out loss (nats)"})  # fmt: skip
            ax.set_title(f"{cell}\n" + "\n".join(textwrap.wrap(split, 44)), fontsize=8)
            ax.set_xlabel("batch size")
            ax.set_ylabel("num_steps" if j == 0 else "")
    fig.tight_layout()
    _suptitle(fig, _with_setting(title, values))
    return Figure(name, title, caption, fig, data=values)


def lr_sensitivity_values(data: Data) -> pd.DataFrame:
    """Final held-out objective against lr per (task, cell, batch_size, num_steps): from lr_search.json's table
    (every search run, grid or Optuna sweeper), else from the selection records themselves (lr search
    candidates, tuning trials). Mean over seeds; `chosen` marks the lr the search picked for that group."""
    cols = ["task", "cell", "batch_size", "num_steps", "lr", "mean", "seeds", "objective", "chosen", "source"]
    search = data.lr_search or {}
    rows = pd.DataFrame(search.get("table") or [])
    objective = str(search.get("objective") or "valid_loss")
    source = "lr_search.json"
    if rows.empty or not {"cell", "batch_size", "lr", "objective"} <= set(rows.columns):
        sel = data.selection if data.selection is not None else pd.DataFrame()
        if sel.empty or "cfg.optim.lr" not in sel:
            return pd.DataFrame(columns=cols)
        sel = sel[sel["status"] == COMPLETE]
        rows = pd.DataFrame({
            "task": sel["task"], "cell": sel["cell"], "batch_size": sel["batch_size"], "num_steps": sel["num_steps"],
            "lr": sel["cfg.optim.lr"], "objective": sel["valid_loss"], "status": sel["status"],
        })  # fmt: skip
        objective, source = "valid_loss", "selection records"
    else:
        rows = rows[rows.get("status", pd.Series(COMPLETE, index=rows.index)) == COMPLETE]
    for col in ("task", "num_steps"):
        if col not in rows:
            rows[col] = np.nan if col == "num_steps" else "?"
    rows = rows.assign(
        lr=pd.to_numeric(rows["lr"], errors="coerce"), objective=pd.to_numeric(rows["objective"], errors="coerce")
    ).dropna(subset=["lr", "objective"])
    if rows.empty:
        return pd.DataFrame(columns=cols)
    keys = ["task", "cell", "batch_size", "num_steps"]
    out = rows.groupby([*keys, "lr"], dropna=False)["objective"].agg(mean="mean", seeds="count").reset_index()
    # the lr the search chose for the group; without a chosen list, the lowest mean
    chosen = {
        (c.get("task"), c.get("cell"), int(c["batch_size"])): float(c["lr"])
        for c in search.get("chosen") or []
        if c.get("batch_size") is not None and c.get("lr") is not None
    }
    if chosen:
        picked = [chosen.get((r.task, r.cell, int(r.batch_size))) for r in out.itertuples()]
        out["chosen"] = [p is not None and np.isclose(p, lr) for p, lr in zip(picked, out["lr"], strict=True)]
    else:
        out["chosen"] = out["mean"] == out.groupby(keys, dropna=False)["mean"].transform("min")
    return out.assign(objective=objective, source=source)[cols]


def lr_sensitivity(data: Data) -> Figure:
    name, title = "lr_sensitivity", "Learning-rate sensitivity: final held-out objective against lr"
    caption = (
        "Per cell: every learning rate an lr search or tuning study tried, the final held-out objective (loss "
        "in nats unless the search says otherwise) averaged over its seeds, one line per batch size; the "
        "circled point is the lr chosen for that batch size. A flat curve near the chosen lr means the "
        "comparison between batch sizes does not hinge on the lr grid."
    )
    values = lr_sensitivity_values(data)
    if values.empty:
        return _skip(name, title, caption, "no lr search table (lr_search.json) and no lr-search or tuning records")
    plot = values.assign(**{"batch size": values["batch_size"].astype(int)})
    plot["panel"] = plot["task"].astype(str)
    g = sns.relplot(
        data=plot, x="lr", y="mean", hue="batch size", palette=_hue_palette(plot["batch size"]), col="cell",
        col_order=_cells(plot), row="panel" if plot["panel"].nunique() > 1 else None, kind="line", marker="o",
        errorbar=None, height=3.0, aspect=1.2, facet_kws={"sharey": False},
    )  # fmt: skip
    for key, ax in g.axes_dict.items():
        cell = key[-1] if isinstance(key, tuple) else key
        picked = plot[(plot["cell"] == cell) & plot["chosen"]]
        if isinstance(key, tuple):
            picked = picked[picked["panel"] == key[0]]
        ax.scatter(picked["lr"], picked["mean"], s=140, facecolors="none", edgecolors="black", zorder=5)
        ax.set_xscale("log")
    g.legend.set_title("batch size")
    ylabel = f"final held-out {values['objective'].iloc[0]}"
    return Figure(name, title, caption, _finish(g, title, "learning rate (log scale)", ylabel), data=values)


def noise_scale_fig(data: Data) -> Figure:
    name, title = "noise_scale", "Gradient noise scale B_simple during training"
    caption = (
        "B_simple = tr(Σ)/|G|² (McCandlish et al. 2018) from gradients at two batch sizes, at each held-out "
        "evaluation; mean over runs of log B, band ±2 standard errors. Batch sizes well above B_simple stop "
        "saving updates (dotted: the grid's batch sizes)."
    )
    ev = data.evals
    if (
        ev.empty
        or "noise_b_simple" not in ev
        or pd.to_numeric(ev["noise_b_simple"], errors="coerce").notna().sum() == 0
    ):
        return _skip(name, title, caption, "no evaluation recorded a gradient noise scale (older records)")
    ev = ev.assign(b=pd.to_numeric(ev["noise_b_simple"], errors="coerce"))
    ev = ev[ev["b"] > 0].copy()
    ev["progress"] = ev["step"] / ev.groupby("run_id")["step"].transform("max")
    ev["num_steps"] = ev["num_steps"].astype(int)
    g = sns.relplot(
        data=ev, x="progress", y="b", hue="num_steps", palette=_hue_palette(ev["num_steps"]), kind="line",
        marker="o", errorbar=("se", 2), estimator=lambda v: float(np.exp(np.mean(np.log(v)))), height=3.0,
        aspect=1.2, **_grid_kwargs(ev),
    )  # fmt: skip
    sizes = sorted({int(b) for b in ev["batch_size"]})
    for ax in g.axes.flat:
        ax.set_yscale("log")
        for b in sizes:
            ax.axhline(b, color="grey", ls=":", lw=0.7)
    g.legend.set_title("num_steps")
    return Figure(name, title, caption, _finish(g, title, "fraction of the run's budget", "B_simple (rows)"))


BUILDERS: list[Callable[[Data], Figure]] = [
    speed_phase,
    time_to_target_fig,
    cost_to_result_fig,
    lr_vs_batch,
    lr_sensitivity,
    held_out_curves,
    accuracy_heatmap,
    noise_scale_fig,
    throughput_heatmap,
    learned_length,
    recall_curves,
    context_ablation,
    gradient_profiles,
    probe_profiles,
    grad_norm_distributions,
]


def build_all(data: Data) -> list[Figure]:
    sns.set_theme(style="whitegrid", context="notebook")
    figures = []
    for builder in BUILDERS:
        try:
            figures.append(builder(data))
        except Exception as exc:  # one figure's bug must not cost the report: it says what failed instead
            log.warning("figure %s failed: %s", builder.__name__, exc)
            figures.append(Figure(builder.__name__, builder.__name__, "", None, f"failed to draw: {exc}"))
    return figures
