"""Results folder -> RESULTS_DIR/report/: index.html (self-contained), report.md, figures/, tidy tables.

The report is a list of blocks (headings, paragraphs, tables, figures) rendered twice, to Markdown and to
HTML, so the two never say different things.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import cost as costs
from analysis import figures as figs
from analysis import readme, tables
from analysis.load import Results, load_results, load_series
from analysis.thresholds import DEFAULT_FILE, load_thresholds
from analysis.verdicts import Verdict, judge, split_table, verdict_table

log = logging.getLogger(__name__)

EVAL_COLUMNS = None  # evals.parquet is narrow (a row per evaluation): read every column
SHOW_DECIDING = 40  # rows of a verdict's deciding runs in the page; a ~600-run grid would list hundreds


@dataclass
class Block:
    kind: str  # h1 h2 h3 p table figure
    text: str = ""
    table: pd.DataFrame | None = None
    figure: figs.Figure | None = None


@dataclass
class Computed:
    """Everything the blocks show, computed once."""

    results: Results
    verdicts: list[Verdict]
    speed: pd.DataFrame  # tables.speed_table
    ttt: pd.DataFrame  # tables.time_to_target
    fastest: pd.DataFrame
    noise: pd.DataFrame
    lr: pd.DataFrame
    means: pd.DataFrame
    effects: pd.DataFrame
    th: dict[str, Any]
    th_path: Any
    cost: pd.DataFrame | None = None  # cost.cost_to_result (per grid point)
    b_crit: pd.DataFrame | None = None  # cost.b_crit_table (per split, cell, num_steps)
    caps: pd.DataFrame | None = None  # cost.cap_runs: plateau runs stopped at their cap


def build_report(
    results_dir: str | Path,
    out_dir: str | Path | None = None,
    thresholds: str | Path | None = None,
) -> Path:
    """Write the report of `results_dir` and return the path of its index.html."""
    t0 = time.perf_counter()
    results = load_results(results_dir)
    th = load_thresholds(thresholds)
    out = Path(out_dir) if out_dir is not None else results.root / "report"
    out.mkdir(parents=True, exist_ok=True)

    runs = results.runs
    judged = runs[runs["in_verdicts"]]
    evals = load_series(judged, "evals", EVAL_COLUMNS)
    level = float(th.get("confidence", 0.95))
    # one crossing per run (interpolated, B_simple at it) feeds the time-to-target table, the cost curves and fits,
    # and C1's wall-clock to target
    per_run = costs.crossings(judged, evals, results.speed)
    b_crit = costs.b_crit_table(per_run, level)
    verdicts = judge(runs, th, speed=results.speed, cost=per_run, b_crit=b_crit)
    ttt = tables.aggregate_ttt(per_run, level)
    c = Computed(
        results=results, verdicts=verdicts, speed=tables.speed_table(results.speed, level), ttt=ttt,
        fastest=tables.fastest_batch(ttt), noise=tables.noise_scale_table(judged, evals, level),
        lr=tables.lr_summary(results.lr_search, level), means=tables.means_table(runs, th),
        effects=tables.effect_sizes(runs), th=th, th_path=thresholds,
        cost=costs.cost_to_result(per_run, level), b_crit=b_crit,
        caps=costs.cap_runs(judged),
    )  # fmt: skip
    data = figs.Data(
        runs=judged,
        steps=load_series(judged, "steps", ["step", "grad_norm"]),
        evals=evals,
        profiles=load_series(judged, "profiles"),
        speed=results.speed,
        lr_search=results.lr_search,
        ttt=ttt,
        selection=runs[runs["selection"].astype(bool)] if "selection" in runs else None,
        cost=c.cost,
        b_crit=c.b_crit,
    )
    figures = figs.build_all(data)
    _write_tables(out, c, data.profiles)
    # the README's results block is generated from this file (python -m analysis.readme), never copied by hand
    (out / readme.TABLE_FILE).write_text(readme.results_table(runs, source=results.root.name))

    fig_dir = out / "figures"
    for f in figures:
        if f.fig is not None:
            f.save(fig_dir)
    blocks = _blocks(c, figures)
    (out / "report.md").write_text(to_markdown(blocks))
    index = out / "index.html"
    index.write_text(to_html(blocks, title=f"rnn-sweep report: {results.root.name}"))
    for f in figures:
        f.close()
    log.info("report written to %s in %.1f s", index, time.perf_counter() - t0)
    return index


def _write_tables(out: Path, c: Computed, profiles: pd.DataFrame) -> None:
    results, verdicts = c.results, c.verdicts
    runs = results.runs.copy()
    for col in runs.columns:  # parquet wants one type per column: mixed objects become text
        if runs[col].dtype == object:
            runs[col] = runs[col].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(v))
    runs.to_parquet(out / "runs.parquet", index=False)
    runs.to_csv(out / "runs.csv", index=False)
    verdict_table(verdicts).to_csv(out / "verdicts.csv", index=False)
    split_table(verdicts).to_csv(out / "verdict_splits.csv", index=False)
    details = [v.details.assign(claim=v.claim.id) for v in verdicts if not v.details.empty]
    if details:
        pd.concat(details, ignore_index=True).to_csv(out / "claim_details.csv", index=False)
    for attr, name in (("deciding", "deciding_runs.csv"), ("uninformative", "uninformative_groups.csv")):
        frames = [_frame(v, attr).assign(claim=v.claim.id) for v in verdicts if not _frame(v, attr).empty]
        if frames:
            pd.concat(frames, ignore_index=True).to_csv(out / name, index=False)
    c.means.to_parquet(out / "cell_means.parquet", index=False)
    c.means.to_csv(out / "cell_means.csv", index=False)
    c.effects.to_csv(out / "effect_sizes.csv", index=False)
    c.speed.to_csv(out / "speed_table.csv", index=False)
    c.ttt.to_csv(out / "time_to_target.csv", index=False)
    if c.cost is not None:
        c.cost.to_csv(out / "cost_to_result.csv", index=False)
    if c.b_crit is not None:
        c.b_crit.to_csv(out / "b_crit.csv", index=False)
    c.noise.to_csv(out / "noise_scale.csv", index=False)
    c.lr.to_csv(out / "lr_protocol.csv", index=False)
    results.skipped.to_csv(out / "skipped.csv", index=False)
    results.missing.to_csv(out / "missing.csv", index=False)
    if not profiles.empty:
        profiles.to_parquet(out / "profiles.parquet", index=False)


def _frame(v: Verdict, attr: str) -> pd.DataFrame:
    """A Verdict's `deciding` / `uninformative` frame, empty where the verdict has none (older verdicts)."""
    df = getattr(v, attr, None)
    return df if isinstance(df, pd.DataFrame) else pd.DataFrame()


# ------------------------------------------------------------------------------------------------ content
def _budget_order(budget: str) -> tuple[int, str]:
    kind = str(budget).split()[0]
    return ({"plateau": 0, "tokens": 1, "updates": 2}.get(kind, 3), str(budget))


def _budget_words(budget: str) -> str:
    kind, _, amount = str(budget).partition(" ")
    if kind == "tokens":
        return f"Equal tokens ({amount} tokens per run, the thread's setting)"
    if kind == "updates":
        return f"Equal updates ({amount} optimizer updates per run)"
    if kind == "seconds":
        return f"Equal training time ({amount} s per run)"
    if kind == "plateau":
        cap = amount.removeprefix("cap ")
        return f"Trained to a plateau (until the held-out loss stops improving, {cap} updates at most)"
    return f"Budget {budget}"


def _split_verdicts(verdicts: list[Verdict], claim: str, splits: list[str]) -> str:
    v = next((v for v in verdicts if v.claim.id == claim), None)
    if v is None or v.splits.empty:
        return "n/a"
    rows = v.splits[v.splits["split"].isin(splits)]
    counts = rows["verdict"].value_counts()
    return ", ".join(f"{k} in {n} of {len(rows)}" for k, n in counts.items()) if len(rows) > 1 else (
        rows["verdict"].iloc[0] if len(rows) else "n/a")  # fmt: skip


def _gap_sentence(part: pd.DataFrame) -> str:
    """Held-out loss and accuracy of the smallest vs the largest batch size, median over groups."""
    done = part[part["status"] == "complete"]
    if done.empty or done["batch_size"].nunique() < 2:
        return ""
    lo, hi = int(done["batch_size"].min()), int(done["batch_size"].max())
    out = []
    for col, unit, fmt in (("valid_loss", " nats", ".3f"), ("valid_accuracy", "", ".2f")):
        vals = pd.to_numeric(done[col], errors="coerce")
        if vals.notna().sum() == 0:
            continue
        m = done.assign(v=vals).groupby(["cell", "num_steps", "batch_size"])["v"].mean().unstack("batch_size")
        if lo in m and hi in m:
            a, b = m[lo].median(), m[hi].median()
            out.append(f"held-out {col.removeprefix('valid_')} {a:{fmt}}{unit} at batch {lo} vs {b:{fmt}}{unit} at "
                       f"batch {hi} (median over cell × num_steps)")  # fmt: skip
    return "; ".join(out)


def _answer(c: Computed) -> list[Block]:
    """The answer to the thread in a few sentences with numbers: speed first (budget-free), then per budget."""
    runs = c.results.runs
    judged = runs[runs["in_verdicts"]]
    out: list[Block] = [Block("h2", "The answer to the thread")]
    sp = c.speed
    if not sp.empty:
        four = sp[sp["batch_ratio"] == 4]
        big = sp[sp["batch_size"] == sp.groupby(["task", "cell", "num_steps"])["batch_size"].transform("max")]
        parts = []
        if not four.empty:
            parts.append(f"batch ×4 ran {four['speedup'].median():.2f}× the tokens/s (range "
                         f"{four['speedup'].min():.2f}–{four['speedup'].max():.2f} over {len(four)} cell × num_steps "
                         "points; the thread says about 4×)")  # fmt: skip
        big = big[big["batch_ratio"] > 1]
        if not big.empty:
            parts.append(f"the largest batch ({int(big['batch_ratio'].max())}× the smallest) ran "
                         f"{big['speedup'].median():.1f}× (median)")  # fmt: skip
        flags = int(sp["superlinear"].sum())
        out.append(Block("p", (
            f"**Speed** (the speed phase, each point timed alone, {int(sp['rounds'].median())} rounds): "
            + "; ".join(parts) + f". Median round-to-round CV {sp['cv'].median():.1%}"
            + (f"; {flags} point(s) flagged superlinear (a measurement problem)." if flags else ".")
        )))  # fmt: skip
    else:
        out.append(
            Block(
                "p",
                "**Speed:** no speed phase in this folder (speed.parquet absent): C1 and C3 are "
                "not decided; the training runs' own tokens/s are shown and decide nothing.",
            )
        )
    budgets = sorted(judged["budget"].dropna().unique(), key=_budget_order)
    if budgets and not any(str(x).startswith("tokens") for x in budgets):
        out.append(Block("p", "**Equal tokens (the thread's setting):** no run in this folder had a token budget, "
                              "so the thread's comparison is not made here."))  # fmt: skip
    for budget in budgets:
        part = judged[judged["budget"] == budget]
        splits = sorted(part["split"].unique())
        text = [f"**{_budget_words(budget)}.**"]
        if str(budget).startswith("plateau"):
            text.append(
                "Each run trains until its held-out loss levels off: what is learned once trained, whatever the "
                "batch size costs to get there (that cost is the cost to result below)."
            )
        if str(budget).startswith("updates"):
            text.append(
                "Every run takes the same number of optimizer steps, so a batch k times larger also "
                "sees k times the tokens: here batch size buys data as well as parallelism, and loss "
                "gaps measure that extra data, not what batch size does at equal data."
            )
        gap = _gap_sentence(part)
        if gap:
            text.append(_stop(gap[0].upper() + gap[1:]))
        text.append(f"C2 (batch size does not change what is learned): {_split_verdicts(c.verdicts, 'C2', splits)}; "
                    f"C4 (num_steps sets the learned length): {_split_verdicts(c.verdicts, 'C4', splits)}; "
                    f"C6: {_split_verdicts(c.verdicts, 'C6', splits)}; "
                    f"C7 (batch 1 erratic): {_split_verdicts(c.verdicts, 'C7', splits)}.")  # fmt: skip
        fast = c.fastest[c.fastest["split"].isin(splits)]
        won = fast["first in wall-clock"][fast["first in wall-clock"].map(lambda v: isinstance(v, int))]
        tied = int(fast["first in wall-clock"].astype(str).str.contains("overlap").sum())
        if not fast.empty:
            ttt = c.ttt[c.ttt["split"].isin(splits)]
            first = (
                "first in wall-clock: " + ", ".join(f"batch {b} in {n}" for b, n in won.value_counts().items())
                + f" of {len(fast)} cell × num_steps groups"
                if not won.empty
                else "no group has a clear wall-clock winner"
            ) + (f" ({tied} group(s) tied: intervals overlap)" if tied else "") + (
                "" if c.results.speed is not None else " (no speed phase: no wall-clock)")  # fmt: skip
            targets = "; ".join(
                f"{split.split(' · ')[0]}: {t}" for split, t in ttt.groupby("split")["target"].first().items()
            )
            text.append(f"Time to target ({targets}): reached by every seed at "
                        f"{int(ttt['all_reached'].sum())} of {len(ttt)} grid points; {first}.")  # fmt: skip
        out.append(Block("p", " ".join(text)))
    return out


def _blocks(c: Computed, figures: list[figs.Figure]) -> list[Block]:
    results, verdicts, th = c.results, c.verdicts, c.th
    runs = results.runs
    b: list[Block] = [Block("h1", f"What batch_size and num_steps do to a recurrent network — {results.root.name}")]
    b += _answer(c)
    b.append(Block("h2", "Verdicts"))
    b.append(Block("p", (
        f"{len(runs)} run records from `{results.root}`. Each claim is judged within every setting (task · "
        "budget · learning-rate protocol); where settings disagree the verdict is **mixed** and the split table "
        f"shows where. Seeds are replicates; intervals at {th['confidence']:.0%}; thresholds from "
        f"`{c.th_path or DEFAULT_FILE.name}`."
    )))  # fmt: skip
    vt = verdict_table(verdicts).rename(columns=str.capitalize)
    b.append(Block("table", table=vt[["Claim", "Statement", "Verdict", "Statistic", "Evidence"]]))
    b.append(Block("p", "How each claim is measured and compared:"))
    b.append(Block("table", table=vt[["Claim", "Metric", "Comparison"]]))

    b.append(Block("h2", "Protocol"))
    proto = tables.protocol(runs)
    extra = pd.DataFrame([
        ("seeds per grid point", tables.seeds_per_point(runs)),
        ("speed phase", tables.speed_settings(results.speed, results.speed_plan)),
    ], columns=["item", "value"])  # fmt: skip
    b.append(Block("table", table=pd.concat([proto, extra], ignore_index=True)))
    if not c.lr.empty:
        b.append(
            Block(
                "p",
                "Learning rate chosen by the lr search per (task, cell) against batch size, and the "
                "fitted exponent a of lr ∝ batch_size^a (1: linear scaling, 0.5: square root):",
            )
        )
        b.append(Block("table", table=_round(c.lr)))
    b.append(Block("table", table=tables.run_counts(runs, results.skipped, results.missing, results.grid_points)))
    problems = tables.problem_runs(runs)
    if not problems.empty:
        b.append(Block("h3", "Failed and diverged runs"))
        b.append(Block("table", table=problems))
    if not results.skipped.empty:
        b.append(Block("h3", "Records skipped (corrupt or partial)"))
        b.append(Block("table", table=results.skipped))
    if not results.missing.empty:
        b.append(Block("h3", "Grid points without a record"))
        b.append(Block("table", table=results.missing))

    b.append(Block("h2", "Speed"))
    under_load = int(runs.get("timed_under_load", pd.Series(dtype=bool)).fillna(False).astype(bool).sum())
    b.append(Block("p", (
        "C1 and C3 are judged from the speed phase only: every point timed alone, rounds interleaved, warm-up "
        "excluded. CV is the round-to-round coefficient of variation of tokens/s; the speed-up over the smallest "
        "batch of the same cell and num_steps pairs the rounds, with a t-interval on the log ratios; "
        "**superlinear** marks an interval wholly above the batch ratio, which no parallelism explains (a "
        "measurement problem). "
        + (f"The training runs' own tokens/s ({under_load} runs) were timed under load, beside other jobs: they "
           "are shown, and decide no speed verdict." if under_load else
           "The training runs' own tokens/s decide no speed verdict.")
    )))  # fmt: skip
    if not c.speed.empty:
        b.append(Block("table", table=_round(c.speed)))
    else:
        b.append(Block("p", "*No speed phase in this folder (speed.parquet absent).*"))

    b += _cost_blocks(c)

    b.append(Block("h2", "Critical batch size (gradient noise scale)"))
    verdict_of = {v.claim.id: v.verdict for v in verdicts}
    b.append(Block("p", (
        "B_simple = tr(Σ)/|G|² (McCandlish et al. 2018, appendix A), estimated from gradient norms at two batch "
        "sizes at every held-out evaluation: below it a bigger batch cuts the updates needed almost "
        "proportionally, above it hardly at all — the bound on what batch size can buy (C1 "
        f"{verdict_of.get('C1', 'n/a')}, C2 {verdict_of.get('C2', 'n/a')}). Geometric mean over seeds of the "
        "median over batch sizes, with a log-scale t-interval; stage = fraction of the run's budget."
    )))  # fmt: skip
    if not c.noise.empty:
        b.append(Block("table", table=tables.noise_wide(c.noise)))
    else:
        b.append(Block("p", "*No evaluation recorded a noise scale (records older than the measure).*"))

    b.append(Block("h2", "Claims in detail"))
    for v in verdicts:
        b.append(Block("h3", f"{v.claim.id} — {v.claim.text}: {v.verdict}"))
        b.append(Block("p", (
            f"**Metric:** {v.claim.metric}. **Comparison:** {v.claim.comparison}. "
            f"**Statistic:** {v.statistic if len(v.splits) <= 1 else 'per setting, in the table below'}."
        )))  # fmt: skip
        b.append(Block("p", v.sentence))
        if len(v.splits) > 1:
            b.append(Block("table", table=v.splits[["split", "verdict", "statistic", "runs"]]))
        if not v.details.empty:
            b.append(Block("table", table=_round(v.details)))
        deciding = _frame(v, "deciding")
        if not deciding.empty:
            more = len(deciding) - SHOW_DECIDING
            tail = f"; the first {SHOW_DECIDING} shown, all in deciding_runs.csv" if more > 0 else ""
            b.append(Block("p", f"Runs this verdict rests on ({len(deciding)}{tail}):"))
            b.append(Block("table", table=deciding.head(SHOW_DECIDING)))
        uninf = _frame(v, "uninformative")
        if not uninf.empty:
            b.append(Block("p", f"Uninformative groups, listed and not counted as agreement ({len(uninf)}):"))
            b.append(Block("table", table=uninf))

    b.append(Block("h2", "Figures"))
    for f in figures:
        if f.fig is not None:
            b.append(Block("figure", figure=f))
        else:
            b.append(Block("p", f"*{f.title}: not drawn — {f.skipped}.*"))

    b.append(Block("h2", "Effect sizes"))
    b.append(Block("p", (
        "Partial η² of each factor from a type-II OLS ANOVA of the main effects (factors as categories), "
        "complete runs, per setting: the share of the outcome's variance (left after the other factors) the "
        "factor explains."
    )))  # fmt: skip
    b.append(Block("table", table=_round(c.effects)) if not c.effects.empty else Block("p", "*Too few runs.*"))
    b.append(Block("h2", "Per-cell means"))
    b.append(Block("p", "Mean over seeds [CI] per grid point (complete runs)."))
    wide = tables.means_wide(c.means)
    b.append(Block("table", table=wide) if not wide.empty else Block("p", "*No complete runs.*"))
    return b


def _cost_blocks(c: Computed) -> list[Block]:
    """Cost to result: updates, tokens and wall-clock to the target per grid point, which batch size gets
    there first, the critical batch size of the cost curves beside B_simple at the target, and the plateau
    runs that stopped at their cap."""
    b = [Block("h2", "Cost to result")]
    b.append(Block("p", (
        "Fixed budgets (tokens, updates, seconds) measure *learning speed at a budget*: a run that has not reached "
        "the target when its budget ends is censored there. Plateau runs are *trained to a plateau*: each stops "
        "when its held-out loss levels off (or at its cap), so their time to target is the cost of the result "
        "itself. " + tables.TARGET_RULE.format(**tables.TARGETS, text_margin=tables.TEXT_MARGIN)
    )))  # fmt: skip
    if c.ttt.empty:
        b.append(Block("p", "*No run has both a target and held-out evaluations.*"))
    else:
        targets = c.ttt.drop_duplicates(["split", "cell", "num_steps"])[
            ["split", "cell", "num_steps", "target", "target_source"]
        ].rename(columns={"target_source": "target from"})
        b.append(Block("p", "Targets used:"))
        b.append(Block("table", table=targets.assign(num_steps=targets["num_steps"].astype(int))))
        for measure, words in (
            ("updates", "Updates to target"),
            ("tokens", "Tokens to target"),
            ("seconds", "Wall-clock seconds to target (tokens to target × the speed phase's seconds per token)"),
        ):
            if measure == "seconds" and c.ttt["seconds"].isna().all():
                b.append(Block("p", "*No wall-clock to target: the speed phase timed none of these points.*"))
                continue
            b.append(Block("p", f"{words} (geometric mean [interval] over seeds; k/n where not all reached):"))
            b.append(Block("table", table=tables.ttt_wide(c.ttt, measure)))
        b.append(Block("p", "Which batch size gets there first, per cell and num_steps (points whose seeds all "
                            "reached the target):"))  # fmt: skip
        b.append(Block("table", table=_round(c.fastest)))
    b.append(Block("h3", "Critical batch size from the cost curves"))
    b.append(Block("p", costs.FIT_RULE.format(n=costs.MIN_BATCH_SIZES, boot=costs.N_BOOT, seed=costs.BOOT_SEED)))
    if c.b_crit is not None and not c.b_crit.empty:
        b.append(Block("table", table=costs.show_b_crit(c.b_crit)))
        b.append(Block("p", "Every number of this table, the fits' S_min, E_min and residuals included, is in "
                            "`b_crit.csv`; the per-point times and B_simple in `cost_to_result.csv`."))  # fmt: skip
    else:
        b.append(Block("p", "*No time to target to fit.*"))
    b.append(Block("h3", "Plateau runs that hit the cap"))
    caps = c.caps if c.caps is not None else pd.DataFrame()
    b.append(Block("p", costs.cap_sentence(c.results.runs[c.results.runs["in_verdicts"]], caps)))
    if not caps.empty:
        b.append(Block("table", table=_round(caps)))
    return b


def _round(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].map(lambda x: "" if pd.isna(x) else f"{x:.3g}")
    return out


# ---------------------------------------------------------------------------------------------- rendering
def _stop(text: str) -> str:
    return text if text.endswith((".", "?", "!")) else f"{text}."


def _md_cell(value: Any) -> str:
    text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
    return text.replace("|", "\\|").replace("\n", "<br>")


def md_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(_md_cell(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def to_markdown(blocks: list[Block]) -> str:
    parts = []
    for blk in blocks:
        if blk.kind in ("h1", "h2", "h3"):
            parts.append("#" * int(blk.kind[1]) + " " + blk.text)
        elif blk.kind == "p":
            parts.append(blk.text.replace("\n", "  \n"))  # a line break, not a new paragraph
        elif blk.kind == "table" and blk.table is not None:
            parts.append(md_table(blk.table))
        elif blk.kind == "figure" and blk.figure is not None:
            f = blk.figure
            parts.append(f"![{f.title}](figures/{f.name}.png)\n\n*{_stop(f.title)}* {f.caption}")
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; max-width: 1400px; margin: 2em auto;
       padding: 0 1.5em; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
h3 { margin-top: 1.6em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .86em; }
th, td { border: 1px solid #d0d0d0; padding: .3em .55em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } tr:nth-child(even) td { background: #fafafa; }
.verdict { font-weight: 600; padding: .1em .45em; border-radius: .3em; white-space: nowrap; }
.v-supported { background: #d6f5d6; color: #135213; } .v-refuted { background: #f9d2d2; color: #7a1212; }
.v-mixed { background: #fde8c4; color: #6b4300; } .v-inconclusive { background: #e4e4e4; color: #444; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .92em; color: #333; margin-top: .3em; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: .2em; }
"""


def _inline(text: str) -> str:
    """The few Markdown marks the paragraphs use (**bold**, *italic*, `code`), escaped first."""
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"(?<!\*)\*(?!\*)(.+?)\*", r"<em>\1</em>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out).replace("\n", "<br>")


def html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for row in df.itertuples(index=False):
        cells = []
        for col, value in zip(df.columns, row, strict=True):
            text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
            if str(col).lower() == "verdict":
                cells.append(f'<td><span class="verdict v-{html.escape(text)}">{html.escape(text)}</span></td>')
            else:
                cells.append(f"<td>{html.escape(text).replace(chr(10), '<br>')}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def to_html(blocks: list[Block], title: str) -> str:
    parts = []
    for blk in blocks:
        if blk.kind in ("h1", "h2", "h3"):
            parts.append(f"<{blk.kind}>{_inline(blk.text)}</{blk.kind}>")
        elif blk.kind == "p":
            parts.append(f"<p>{_inline(blk.text)}</p>")
        elif blk.kind == "table" and blk.table is not None:
            parts.append(html_table(blk.table))
        elif blk.kind == "figure" and blk.figure is not None:
            f = blk.figure
            data = base64.b64encode(f.png_bytes()).decode()
            parts.append(
                f'<figure id="{f.name}"><img alt="{html.escape(f.title)}" src="data:image/png;base64,{data}">'
                f"<figcaption><strong>{html.escape(_stop(f.title))}</strong> "
                f"{html.escape(f.caption)}</figcaption></figure>"
            )
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
        f"<body>\n{body}\n</body></html>\n"
    )
