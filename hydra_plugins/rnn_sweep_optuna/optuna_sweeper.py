"""`hydra/sweeper=optuna_grid`: a grid over scientific parameters x an Optuna search over nuisance parameters in
every grid cell, pooled over search seeds, then a test phase on the grid's own seeds (docs/tuning.md).

The grid sweeper (`hydra/sweeper=grid`, the project's default) hands a grid whose `hydra.sweeper.search` is set
to the class below by name (its `tuner` setting), so an experiment preset turns a grid into a tuned grid with
`search` alone.

This module is what Hydra's plugin scan executes on every start (every public module under `hydra_plugins`): it
holds the config schema and a shim, as Hydra's own Optuna sweeper does. The implementation (`_impl.py` and the
`_` modules beside it, which the scan skips) and Optuna itself are imported only when a sweep instantiates the
sweeper, so a plain run never imports Optuna. The settings and their defaults are declared once, in
sweep/plan.py's TuneSettings.
"""

from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from sweep.plan import TuneSettings

CLASS_PATH = "hydra_plugins.rnn_sweep_optuna.optuna_sweeper.OptunaGridSweeper"


@dataclass
class OptunaGridSweeperConf(TuneSettings):
    _target_: str = CLASS_PATH
    # Hydra would build `sampler: {_target_: ...}` itself before the sweeper sees it; the sweeper builds it (a
    # seed per study; one line for a bad keyword) and the trial runs build the pruner from the setting
    _recursive_: bool = False
    params: Optional[dict[str, str]] = None  # noqa: UP045  the grid (scientific parameters)
    max_batch_size: Optional[int] = None  # noqa: UP045  most runs handed to the launcher at once


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna_grid", node=OptunaGridSweeperConf, provider="rnn-sweep"
)


class OptunaGridSweeper(Sweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None, **settings: Any):
        from hydra_plugins.rnn_sweep_optuna._impl import OptunaGridSweeperImpl

        self.sweeper = OptunaGridSweeperImpl(max_batch_size, params, TuneSettings(**settings))

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.sweeper.sweep(arguments)
