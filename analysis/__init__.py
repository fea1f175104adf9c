"""Results folder -> tidy tables -> statistics and claim verdicts -> seaborn figures -> report.

Library: `build_report(results_dir, out_dir=None) -> Path` (the index.html it wrote).
Command: `python -m analysis RESULTS_DIR [--out DIR] [--thresholds FILE] [--stability FILE]`.
See analysis/README.md for the layout of the report and how to screenshot it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["build_report"]


def build_report(
    results_dir: str | Path,
    out_dir: str | Path | None = None,
    thresholds: str | Path | None = None,
    stability: str | Path | None = None,
) -> Path:
    """Write RESULTS_DIR/report/ (or `out_dir`) and return its index.html. Raises load.NoRecords if empty."""
    from analysis.report import build_report as _build  # lazy: `import analysis` stays free of seaborn

    return _build(results_dir, out_dir, thresholds, stability)
