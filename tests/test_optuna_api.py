"""The Optuna calls below its public API (sweep/_optuna_api.py) still exist and still do what the sweeper and the
trial runs rely on: an Optuna upgrade that renames or changes one fails here, by name, before any sweep."""

from __future__ import annotations

import inspect

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import Trial, TrialState

from sweep import _optuna_api as api

optuna.logging.set_verbosity(optuna.logging.WARNING)
DIST = {"x": FloatDistribution(0.0, 1.0)}


@pytest.fixture
def study(tmp_path) -> optuna.Study:
    # RDBStorage: the kind the sweeps use (sqlite, PostgreSQL), with Optuna's caching wrapper as get_storage gives
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'api.db'}", study_name="api")


def test_the_private_names_the_adapter_reads_exist(study):
    for name in api.STUDY_PRIVATE_ATTRS:
        assert hasattr(study, name), f"optuna.Study has no {name} any more: update sweep/_optuna_api.py"
    trial = study.ask(DIST)
    for name in api.TRIAL_PRIVATE_ATTRS:
        assert hasattr(trial, name), f"optuna.Trial has no {name} any more: update sweep/_optuna_api.py"
    for method, params in api.STORAGE_METHODS.items():
        fn = getattr(optuna.storages.BaseStorage, method, None)
        assert fn is not None, f"optuna.storages.BaseStorage.{method} is gone: update sweep/_optuna_api.py"
        got = tuple(inspect.signature(fn).parameters)[1:]
        assert got == params, f"BaseStorage.{method}{got} is not {params}: update sweep/_optuna_api.py"
    assert tuple(inspect.signature(Trial.__init__).parameters)[1:] == ("study", "trial_id")


def test_a_trial_asked_here_is_reached_by_number_from_another_study_object(study, tmp_path):
    asked = study.ask(DIST)
    assert api.trial_id(study, asked.number) == api.asked_trial_id(asked)
    # another process: its own Study object on the same storage
    other = optuna.load_study(study_name="api", storage=f"sqlite:///{tmp_path / 'api.db'}")
    api.set_trial_user_attrs(other, asked.number, {"runs": [{"seed": 1000}], "n": 2})
    assert api.fresh_trial(study, asked.number).user_attrs == {"runs": [{"seed": 1000}], "n": 2}
    handle = api.running_trial(other, asked.number)
    handle.report(0.5, step=3)
    assert handle.should_prune() is False  # the default MedianPruner, with no complete trial to compare with
    assert api.fresh_trial(study, asked.number).intermediate_values == {3: 0.5}
    assert api.trial_state(study, asked.number) == TrialState.RUNNING
    other.tell(asked.number, state=TrialState.PRUNED)
    assert api.trial_state(study, asked.number) == TrialState.PRUNED
    with pytest.raises(RuntimeError):  # a finished trial refuses reports: the reporter relies on the error
        api.running_trial(other, asked.number).report(0.4, step=4)


def test_the_storage_of_a_study_is_the_one_it_writes_to(study):
    asked = study.ask(DIST)
    api.set_user_attrs_by_id(api.storage_of(study), api.asked_trial_id(asked), {"beat": 1.0})
    assert study.trials[asked.number].user_attrs == {"beat": 1.0}
