"""Tuning settings and the grid checked before anything runs or is written: one line naming the bad field."""

from __future__ import annotations

from typing import Any

from hydra.core.config_loader import ConfigLoader
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution

from hydra_plugins.rnn_sweep_optuna import _samplers
from hydra_plugins.rnn_sweep_optuna import _search_space as ss
from sweep.config import ConfigError, validate
from sweep.optuna_setup import make_pruner
from sweep.plan import PlannedJob, TuneSettings, override_key


def _need(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"invalid sweep: hydra.sweeper.{key}={value!r}: {allowed}")


def check_settings(s: TuneSettings) -> dict[str, Any]:
    """The search space ({key: distribution or fixed value}) after checking every setting."""
    _need(isinstance(s.n_trials, int) and s.n_trials > 0, "n_trials", "must be a positive integer", s.n_trials)
    seeds = list(s.search_seeds or [])
    _need(
        bool(seeds) and all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)
        and len(set(seeds)) == len(seeds),
        "search_seeds",
        "must be a non-empty list of distinct integers, e.g. [1000, 1001]",
        seeds,
    )  # fmt: skip
    failed = s.n_trials if s.max_failed_trials is None else s.max_failed_trials
    _need(failed >= 0, "max_failed_trials", "must be >= 0", failed)
    _need(s.direction in ("minimize", "maximize"), "direction", "must be minimize or maximize", s.direction)
    _need(s.parallel_per_cell > 0, "parallel_per_cell", "must be a positive integer", s.parallel_per_cell)
    _need(bool(s.objective), "objective", "must name a summary metric (e.g. valid_loss)", s.objective)
    # built once here so that a bad class or keyword is one line before anything runs
    _samplers.make_sampler(s.sampler, dict(s.sampler_kwargs or {}), s.sampler_seed, "0", 0)
    make_pruner(s.pruner)
    space = ss.parse_search_space(dict(s.search or {}))
    _need(
        any(isinstance(d, BaseDistribution) for d in space.values()),
        "search",
        "must search at least one parameter, e.g. {optim.lr: 'tag(log, interval(1e-4, 1e-1))'}",
        s.search,
    )
    return space


def check_cells(
    points: list[PlannedJob],
    space: dict[str, Any],
    s: TuneSettings,
    loader: ConfigLoader,
    master: DictConfig,
) -> None:
    """Search keys must not be grid keys, both ends of every range must make a valid config, and the test seeds
    (the grid's) must differ from the search seeds."""
    for point in points:
        both = sorted({override_key(o) for o in point.overrides} & set(space))
        if both:
            raise ConfigError(
                f"invalid sweep: {', '.join(both)} is both swept/overridden on the command line or in "
                "hydra.sweeper.params and searched in hydra.sweeper.search: keep it in one of them"
            )
    shared = sorted({int(p.config.seed) for p in points if p.config is not None} & set(s.search_seeds))
    if shared:
        raise ConfigError(
            f"invalid sweep: hydra.sweeper.search_seeds={list(s.search_seeds)} shares seed(s) {shared} with "
            "the grid's seeds: the runs the report judges must use seeds the lr selection never saw"
        )
    for key, dist in space.items():
        for value in ss.extremes(dist):
            overrides = [*points[0].overrides, f"{key}={ss.format_value(value)}"]
            try:
                validate(loader.load_sweep_config(master_config=master, sweep_overrides=overrides))
            except ConfigError as exc:
                raise ConfigError(f"invalid search space: {key}={s.search[key]}: {exc}") from None
            except Exception as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ConfigError(f"invalid search space: {key}={s.search[key]}: {first}") from None
