"""Results folder -> tidy tables -> statistics and claim verdicts -> seaborn figures -> report.

Library: `build_report(results_dir, out_dir=None) -> Path` (the index.html it wrote);
`load_results(results_dir) -> Results` (the run table, skipped records, missing grid points, the speed phase
and the lr search) and `load_series(runs, "steps" | "evals" | "profiles", columns=None)` (a series of the
given runs, concatenated, with the factors to group by).
Command: `python -m analysis RESULTS_DIR [--out DIR] [--thresholds FILE]`.
See analysis/README.md for the layout of the report and how to screenshot it.
"""

from __future__ import annotations

from pathlib import Path

from analysis.load import NoRecords, Results, load_results, load_series

__all__ = ["NoRecords", "Results", "build_report", "load_results", "load_series"]


def build_report(
    results_dir: str | Path,
    out_dir: str | Path | None = None,
    thresholds: str | Path | None = None,
) -> Path:
    """Write RESULTS_DIR/report/ (or `out_dir`) and return its index.html. Raises load.NoRecords if empty."""
    from analysis.report import build_report as _build  # lazy: `import analysis` stays free of seaborn

    return _build(results_dir, out_dir, thresholds)
