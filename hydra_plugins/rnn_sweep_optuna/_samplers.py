"""The sampler of each study, from `hydra.sweeper.sampler`: any Optuna sampler, by short name or `_target_`.

    sampler: tpe                                    # TPESampler; random, qmc, gp, cmaes, nsgaii, ... likewise
    sampler: {_target_: optuna.samplers.CmaEsSampler, sigma0: 0.5, n_startup_trials: 2}

`sampler_kwargs` add keywords to a short name. With `sampler_seed` set and no `seed` given, each study gets its
own seed derived from sampler_seed and the study's hash, so cells do not draw the same sequence.
"""

from __future__ import annotations

import inspect
from typing import Any

import optuna

from sweep.optuna_setup import build, resolve_class

FIELD = "hydra.sweeper.sampler"

# Defaults that differ from Optuna's, by class: a sweep asks several trials of a study before any is told.
DEFAULT_KWARGS: dict[type, dict[str, Any]] = {
    optuna.samplers.TPESampler: {"constant_liar": True},  # parallel asks in one study spread out
    optuna.samplers.QMCSampler: {"scramble": True},
}
# Samplers that continue one sequence per study from its seed: their seed must not change between processes.
SEQUENCE_SAMPLERS = (optuna.samplers.QMCSampler,)


def sampler_class(spec: Any, extra: dict[str, Any] | None = None) -> tuple[type, dict[str, Any]]:
    cls, kwargs = resolve_class(spec, optuna.samplers, "Sampler", FIELD)
    return cls, {**DEFAULT_KWARGS.get(cls, {}), **(extra or {}), **kwargs}


def make_sampler(
    spec: Any, extra: dict[str, Any] | None, base_seed: int | None, digest: str, n_existing: int
) -> optuna.samplers.BaseSampler:
    """The sampler of one study (`digest`: its hash; `n_existing`: trials it already holds)."""
    cls, kwargs = sampler_class(spec, extra)
    if base_seed is not None and "seed" not in kwargs and "seed" in inspect.signature(cls).parameters:
        # a rerun must not redraw the points it drew before, except for a sampler that continues its sequence
        offset = 0 if issubclass(cls, SEQUENCE_SAMPLERS) else n_existing
        kwargs["seed"] = (base_seed * 1_000_003 + int(digest, 16) + offset) % 2**31
    return build(cls, kwargs, optuna.samplers.BaseSampler, FIELD)


def describe(spec: Any) -> str:
    """A sampler setting in words, for logs and lr_search.json's rule: the class name."""
    return sampler_class(spec)[0].__name__
