"""`hydra/sweeper=grid`: Hydra's basic grid sweeper, plus what a long sweep needs.

- Every grid point is composed and validated before anything is launched or written: bad input anywhere in the
  grid stops the sweep with one message and no records.
- Grid points whose folder already holds a complete record with the same config signature are not scheduled
  again (a rerun after a kill schedules only what is missing).
- `grids`: a list of sub-grids whose union is swept (each joined with `params` and the command line), so one
  preset can give two tasks different grids.
- `speed`: a speed phase of its own (docs/protocol.md): every distinct (task, cell, batch_size, num_steps) of
  the grid timed one at a time, in interleaved rounds (at least `rounds`, more up to `max_rounds` until every
  `decide` ratio is decided), before anything trains; `speed.parquet` in the sweep folder. `speed.only` runs that
  phase alone (experiment=speed).
- `lr_search`: a short search over `values` of optim.lr, pooled over `seeds`, widened past an edge while the best
  sits there, before the grid; each grid point then trains with the lr that gave the lowest mean held-out
  objective for its group, one group per task and setting (`lr_search.json`); runs in `<sweep dir>/lr_search/`.
- `search` (with the tuning settings of sweep/plan.py's TuneSettings): the whole sweep is handed to the sweeper
  class named by `tuner` (the Optuna grid sweeper), resolved by name so that neither plugin imports the other.
- `dry_run`: print the planned points, how many are already complete and jobs x threads; write nothing.
- Several sweep processes may share one grid folder (two terminals, two cluster submissions): a job whose point
  another process is training (its live `lease.json`, sweep/lease.py) is skipped, and at the end the sweep waits
  for those points until each has a record or its lease expires (its holder died): then it trains them itself.
- `sweep_plan.json` (every point: folder, overrides, signature) before the first job starts, one line
  "k/N done (...), ETA" as each job ends, and at the end `sweep_summary.json` (complete / diverged / failed /
  missing per job); the exit is non-zero if any job failed or left no record.
- Ctrl-C: exit status 130 and one line saying how many points are complete and how many were not started.

This module is what Hydra's plugin scan executes on every start (`hydra_plugins.*`, public names): it holds the
config schema and a shim whose implementation (`_impl.py`, skipped by the scan) is imported only when a sweep
instantiates it, as Hydra's own plugins do.
"""

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from sweep.plan import TuneSettings

# The sweeper a grid with `search` set is handed to (hydra_plugins/rnn_sweep_optuna), named, not imported.
TUNER = "hydra_plugins.rnn_sweep_optuna.optuna_sweeper.OptunaGridSweeper"


@dataclass
class SpeedPhaseConf:
    """The speed phase (docs/protocol.md): one timed job at a time, interleaved rounds, warm-up excluded."""

    enabled: bool = False
    only: bool = False  # time the grid's points and train nothing (experiment=speed)
    tasks: list[str] = field(default_factory=list)  # time only these tasks' points (empty = every task)
    exclude: list[str] = field(default_factory=list)  # overrides (e.g. optim=sgd) whose points are not timed
    rounds: int = 5  # at least this many rounds ...
    max_rounds: int = 15  # ... and more, up to this many, while a decision pair is undecided
    # [b1, b2, lo, hi]: at every (task, cell, num_steps) with both batch sizes, the rounds go on until the interval
    # of tokens/s(b2) / tokens/s(b1) lies wholly inside or wholly outside [lo, hi] (C3's band for batch 4 / batch 1)
    decide: list[list[float]] = field(default_factory=lambda: [[1, 4, 3.0, 5.0]])
    min_seconds: float = 0.5  # each timed segment at least this long ...
    min_updates: int = 100  # ... and at least this many updates
    warmup_updates: int = 20
    threads: int = 1  # torch threads of the timed job (recorded with every row)
    device: str = "auto"


@dataclass
class LrSearchConf:
    """A short lr search before the grid: every group of grid points of one task that differ only in the seed
    (after the search's own settings are applied) gets the lr with the lowest held-out `objective`, averaged over
    `seeds` (never chosen per seed: that would select on noise). While a group's best lr is the smallest or
    largest value tried, the next value past it (/ or x `widen_factor`) is trained too, up to `max_widen` values
    per side. Search seeds differ from the grid's (a clash is refused), so the outcomes the report judges were
    never used to pick the lr. Grid points whose own overrides set optim.lr are not searched."""

    values: list[float] = field(default_factory=list)  # empty = no search
    seeds: list[int] = field(default_factory=lambda: [1000, 1001, 1002])
    overrides: list[str] = field(default_factory=list)  # settings of the search runs, e.g. num_steps=16
    # per task (task.name): settings that replace `overrides` for the groups of that task's grid points. On the
    # command line with a leading + (Hydra merges a dict into this one and refuses new keys without it):
    # '+hydra.sweeper.lr_search.overrides_by_task={text:[num_steps=32]}'
    overrides_by_task: dict[str, list[str]] = field(default_factory=dict)
    # a summary metric, minimised. With budget=plateau among the search settings, use best_valid_loss (the lowest
    # held-out loss of the run): the plateau's quality, the quantity the protocol judges
    objective: str = "valid_loss"
    widen_factor: float = 3.0  # the next value past an edge: lr / 3 or lr x 3
    max_widen: int = 2  # at most this many values past the initial range on each side
    # search only the groups at these batch sizes (empty = every group); a group at another batch size takes the
    # lr interpolated log-log between its searched neighbours (the nearest one's beyond them)
    batch_sizes: list[int] = field(default_factory=list)


@dataclass
class GridSweeperConf(TuneSettings):
    """A grid; with `search` set, a grid x an Optuna search in every grid point (rnn_sweep_optuna)."""

    _target_: str = "hydra_plugins.rnn_sweep_sweeper.grid_sweeper.GridSweeper"
    _recursive_: bool = False  # a `{_target_: ...}` sampler or pruner is built by the tuner, which names the key
    max_batch_size: Optional[int] = None  # noqa: UP045 (OmegaConf reads these annotations)
    params: Optional[dict[str, str]] = None  # noqa: UP045
    grids: Optional[list[dict[str, Any]]] = None  # noqa: UP045  sub-grids, swept as a union
    speed: SpeedPhaseConf = field(default_factory=SpeedPhaseConf)
    lr_search: LrSearchConf = field(default_factory=LrSearchConf)
    tuner: str = TUNER  # the sweeper class a grid with `search` set is handed to
    dry_run: bool = False  # print the plan (points, already complete, jobs x threads) and write nothing


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="rnn-sweep")


class GridSweeper(Sweeper):
    """The registered sweeper: builds the implementation (hydra_plugins/rnn_sweep_sweeper/_impl.py) lazily."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        grids: list[dict[str, Any]] | None = None,
        speed: Any = None,
        lr_search: Any = None,
        tuner: str = TUNER,
        dry_run: bool = False,
        **tune: Any,
    ) -> None:
        from hydra_plugins.rnn_sweep_sweeper import _phases
        from hydra_plugins.rnn_sweep_sweeper._impl import GridSweeperImpl

        if speed is not None and (speed.get("enabled") or speed.get("only")):
            _phases.check_speed(speed)  # here: before Hydra writes anything or the grid is planned
        self.sweeper = GridSweeperImpl(
            max_batch_size=max_batch_size, params=params, grids=grids, speed=speed, lr_search=lr_search,
            tuner=tuner, dry_run=dry_run, **tune,
        )  # fmt: skip

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.sweeper.sweep(arguments)
