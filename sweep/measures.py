"""Dependency-length measures (issue 3). Placeholder until implemented: returns nothing."""

from __future__ import annotations

import pandas as pd


def measure_all(model, data, cfg, device):
    return {}, pd.DataFrame()
