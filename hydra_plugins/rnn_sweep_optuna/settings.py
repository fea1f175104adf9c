"""The tuning settings of a sweeper config (kept free of heavy imports: Hydra imports every plugin module).

Both `hydra/sweeper=grid` and `hydra/sweeper=optuna_grid` carry them, so an experiment preset turns a grid
into a tuned grid by setting `hydra.sweeper.search` alone (a preset cannot replace the sweeper that the
primary config picks: Hydra keeps the first `override hydra/sweeper` it meets). With `search` empty they are
unused.
"""

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class TuneSettings:
    # OmegaConf reads these annotations: Optional[...] rather than `X | None`
    search: dict[str, str] = field(default_factory=dict)  # Optuna search per grid cell; empty = plain grid
    # every trial runs once per search seed and is judged on the mean; the grid's own seeds are kept for the test
    # phase, so the outcomes the report judges were never used to pick the lr (docs/scale-out.md)
    search_seeds: list[int] = field(default_factory=lambda: [1000, 1001])
    n_trials: int = 10  # COMPLETE trials per cell, in total over reruns and sweep processes
    max_failed_trials: Optional[int] = None  # noqa: UP045  per cell, diverged + failed runs; null = n_trials
    objective: str = "valid_loss"  # a summary metric of the run record (dotted path: lag_accuracy.8)
    direction: str = "minimize"  # minimize | maximize
    storage: Optional[str] = None  # noqa: UP045  null = sqlite:///<sweep dir>/optuna.db
    study_prefix: Optional[str] = None  # noqa: UP045  null = the config's `name`
    sampler: str = "tpe"  # tpe | random | qmc | gp
    sampler_seed: Optional[int] = None  # noqa: UP045  null = fresh randomness (right for several processes)
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    parallel_per_cell: int = 1  # trials asked at once in each cell (a batch is this x the open cells)
    heartbeat_s: float = 30.0  # a running trial's owner refreshes its heartbeat this often ...
    stale_after_s: float = 300.0  # ... and other machines take it for dead after this long without one
    poll_s: float = 5.0  # wait between looks while other processes run a cell's last trials


TUNE_KEYS = tuple(TuneSettings.__dataclass_fields__)
