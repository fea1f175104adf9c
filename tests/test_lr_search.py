"""The lr search before the grid (docs/protocol.md, "The claim protocol"): the choice pooled over search seeds, the
widening past an edge, groups kept apart by task, per-task search settings, search seeds the grid never uses, and
one folder layout (`<sweep dir>/lr_search/`) however the sweep folder was named."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from hydra_plugins.rnn_sweep_sweeper._phases import (
    STOP_INSIDE,
    STOP_LIMIT,
    _quote,
    beyond,
    check_search,
    check_search_grid,
    choose,
    fixed_lr,
    group_key,
    search_overrides,
    widen,
)
from sweep.config import ConfigError
from sweep.plan import PlannedJob, SweepFailed
from tests.conftest import TINY, run_cli

NO_SPEED = "hydra.sweeper.speed.enabled=false"


def _row(lr: float, seed: int, value: float | None, status: str = "complete") -> dict:
    return {"lr": lr, "seed": seed, "objective": value, "status": status}


def _job(task: str, *overrides: str, seed: int = 0) -> PlannedJob:
    """A planned grid point as the search sees it: its overrides and the composed task name and seed."""
    cfg = OmegaConf.create({"task": {"name": task}, "seed": seed})
    return PlannedJob(list(overrides), Path("x"), "sig", 1.0, cfg)


def _search(**over) -> dict:
    return {"values": [0.001, 0.01], "seeds": [1000, 1001, 1002], "overrides": [], "overrides_by_task": {},
            "widen_factor": 3.0, "max_widen": 2, **over}  # fmt: skip


# --- the choice and the widening, as pure functions ----------------------------------------------------------


def test_choose_takes_the_lowest_mean_over_seeds_and_breaks_a_tie_towards_the_smaller_lr():
    rows = [_row(0.01, 0, 0.5), _row(0.01, 1, 0.7), _row(0.03, 0, 0.4), _row(0.03, 1, 0.8), _row(0.1, 0, 0.9),
            _row(0.1, 1, 0.9)]  # fmt: skip
    best = choose(rows)
    assert best["lr"] == 0.01 and best["mean_objective"] == pytest.approx(0.6)  # 0.01 and 0.03 tie at 0.6
    assert best["means"] == pytest.approx({0.01: 0.6, 0.03: 0.6, 0.1: 0.9})
    rows.append(_row(0.01, 2, None, "diverged"))
    assert choose(rows)["lr"] == 0.03  # one diverged seed makes the mean infinite


def test_a_best_lr_at_the_low_edge_trains_the_value_a_factor_below_it():
    tried = [0.001, 0.003, 0.01]
    out = widen(tried, 0.001, tried, 3.0, 2)
    assert out == {"next": [pytest.approx(0.001 / 3, rel=1e-3)], "stopped": None, "edge": "low"}
    assert out["next"] == [0.000333]  # 3 significant digits: short folder names


def test_a_best_lr_at_the_high_edge_trains_the_value_a_factor_above_it():
    tried = [0.001, 0.003, 0.01]
    assert widen(tried, 0.01, tried, 3.0, 2) == {"next": [0.03], "stopped": None, "edge": "high"}
    assert widen(tried, 0.01, tried, 10.0, 2)["next"] == [0.1]


def test_a_best_lr_inside_the_range_stops_the_search():
    tried = [0.001, 0.003, 0.01]
    assert widen(tried, 0.003, tried, 3.0, 2) == {"next": [], "stopped": STOP_INSIDE, "edge": None}
    # a widened value that lost brackets the best: inside, not at the limit
    assert widen([0.000333, *tried], 0.001, tried, 3.0, 2)["stopped"] == "inside"


def test_the_widening_stops_at_max_widen_values_past_the_initial_range():
    initial = [0.001, 0.003, 0.01]
    once = [*initial, 0.03]
    assert widen(once, 0.03, initial, 3.0, 2)["next"] == [0.09]
    twice = [*once, 0.09]
    out = widen(twice, 0.09, initial, 3.0, 2)
    assert out == {"next": [], "stopped": STOP_LIMIT, "edge": "high"} and STOP_LIMIT == "edge: limit reached"
    # the limit counts per side: two values above do not stop a step below
    assert widen([0.000333, 0.000111, *initial], 0.000111, initial, 3.0, 2)["stopped"] == STOP_LIMIT
    assert widen([*twice], 0.001, initial, 3.0, 2)["next"] == [0.000333]
    assert widen(initial, 0.01, initial, 3.0, 0) == {"next": [], "stopped": STOP_LIMIT, "edge": "high"}


def test_a_single_value_is_both_edges():
    assert widen([0.01], 0.01, [0.01], 3.0, 1) == {"next": [0.00333, 0.03], "stopped": None, "edge": "both"}


def test_the_next_value_never_rounds_back_onto_the_edge():
    assert beyond(0.001, 1.0001, "high") > 0.001
    assert beyond(0.001, 1.0001, "low") < 0.001


# --- groups and settings -----------------------------------------------------------------------------------


def test_points_of_different_tasks_never_share_a_group_even_when_the_search_sets_the_task():
    search = _search(overrides=["task=echo", "num_steps=32"])
    echo = _job("echo", "task=echo", "model=gru", "batch_size=4", "num_steps=8", "seed=0")
    lags = _job("lags", "task=lags", "model=gru", "batch_size=4", "num_steps=8", "seed=0")
    other_seed = _job("echo", "task=echo", "model=gru", "batch_size=4", "num_steps=8", "seed=3")
    assert group_key(echo, search) != group_key(lags, search)
    assert group_key(echo, search) == group_key(other_seed, search)
    assert group_key(echo, search) == ("echo", ("batch_size=4", "model=gru"))  # task and num_steps: the search's


def test_overrides_by_task_replace_the_search_settings_for_that_task_only():
    search = _search(overrides=["task=echo", "num_steps=32"], overrides_by_task={"text": ["num_steps=64"]})
    text = _job("text", "task=lm", "model=lstm", "batch_size=16", "num_steps=4")
    echo = _job("echo", "task=echo", "model=lstm", "batch_size=16", "num_steps=4")
    (run, *_) = search_overrides(group_key(text, search), search, [0.01])
    assert "num_steps=64" in run and "task=lm" in run and "task=echo" not in run  # searched on its own task
    (run, *_) = search_overrides(group_key(echo, search), search, [0.01])
    assert "num_steps=32" in run and "task=echo" in run
    runs = search_overrides(group_key(echo, search), search, [0.01, 0.03])
    assert len(runs) == 2 * 3 and {r[-3] for r in runs} == {"seed=1000", "seed=1001", "seed=1002"}


def test_a_grid_point_that_sets_its_own_lr_is_not_searched():
    assert fixed_lr(_job("echo", "optim=sgd", "optim.lr=1.0"))
    assert not fixed_lr(_job("echo", "optim=sgd"))


def test_the_search_seeds_default_to_three_and_a_seed_the_grid_trains_is_refused():
    from hydra_plugins.rnn_sweep_sweeper.grid_sweeper import LrSearchConf

    assert len(LrSearchConf().seeds) >= 3
    jobs = [_job("echo", seed=s) for s in range(5)]
    check_search_grid(jobs, _search())
    with pytest.raises(ConfigError, match=r"lr_search\.seeds: \[3\] also seed the grid"):
        check_search_grid(jobs, _search(seeds=[3, 100, 101]))
    with pytest.raises(ConfigError, match=r"overrides_by_task: \['txt'\] is no task of the grid"):
        check_search_grid(jobs, _search(overrides_by_task={"txt": ["num_steps=4"]}))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"seeds": []}, "lr_search.seeds"),
        ({"seeds": [1, 1, 2]}, "lr_search.seeds"),
        ({"widen_factor": 0.5}, "lr_search.widen_factor"),
        ({"max_widen": -1}, "lr_search.max_widen"),
        ({"overrides": ["optim.lr=0.1"]}, "lr_search.overrides"),
        ({"overrides_by_task": {"text": ["hydra.sweep.dir=x"]}}, "lr_search.overrides_by_task.text"),
    ],
)
def test_bad_search_settings_are_refused_with_one_line_naming_the_field(change, field):
    with pytest.raises(ConfigError) as err:
        check_search(_search(**change))
    assert field in str(err.value) and len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize(
    "text", ["results/claim/lr_search", "/tmp/a b,c=d/lr_search", "it's/x", "a\\b'", "a\\'b", "x\\"]
)
def test_a_quoted_folder_parses_back_to_itself(text):
    parser = OverridesParser.create()
    (override,) = parser.parse_overrides([f"hydra.sweep.dir={_quote(text)}"])
    assert override.value() == text


# --- real sweeps (tiny runs) -------------------------------------------------------------------------------


def _records(root: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(root)): json.loads(p.read_text()) for p in root.rglob("run.json")}


@pytest.mark.slow
def test_a_best_lr_at_an_edge_trains_a_widened_value_and_lr_search_json_says_so(tmp_path):
    args = ["-m", *TINY, NO_SPEED, "hydra.sweeper.lr_search.values=[0.0001,0.001]",
            "hydra.sweeper.lr_search.seeds=[100]", "hydra.sweeper.lr_search.max_widen=1", "model=rnn", "seed=0",
            "name=w", f"results_dir={tmp_path}"]  # fmt: skip
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    search = json.loads((tmp_path / "w" / "lr_search.json").read_text())
    assert (search["widen_factor"], search["max_widen"]) == (3.0, 1)
    (chosen,) = search["chosen"]
    table = pd.DataFrame(search["table"])
    # two values: the best of them is an edge, so one value past it was trained, on the side the records say
    first = table[table["lr"].isin([0.0001, 0.001])].groupby("lr")["objective"].mean()
    expected = 0.0001 / 3 if first.idxmin() == 0.0001 else 0.001 * 3
    assert chosen["widened"] == [pytest.approx(expected, rel=1e-2)]
    assert chosen["tried"] == sorted([0.0001, 0.001, chosen["widened"][0]])
    assert sorted(table["lr"]) == chosen["tried"] and (table["status"] == "complete").all()
    means = table.groupby("lr")["objective"].mean()
    assert chosen["lr"] == means.idxmin()
    at_edge = chosen["lr"] in (min(chosen["tried"]), max(chosen["tried"]))
    assert chosen["stopped"] == ("edge: limit reached" if at_edge else "inside")
    (grid,) = [r for k, r in _records(tmp_path / "w").items() if not k.startswith("lr_search/")]
    assert grid["config"]["optim"]["lr"] == chosen["lr"] and grid["config"]["optim"]["lr_protocol"] == "searched"
    # a rerun reuses every search record, the widened one included, and chooses the same
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    out = again.stdout + again.stderr
    assert "grid of 2 points: 2 already complete, 0 to run" in out  # the initial values
    assert "grid of 1 points: 1 already complete, 0 to run" in out  # the widened value (and the grid)
    assert json.loads((tmp_path / "w" / "lr_search.json").read_text())["chosen"] == search["chosen"]


@pytest.mark.parametrize(
    ("naming", "sweep_dir"),
    [
        ([], "default"),  # ${results_dir}/${name}, name unset
        (["hydra.sweep.dir={tmp}/D"], "D"),
        (["name=m", "results_dir={tmp}/R"], "R/m"),
    ],
)
def test_search_runs_live_in_lr_search_under_the_sweep_folder_however_it_is_named(tmp_path, naming, sweep_dir):
    args = ["-m", *TINY, NO_SPEED, "hydra.sweeper.lr_search.values=[0.003]", "hydra.sweeper.lr_search.seeds=[100]",
            "hydra.sweeper.lr_search.max_widen=0", "model=rnn", "seed=0", f"results_dir={tmp_path}",
            *(a.format(tmp=tmp_path) for a in naming)]  # fmt: skip
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    root = tmp_path / sweep_dir
    folders = sorted(_records(tmp_path))
    assert len(folders) == 2
    search, grid = (f for f in folders if "lr_search" in f), (f for f in folders if "lr_search" not in f)
    (search,), (grid,) = list(search), list(grid)
    assert Path(tmp_path / search).parent == root / "lr_search"
    assert Path(tmp_path / grid).parent == root
    table = json.loads((root / "lr_search.json").read_text())["table"]
    assert [r["folder"] for r in table] == [str(Path(tmp_path / search).relative_to(root))]


@pytest.mark.slow
def test_each_task_is_searched_with_its_own_settings_and_a_fixed_lr_point_keeps_its_lr(tmp_path):
    grids = ("hydra.sweeper.grids=[{task:echo},{task:lags},"
             "{task:echo,optim:sgd,optim.lr:0.5,optim.lr_protocol:fixed,num_steps:4}]")  # fmt: skip
    args = ["-m", *TINY, NO_SPEED, grids, "hydra.sweeper.lr_search.values=[0.003]",
            "hydra.sweeper.lr_search.seeds=[100]", "hydra.sweeper.lr_search.max_widen=0",
            "hydra.sweeper.lr_search.overrides=['num_steps=8']",
            "+hydra.sweeper.lr_search.overrides_by_task={lags:['num_steps=4']}", "model=rnn", "seed=0",
            f"results_dir={tmp_path}"]  # fmt: skip
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    search = json.loads((tmp_path / "default" / "lr_search.json").read_text())
    assert "task" in search["by"]
    chosen = {c["task"]: c for c in search["chosen"]}
    assert set(chosen) == {"echo", "lags"}  # the fixed-lr point is no group
    assert all(c["search_task"] == t for t, c in chosen.items())
    table = pd.DataFrame(search["table"])
    assert dict(zip(table["task"], table["num_steps"], strict=True)) == {"echo": 8, "lags": 4}
    grid = [r["config"] for k, r in _records(tmp_path / "default").items() if not k.startswith("lr_search/")]
    assert len(grid) == 3
    fixed = [c for c in grid if c["optim"]["name"] == "sgd"]
    assert len(fixed) == 1 and fixed[0]["optim"]["lr"] == 0.5 and fixed[0]["optim"]["lr_protocol"] == "fixed"
    searched = [c for c in grid if c["optim"]["lr_protocol"] == "searched"]
    assert sorted(c["task"]["name"] for c in searched) == ["echo", "lags"]
    assert all(math.isclose(c["optim"]["lr"], chosen[c["task"]["name"]]["lr"]) for c in searched)


def test_a_search_seed_the_grid_trains_stops_the_sweep_with_one_line(tmp_path):
    proc = run_cli("-m", *TINY, NO_SPEED, "hydra.sweeper.lr_search.values=[0.01]",
                   "hydra.sweeper.lr_search.seeds=[1,100]", "seed=0,1", f"results_dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "lr_search.seeds" in lines[0] and "[1]" in lines[0], lines
    assert not list(tmp_path.rglob("run.json")) and not list(tmp_path.rglob("lr_search.json"))


def test_an_unsearched_batch_size_takes_the_log_log_interpolation_of_its_searched_neighbours():
    from hydra_plugins.rnn_sweep_sweeper._phases import interpolated_lr

    searched = {1: 0.001, 4: 0.004, 16: 0.01}
    lr, how = interpolated_lr(2, searched)
    assert lr == pytest.approx(0.002, rel=1e-3) and "between batch 1" in how  # sqrt(0.001 * 0.004)
    assert interpolated_lr(8, searched)[0] == pytest.approx(math.sqrt(0.004 * 0.01), rel=1e-3)
    assert interpolated_lr(4, searched)[0] == 0.004  # a searched size is its own
    assert interpolated_lr(64, searched) == (0.01, "batch 16's (nearest searched)")  # never extrapolated
    with pytest.raises(SweepFailed, match="batch_size=2"):
        interpolated_lr(2, {})


@pytest.mark.slow
def test_only_the_listed_batch_sizes_are_searched_and_the_others_train_with_the_interpolated_lr(tmp_path):
    """lr_search.batch_sizes=[2,8]: batch 2 and 8 are searched; batch 4 trains none of its own search runs and
    uses the log-log midpoint of their lrs, which lr_search.json records as interpolated."""
    args = ["-m", *TINY, NO_SPEED, "hydra.sweeper.lr_search.values=[0.001,0.1]", "hydra.sweeper.lr_search.seeds=[100]",
            "hydra.sweeper.lr_search.max_widen=0", "hydra.sweeper.lr_search.batch_sizes=[2,8]", "model=rnn",
            "seed=0", "batch_size=2,4,8", f"results_dir={tmp_path}"]  # fmt: skip
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    root = tmp_path / "default"
    info = json.loads((root / "lr_search.json").read_text())
    assert sorted({r["batch_size"] for r in info["table"]}) == [2, 8]  # no search run at batch 4
    chosen = {c["batch_size"]: c for c in info["chosen"]}
    expect = math.sqrt(chosen[2]["lr"] * chosen[8]["lr"])
    assert chosen[4]["stopped"] == "interpolated" and chosen[4]["lr"] == pytest.approx(expect, rel=1e-2)
    assert chosen[4]["cell"] == chosen[2]["cell"] == "rnn"
    grid = [json.loads((tmp_path / f / "run.json").read_text()) for f in _records(tmp_path) if "lr_search" not in f]
    by_batch = {r["config"]["batch_size"]: r["config"]["optim"]["lr"] for r in grid}
    assert by_batch[4] == chosen[4]["lr"] and by_batch[2] == chosen[2]["lr"]
