"""`python -m analysis RESULTS_DIR [--out DIR] [--thresholds FILE]`: write the report.

The report is written into a temporary folder beside its place and swapped in when it is whole
(analysis/_atomic_dir.py): an analysis that fails or is interrupted leaves the previous report as it was."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from analysis import build_report
from analysis._atomic_dir import replacing
from analysis.load import NoRecords
from analysis.thresholds import ThresholdsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis", description="Turn a results folder into a report with a verdict per claim."
    )
    parser.add_argument("results_dir", help="folder holding run records (searched recursively)")
    parser.add_argument("--out", default=None, help="report folder (default: RESULTS_DIR/report)")
    parser.add_argument(
        "--thresholds", default=None, help="verdict thresholds YAML (default: analysis/thresholds.yaml)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s: %(message)s")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its INFO lines about categorical axes are noise
    # SIGTERM as an exception, so the temporary folder is removed on the way out (Ctrl-C already is one)
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    final = Path(args.out) if args.out is not None else Path(args.results_dir).resolve() / "report"
    try:
        if args.out is None and not final.parent.is_dir():  # no results folder: say so, make no folder
            build_report(args.results_dir, None, args.thresholds)
        with replacing(final) as tmp:
            index = final / Path(build_report(args.results_dir, tmp, args.thresholds)).relative_to(tmp)
    except (NoRecords, ThresholdsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(index)
    return 0


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
