"""The verdict thresholds: read from `thresholds.yaml` (beside this file, or one the user passes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEFAULT_FILE = Path(__file__).with_name("thresholds.yaml")
# Keys every verdict reads: a thresholds file without one of them is refused up front, not half-way through.
_REQUIRED = {
    "": ("min_seeds", "min_levels", "confidence", "n_resamples", "bootstrap_seed", "bootstrap_method"),
    "c1": ("min_rho", "min_eta2", "min_fraction_faster"),
    "c2": ("max_rel_loss_gap", "max_acc_gap", "max_log2_gap", "max_eta2"),
    "c3": ("ratio", "tolerance"),
    "c4": ("min_rho", "min_eta2"),
    "c5": ("min_rho", "min_growth"),
}


class ThresholdsError(ValueError):
    pass


def load_thresholds(path: str | Path | None = None) -> dict[str, Any]:
    path = Path(path) if path is not None else DEFAULT_FILE
    try:
        th = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ThresholdsError(f"cannot read thresholds file {path}: {exc}") from None
    if not isinstance(th, dict):
        raise ThresholdsError(f"thresholds file {path} is not a mapping")
    for section, keys in _REQUIRED.items():
        node = th if not section else th.get(section)
        if not isinstance(node, dict):
            raise ThresholdsError(f"thresholds file {path}: section '{section}' is missing")
        for key in keys:
            if key not in node:
                name = f"{section}.{key}" if section else key
                raise ThresholdsError(f"thresholds file {path}: '{name}' is missing")
    return th
