"""Run records -> the trackers users already open: TensorBoard event files and MLflow runs.

    python -m analysis.export --to tensorboard RESULTS_DIR [--out DIR]
    python -m analysis.export --to mlflow RESULTS_DIR [--tracking-uri URI] [--experiment NAME]

One exported run per record (`run.json`, found recursively as `analysis.load` finds them), named after its run
folder. Scalars per update come from `steps.parquet` (`train/<column>`, step = update number), per evaluation
from `evals.parquet` (`valid/<column>`), the record's scalar summary at the last update (`summary/<key>`);
the resolved config, flattened to dotted keys, becomes TensorBoard hparams or MLflow params. The writers live in
`analysis/_tensorboard.py` and `analysis/_mlflow.py` and import their library only when chosen: both are
optional extras (`pip install 'rnn-sweep[tensorboard]'`, `'rnn-sweep[mlflow]'`).

Rerunning an export replaces, never duplicates: TensorBoard event files of a run folder are rewritten; an MLflow
run is found again by its `run_folder` and `signature` tags and kept when the record is unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from analysis.load import NoRecords, load_results
from sweep.record import RUN_FILE, read_run

log = logging.getLogger(__name__)

# --to -> (the module its writer needs, the extra that installs it)
TARGETS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}
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


def flat_config(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> dotted keys; lists as JSON text (a tracker param holds one scalar)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


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


def missing_extra(target: str) -> str | None:
    """The install hint when the library `--to target` needs is absent, else None."""
    module, extra = TARGETS[target]
    if importlib.util.find_spec(module) is None:
        return f"--to {target} needs the {extra} extra: pip install 'rnn-sweep[{extra}]'"
    return None


def to_tensorboard(
    results_dir: str | Path, out: str | Path | None = None, max_points: int | None = None
) -> tuple[Path, int]:
    """Event files under `out` (default RESULTS_DIR/tensorboard), one folder per record; returns (out, runs)."""
    records = read_records(results_dir, max_points)
    from analysis._tensorboard import write_tensorboard  # needs the tensorboard extra

    logdir = Path(out) if out is not None else Path(results_dir).resolve() / "tensorboard"
    write_tensorboard(records, logdir)
    return logdir, len(records)


def to_mlflow(
    results_dir: str | Path,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    max_points: int | None = None,
) -> tuple[dict[str, int], str, str]:
    """One MLflow run per record; returns the counts (logged, replaced, unchanged), the URI and experiment."""
    records = read_records(results_dir, max_points)
    from analysis._mlflow import log_mlflow  # needs the mlflow extra

    return log_mlflow(records, Path(results_dir).resolve(), tracking_uri, experiment)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m analysis.export",
        description="Export run records to TensorBoard event files or an MLflow tracking store.",
    )
    parser.add_argument("--to", required=True, choices=sorted(TARGETS), help="where the runs go")
    parser.add_argument("results_dir", help="folder holding run records (searched recursively)")
    parser.add_argument("--out", default=None, help="tensorboard: log folder (default: RESULTS_DIR/tensorboard)")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="mlflow: tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///RESULTS_DIR/mlflow.db)",
    )
    parser.add_argument("--experiment", default=None, help="mlflow: experiment name (default: RESULTS_DIR's name)")
    parser.add_argument(
        "--max-points",
        type=int,
        default=None,
        metavar="N",
        help="at most N evenly spaced rows per series and run, first and last kept (default: every row)",
    )
    args = parser.parse_args(argv)
    if args.max_points is not None and args.max_points < 2:
        parser.error(f"--max-points: {args.max_points} is not allowed (an integer >= 2, or leave it out)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.to != "tensorboard" and args.out is not None:
        parser.error("--out: only for --to tensorboard (mlflow writes to --tracking-uri)")
    if args.to != "mlflow" and (args.tracking_uri is not None or args.experiment is not None):
        parser.error("--tracking-uri / --experiment: only for --to mlflow")
    hint = missing_extra(args.to)
    if hint:
        print(f"error: {hint}", file=sys.stderr)
        return 2
    try:
        if args.to == "tensorboard":
            out, n = to_tensorboard(args.results_dir, args.out, args.max_points)
            print(f"tensorboard: {n} runs in {out} (open: tensorboard --logdir {out})")
        else:
            counts, uri, experiment = to_mlflow(args.results_dir, args.tracking_uri, args.experiment, args.max_points)
            print(
                f"mlflow: {counts['logged']} runs logged, {counts['replaced']} replaced, "
                f"{counts['unchanged']} unchanged in experiment '{experiment}' at {uri}"
            )
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # run as `python -m`, this file is `__main__`: the writers import `analysis.export`, so its main (and the
    # ExportError they raise) must come from that module, not from this copy
    from analysis.export import main as _main

    sys.exit(_main())
