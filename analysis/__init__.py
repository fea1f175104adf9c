"""Results folder -> tidy tables -> statistics and claim verdicts -> seaborn figures -> report.

Library: `build_report(results_dir, out_dir=None) -> Path` (the index.html it wrote);
`load_results(results_dir) -> Results` (the run table, skipped records, missing grid points, the speed phase
and the lr search) and `load_series(runs, "steps" | "evals" | "profiles", columns=None)` (a series of the
given runs, concatenated, with the factors to group by); `load_steps` and `load_evals` are the same for one
series and also take a results folder or a `Results`.
Commands: `python -m analysis RESULTS_DIR [--out DIR] [--thresholds FILE]` (the report);
`python -m analysis.export --to tensorboard|mlflow RESULTS_DIR` (the runs, for those trackers).
See analysis/README.md for the layout of the report, the exports and how to screenshot the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from analysis.load import NoRecords, Results, load_results, load_series

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["NoRecords", "Results", "build_report", "load_evals", "load_results", "load_series", "load_steps"]


def build_report(
    results_dir: str | Path,
    out_dir: str | Path | None = None,
    thresholds: str | Path | None = None,
) -> Path:
    """Write RESULTS_DIR/report/ (or `out_dir`) and return its index.html. Raises load.NoRecords if empty."""
    from analysis.report import build_report as _build  # lazy: `import analysis` stays free of seaborn

    return _build(results_dir, out_dir, thresholds)


def load_steps(runs: str | Path | Results | pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """Every logged update (`steps.parquet`) of the given runs: a results folder, a `Results`, or rows of its
    run table. One row per (run, update) with run_id, split, task, cell, batch_size, num_steps, seed, status."""
    return load_series(_run_table(runs), "steps", columns)


def load_evals(runs: str | Path | Results | pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """Every held-out evaluation (`evals.parquet`) of the given runs, as `load_steps` gives the updates."""
    return load_series(_run_table(runs), "evals", columns)


def _run_table(runs: str | Path | Results | pd.DataFrame) -> pd.DataFrame:
    if isinstance(runs, Results):
        return runs.runs
    if isinstance(runs, (str, Path)):
        return load_results(runs).runs
    return runs
