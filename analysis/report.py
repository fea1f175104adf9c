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

from analysis import figures as figs
from analysis import tables
from analysis.load import Results, load_results, load_series
from analysis.thresholds import DEFAULT_FILE, load_thresholds
from analysis.verdicts import Verdict, judge, split_table, verdict_table

log = logging.getLogger(__name__)

# where `make bench` writes it: the project's bench/out/ (the report names the file it used)
BENCH_STABILITY = Path(__file__).resolve().parent.parent / "bench" / "out" / "stability.json"
STABILITY_FILE = "timing_stability.json"  # from bench/ (issue 6): {"cv": spread of tokens/s across repeats}


@dataclass
class Block:
    kind: str  # h1 h2 h3 p table figure
    text: str = ""
    table: pd.DataFrame | None = None
    figure: figs.Figure | None = None


def build_report(
    results_dir: str | Path,
    out_dir: str | Path | None = None,
    thresholds: str | Path | None = None,
    stability: str | Path | None = None,
) -> Path:
    """Write the report of `results_dir` and return the path of its index.html."""
    t0 = time.perf_counter()
    results = load_results(results_dir)
    th = load_thresholds(thresholds)
    out = Path(out_dir) if out_dir is not None else results.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    bench_cv, bench_source = read_stability(results.root, stability)

    runs = results.runs
    verdicts = judge(runs, th, bench_cv)
    judged = runs[runs["in_verdicts"]]
    data = figs.Data(
        runs=judged,
        steps=load_series(judged, "steps", ["step", "tokens", "time_s", "loss", "grad_norm"]),
        evals=load_series(judged, "evals"),
        profiles=load_series(judged, "profiles"),
    )
    figures = figs.build_all(data)
    means = tables.means_table(runs, th)
    effects = tables.effect_sizes(runs)
    _write_tables(out, results, verdicts, means, effects, data.profiles)

    fig_dir = out / "figures"
    for f in figures:
        if f.fig is not None:
            f.save(fig_dir)
    blocks = _blocks(results, verdicts, figures, means, effects, th, thresholds, bench_cv, bench_source)
    (out / "report.md").write_text(to_markdown(blocks))
    index = out / "index.html"
    index.write_text(to_html(blocks, title=f"rnn-sweep report: {results.root.name}"))
    for f in figures:
        f.close()
    log.info("report written to %s in %.1f s", index, time.perf_counter() - t0)
    return index


def read_stability(root: Path, path: str | Path | None) -> tuple[float, str]:
    """The bench's run-to-run spread of tokens/s (coefficient of variation), when a stability file exists."""
    candidates = [Path(path)] if path else [root / STABILITY_FILE, root / "bench" / STABILITY_FILE, BENCH_STABILITY]
    for file in candidates:
        if not file.is_file():
            continue
        try:
            obj = json.loads(file.read_text())
            value = float(obj.get("cv", obj.get("tokens_per_s_cv")))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("ignored timing stability file %s: %s", file, exc)
            continue
        return value, str(file)
    return 0.0, ""


def _write_tables(out: Path, results: Results, verdicts: list[Verdict], means: pd.DataFrame,
                  effects: pd.DataFrame, profiles: pd.DataFrame) -> None:  # fmt: skip
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
    means.to_parquet(out / "cell_means.parquet", index=False)
    means.to_csv(out / "cell_means.csv", index=False)
    effects.to_csv(out / "effect_sizes.csv", index=False)
    results.skipped.to_csv(out / "skipped.csv", index=False)
    results.missing.to_csv(out / "missing.csv", index=False)
    if not profiles.empty:
        profiles.to_parquet(out / "profiles.parquet", index=False)


# ------------------------------------------------------------------------------------------------ content
def _blocks(results: Results, verdicts: list[Verdict], figures: list[figs.Figure], means: pd.DataFrame,
            effects: pd.DataFrame, th: dict[str, Any], th_path: Any, bench_cv: float,
            bench_source: str) -> list[Block]:  # fmt: skip
    runs = results.runs
    b: list[Block] = [Block("h1", f"What batch_size and num_steps do to a recurrent network — {results.root.name}")]
    b.append(Block("p", (
        f"{len(runs)} run records from `{results.root}`. Each claim of the seed thread is judged within "
        "every setting (task · budget · learning-rate protocol); where settings disagree the verdict is "
        "**mixed** and the split table shows where. Seeds are replicates; intervals are "
        f"{th['confidence']:.0%} bootstrap CIs; thresholds from `{th_path or DEFAULT_FILE.name}`."
    )))  # fmt: skip
    b.append(Block("h2", "Verdicts"))
    vt = verdict_table(verdicts).rename(columns=str.capitalize)
    b.append(Block("table", table=vt[["Claim", "Statement", "Verdict", "Statistic", "Evidence"]]))
    b.append(Block("p", "How each claim is measured and compared:"))
    b.append(Block("table", table=vt[["Claim", "Metric", "Comparison"]]))
    b.append(Block("h2", "Protocol"))
    b.append(Block("table", table=tables.protocol(runs)))
    b.append(Block("table", table=tables.run_counts(runs, results.skipped, results.missing, results.grid_points)))
    noise = (
        f"Speed verdicts widen their intervals by the bench's timing spread (CV {bench_cv:.1%}, {bench_source})."
        if bench_source
        else f"No {STABILITY_FILE} found: speed verdicts rely on the spread of tokens/s across seeds alone."
    )
    b.append(Block("p", noise))
    shared = tables.shared_cores_note(runs)
    if shared:
        b.append(Block("p", shared))
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

    b.append(Block("h2", "Claims in detail"))
    for v in verdicts:
        b.append(Block("h3", f"{v.claim.id} — {v.claim.text}: {v.verdict}"))
        b.append(
            Block(
                "p",
                f"**Metric:** {v.claim.metric}. **Comparison:** {v.claim.comparison}. "
                f"**Statistic:** {v.statistic if len(v.splits) <= 1 else 'per setting, in the table below'}.",
            )
        )
        b.append(Block("p", v.sentence))
        if len(v.splits) > 1:
            b.append(Block("table", table=v.splits[["split", "verdict", "statistic", "runs"]]))
        if not v.details.empty:
            b.append(Block("table", table=_round(v.details)))

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
    b.append(Block("table", table=_round(effects)) if not effects.empty else Block("p", "*Too few runs.*"))
    b.append(Block("h2", "Per-cell means"))
    b.append(Block("p", "Mean over seeds [bootstrap CI] per grid point (complete runs)."))
    wide = tables.means_wide(means)
    b.append(Block("table", table=wide) if not wide.empty else Block("p", "*No complete runs.*"))
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
