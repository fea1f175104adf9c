"""Loading a results folder: every record read, bad ones skipped by name, missing grid points reported."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.load import NoRecords, _grid_folders, load_results, load_series
from analysis.synthetic import folder_name, runs_table, write_record, write_results


@pytest.fixture
def damaged(tmp_path):
    """A sweep of 8 runs, then: one truncated run.json, one finished run without steps.parquet, one diverged
    run, one failed run, one interrupted job (series but no run.json), and one planned point never run."""
    table = runs_table(cells=("lstm",), batch_sizes=(1, 4), num_steps=(4, 16), seeds=(0, 1), task="lags")
    table.loc[5, "status"] = "diverged"
    table.loc[6, "status"] = "failed"
    folders = write_results(tmp_path, table, updates=20)
    truncated, no_steps, diverged, failed = folders[0], folders[1], folders[5], folders[6]
    text = (truncated / "run.json").read_text()
    (truncated / "run.json").write_text(text[: len(text) // 2])
    (no_steps / "steps.parquet").unlink()
    interrupted_row = {**table.iloc[0].to_dict(), "batch_size": 16}
    interrupted = tmp_path / folder_name(interrupted_row)
    write_record(interrupted, interrupted_row, updates=20)
    (interrupted / "run.json").unlink()  # killed before its last write
    summary = json.loads((tmp_path / "sweep_summary.json").read_text())
    never = {"batch_size": 16, "cell": "lstm", "num_steps": 16, "seed": 1, "task": "lags"}
    summary["jobs"][str(tmp_path / folder_name(never))] = {"status": "missing", "overrides": []}
    (tmp_path / "sweep_summary.json").write_text(json.dumps(summary))
    return tmp_path, {"truncated": truncated, "no_steps": no_steps, "diverged": diverged, "failed": failed,
                      "interrupted": interrupted, "never": folder_name(never)}  # fmt: skip


def test_loading_survives_truncated_json_missing_steps_and_a_diverged_run(damaged, caplog):
    root, f = damaged
    with caplog.at_level(logging.WARNING, logger="analysis.load"):
        res = load_results(root)
    runs = res.runs.set_index("run_id")
    # 8 records written, 2 unusable: 6 rows, failed and diverged included
    assert len(runs) == 6
    assert runs.loc[f["diverged"].name, "status"] == "diverged"
    assert runs.loc[f["failed"].name, "status"] == "failed"
    assert "synthetic failure" in runs.loc[f["failed"].name, "error"]
    assert math.isinf(runs.loc[f["diverged"].name, "log_grad_norm_max"])
    assert runs.loc[f["diverged"].name, "in_verdicts"]  # judged: C5 reads diverged runs
    assert not runs.loc[f["failed"].name, "in_verdicts"]
    # each bad record skipped by name, with its reason, and warned about
    skipped = dict(zip(res.skipped["folder"], res.skipped["reason"], strict=True))
    assert "truncated or invalid JSON" in skipped[f["truncated"].name]
    assert "steps.parquet is missing" in skipped[f["no_steps"].name]
    assert "without run.json" in skipped[f["interrupted"].name]
    for key in ("truncated", "no_steps", "interrupted"):
        assert any(f[key].name in r.getMessage() for r in caplog.records), key
    # grid points without a usable record: the one never run and the two skipped
    missing = set(res.missing["folder"])
    assert {f["never"], f["truncated"].name, f["no_steps"].name} <= missing
    assert f["diverged"].name not in missing and f["failed"].name not in missing
    assert f["interrupted"].name not in missing  # not a grid point of this sweep
    assert res.grid_points == 9


def test_series_of_the_loaded_runs(damaged):
    root, f = damaged
    res = load_results(root)
    steps = load_series(res.runs, "steps", ["step", "loss", "grad_norm", "not_a_column"])
    assert set(steps["run_id"]) == set(res.runs.loc[res.runs["has_steps"], "run_id"])
    assert {"step", "loss", "grad_norm", "cell", "batch_size", "num_steps"} <= set(steps.columns)
    assert not np.isfinite(steps.loc[steps["run_id"] == f["diverged"].name, "grad_norm"]).all()
    assert not load_series(res.runs, "profiles").empty


def test_runs_table_is_flat_with_the_derived_columns(tmp_path):
    table = runs_table(cells=("rnn",), batch_sizes=(2,), num_steps=(8,), seeds=(0,), task="lags", span=None)
    write_results(tmp_path, table)
    run = load_results(tmp_path).runs.iloc[0]
    assert run["task_label"] == "lags (1-32)" and run["protocol"] == "fixed lr"
    assert run["split"] == "lags (1-32) · tokens 65536 · fixed lr"
    assert run["cfg.model.hidden_size"] == 64 and run["env.torch"] == "2.13.0+cpu"
    assert run["acc_lag_1"] == pytest.approx(0.95) and run["acc_lag_32"] == pytest.approx(0.26)
    # no span in the record: derived from the final accuracy per lag (lags 1..8 above chance + margin)
    assert run["span"] == 8 and run["span_source"].startswith("final accuracy")


def test_a_lag_without_held_out_targets_has_no_accuracy(tmp_path):
    (folder,) = write_results(tmp_path, runs_table(cells=("rnn",), batch_sizes=(2,), num_steps=(8,), seeds=(0,)))
    rec = json.loads((folder / "run.json").read_text())
    rec["summary"]["lag_count"]["8"] = 0.0  # the held-out rows were shorter than the lag
    (folder / "run.json").write_text(json.dumps(rec))
    assert pd.isna(load_results(tmp_path).runs.iloc[0]["acc_lag_8"])


def _tuning_sweep(root, losses):
    """Trials of one grid cell as hydra/sweeper=optuna_grid writes them: config.study/trial, a folder each."""
    row = runs_table(cells=("lstm",), batch_sizes=(4,), num_steps=(8,), seeds=(0,)).iloc[0].to_dict()
    for n, loss in enumerate(losses):
        folder = root / f"{folder_name(row)},trial={n}"
        write_record(folder, {**row, "valid_loss": loss}, updates=10)
        rec = json.loads((folder / "run.json").read_text())
        rec["config"].update(study="tune:cell", trial=n)
        rec["config"]["optim"]["lr"] = 10.0 ** -(n + 1)
        (folder / "run.json").write_text(json.dumps(rec))
    return f"{folder_name(row)},trial="


def test_only_the_best_tuning_trial_of_a_cell_is_judged(tmp_path):
    prefix = _tuning_sweep(tmp_path, [0.9, 0.7, 0.8])
    best = {"cells": [{"study": "tune:cell", "best": {"trial": 2, "folder": f"{prefix}2"}}]}
    (tmp_path / "best_trials.json").write_text(json.dumps(best))  # the sweeper's objective may not be loss
    runs = load_results(tmp_path).runs.set_index("trial_number")
    assert set(runs["protocol"]) == {"tuned lr"}
    assert list(runs.index[runs["in_verdicts"]]) == [2]
    assert runs.loc[2, "best_source"].startswith("best_trials.json")
    assert set(runs["variant"]) == {""}  # the searched lr is a nuisance parameter, not a setting


def test_selection_runs_are_never_judged_by_their_own_loss(tmp_path):
    # a tuning sweep still running (no best_trials.json) or one with a test phase (version 2, no best folder):
    # picking the trial with the lowest held-out loss would select on the noise the verdicts then read
    _tuning_sweep(tmp_path, [0.9, 0.7, 0.8])
    runs = load_results(tmp_path).runs
    assert not runs["in_verdicts"].any()
    best = {"version": 2, "cells": [{"study": "tune:cell", "best": {"trial": 1, "mean": 0.7}}]}
    (tmp_path / "best_trials.json").write_text(json.dumps(best))
    assert not load_results(tmp_path).runs["in_verdicts"].any()


def test_no_records_is_an_error(tmp_path):
    with pytest.raises(NoRecords, match="no run records"):
        load_results(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "run.json").write_text("{")
    with pytest.raises(NoRecords, match="1 skipped"):
        load_results(tmp_path)


def test_grid_of_multirun_yaml_gives_hydra_folder_names():
    conf = {
        "hydra": {
            "sweeper": {"params": {"model": "rnn,lstm", "batch_size": "2,8", "num_steps": "4"}},
            "overrides": {"task": ["budget.amount=200", "seed=0,1", "results_dir=/x"]},
            "job": {"config": {"override_dirname": {"exclude_keys": ["results_dir", "experiment"]}}},
        }
    }
    names = _grid_folders(conf)
    assert len(names) == 8
    assert "batch_size=2,budget.amount=200,model=lstm,num_steps=4,seed=1" in names


@pytest.mark.slow
def test_records_written_by_the_real_runner_load_and_report(tmp_path):
    """Keeps the synthetic schema honest: a few tiny real runs through sweep.run.run_job, then the report."""
    from hydra import compose, initialize_config_dir

    from analysis import build_report
    from sweep.cli import CONF_DIR
    from sweep.run import run_job

    base = ["model=rnn", "num_steps=4", "budget.kind=updates", "budget.amount=20", "task.train_tokens=4096",
            "task.valid_tokens=1024", "model.hidden_size=8", "model.embedding_size=4", "eval.points=2",
            "warmup_updates=2", "threads=1", "measure.contexts=[1,2,4]", "measure.horizon_max_k=4",
            "measure.horizon_windows=2", "measure.probe_max_k=4", "measure.context_positions=16"]  # fmt: skip
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for bs in (1, 4):
            for seed in (0, 1):
                cfg = compose(config_name="config", overrides=[*base, f"batch_size={bs}", f"seed={seed}"])
                run_job(cfg, tmp_path / f"batch_size={bs},seed={seed}")
    res = load_results(tmp_path)
    assert len(res.runs) == 4 and res.skipped.empty
    assert set(res.runs["status"]) <= {"complete", "diverged"}
    assert res.runs["tokens_per_s"].notna().all() and res.runs["acc_lag_8"].notna().all()
    index = build_report(tmp_path)
    assert index.read_text().count("<img ") >= 4


def _edit_record(folder, edit) -> None:
    rec = json.loads((folder / "run.json").read_text())
    edit(rec)
    (folder / "run.json").write_text(json.dumps(rec))


def test_span_fallback_needs_the_wilson_interval_above_chance_and_does_not_floor_capacity(tmp_path):
    table = runs_table(cells=("rnn",), batch_sizes=(2, 4), num_steps=(8,), seeds=(0,), task="lags", span=None)
    few, many = write_results(tmp_path, table)
    accs = {"1": 0.9, "2": 0.4, "4": 0.2, "8": 0.9, "16": 0.5, "32": 0.3}

    def with_counts(n: float, no_target: str | None = None):
        def edit(rec):
            rec["summary"]["lag_accuracy"] = dict(accs)
            rec["summary"]["lag_count"] = {k: (0.0 if k == no_target else n) for k in accs}
            for key in ("span", "memory_capacity"):  # a record without the measures: the loader derives them
                rec["summary"].pop(key, None)

        return edit

    # 0.4 >= chance 0.25 + margin 0.1 at lag 2, but over 10 targets its Wilson interval reaches down to 0.17
    _edit_record(few, with_counts(10.0))
    _edit_record(many, with_counts(4096.0, no_target="4"))  # lag 4 had no target: skipped, not a failure
    runs = load_results(tmp_path).runs.set_index("batch_size")
    assert runs.loc[2, "span"] == 1 and runs.loc[4, "span"] == 16  # lag 32 (0.3) is below chance + margin
    # capacity = sum of (acc - chance) / (1 - chance), below-chance heads count negative (as sweep/measures.py)
    heads = [0.9, 0.4, 0.2, 0.9, 0.5, 0.3]
    assert runs.loc[2, "memory_capacity"] == pytest.approx(sum((a - 0.25) / 0.75 for a in heads))
    assert runs.loc[4, "memory_capacity"] == pytest.approx(sum((a - 0.25) / 0.75 for a in heads if a != 0.2))


def test_a_record_without_target_counts_leaves_the_span_missing(tmp_path):
    table = runs_table(cells=("rnn",), batch_sizes=(2,), num_steps=(8,), seeds=(0,), task="lags", span=None)
    (folder,) = write_results(tmp_path, table)
    _edit_record(folder, lambda rec: rec["summary"].pop("lag_count"))
    run = load_results(tmp_path).runs.iloc[0]
    assert pd.isna(run["span"]) and run["span_source"] is None  # no interval without counts: not invented


NEW = ("growth_slope", "loss_jitter_rel", "gradient_flat", "effective_context_censored", "probe_span_cell")


def test_protocol_from_lr_protocol_load_label_and_new_measures_as_empty_columns(tmp_path):
    table = runs_table(cells=("rnn",), batch_sizes=(2, 8), num_steps=(8,), seeds=(0,))
    folders = write_results(tmp_path, table)
    for i, folder in enumerate(folders):

        def edit(rec, i=i):
            rec["config"]["optim"].update(lr_protocol="searched", lr=0.01 * (i + 1))  # one lr per batch size
            rec["env"] = {**rec["env"], "parallel_jobs": 2 if i else 1}
            for key in NEW:  # a record written before these measures existed
                rec["summary"].pop(key, None)

        _edit_record(folder, edit)
    runs = load_results(tmp_path).runs.set_index("batch_size")
    assert set(runs["protocol"]) == {"searched lr"}
    assert set(runs["variant"]) == {""}  # a searched lr is chosen per point: not a setting of its own
    assert runs.loc[2, "split"] == runs.loc[8, "split"] == "echo (lag 8) · tokens 65536 · searched lr"
    assert not runs.loc[2, "timed_under_load"] and runs.loc[8, "timed_under_load"]
    for col in NEW:
        assert col in runs and runs[col].isna().all()
    from analysis.tables import protocol

    optim = protocol(runs.reset_index()).set_index("item").loc["optimizer, base lr", "value"]
    assert optim == "adam, searched lr per grid cell (values: lr table below)"  # not one lr per run


def test_speed_phase_and_lr_search_files_of_a_sweep_are_read(tmp_path):
    write_results(tmp_path, runs_table(cells=("rnn",), batch_sizes=(2,), num_steps=(8,), seeds=(0,)))
    speed = pd.DataFrame({"task": "echo", "cell": "rnn", "batch_size": [2, 2], "num_steps": 8, "round": [0, 1],
                          "tokens_per_s": [100.0, 110.0], "us_per_update": 1.0, "threads": 1,
                          "device": "cpu"})  # fmt: skip
    speed.to_parquet(tmp_path / "speed.parquet")
    (tmp_path / "speed.json").write_text(json.dumps({"rounds": 2, "threads": 1}))
    chosen = [{"task": "echo", "cell": "rnn", "batch_size": 2, "lr": 0.01, "mean_valid_loss": 1.0, "n": 2}]
    (tmp_path / "lr_search.json").write_text(json.dumps({"chosen": chosen, "table": [], "values": [0.01]}))
    res = load_results(tmp_path)
    assert list(res.speed["tokens_per_s"]) == [100.0, 110.0] and set(res.speed["sweep"]) == {"."}
    assert res.speed_plan == {"rounds": 2, "threads": 1}
    assert res.lr_search["chosen"][0]["lr"] == 0.01


@pytest.mark.parametrize(("clock", "judged"), [("cpu", [50.0, 52.0]), ("wall", [100.0, 110.0]), (None, [100.0, 110.0])])
def test_speed_is_read_on_the_clock_its_phase_names(tmp_path, clock, judged):
    """speed.json's `clock` says which figure decides: the thread's CPU clock on a one-thread CPU phase (time
    other processes held the core is not counted), else wall-clock; the wall figure is kept beside it."""
    write_results(tmp_path, runs_table(cells=("rnn",), batch_sizes=(2,), num_steps=(8,), seeds=(0,)))
    speed = pd.DataFrame({"task": "echo", "cell": "rnn", "batch_size": [2, 2], "num_steps": 8, "round": [0, 1],
                          "tokens_per_s": [100.0, 110.0], "us_per_update": [16.0, 14.5],
                          "cpu_tokens_per_s": [50.0, 52.0], "cpu_us_per_update": [32.0, 30.8], "threads": 1,
                          "device": "cpu"})  # fmt: skip
    speed.to_parquet(tmp_path / "speed.parquet")
    (tmp_path / "speed.json").write_text(json.dumps({"rounds": 2, "clock": clock} if clock else {"rounds": 2}))
    sp = load_results(tmp_path).speed
    assert list(sp["tokens_per_s"]) == judged
    assert list(sp["wall_tokens_per_s"]) == [100.0, 110.0]
    assert list(sp["us_per_update"]) == ([32.0, 30.8] if clock == "cpu" else [16.0, 14.5])
    assert set(sp["clock"]) == {clock or "wall"}


def test_grid_rebuild_escapes_slashes_like_the_sweeper(tmp_path):
    """A killed sweep (multirun.yaml, no sweep_summary.json) whose override holds a path: the records sit in
    folders named by sweep.record.run_dirname, and the loader must find them there."""
    from sweep.record import run_dirname

    table = runs_table(cells=("rnn",), batch_sizes=(2, 8), num_steps=(8,), seeds=(0,))
    sweep = tmp_path / "text"
    folders = write_results(sweep, table, summary_file=False)
    path = "/data/corpus/train.txt"
    for folder, bs in zip(folders, (2, 8), strict=True):
        folder.rename(sweep / run_dirname(f"batch_size={bs},task.path={path}"))
    conf = {"hydra": {"sweeper": {"params": {"batch_size": "2,8,32"}},
                      "overrides": {"task": [f"task.path={path}", "results_dir=/x"]},
                      "job": {"config": {"override_dirname": {"exclude_keys": ["results_dir"]}}}}}  # fmt: skip
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(conf))
    res = load_results(tmp_path)
    assert len(res.runs) == 2 and res.grid_points == 3
    assert list(res.missing["folder"]) == [run_dirname(f"batch_size=32,task.path={path}")]
    assert "%2F" in res.missing["folder"].iloc[0]


def test_a_killed_sweep_is_read_against_its_plan(tmp_path):
    """sweep_plan.json (written before the first job) names every point, sub-grids included, which multirun.yaml
    alone cannot expand; the points without a record are missing, under the escaped folder names."""
    from sweep.record import SWEEP_PLAN_FILE, run_dirname

    table = runs_table(cells=("rnn",), batch_sizes=(2,), num_steps=(8,), seeds=(0,))
    sweep = tmp_path / "s"
    (folder,) = write_results(sweep, table, summary_file=False)
    names = [run_dirname(f"batch_size={bs},task.path=/c/t.txt") for bs in (2, 8)]
    folder.rename(sweep / names[0])
    plan = {"points": [{"folder": n, "overrides": [], "signature": "x"} for n in names]}
    (sweep / SWEEP_PLAN_FILE).write_text(json.dumps(plan))
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": {"grids": [{"batch_size": "2,8"}]}}}))
    res = load_results(tmp_path)
    assert res.grid_points == 2 and list(res.missing["folder"]) == [names[1]]


# ------------------------------------------------------------------------------------------- plateau runs
def test_plateau_runs_are_labelled_by_their_cap_and_say_how_they_stopped(tmp_path):
    from analysis.synthetic import cost_table, write_cost_results

    # batch 1 crosses its target near update 1300 and would stop at 8192: the cap, not converged; batch 64 at 512
    write_cost_results(tmp_path / "plateau", cost_table(batch_sizes=(1, 64), seeds=(0,), cap=8192))
    (fixed,) = write_results(tmp_path / "fixed", runs_table(cells=("gru",), batch_sizes=(4,), num_steps=(32,),
                                                            seeds=(0,)))  # fmt: skip
    # a fixed budget evaluated on another schedule: that changes nothing trained, so it names no setting
    _edit_record(fixed, lambda rec: rec["config"]["eval"].update(spacing="linear", first=16, per_doubling=4))
    runs = load_results(tmp_path).runs
    plateau = runs[runs["regime"] == "plateau"].set_index("batch_size")
    assert set(plateau["budget"]) == {"plateau cap 8192"}
    assert set(plateau["split"]) == {"echo (lag 8) · plateau cap 8192 · fixed lr"}
    assert plateau.loc[1, "stop_reason"] == "cap" and plateau.loc[1, "converged"] is False
    assert plateau.loc[64, "stop_reason"] == "plateau" and plateau.loc[64, "converged"] is True
    assert plateau.loc[64, "stopped_at_update"] == 512 and plateau.loc[64, "best_valid_update"] == 512
    evals = pd.read_parquet(Path(plateau.loc[64, "folder"]) / "evals.parquet")
    assert plateau.loc[64, "best_valid_loss"] == pytest.approx(evals["loss"].min())
    budget = runs[runs["regime"] == "budget"].iloc[0]
    assert budget["budget"] == "tokens 65536" and budget["converged"] is None and budget["stop_reason"] is None
    assert math.isnan(budget["stopped_at_update"])
    assert set(runs["variant"]) == {""}


def test_records_of_an_earlier_version_have_the_stop_keys_empty():
    runs = load_results(Path(__file__).parent / "fixtures" / "old_records").runs
    assert set(runs["regime"]) == {"budget"} and runs["converged"].map(lambda v: v is None).all()
    assert runs["stop_reason"].map(lambda v: v is None).all()
    for col in ("stopped_at_update", "best_valid_loss", "best_valid_update"):
        assert runs[col].isna().all(), col


def test_a_key_that_only_tells_two_budgets_apart_is_no_variant_but_one_varying_within_a_budget_is(tmp_path):
    """Variants are read within task · budget · lr protocol: the equal-token runs' hidden size differs from the
    equal-update runs' (a key that tells the two budgets apart: no variant), while the two optimizers inside the
    update budget are two settings of it."""
    tokens = runs_table(cells=("rnn",), batch_sizes=(2, 8), num_steps=(8,), seeds=(0,), budget="tokens 65536")
    updates = runs_table(cells=("rnn",), batch_sizes=(2, 8), num_steps=(8,), seeds=(0,), budget="updates 100")
    folders = write_results(tmp_path / "t", tokens) + write_results(tmp_path / "u", updates)
    for i, folder in enumerate(folders):

        def edit(rec, i=i):
            if i < 2:
                rec["config"]["model"]["hidden_size"] = 32
            else:
                rec["config"]["optim"]["name"] = "sgd" if i == 2 else "adam"

        _edit_record(folder, edit)
    runs = load_results(tmp_path).runs
    by_budget = runs.groupby("budget")["variant"].apply(set).to_dict()
    assert by_budget["tokens 65536"] == {""}
    assert by_budget["updates 100"] == {"optim.name=sgd", "optim.name=adam"}
