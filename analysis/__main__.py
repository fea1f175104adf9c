"""`python -m analysis RESULTS_DIR [--out DIR] [--thresholds FILE]`: write the report."""

from __future__ import annotations

import argparse
import logging
import sys

from analysis import build_report
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
    try:
        index = build_report(args.results_dir, args.out, args.thresholds)
    except (NoRecords, ThresholdsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
