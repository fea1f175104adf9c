"""The verdict thresholds: read from `thresholds.yaml` (beside this file, or one the user passes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEFAULT_FILE = Path(__file__).with_name("thresholds.yaml")
# Keys every verdict reads: a thresholds file without one of them is refused up front, not half-way through.
_REQUIRED = {
    "": (
        "min_seeds",
        "recommended_seeds",
        "min_levels",
        "confidence",
        "alpha",
        "n_resamples",
        "bootstrap_seed",
        "majority",
    ),
    "speed": ("min_rounds",),
    "c1": ("min_fraction_faster",),
    "c2": ("loss_margin", "accuracy_margin", "capacity_margin", "chance_margin"),
    "c3": ("ratio", "tolerance"),
    "c4": ("min_rho", "min_length", "bound_ok", "bound_broken"),
    "c5": ("min_slope", "min_jacobian_slope", "min_num_steps"),
    "c7": ("min_factor",),
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
    if "default" not in th["c2"]["loss_margin"]:
        raise ThresholdsError(f"thresholds file {path}: 'c2.loss_margin.default' is missing")
    return th
