"""Pruning and Optuna objects from config (docs/tuning.md): a trial run reports its held-out curve to its trial
and stops when the study's pruner says so; samplers and pruners by short name or `_target_`.

Fast tests drive `sweep.pruning.reporter_for` against real SQLite studies with configs composed as
`python -m sweep` composes them; slow ones run tuning sweeps end to end (a median pruner that stops trials, which
are recorded as pruned and not run again; CMA-ES by `_target_`) and read the outcome back from the storage.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from hydra_plugins.rnn_sweep_optuna import _samplers
from sweep.config import ConfigError
from sweep.optuna_setup import absolute_url, make_pruner, objective_value
from sweep.pruning import PRUNED_AT_ATTR, reporter_for
from tests.conftest import REPO, TINY, run_cli

optuna.logging.set_verbosity(optuna.logging.WARNING)
DIST = {"optim.lr": FloatDistribution(1e-4, 1e-1, log=True)}
MEDIAN = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1, "n_warmup_steps": 0}


# ------------------------------------------------------------------------------------------ the reporter
def _study(tmp_path: Path, pruner, objective="valid_loss", direction="minimize") -> tuple[str, optuna.Study]:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="cell", storage=url, direction=direction)
    study.set_user_attr("objective", objective)  # as the sweeper sets them (hydra_plugins/rnn_sweep_optuna)
    study.set_user_attr("pruner", pruner)
    return url, study


def _complete(study: optuna.Study, curve: dict[int, float]) -> None:
    trial = study.ask(DIST)
    for step, value in curve.items():
        trial.report(value, step)
    study.tell(trial, list(curve.values())[-1])


def _asked(study: optuna.Study, seeds=(1000, 1001)) -> optuna.Trial:
    trial = study.ask(DIST)
    trial.set_user_attr("runs", [{"seed": s, "folder": f"trial={trial.number},seed={s}"} for s in seeds])
    return trial


def _trial_cfg(make_cfg, url: str, trial: optuna.Trial, seed: int):
    return make_cfg("study=cell", f"trial={trial.number}", f"study_storage='{url}'", f"seed={seed}")


def test_a_run_that_is_not_a_trial_gets_no_reporter_and_never_imports_optuna():
    code = textwrap.dedent(f"""
        import sys
        from hydra import compose, initialize_config_dir
        import sweep.cli  # registers the config schema, as `python -m sweep` does
        from sweep.pruning import reporter_for
        with initialize_config_dir(config_dir={str(REPO / "conf")!r}, version_base="1.3"):
            cfg = compose("config", overrides=["study_storage=sqlite:///x.db"])
        assert reporter_for(cfg) is None
        print("optuna" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


def test_the_first_search_seed_reports_its_curve_and_a_bad_trial_is_pruned(tmp_path, make_cfg):
    url, study = _study(tmp_path, MEDIAN)
    _complete(study, {5: 1.0, 10: 0.8})
    _complete(study, {5: 1.2, 10: 0.9})  # median at update 5: 1.1
    good, bad = _asked(study), _asked(study)
    on_good = reporter_for(_trial_cfg(make_cfg, url, good, 1000))
    assert on_good(5, {"valid_loss": 1.05, "valid_accuracy": 0.3}) is False
    assert on_good(10, {"valid_loss": 0.85, "valid_accuracy": 0.4}) is False
    on_bad = reporter_for(_trial_cfg(make_cfg, url, bad, 1000))
    follower = reporter_for(_trial_cfg(make_cfg, url, bad, 1001))
    assert follower(5, {"valid_loss": 3.0}) is False  # its reporting run has not been judged yet
    assert on_bad(5, {"valid_loss": 2.0}) is True
    assert follower(10, {"valid_loss": 0.1}) is True  # the trial's other seeds stop at their next evaluation
    trials = study.get_trials(deepcopy=False)
    assert trials[good.number].intermediate_values == {5: 1.05, 10: 0.85}
    # one curve per trial: the follower's values are never reported
    assert trials[bad.number].intermediate_values == {5: 2.0}
    assert trials[bad.number].user_attrs[PRUNED_AT_ATTR] == {"update": 5, "seed": 1000, "value": 2.0}
    # the run only asks to stop: the sweep process tells the trial once all its runs are back
    assert trials[bad.number].state == TrialState.RUNNING


def test_without_a_pruner_the_curve_is_still_reported_and_nothing_stops(tmp_path, make_cfg):
    url, study = _study(tmp_path, None)
    _complete(study, {5: 0.5})
    trial = _asked(study)
    on_eval = reporter_for(_trial_cfg(make_cfg, url, trial, 1000))
    assert [on_eval(step, {"valid_loss": 9.0}) for step in (5, 10)] == [False, False]
    assert study.get_trials(deepcopy=False)[trial.number].intermediate_values == {5: 9.0, 10: 9.0}


def test_a_maximized_objective_is_read_by_its_dotted_path(tmp_path, make_cfg):
    url, study = _study(tmp_path, MEDIAN, objective="lag_accuracy.8", direction="maximize")
    _complete(study, {5: 0.9})
    _complete(study, {5: 0.7})
    trial = _asked(study)
    on_eval = reporter_for(_trial_cfg(make_cfg, url, trial, 1000))
    assert on_eval(5, {"valid_loss": 0.1, "lag_accuracy": {"4": 1.0, "8": 0.2}}) is True  # low accuracy: pruned
    assert study.get_trials(deepcopy=False)[trial.number].intermediate_values == {5: 0.2}


def test_an_evaluation_without_the_objective_is_not_reported(tmp_path, make_cfg, caplog):
    url, study = _study(tmp_path, MEDIAN, objective="span")  # only known at the end of a run
    _complete(study, {5: 1.0})
    trial = _asked(study)
    on_eval = reporter_for(_trial_cfg(make_cfg, url, trial, 1000))
    with caplog.at_level(logging.WARNING, logger="sweep.pruning"):
        assert on_eval(5, {"valid_loss": 5.0}) is False
        assert on_eval(10, {"valid_loss": 5.0}) is False
    assert study.get_trials(deepcopy=False)[trial.number].intermediate_values == {}
    assert len([r for r in caplog.records if "'span'" in r.getMessage()]) == 1  # said once, not per evaluation


def test_a_storage_problem_costs_the_pruning_never_the_run(tmp_path, make_cfg, caplog):
    url, study = _study(tmp_path, MEDIAN)
    trial = _asked(study)
    with caplog.at_level(logging.WARNING, logger="sweep.pruning"):
        # a study that is not there (deleted, or another storage): the run trains without a reporter
        assert reporter_for(make_cfg("study=gone", "trial=0", f"study_storage='{url}'", "seed=1000")) is None
        on_eval = reporter_for(_trial_cfg(make_cfg, url, trial, 1000))
        study.tell(trial.number, state=TrialState.FAIL)  # settled by another process meanwhile
        assert on_eval(5, {"valid_loss": 1.0}) is False
        assert on_eval(10, {"valid_loss": 1.0}) is False
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot reach its study" in m for m in messages)
    assert sum("could not report" in m for m in messages) == 1


@pytest.mark.parametrize(
    ("metrics", "path", "expected"),
    [
        ({"valid_loss": 0.5}, "valid_loss", 0.5),
        ({"lag_accuracy": {"8": 0.75}}, "lag_accuracy.8", 0.75),
        ({"lag_accuracy.8": 0.25}, "lag_accuracy.8", 0.25),
        ({"valid_loss": float("nan")}, "valid_loss", None),
        ({"valid_loss": None}, "valid_loss", None),
        ({"valid_loss": True}, "valid_loss", None),
        ({"valid_loss": 0.5}, "valid_accuracy", None),
    ],
)
def test_objective_values_by_dotted_path(metrics, path, expected):
    assert objective_value(metrics, path) == expected


def test_storage_paths_are_made_absolute_for_workers_in_other_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_url("sqlite:///tune/optuna.db") == f"sqlite:///{tmp_path}/tune/optuna.db"
    assert absolute_url("journal:tune.log") == f"journal:{tmp_path}/tune.log"
    assert absolute_url("tune.log") == f"journal:{tmp_path}/tune.log"
    for kept in ("sqlite:////abs/optuna.db", "sqlite:///:memory:", "journal:/abs/t.log", "postgresql://u@h/db"):
        assert absolute_url(kept) == kept


# ------------------------------------------------------------------------------------------ from config
@pytest.mark.parametrize(
    ("spec", "cls"),
    [
        (None, optuna.pruners.NopPruner),
        ("none", optuna.pruners.NopPruner),
        ("median", optuna.pruners.MedianPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
        ("optuna.pruners.MedianPruner", optuna.pruners.MedianPruner),
        (MEDIAN, optuna.pruners.MedianPruner),
        ({"_target_": "optuna.pruners.PatientPruner", "wrapped_pruner": MEDIAN, "patience": 2},
         optuna.pruners.PatientPruner),
    ],
)  # fmt: skip
def test_pruners_by_name_or_target(spec, cls):
    assert type(make_pruner(spec)) is cls


def test_pruner_keywords_reach_the_pruner():
    # a MedianPruner with n_startup_trials=3 does not prune while fewer than 3 trials are complete
    study = optuna.create_study(pruner=make_pruner({**MEDIAN, "n_startup_trials": 3}))
    for _ in range(2):
        _complete(study, {0: 0.1})
    trial = study.ask(DIST)
    trial.report(5.0, 0)
    assert not trial.should_prune()
    study.pruner = make_pruner(MEDIAN)
    assert trial.should_prune()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("medain", "hydra.sweeper.pruner='medain': must name an Optuna pruner (hyperband, median, nop, patient, "),
        ({"_target_": "optuna.pruners.MedianPruner", "n_startup": 1}, "MedianPruner(n_startup=1): "),
        ("optuna.pruners.NoSuchPruner", "cannot import 'optuna.pruners.NoSuchPruner'"),
        ("optuna.samplers.TPESampler", "TPESampler is not an optuna.pruners._base.BasePruner"),
        (3, "hydra.sweeper.pruner=3: must name"),
    ],
)
def test_a_bad_pruner_is_one_config_error(spec, expected):
    with pytest.raises(ConfigError) as err:
        make_pruner(spec)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("spec", "cls"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("qmc", optuna.samplers.QMCSampler),
        ("cmaes", optuna.samplers.CmaEsSampler),
        ({"_target_": "optuna.samplers.CmaEsSampler", "n_startup_trials": 2, "seed": 1},
         optuna.samplers.CmaEsSampler),
    ],
)  # fmt: skip
def test_samplers_by_name_or_target(spec, cls):
    assert type(_samplers.make_sampler(spec, None, 0, "abc", 0)) is cls


def test_sampler_seeds_differ_between_studies_and_reruns_but_an_explicit_seed_is_kept():
    def first_draws(spec, digest, n_existing):
        study = optuna.create_study(sampler=_samplers.make_sampler(spec, None, 0, digest, n_existing))
        return [study.ask(DIST).params["optim.lr"] for _ in range(3)]

    assert first_draws("random", "a1", 0) == first_draws("random", "a1", 0)  # reproducible
    assert first_draws("random", "a1", 0) != first_draws("random", "b2", 0)  # another cell
    assert first_draws("random", "a1", 0) != first_draws("random", "a1", 3)  # a rerun: not the same points
    assert first_draws("qmc", "a1", 0) == first_draws("qmc", "a1", 3)  # continues one sequence per study
    fixed = {"_target_": "optuna.samplers.RandomSampler", "seed": 7}
    assert first_draws(fixed, "a1", 0) == first_draws(fixed, "b2", 5)


def test_sampler_kwargs_and_project_defaults_reach_the_sampler():
    cls, kwargs = _samplers.sampler_class("tpe", {"n_startup_trials": 3})
    assert cls is optuna.samplers.TPESampler and kwargs == {"constant_liar": True, "n_startup_trials": 3}
    assert _samplers.sampler_class({"_target_": "optuna.samplers.TPESampler", "constant_liar": False})[1] == {
        "constant_liar": False
    }
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.sampler='cma': must name an Optuna sampler \(.*cma_es"):
        _samplers.make_sampler("cma", None, None, "a", 0)


# ------------------------------------------------------------------------------------------ end to end
def _tune(results: Path, *extra: str) -> list[str]:
    return [
        "experiment=tune", f"results_dir={results}", "model=rnn", "batch_size=4", "num_steps=4", "seed=0",
        "budget=updates", *TINY, "eval.points=4", "hydra.launcher.n_jobs=1", "hydra.sweeper.poll_s=1", *extra,
    ]  # fmt: skip


def _only_study(url: str) -> optuna.Study:
    (summary,) = optuna.get_all_study_summaries(storage=url)
    return optuna.load_study(study_name=summary.study_name, storage=url)


def _trial_records(sweep_dir: Path) -> dict[tuple[int, int], dict]:
    out = {}
    for p in sweep_dir.glob("*/run.json"):
        rec = json.loads(p.read_text())
        if rec["config"]["trial"] is not None:
            out[(rec["config"]["trial"], rec["config"]["seed"])] = {**rec, "folder": p.parent}
    return out


@pytest.mark.slow
def test_a_median_pruner_stops_a_bad_trial_early_and_a_rerun_trains_nothing_again(tmp_path):
    """After a first trial, two trials at good lrs complete; then a trial at an lr too small to learn is stopped
    at its first evaluation (worse than the median of the complete trials there), recorded as pruned on both
    search seeds, told PRUNED and counted towards n_trials; the cell is tested; the rerun trains nothing."""
    results = tmp_path / "r"
    sweep_dir = results / "tune"
    url = f"sqlite:///{sweep_dir / 'optuna.db'}"
    settings = [
        "hydra.sweeper.pruner={_target_:optuna.pruners.MedianPruner,n_startup_trials:1,n_warmup_steps:0}",
        '++hydra.sweeper.search={optim.lr:"tag(log, interval(1e-7, 1e-1))"}',
        # an echo at lag 1 is learnt within 25 updates at lr 0.05 and 0.1 (held-out loss < 0.6 at the first of 3
        # evaluations; the larger lr lower still, so neither is worse than the median of the trials before it,
        # whatever lr the sampler drew first) and not at all at 1e-7 (~1.5): the median of three complete trials
        # there is below it
        "task.lag=1",
        "budget.amount=100",
    ]
    first = run_cli(*_tune(results, *settings, "hydra.sweeper.n_trials=1"))
    assert first.returncode == 0, first.stderr[-3000:]
    study = _only_study(url)
    # the trials to come, in this order (Optuna's public enqueue: the sweeper's next asks get these)
    for lr in (0.05, 0.1, 1e-7):
        study.enqueue_trial({"optim.lr": lr})
    second = run_cli(*_tune(results, *settings, "hydra.sweeper.n_trials=4"))
    assert second.returncode == 0, second.stderr[-3000:]

    trials = _only_study(url).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    assert trials[3].params == {"optim.lr": 1e-7} and trials[3].user_attrs["status"] == "pruned"
    recs = _trial_records(sweep_dir)
    budget = recs[(0, 1000)]["summary"]["updates"]
    for seed in (1000, 1001):
        stopped = recs[(3, seed)]
        assert stopped["status"] == "pruned" and stopped["summary"]["updates"] < budget
        assert recs[(1, seed)]["status"] == "complete" and recs[(1, seed)]["summary"]["updates"] == budget
    # the intermediate values are the first search seed's held-out curve, at its evaluation updates
    for number in range(4):
        evals = pd.read_parquet(recs[(number, 1000)]["folder"] / "evals.parquet")
        curve = dict(zip(evals["step"].astype(int), evals["loss"], strict=True))
        reported = trials[number].intermediate_values
        assert reported and all(math.isclose(curve[step], value) for step, value in reported.items())
    # stopped at its first evaluation, where the complete trials had reported theirs
    assert list(trials[3].intermediate_values) == [min(trials[1].intermediate_values)]
    # what the dashboard shows of the outcome
    attrs = trials[1].user_attrs
    losses = [recs[(1, s)]["summary"]["valid_loss"] for s in (1000, 1001)]
    assert attrs["status"] == "complete" and attrs["valid_loss"] == pytest.approx(sum(losses) / 2)
    assert [(r["seed"], r["status"], r["folder"]) for r in attrs["runs"]] == [
        (s, "complete", recs[(1, s)]["folder"].name) for s in (1000, 1001)
    ]
    assert {r["signature"] for r in attrs["runs"]} == {recs[(1, s)]["signature"] for s in (1000, 1001)}
    assert [r["status"] for r in trials[3].user_attrs["runs"]] == ["pruned", "pruned"]
    best = json.loads((sweep_dir / "best_trials.json").read_text())["cells"][0]
    assert best["complete"] and best["counts"]["stopped"] == 1 and best["counts"]["bad"] == 0
    assert best["best"]["trial"] in (0, 1, 2) and best["test"]["status"] == ["complete"]

    before = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/run.json")}
    rerun = run_cli(*_tune(results, *settings, "hydra.sweeper.n_trials=4"))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/run.json")} == before
    assert len(_only_study(url).trials) == 4


@pytest.mark.slow
def test_cma_es_by_target_drives_a_two_parameter_search(tmp_path):
    results = tmp_path / "r"
    url = f"sqlite:///{results / 'tune' / 'optuna.db'}"
    proc = run_cli(*_tune(
        results, "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler={_target_:optuna.samplers.CmaEsSampler,n_startup_trials:1,seed:3}",
        '++hydra.sweeper.search={optim.lr:"tag(log, interval(1e-3, 1e-1))",optim.clip:"interval(0.5, 5)"}',
    ))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _only_study(url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    # after its start-up trial CMA-ES samples (its generation bookkeeping is in the trials' system attributes)
    assert not any(k.startswith("cma:") for k in trials[0].system_attrs)
    assert all(any(k.startswith("cma:") for k in t.system_attrs) for t in trials[1:])
    for t in trials:
        assert 1e-3 <= t.params["optim.lr"] <= 1e-1 and 0.5 <= t.params["optim.clip"] <= 5
    assert "CmaEsSampler" in json.loads((results / "tune" / "lr_search.json").read_text())["rule"]
