"""The records an export writes: read once from a results folder, shared by the TensorBoard and MLflow writers
(analysis/export.py runs them; analysis/_tensorboard.py and analysis/_mlflow.py write them)."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from analysis.load import NoRecords, flat_config, load_results
from sweep.record import RUN_FILE, read_run

log = logging.getLogger(__name__)

# Columns that index a series rather than measure something: the step is the x axis; an evaluation's tokens and
# time repeat the training clock that `train/tokens` and `train/time_s` already show.
_INDEX = {"steps": {"step"}, "evals": {"step", "tokens", "time_s"}}
_PREFIX = {"steps": "train", "evals": "valid"}


class ExportError(RuntimeError):
    """Bad input: one line for the user, nothing written."""


@dataclass
class Record:
    """One run record, as the exporters need it."""

    run_id: str  # the run folder relative to the results folder: the exported run's name
    folder: Path
    status: str
    signature: str
    config: dict[str, Any]  # flattened resolved config: dotted keys -> scalar (lists as JSON text)
    summary: dict[str, float]  # scalar summary values (bools as 0/1, lag accuracy as acc_lag_<k>)
    error: str | None
    digest: str  # sha256 of run.json and the export options: an unchanged record from one rewritten by a rerun
    end_time: float  # seconds since the epoch: when run.json (written last) was written
    start_time: float  # the end less the series' last `time_s`
    series: dict[str, pd.DataFrame] = field(default_factory=dict)  # steps / evals, numeric columns only

    @property
    def last_step(self) -> int:
        steps = [int(df["step"].max()) for df in self.series.values() if len(df)]
        return max(steps, default=0)

    def scalars(self) -> Iterator[tuple[str, pd.DataFrame, list[str]]]:
        """(tag prefix, frame, the columns to export) for each series the record has; the frame keeps `step`
        and `time_s` (wall times) even where they are not exported."""
        for name, df in self.series.items():
            yield _PREFIX[name], df, [c for c in df.columns if c not in _INDEX[name]]


def _summary_scalars(summary: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in summary.items():
        if key == "lag_accuracy" and isinstance(value, dict):
            counts = summary.get("lag_count") or {}
            for lag, acc in value.items():
                # a lag without held-out targets has no accuracy (as analysis/load.py reads it), not 0
                if counts.get(lag, 1) != 0 and _finite(acc):
                    out[f"acc_lag_{lag}"] = float(acc)
        elif isinstance(value, bool) or _finite(value):
            out[key] = float(value)
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numeric(path: Path) -> pd.DataFrame:
    """The numeric (and boolean, as 0/1) columns of a series file, with `step` first."""
    df = pq.ParquetFile(path).read().to_pandas()
    if "step" not in df:
        log.warning("%s has no step column: left out", path)
        return pd.DataFrame()
    keep = {}
    for col in df.columns:
        if pd.api.types.is_bool_dtype(df[col]):
            keep[col] = df[col].astype(float)
        elif pd.api.types.is_numeric_dtype(df[col]):
            keep[col] = df[col]
    out = pd.DataFrame(keep)
    out["step"] = out["step"].astype("int64")
    return out


def thin(df: pd.DataFrame, max_points: int | None) -> pd.DataFrame:
    """At most `max_points` evenly spaced rows, the first and the last kept (None: every row)."""
    if max_points is None or len(df) <= max_points:
        return df
    rows = np.unique(np.linspace(0, len(df) - 1, max_points).round().astype(int))
    return df.iloc[rows].reset_index(drop=True)


def read_records(root: str | Path, max_points: int | None = None) -> list[Record]:
    """Every usable record under root (skipped ones are logged by analysis.load), each series thinned to
    `max_points` rows when given. Raises ExportError."""
    root = Path(root)
    if not root.is_dir():
        raise ExportError(f"RESULTS_DIR: {root} is not a folder")
    try:
        runs = load_results(root).runs
    except NoRecords as exc:
        raise ExportError(f"RESULTS_DIR: {exc}") from exc
    records = []
    for row in runs.sort_values("run_id").itertuples(index=False):
        folder = Path(row.folder)
        rec = read_run(folder)
        if rec is None:  # removed or rewritten since load_results read it
            log.warning("skipped %s: %s no longer readable", row.run_id, RUN_FILE)
            continue
        series = {}
        for name in ("steps", "evals"):
            file = folder / f"{name}.parquet"
            if file.exists():
                df = _numeric(file)
                if len(df):
                    series[name] = thin(df.sort_values("step", kind="stable").reset_index(drop=True), max_points)
        run_file = folder / RUN_FILE
        end_time = run_file.stat().st_mtime
        elapsed = max((float(df["time_s"].max()) for df in series.values() if "time_s" in df), default=0.0)
        records.append(
            Record(
                run_id=folder.name if row.run_id == "." else str(row.run_id),  # RESULTS_DIR is the run folder
                folder=folder,
                status=str(rec.get("status")),
                signature=str(rec.get("signature") or ""),
                config=flat_config(rec.get("config") or {}),
                summary=_summary_scalars(rec.get("summary") or {}),
                error=rec.get("error"),
                digest=hashlib.sha256(run_file.read_bytes() + f"max_points={max_points}".encode()).hexdigest(),
                end_time=end_time,
                start_time=end_time - (elapsed if math.isfinite(elapsed) else 0.0),
                series=series,
            )
        )
    if not records:
        raise ExportError(f"RESULTS_DIR: no readable run records under {root}")
    return records
