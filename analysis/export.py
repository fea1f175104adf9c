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
import importlib.util
import logging
import sys
from pathlib import Path
from typing import NoReturn

from analysis._export_records import ExportError, Record, flat_config, read_records, thin

__all__ = ["ExportError", "Record", "flat_config", "main", "read_records", "thin", "to_mlflow", "to_tensorboard"]

log = logging.getLogger(__name__)

# --to -> (the module its writer needs, the extra that installs it)
TARGETS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}


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
