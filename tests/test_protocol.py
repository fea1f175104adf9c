"""The claim protocol as the grid sweeper runs it: sub-grids swept as a union, the lr search (pooled over its own
seeds, then applied to the grid), the speed phase wiring, and the preset that puts them together."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from hydra_plugins.rnn_sweep_sweeper._phases import choose, speed_points
from sweep.plan import PlannedJob
from tests.conftest import TINY, run_cli

NO_PHASES = ["hydra.sweeper.speed.enabled=false", "hydra.sweeper.lr_search.values=[]"]


def _records(root: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(root)): json.loads(p.read_text()) for p in root.rglob("run.json")}


def _row(lr: float, seed: int, value: float | None, status: str = "complete") -> dict:
    return {"lr": lr, "seed": seed, "objective": value, "status": status}


def test_the_lr_search_pools_seeds_and_never_picks_per_seed():
    # lr 0.03 wins seed 0 by a little and loses seed 1 by a lot: a per-seed choice would keep it for seed 0
    rows = [_row(0.01, 0, 0.50), _row(0.01, 1, 0.52), _row(0.03, 0, 0.45), _row(0.03, 1, 0.80)]
    best = choose(rows)
    assert best["lr"] == 0.01 and best["n"] == 2
    assert best["mean_objective"] == pytest.approx(0.51)
    assert best["means"][0.03] == pytest.approx(0.625)


def test_an_lr_that_diverges_on_one_search_seed_is_never_chosen():
    rows = [_row(0.1, 0, 0.1), _row(0.1, 1, None, "diverged"), _row(0.01, 0, 0.6), _row(0.01, 1, 0.6)]
    assert choose(rows)["lr"] == 0.01
    only_bad = [_row(0.1, 0, None, "failed"), _row(0.1, 1, None, "diverged")]
    assert math.isinf(choose(only_bad)["mean_objective"])


def test_sub_grids_are_swept_as_a_union_and_the_command_line_joins_each(tmp_path):
    grids = "hydra.sweeper.grids=[{task:echo,num_steps:'4,8'},{task:lags,num_steps:'8'}]"
    proc = run_cli("-m", *TINY, *NO_PHASES, grids, "model=rnn,gru", "batch_size=2", f"results_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = _records(tmp_path / "default")
    points = sorted((r["config"]["task"]["name"], r["config"]["model"]["cell"], r["config"]["num_steps"])
                    for r in recs.values())  # fmt: skip
    assert points == sorted([(t, c, n) for c in ("rnn", "gru") for t, n in (("echo", 4), ("echo", 8), ("lags", 8))])
    assert all(r["config"]["batch_size"] == 2 for r in recs.values())


@pytest.mark.slow
def test_the_lr_search_runs_once_per_group_and_the_grid_trains_with_its_choice(tmp_path):
    # max_widen=0: the two values are all that is tried (widening: tests/test_lr_search.py)
    args = ["-m", *TINY, "hydra.sweeper.speed.enabled=false", "hydra.sweeper.lr_search.values=[0.003,0.1]",
            "hydra.sweeper.lr_search.seeds=[100,101]", "hydra.sweeper.lr_search.overrides=['num_steps=8']",
            "hydra.sweeper.lr_search.max_widen=0", "model=rnn,gru", "num_steps=4,8", "seed=0,1", "name=s",
            f"results_dir={tmp_path}"]  # fmt: skip
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    search = json.loads((tmp_path / "s" / "lr_search.json").read_text())
    # groups: what is left of a grid point once the seed and the search's own overrides are set aside
    assert search["by"] == ["model"]
    table = pd.DataFrame(search["table"])
    assert len(table) == 2 * 2 * 2  # cells x lrs x search seeds; num_steps is fixed by the search overrides
    assert set(table["seed"]) == {100, 101} and set(table["num_steps"]) == {8}
    means = table.groupby(["cell", "lr"])["objective"].mean()
    grid = _records(tmp_path / "s")
    grid = {k: r for k, r in grid.items() if not k.startswith("lr_search/")}
    assert len(grid) == 2 * 2 * 2  # cells x num_steps x seeds
    for chosen in search["chosen"]:
        assert chosen["lr"] == means[chosen["cell"]].idxmin()
        assert chosen["tried"] == [0.003, 0.1] and chosen["widened"] == []
        assert chosen["stopped"] == "edge: limit reached"  # two values: the best is always at an edge
        runs = [r for r in grid.values() if r["config"]["model"]["cell"] == chosen["cell"]]
        assert len(runs) == 4
        assert all(r["config"]["optim"]["lr"] == chosen["lr"] for r in runs)
        assert all(r["config"]["optim"]["lr_protocol"] == "searched" for r in runs)
    assert not {r["config"]["seed"] for r in grid.values()} & {100, 101}
    again = run_cli(*args)
    assert again.returncode == 0
    out = again.stdout + again.stderr
    assert "grid of 8 points: 8 already complete, 0 to run" in out  # the search, reused
    assert "grid of 8 points: 8 already complete" in out.split("lr search:")[-1]  # the grid, reused


def test_giving_lr_while_the_search_chooses_it_is_refused(tmp_path):
    proc = run_cli("-m", *TINY, "hydra.sweeper.lr_search.values=[0.01,0.1]", "optim.lr=0.5",
                   f"results_dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "optim.lr" in lines[0] and "lr_search" in lines[0]
    assert not list(tmp_path.rglob("run.json"))


def test_the_speed_phase_alone_times_each_distinct_point_and_trains_nothing(tmp_path):
    args = ["-m", *TINY, "hydra.sweeper.speed.only=true", "hydra.sweeper.speed.rounds=2",
            "hydra.sweeper.speed.max_rounds=3", "hydra.sweeper.speed.min_seconds=0.01",
            "hydra.sweeper.speed.min_updates=3",
            "hydra.sweeper.speed.warmup_updates=2", "model=rnn,gru", "batch_size=1,4", "seed=0,1,2",
            "name=sp", f"results_dir={tmp_path}"]  # fmt: skip
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list(tmp_path.rglob("run.json"))
    plan = json.loads((tmp_path / "sp" / "speed_plan.json").read_text())
    keys = sorted((p["key"]["cell"], p["key"]["batch_size"]) for p in plan["points"])
    assert keys == [("gru", 1), ("gru", 4), ("rnn", 1), ("rnn", 4)]  # seeds do not make speed points
    assert plan["threads"] == 1 and plan["rounds"] == 2 and plan["max_rounds"] == 3
    assert plan["decide"] == [[1, 4, 3.0, 5.0]]  # the default: batch 4 / batch 1 against C3's band
    speed = pd.read_parquet(tmp_path / "sp" / "speed.parquet")
    meta = json.loads((tmp_path / "sp" / "speed.json").read_text())
    assert meta["rounds_done"] in (2, 3) and len(speed) == 4 * meta["rounds_done"]
    assert sorted(speed["round"].unique().tolist()) == list(range(meta["rounds_done"]))
    assert {(d["cell"], d["b1"], d["b2"]) for d in meta["decisions"]} == {("rnn", 1, 4), ("gru", 1, 4)}
    assert meta["cap_hit"] == (meta["stopped"] == "cap") and (meta["stopped"] == "cap") == any(
        not d["decided"] for d in meta["decisions"]
    )


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        (["hydra.sweeper.speed.rounds=4", "hydra.sweeper.speed.max_rounds=3"], "speed.max_rounds"),
        (["hydra.sweeper.speed.decide=[[4,4,3.0,5.0]]"], "speed.decide[0]"),
        (["hydra.sweeper.lr_search.values=[0.01]", "hydra.sweeper.lr_search.widen_factor=1.0"], "widen_factor"),
        (["hydra.sweeper.lr_search.values=[0.01]", "hydra.sweeper.lr_search.overrides=['seed=3']"], "overrides"),
    ],
)
def test_bad_phase_settings_stop_the_sweep_with_one_line_before_anything_is_written(tmp_path, setting, field):
    proc = run_cli("-m", *TINY, "hydra.sweeper.speed.enabled=true", *setting, f"results_dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and field in lines[0], lines
    assert not list(tmp_path.rglob("*.*"))


@pytest.mark.parametrize(
    "overrides",
    [
        ["batch_size=4", "model=gru", "optim.lr=0.003", "optim.lr_protocol=searched"],
        ["task=lags", "budget=tokens", "budget.amount=131072", "num_steps=4", "seed=3", "optim.lr=0.01"],
        ["task=text", "task.path=/tmp/a/b.txt", "optim.lr=1e-05", "experiment=smoke", "name=x"],
    ],
)
def test_the_recomputed_override_dirname_is_hydras(make_cfg, overrides):
    """The lr search re-plans the grid without composing it again; the folder it computes must be the one Hydra
    gives the job, or records would land where the sweep does not look."""
    from hydra import compose

    from sweep.plan import override_dirname

    make_cfg()  # enters the config dir
    cfg = compose("config", overrides=overrides, return_hydra_config=True)
    od = cfg.hydra.job.config.override_dirname
    mine = override_dirname(overrides, list(od.exclude_keys), od.item_sep, od.kv_sep)
    assert mine == cfg.hydra.job.override_dirname


@pytest.mark.parametrize("extra", [["optim.lr=0.003", "optim.lr_protocol=searched"], []])
def test_a_point_derived_from_a_composed_sibling_is_what_composing_it_gives(make_cfg, extra):
    """The planner composes one point per seed group and derives the others (and the searched lr) by setting
    plain keys: config, signature and folder must equal a fresh composition, or a rerun would not find them."""
    from hydra import compose

    from sweep.plan import with_values
    from sweep.record import resolved_config, signature

    make_cfg()
    base = ["experiment=claim", "task=lags", "budget=tokens", "budget.amount=131072", "model=gru", "batch_size=16",
            "num_steps=4"]  # fmt: skip
    sibling = compose("config", overrides=[*base, "seed=0"], return_hydra_config=True)
    target = [*base, "seed=3", *extra]
    fresh = compose("config", overrides=target, return_hydra_config=True)
    values = {"seed": 3, **({"optim.lr": 0.003, "optim.lr_protocol": "searched"} if extra else {})}
    derived = with_values(sibling, target, values)
    assert resolved_config(derived) == resolved_config(fresh)
    assert signature(derived) == signature(fresh)
    assert derived.hydra.job.override_dirname == fresh.hydra.job.override_dirname
    assert str(derived.hydra.sweep.subdir) == str(fresh.hydra.sweep.subdir)


def test_the_speed_phase_leaves_out_the_points_it_is_told_to(make_cfg):
    """`speed.exclude`: a point with any of those overrides is not timed, even when it shares its speed key with
    one that is (the claim preset's SGD exploding-regime runs beside its Adam runs)."""
    adam = make_cfg("task=echo", "model=rnn", "batch_size=16", "num_steps=8")
    sgd = make_cfg("task=echo", "model=rnn", "batch_size=16", "num_steps=8", "optim=sgd")
    long = make_cfg("task=echo", "model=rnn", "batch_size=16", "num_steps=128", "optim=sgd")
    jobs = [PlannedJob(["optim=sgd", "num_steps=8"], Path("a"), "a", config=sgd),
            PlannedJob(["num_steps=8"], Path("b"), "b", config=adam),
            PlannedJob(["optim=sgd", "num_steps=128"], Path("c"), "c", config=long)]  # fmt: skip
    timed = speed_points(jobs, exclude=["optim=sgd"])
    assert [p["key"]["num_steps"] for p in timed] == [8]
    assert timed[0]["config"]["optim"]["name"] == "adam"
    assert len(speed_points(jobs)) == 2  # without it, the SGD point of num_steps 8 is the one timed
