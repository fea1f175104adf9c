"""Tuning: a grid of cells x an Optuna search per cell, pooled over search seeds, then a test phase on the grid's
seeds; resume after kill -9; shared studies (docs/tuning.md, docs/scale-out.md).

Fast tests check the pieces (search-space syntax, what a record or a trial's runs tell Optuna, stale-trial rules,
the surplus guard); slow ones run `python -m sweep experiment=tune ...` on a 2-cell grid: end to end and rerun,
killed and rerun, and twice at once against one PostgreSQL study.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.rnn_sweep_optuna import _outcomes as oc
from hydra_plugins.rnn_sweep_optuna import _owners as ow
from hydra_plugins.rnn_sweep_optuna import _search_space as ss
from hydra_plugins.rnn_sweep_optuna import _trials
from hydra_plugins.rnn_sweep_optuna._cells import Cell
from sweep._optuna_api import asked_trial_id
from sweep.config import ConfigError
from sweep.optuna_setup import open_storage, public_url
from sweep.plan import PlannedJob
from tests.conftest import REPO, TINY

optuna.logging.set_verbosity(optuna.logging.WARNING)
LR = "tag(log, interval(1e-3, 1e-1))"
# the preset's grid sets budget=tokens; TINY's 20 would be one update at equal tokens
TWO_CELLS = ["model=rnn,lstm", "batch_size=4", "num_steps=4", "seed=0", "budget=updates"]
SEARCH_SEEDS = (1000, 1001)  # the sweeper's default


# ------------------------------------------------------------------------------------------ search space
def test_search_space_syntax_maps_to_optuna_distributions():
    space = ss.parse_search_space(
        {
            "optim.lr": "tag(log, interval(1e-4, 1e-1))",
            "optim.clip": "interval(0.5, 5)",
            "model.hidden_size": "tag(int, interval(8, 64))",
            "model.num_layers": "range(1, 4)",
            "optim.momentum": "choice(0.0, 0.9)",
            "optim.name": "sgd,adam",
            "optim.base_batch_size": "16",
        }
    )
    assert space["optim.lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert space["optim.clip"] == FloatDistribution(0.5, 5.0)
    assert space["model.hidden_size"] == IntDistribution(8, 64)
    assert space["model.num_layers"] == IntDistribution(1, 3)  # Hydra's range excludes its end
    assert space["optim.momentum"] == CategoricalDistribution([0.0, 0.9])
    assert space["optim.name"] == CategoricalDistribution(["sgd", "adam"])
    assert space["optim.base_batch_size"] == 16


@pytest.mark.parametrize(
    "spec",
    ["tag(log, interval(0, 1))", "interval(1, 1)", "tag(loud, interval(1, 2))", "interval(1", "range(5, 1)"],
)
def test_a_bad_search_space_is_one_config_error(spec):
    with pytest.raises(ConfigError, match=r"invalid search space: optim\.lr="):
        ss.parse_search_space({"optim.lr": spec})


@pytest.mark.parametrize("value", [1e-5, 0.1 + 0.2, 3, True, None, "adam", "a=1,b:2", "it's", "null"])
def test_values_go_back_to_overrides_unchanged(value):
    assert OverridesParser.create().parse_override(f"k={ss.format_value(value)}").value() == value


# ------------------------------------------------------------------------------------------ outcomes
def _rec(status="complete", sig="s", **summary):
    return {"status": status, "signature": sig, "summary": summary, "error": "RuntimeError: boom"}


def test_what_a_record_tells_optuna():
    assert oc.outcome(_rec(valid_loss=0.25), "s", "valid_loss") == (TrialState.COMPLETE, 0.25, "complete", "complete")
    assert oc.outcome(_rec(lag_accuracy={"8": 0.9}), "s", "lag_accuracy.8")[:2] == (TrialState.COMPLETE, 0.9)
    assert oc.outcome(_rec("diverged", valid_loss=None), "s", "valid_loss")[::3] == (TrialState.PRUNED, "diverged")
    # stopped by the pruner: PRUNED too, but told apart from a diverged lr by its status
    assert oc.outcome(_rec("pruned", updates=5), "s", "valid_loss")[::3] == (TrialState.PRUNED, "pruned")
    state, value, reason, _ = oc.outcome(_rec("failed"), "s", "valid_loss")
    assert (state, value) == (TrialState.FAIL, None) and "boom" in reason
    assert oc.outcome(None, "s", "valid_loss").state == TrialState.FAIL
    assert oc.outcome(_rec(valid_loss=0.25), "other", "valid_loss").state == TrialState.FAIL
    assert oc.outcome(_rec(valid_loss=float("nan")), "s", "valid_loss").state == TrialState.FAIL
    assert oc.outcome(_rec(train_loss=1.0), "s", "valid_loss").state == TrialState.FAIL


def test_a_trial_is_told_the_mean_over_its_search_seeds_and_no_value_when_a_run_is_bad():
    ok = oc.Outcome(TrialState.COMPLETE, 0.5, "complete", "complete")
    diverged = oc.outcome(_rec("diverged"), "s", "valid_loss")
    pruned = oc.outcome(_rec("pruned"), "s", "valid_loss")
    failed = oc.outcome(_rec("failed"), "s", "valid_loss")
    assert oc.pooled_outcome([(1000, ok), (1001, ok._replace(value=1.0))])[:2] == (TrialState.COMPLETE, 0.75)
    # one diverged seed makes the lr unsafe whatever the others did; a failed one leaves it unmeasured
    state, value, reason, status = oc.pooled_outcome([(1000, ok), (1001, diverged)])
    assert (state, value, status) == (TrialState.PRUNED, None, "diverged") and "seed 1001" in reason
    assert oc.pooled_outcome([(1000, failed), (1001, ok)])[:2] == (TrialState.FAIL, None)
    assert oc.pooled_outcome([(1000, failed), (1001, diverged)])[::3] == (TrialState.PRUNED, "diverged")
    # the pruner's verdict outranks a failed run and is outranked by a diverged one
    assert oc.pooled_outcome([(1000, pruned), (1001, failed)])[::3] == (TrialState.PRUNED, "pruned")
    assert oc.pooled_outcome([(1000, pruned), (1001, diverged)])[::3] == (TrialState.PRUNED, "diverged")
    assert oc.pooled_outcome([(1000, pruned), (1001, ok)])[::3] == (TrialState.PRUNED, "pruned")


def test_trials_stopped_by_the_pruner_count_towards_n_trials_and_not_as_failures(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    dist = {"optim.lr": FloatDistribution(1e-3, 1e-1, log=True)}
    for result in (
        oc.Outcome(TrialState.COMPLETE, 1.0, "complete", "complete"),
        oc.Outcome(TrialState.PRUNED, None, "seed 1000: pruned after 5 updates", "pruned"),
        oc.Outcome(TrialState.PRUNED, None, "seed 1000: diverged", "diverged"),
        oc.Outcome(TrialState.FAIL, None, "seed 1000: run failed", "failed"),
    ):
        assert oc.tell(study, study.ask(dist).number, result)
    c = oc.counts(study.get_trials(deepcopy=False))
    assert (c["complete"], c["pruned"], c["fail"]) == (1, 2, 1)
    assert (c["stopped"], c["finished"], c["bad"]) == (1, 2, 2)
    assert [t.user_attrs["status"] for t in study.trials] == ["complete", "pruned", "diverged", "failed"]
    assert study.trials[1].user_attrs["outcome"] == "seed 1000: pruned after 5 updates"
    assert not oc.tell(study, 0, oc.Outcome(TrialState.FAIL, None, "late", "failed"))  # settled already: False


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _running_trial(study: optuna.Study, owner: dict | None, heartbeat: float | None = None):
    trial = study.ask({"optim.lr": FloatDistribution(1e-3, 1e-1, log=True)})
    if owner is not None:
        trial.set_user_attr(ow.OWNER_ATTR, owner)
    if heartbeat is not None:
        trial.set_user_attr(ow.HEARTBEAT_ATTR, heartbeat)
    return trial


def test_a_running_trial_is_stale_when_its_sweep_process_is_gone(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    me = ow.me()
    now = time.time()
    mine = _running_trial(study, me)
    dead = _running_trial(study, {**me, "pid": _dead_pid()})
    reused = _running_trial(study, {**me, "start": "1"})  # a live pid, but another process's start time
    remote_fresh = _running_trial(study, {**me, "host": "elsewhere", "pid": 1}, heartbeat=now - 10)
    remote_silent = _running_trial(study, {**me, "host": "elsewhere", "pid": 1}, heartbeat=now - 1000)
    unclaimed = _running_trial(study, None)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}

    def stale(trial, at=now):
        return ow.is_stale(by_number[trial.number], stale_after_s=300, now=at)

    assert not stale(mine) and stale(dead) and stale(reused)
    assert not stale(remote_fresh) and stale(remote_silent)
    assert not stale(unclaimed) and stale(unclaimed, at=now + 1000)  # asked, never handed out: after a while


def _cell(tmp_path: Path) -> Cell:
    study = optuna.create_study(study_name="cell", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    return Cell(job=PlannedJob([], tmp_path / "cell", "sig"), study=study, name="cell")


def _seed_runs(trial, tmp_path: Path, losses: dict[int, float | None]) -> None:
    """Name the trial's runs (one per search seed) in its user attributes; write a record for each seed whose
    loss is not None (None: the run never finished)."""
    runs = []
    for seed, loss in losses.items():
        run_dir = tmp_path / f"cell,trial={trial.number},seed={seed}"
        sig = f"s{trial.number}-{seed}"
        if loss is not None:
            run_dir.mkdir()
            rec = _rec(sig=sig, valid_loss=loss, train_loss=2 * loss, valid_accuracy=1 - loss, span=seed - 999,
                       updates=20)  # fmt: skip
            (run_dir / "run.json").write_text(json.dumps(rec))
        runs.append({"seed": seed, "folder": run_dir.name, "run_dir": str(run_dir), "signature": sig})
    trial.set_user_attr("runs", runs)


def test_stale_trials_are_settled_from_their_records_so_no_finished_run_is_lost(tmp_path):
    cell = _cell(tmp_path)
    study, dead = cell.study, {**ow.me(), "pid": _dead_pid()}
    finished = _running_trial(study, dead)  # its runs wrote complete records, then the sweep process died
    _seed_runs(finished, tmp_path, {1000: 0.75, 1001: 0.25})
    half = _running_trial(study, dead)  # one of its runs never wrote a record
    _seed_runs(half, tmp_path, {1000: 0.5, 1001: None})
    alive = _running_trial(study, ow.me())  # still running in this (live) process: left alone

    stale = [t for t in study.get_trials(deepcopy=False) if ow.is_stale(t, 300)]
    assert [t.number for t in stale] == [finished.number, half.number]
    _trials.recover(cell, stale, "valid_loss", tmp_path)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    done = trials[finished.number]
    assert done.state == TrialState.COMPLETE and done.value == 0.5
    assert done.user_attrs["values"] == {"1000": 0.75, "1001": 0.25}
    # what the dashboard shows: the outcome, the runs' metrics (mean and per run), folders and signatures
    assert done.user_attrs["status"] == "complete" and done.user_attrs["outcome"] == "recovered: complete"
    assert done.user_attrs["train_loss"] == 1.0 and done.user_attrs["valid_accuracy"] == 0.5
    assert done.user_attrs["span"] == 1.5 and done.user_attrs["updates"] == 20
    assert [(r["seed"], r["status"], r["valid_loss"], r["signature"]) for r in done.user_attrs["runs"]] == [
        (1000, "complete", 0.75, f"s{finished.number}-1000"),
        (1001, "complete", 0.25, f"s{finished.number}-1001"),
    ]
    # a mean over one seed would not compare with the others' means over two
    assert trials[half.number].state == TrialState.FAIL and trials[half.number].user_attrs["stale"]
    assert trials[alive.number].state == TrialState.RUNNING
    counts = oc.counts(list(trials.values()))
    assert counts["complete"] == 1 and counts["stale"] == 1 and counts["bad"] == 0  # stale: not a failed run


def test_a_trial_asked_when_n_trials_are_finished_or_running_is_surplus_and_never_runs(tmp_path):
    cell = _cell(tmp_path)
    study = cell.study
    done = _running_trial(study, ow.me())
    study.tell(done.number, 1.0)
    _running_trial(study, ow.me())  # the other process's last trial, running
    late = _running_trial(study, ow.me())  # asked by this process at the same moment
    job = _trials.TrialJob(cell, late.number, asked_trial_id(late), {}, [])
    assert _trials.drop_surplus(cell, [job], n_trials=2) == []
    late_trial = study.get_trials(deepcopy=False)[late.number]
    assert late_trial.state == TrialState.FAIL and late_trial.user_attrs["surplus"]
    # with a slot free, a trial is kept
    again = _running_trial(study, ow.me())
    job = _trials.TrialJob(cell, again.number, asked_trial_id(again), {}, [])
    assert _trials.drop_surplus(cell, [job], n_trials=3) == [job]
    # a trial the pruner stopped takes a slot as a complete one does (a diverged one does not)
    oc.tell(study, again.number, oc.Outcome(TrialState.PRUNED, None, "pruned", "pruned"))
    last = _running_trial(study, ow.me())
    job = _trials.TrialJob(cell, last.number, asked_trial_id(last), {}, [])
    assert _trials.drop_surplus(cell, [job], n_trials=3) == []


def test_journal_storage_urls_make_a_journal_file(tmp_path):
    storage = open_storage(f"journal:{tmp_path / 'j' / 'studies.log'}")
    study = optuna.create_study(study_name="j", storage=storage)
    study.tell(study.ask(), 1.0)
    assert (tmp_path / "j" / "studies.log").stat().st_size > 0
    assert public_url("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"


# ------------------------------------------------------------------------------------------ command line
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sweep", "experiment=tune", *args]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["hydra.sweeper.direction=up"], "hydra.sweeper.direction='up': must be minimize or maximize"),
        (["optim.lr=0.1"], "optim.lr is both"),
        (['++hydra.sweeper.search={optim.lr:"tag(log, interval(1e-3, 1e-1))",optim.clip:"interval(-1, 1)"}'],
         "optim.clip"),
        (["hydra.sweeper.search_seeds=[0,1000]"], "search_seeds=[0, 1000] shares seed(s) [0] with the grid"),
        (["hydra.sweeper.search_seeds=[]"], "search_seeds=[]: must be a non-empty list"),
        (["hydra.sweeper.sampler=cma"], "hydra.sweeper.sampler='cma': must name an Optuna sampler ("),
        (["hydra.sweeper.pruner=medain"], "hydra.sweeper.pruner='medain': must name an Optuna pruner (hyperband, "),
        (["hydra.sweeper.pruner={_target_:optuna.pruners.MedianPruner,n_startup:1}"],
         "MedianPruner.__init__() got an unexpected keyword argument 'n_startup'"),
    ],
)  # fmt: skip
def test_bad_tuning_input_is_one_line_and_leaves_nothing(tmp_path, args, expected):
    proc = subprocess.run(
        _cli(f"results_dir={tmp_path / 'r'}", *TWO_CELLS, *args), cwd=REPO, env=_env(), capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "r").exists()


def _tune_args(results: Path, *extra: str, seeds: str = "0", n_trials: int = 3) -> list[str]:
    return _cli(
        f"results_dir={results}",
        *[a for a in TWO_CELLS if not a.startswith("seed=")],
        f"seed={seeds}",
        *TINY,
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.poll_s=1",
        *extra,
    )


def _study_trials(storage: str, prefix: str) -> dict[str, list]:
    out = {}
    for summary in optuna.get_all_study_summaries(storage=storage):
        if summary.study_name.startswith(prefix):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            out[summary.study_name] = study.get_trials(deepcopy=False)
    return out


def _records(*sweep_dirs: Path) -> tuple[dict[tuple[str, int, int], dict], list[dict]]:
    """Every run record under the sweep folders: trial runs by (study, trial, seed) (a duplicate fails the
    test), and the test phase's runs (no study)."""
    trial_runs: dict[tuple[str, int, int], dict] = {}
    tests = []
    for d in sweep_dirs:
        for p in d.glob("*/run.json"):
            rec = {**json.loads(p.read_text()), "folder": p.parent}
            if rec["config"]["study"] is None:
                tests.append(rec)
                continue
            key = (rec["config"]["study"], rec["config"]["trial"], rec["config"]["seed"])
            assert key not in trial_runs, f"two records for trial run {key}"
            trial_runs[key] = rec
    return trial_runs, tests


def _whole_trials(recs: dict[tuple[str, int, int], dict]) -> set[tuple[str, int]]:
    """(study, trial) of the trials whose runs are complete on every search seed."""
    seeds: dict[tuple[str, int], set[int]] = {}
    for (name, number, seed), rec in recs.items():
        if rec["status"] == "complete":
            seeds.setdefault((name, number), set()).add(seed)
    return {k for k, v in seeds.items() if v == set(SEARCH_SEEDS)}


def _check_studies(trials_by_study: dict[str, list], recs: dict[tuple[str, int, int], dict], n_trials: int) -> None:
    assert len(trials_by_study) == 2
    for name, trials in trials_by_study.items():
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(complete) == n_trials, (name, [(t.number, t.state.name) for t in trials])
        assert not [t for t in trials if t.state == TrialState.RUNNING]
        for t in complete:  # a complete trial ran on every search seed, and was told the mean of those runs
            runs = [recs[(name, t.number, seed)] for seed in SEARCH_SEEDS]
            losses = [r["summary"]["valid_loss"] for r in runs]
            assert t.value == pytest.approx(sum(losses) / len(losses), rel=1e-12, abs=0)
            assert len(set(losses)) == len(losses)  # fresh data per seed: not one run counted twice
            assert t.user_attrs["values"] == {str(s): v for s, v in zip(SEARCH_SEEDS, losses, strict=True)}
            for seed, rec in zip(SEARCH_SEEDS, runs, strict=True):
                assert rec["status"] == "complete" and rec["config"]["seed"] == seed
                assert rec["folder"].name.endswith(f",trial={t.number},seed={seed}")
                assert rec["config"]["optim"]["lr"] == t.params["optim.lr"] == rec["summary"]["lr"]
    # and no trial whose runs all finished is left out of its study
    counted = {(name, t.number) for name, ts in trials_by_study.items() for t in ts if t.state == TrialState.COMPLETE}
    assert _whole_trials(recs) == counted


def _check_tests(sweep_dir: Path, trials_by_study: dict[str, list], tests: list[dict], grid_seeds: set[int]) -> None:
    """The test phase: one record per (cell, grid seed) at the cell's best lr (lowest mean), lr_protocol tuned,
    on seeds the selection never saw; best_trials.json and lr_search.json name the same lr."""
    best = json.loads((sweep_dir / "best_trials.json").read_text())
    chosen = {c["study"]: c for c in json.loads((sweep_dir / "lr_search.json").read_text())["chosen"]}
    assert best["search_seeds"] == list(SEARCH_SEEDS) and len(best["cells"]) == len(trials_by_study)
    by_folder = {r["folder"].name: r for r in tests}
    assert len(tests) == len(trials_by_study) * len(grid_seeds)
    for cell in best["cells"]:
        complete = [t for t in trials_by_study[cell["study"]] if t.state == TrialState.COMPLETE]
        top = min(complete, key=lambda t: (t.value, t.number))
        lr = top.params["optim.lr"]
        assert cell["complete"] and cell["best"]["trial"] == top.number and cell["best"]["value"] == top.value
        assert cell["best"]["params"] == {"optim.lr": lr} and cell["best"]["lr"] == lr
        assert "seed" not in cell["cell"] and cell["cell"]["model"] in ("rnn", "lstm")
        assert chosen[cell["study"]]["lr"] == lr and chosen[cell["study"]]["n"] == len(SEARCH_SEEDS)
        assert chosen[cell["study"]]["mean_valid_loss"] == top.value
        runs = [by_folder[f] for f in cell["test"]["folders"]]
        assert {r["config"]["seed"] for r in runs} == grid_seeds and not grid_seeds & set(SEARCH_SEEDS)
        for r in runs:
            assert r["status"] == "complete" and r["config"]["trial"] is None
            assert r["config"]["optim"]["lr"] == lr and r["config"]["optim"]["lr_protocol"] == "tuned"
            assert r["config"]["model"]["cell"] == cell["cell"]["model"]
            # the grid point's own folder: the searched lr is not part of its name
            assert f"seed={r['config']['seed']}" in r["folder"].name and "optim.lr" not in r["folder"].name


def _mtimes(sweep_dir: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/run.json")}


@pytest.mark.slow
def test_one_study_per_cell_pooled_over_search_seeds_then_tested_on_the_grid_seeds(tmp_path):
    """Selection pooled over seeds on fresh data, outcomes on seeds the selection never saw; reruns add nothing."""
    results = tmp_path / "r"
    sweep_dir = results / "tune"
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    args = _tune_args(results, "hydra.launcher.n_jobs=2", seeds="0,1", n_trials=2)
    first = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    trials = _study_trials(storage, "tune:")
    assert len(trials) == 2  # 4 grid points, 2 cells: never a study per seed
    recs, tests = _records(sweep_dir)
    _check_studies(trials, recs, n_trials=2)
    _check_tests(sweep_dir, trials, tests, grid_seeds={0, 1})

    before = _mtimes(sweep_dir)
    rerun = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _mtimes(sweep_dir) == before  # no run again, none rewritten
    assert {n: len(ts) for n, ts in _study_trials(storage, "tune:").items()} == {n: len(ts) for n, ts in trials.items()}

    # fewer grid seeds, same cells: the same two studies, and nothing to run
    one_seed = subprocess.run(
        _tune_args(results, "hydra.launcher.n_jobs=2", seeds="0", n_trials=2), cwd=REPO, env=_env(),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one_seed.returncode == 0, one_seed.stderr[-3000:]
    assert set(_study_trials(storage, "tune:")) == set(trials) and _mtimes(sweep_dir) == before


@pytest.mark.slow
def test_kill_9_while_tuning_then_rerun_ends_with_exactly_n_trials_per_cell(tmp_path):
    """3 trials per cell on a 2-cell grid, killed and rerun."""
    results = tmp_path / "r"
    sweep_dir = results / "tune"
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    args = _tune_args(results, "hydra.launcher.n_jobs=2")
    proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while not list(sweep_dir.glob("*/run.json")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # a trial is told only when all its runs are back: the kill leaves trials RUNNING, some with records
    before = _study_trials(storage, "tune:")
    left_running = [(n, t.number) for n, ts in before.items() for t in ts if t.state == TrialState.RUNNING]
    assert left_running
    on_disk = _whole_trials(_records(sweep_dir)[0])
    assert not (tmp_path / "r" / "tune" / "best_trials.json").exists()

    rerun = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "stale trial" in rerun.stdout + rerun.stderr  # Hydra logs to stdout
    after = _study_trials(storage, "tune:")
    recs, tests = _records(sweep_dir)
    _check_studies(after, recs, n_trials=3)
    for name, number in left_running:  # a killed trial whose runs had all finished counts; the others failed
        trial = after[name][number]
        assert trial.state == (TrialState.COMPLETE if (name, number) in on_disk else TrialState.FAIL)
    _check_tests(sweep_dir, after, tests, grid_seeds={0})


# ------------------------------------------------------------------------------------------ PostgreSQL
@pytest.fixture(scope="module")
def pg_url() -> str:
    """A PostgreSQL server on localhost: RNN_SWEEP_PG_URL, or one that .ci/postgres.sh starts when the server
    binaries are installed (the script installs them with apt; CI runs it first)."""
    pytest.importorskip("psycopg", reason="no PostgreSQL driver: pip install -e . (psycopg[binary])")
    url = os.environ.get("RNN_SWEEP_PG_URL")
    if not url:
        if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
            pytest.skip("no PostgreSQL server: set RNN_SWEEP_PG_URL, or run .ci/postgres.sh (apt-installs one)")
        proc = subprocess.run(["bash", str(REPO / ".ci" / "postgres.sh")], capture_output=True, text=True,
                              timeout=180)  # fmt: skip
        if proc.returncode != 0:
            pytest.skip(f"could not start PostgreSQL with .ci/postgres.sh: {proc.stderr.strip()[-500:]}")
        url = proc.stdout.strip().splitlines()[-1]
    import sqlalchemy

    try:
        with sqlalchemy.create_engine(url).connect():
            pass
    except Exception as exc:
        pytest.skip(f"PostgreSQL at {public_url(url)} does not answer: {exc}")
    return url


@pytest.mark.slow
def test_two_sweep_processes_share_one_postgres_study_per_cell(tmp_path, pg_url):
    """Two processes at once, n_trials complete per study, none lost or duplicated."""
    prefix = f"pg-{uuid.uuid4().hex[:8]}"
    shared = [f"hydra.sweeper.storage={pg_url}", f"hydra.sweeper.study_prefix={prefix}",
              "hydra.sweeper.sampler_seed=null", "hydra.launcher.n_jobs=1"]  # fmt: skip
    procs = [
        subprocess.Popen(
            _tune_args(tmp_path / f"machine{i}", *shared),
            cwd=REPO,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        errs = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    try:
        assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errs)
        trials = _study_trials(pg_url, f"{prefix}:")
        recs, _ = _records(tmp_path / "machine0" / "tune", tmp_path / "machine1" / "tune")
        _check_studies(trials, recs, n_trials=3)
        # every trial number ran at most once, in one of the two processes; surplus trials never ran
        ran_trials = {(name, number) for name, number, _seed in recs}
        for name, ts in trials.items():
            for t in ts:
                ran = (name, t.number) in ran_trials
                assert ran != bool(t.user_attrs.get("surplus")), (name, t.number, t.state.name)
    finally:
        for name in _study_trials(pg_url, f"{prefix}:"):
            optuna.delete_study(study_name=name, storage=pg_url)
