"""Every Optuna call below its public `Study` / `Trial` API, in one place.

Optuna's public API is built for one process that asks a trial, runs it and tells it. Here the sweep process asks
and tells (hydra_plugins/rnn_sweep_optuna), while the trial's runs report their held-out curve from launcher
workers (sweep/pruning.py), and a sweep process settles trials that another, dead, process asked. Both need to
reach a trial by its number, which `optuna.Study` does not offer: `Study._storage`, `Study._study_id`,
`Trial._trial_id` and the storage's own methods (`optuna.storages.BaseStorage`, "not supposed to be directly
accessed by library users") do. They may change in any Optuna release; keeping them here means one module to fix,
and tests/test_optuna_api.py checks each name and signature against the installed Optuna, so an upgrade fails
there first, loudly, instead of somewhere in a sweep.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, Trial, TrialState

# What this module reads from Optuna (checked by tests/test_optuna_api.py).
STUDY_PRIVATE_ATTRS = ("_storage", "_study_id")
TRIAL_PRIVATE_ATTRS = ("_trial_id",)
STORAGE_METHODS = {
    "get_trial_id_from_study_id_trial_number": ("study_id", "trial_number"),
    "set_trial_user_attr": ("trial_id", "key", "value"),
    "get_trial": ("trial_id",),
}


def storage_of(study: optuna.Study) -> BaseStorage:
    return study._storage


def trial_id(study: optuna.Study, number: int) -> int:
    """The storage's id of trial `number` of `study` (numbers count per study, ids per storage)."""
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def asked_trial_id(trial: Trial) -> int:
    """The storage's id of a trial this process asked."""
    return trial._trial_id


def set_trial_user_attrs(study: optuna.Study, number: int, attrs: dict[str, Any]) -> None:
    """Set user attributes of a trial by number: one this process did not ask, or no longer holds a handle to."""
    set_user_attrs_by_id(study._storage, trial_id(study, number), attrs)


def set_user_attrs_by_id(storage: BaseStorage, tid: int, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        storage.set_trial_user_attr(tid, key, value)


def fresh_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial `number` as the storage holds it now (not a cached copy)."""
    return study._storage.get_trial(trial_id(study, number))


def trial_state(study: optuna.Study, number: int) -> TrialState:
    return fresh_trial(study, number).state


def running_trial(study: optuna.Study, number: int) -> Trial:
    """A handle on trial `number`, asked by another process, to `report` to and ask `should_prune` of: what the
    objective function of `study.optimize` gets, for a trial whose runs are launched elsewhere."""
    return Trial(study, trial_id(study, number))
