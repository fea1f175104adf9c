"""Seaborn figures of a results folder. Each builder returns a Figure with its title and caption, or the
reason it was skipped (its data is absent): the report never shows an empty plot.

Facets: columns are cells, rows are settings (task · budget · lr protocol), so a figure never mixes runs that
a verdict would keep apart.
"""

from __future__ import annotations

import io
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

from analysis.load import lag_columns

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
    _png: bytes | None = None

    def save(self, folder: Path) -> dict[str, Path]:
        assert self.fig is not None
        folder.mkdir(parents=True, exist_ok=True)
        paths = {ext: folder / f"{self.name}.{ext}" for ext in ("png", "svg")}
        paths["png"].write_bytes(self.png_bytes())
        self.fig.savefig(paths["svg"], bbox_inches="tight")
        return paths

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
    name, title = "throughput_heatmap", "Training throughput: tokens per second (mean over seeds)"
    caption = (
        "Each square is one batch_size × num_steps point; brighter is faster. C1 holds if colour brightens "
        "left to right in every row."
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


def speedup(data: Data) -> Figure:
    name, title = "speedup", "Speed-up over the smallest batch size (mean and 95 % CI over seeds)"
    caption = (
        "Tokens/s relative to the smallest batch of the same cell and num_steps; the dashed line is perfect "
        "scaling (speed-up = batch ratio). C3 asks whether batch 4 sits near 4× batch 1."
    )
    df = data.runs[(data.runs["status"] == "complete") & data.runs["tokens_per_s"].notna()].copy()
    if df.empty or df["batch_size"].nunique() < 2:
        return _skip(name, title, caption, "fewer than two batch sizes with a throughput")
    keys = ["split", "cell", "num_steps"]
    smallest = df.groupby(keys, observed=True)["batch_size"].transform("min")
    base = df[df["batch_size"] == smallest].groupby(keys, observed=True)["tokens_per_s"].mean().rename("base")
    df = df.join(base, on=keys)
    df["speedup"] = df["tokens_per_s"] / df["base"]
    df["ideal"] = df["batch_size"] / smallest
    df["num_steps"] = df["num_steps"].astype(int)
    g = sns.relplot(
        data=df, x="batch_size", y="speedup", hue="num_steps", palette=_hue_palette(df["num_steps"]),
        kind="line", marker="o", errorbar=("ci", 95), n_boot=N_BOOT, seed=0, height=3.4, aspect=1.15,
        facet_kws={"sharey": True}, **_grid_kwargs(df),
    )  # fmt: skip
    for ax in g.axes.flat:
        _log2_axis(ax, df["batch_size"])
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
        bs = np.array(sorted(df["batch_size"].unique()), dtype=float)
        ax.plot(bs, bs / bs.min(), "k--", lw=1, label="ideal")
    g.legend.set_title("num_steps")
    fig = _finish(g, title, "batch size (parallel rows)", "speed-up (× smallest batch)")
    return Figure(name, title, caption, fig)


def learned_length(data: Data) -> Figure:
    name, title = "learned_length", "Learned dependency length against the BPTT length num_steps"
    caption = (
        "Each measure of how far back the trained network reaches, per cell and batch size; the dashed line "
        "is y = num_steps; bands span the seeds. C4 holds if the points climb with num_steps (and batch size "
        "does not move them)."
    )
    measures = [m for m in MEASURE_LABELS if m in data.runs and data.runs[m].notna().any()]
    df = data.runs[data.runs["status"] == "complete"]
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


def grad_norm_distributions(data: Data) -> Figure:
    name, title = "grad_norm_distributions", "Gradient norm per update against num_steps (log scale)"
    caption = (
        "Box plots of the global gradient norm before clipping, over every update of every run. C5 holds if "
        "the boxes (and outliers) climb with num_steps; the loss is a per-token mean."
    )
    steps = data.steps
    if steps.empty or "grad_norm" not in steps:
        return _skip(name, title, caption, "no steps.parquet with grad_norm")
    df = steps[np.isfinite(steps["grad_norm"]) & (steps["grad_norm"] > 0)].copy()
    if df.empty:
        return _skip(name, title, caption, "no finite gradient norm recorded")
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


def _smoothed_loss(steps: pd.DataFrame, points: int = 120) -> pd.DataFrame:
    """Per run: a rolling mean of the training loss, thinned to about `points` rows (a readable line each)."""
    out = []
    for _, g in steps.groupby("run_id", sort=False):
        g = g.sort_values("step")
        window = max(1, len(g) // 25)
        g = g.assign(loss_smooth=g["loss"].rolling(window, min_periods=1).mean())
        out.append(g.iloc[:: max(1, len(g) // points)])
    return pd.concat(out, ignore_index=True) if out else steps.iloc[0:0]


def _loss_figure(data: Data, x: str, name: str, title: str, xlabel: str, caption: str) -> Figure:
    steps = data.steps
    if steps.empty or not {"loss", x} <= set(steps.columns):
        return _skip(name, title, caption, "no steps.parquet with a loss")
    df = _smoothed_loss(steps[np.isfinite(steps["loss"])])
    if df.empty:
        return _skip(name, title, caption, "no finite training loss recorded")
    df["batch size"] = df["batch_size"].astype(int)  # the legend shows column names: make them words
    df["num_steps"] = df["num_steps"].astype(int)
    g = sns.relplot(
        data=df, x=x, y="loss_smooth", hue="batch size", palette=_hue_palette(df["batch size"]),
        style="num_steps", units="run_id", estimator=None, kind="line", lw=1, alpha=0.8, height=3.2,
        aspect=1.3,
        **_grid_kwargs(df),
    )  # fmt: skip
    if x == "tokens":
        for ax in g.axes.flat:
            ax.set_xscale("log")
    g.legend.set_title("")  # the legend lists both: batch size (colour), then num_steps (line style)
    return Figure(name, title, caption, _finish(g, title, xlabel, "train loss (smoothed)"))


def loss_vs_tokens(data: Data) -> Figure:
    return _loss_figure(
        data,
        "tokens",
        "loss_vs_tokens",
        "Training loss against tokens seen",
        "tokens seen (log scale)",
        "One line per run. At equal tokens, bigger batches have made fewer updates: lines that overlap mean "
        "batch size did not change sample efficiency (C2).",
    )


def loss_vs_time(data: Data) -> Figure:
    return _loss_figure(
        data,
        "time_s",
        "loss_vs_time",
        "Training loss against wall-clock training time",
        "training seconds (evaluation excluded)",
        "One line per run. Lines further left reach the same loss sooner: the practical payoff of C1's speed.",
    )


BUILDERS: list[Callable[[Data], Figure]] = [
    throughput_heatmap,
    speedup,
    learned_length,
    recall_curves,
    context_ablation,
    gradient_profiles,
    probe_profiles,
    grad_norm_distributions,
    loss_vs_tokens,
    loss_vs_time,
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
