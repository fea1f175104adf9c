"""The speed phase (docs/protocol.md, "Speed phase"): visiting order, segment calibration, the superlinear flag,
and the command end to end on a tiny plan. No timing is asserted: only how the timings are taken and recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from sweep.record import resolved_config
from sweep.speed import (
    COLUMNS,
    Point,
    calibrate_updates,
    main,
    plan_hash,
    round_robin_order,
    superlinear,
    timed_updates,
)
from sweep.train import build_setup, train
from tests.conftest import REPO, TINY

CPU = torch.device("cpu")


def test_every_round_visits_every_point_once_and_the_start_rotates():
    order = round_robin_order(3, 5)
    assert len(order) == 5
    assert all(sorted(r) == [0, 1, 2] for r in order)
    assert [r[0] for r in order] == [0, 1, 2, 0, 1]  # round r starts at point r mod 3
    assert order[1] == [1, 2, 0]  # and keeps the cyclic order, so neighbours stay neighbours


@pytest.mark.parametrize(("points", "rounds"), [(4, 4), (3, 7), (1, 5)])
def test_with_as_many_rounds_as_points_each_point_takes_every_position(points, rounds):
    order = round_robin_order(points, rounds)
    for p in range(points):
        positions = {r.index(p) for r in order}
        assert positions == set(range(points)), (p, positions)


def test_fewer_rounds_than_points_still_never_repeat_the_first_point():
    firsts = [r[0] for r in round_robin_order(6, 5)]
    assert len(set(firsts)) == 5


def test_round_robin_rejects_empty_input():
    with pytest.raises(ValueError):
        round_robin_order(0, 5)


@pytest.mark.parametrize(
    ("spu", "min_seconds", "min_updates", "expected"),
    [
        (1e-3, 0.5, 100, 600),  # 0.5 s / 1 ms = 500 updates, x1.2 = 600
        (0.02, 0.5, 100, 100),  # 25 x 1.2 = 30 updates reach 0.5 s: min_updates decides
        (3e-3, 0.5, 10, 200),  # 166.7 x 1.2 = 200 (exactly, no rounding up past it)
        (7e-3, 1.0, 10, 172),  # 171.43 rounds up: never shorter than asked
    ],
)
def test_calibration_is_the_longer_of_min_seconds_with_margin_and_min_updates(spu, min_seconds, min_updates, expected):
    assert calibrate_updates(spu, min_seconds, min_updates) == expected


def test_calibration_margin_is_a_parameter_and_bad_rates_are_refused():
    assert calibrate_updates(1e-3, 0.5, 1, margin=1.0) == 500
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            calibrate_updates(bad, 0.5, 100)


def test_superlinear_flags_only_a_speed_up_above_the_batch_ratio():
    assert superlinear(4.3, 4.0)
    assert not superlinear(4.0, 4.0)  # exactly linear: every extra row free, not suspicious
    assert not superlinear(2.5, 4.0)
    assert not superlinear(4.3, 4.0, tolerance=0.1)  # within 10 % of linear
    assert superlinear(4.5, 4.0, tolerance=0.1)


# --- end to end -----------------------------------------------------------------------------------------------


def _plan(make_cfg, out: Path, **over) -> dict:
    points = []
    for bs, ns in ((1, 4), (2, 8)):
        cfg = make_cfg(*TINY, "model=gru", f"batch_size={bs}", f"num_steps={ns}")
        key = {"task": "echo", "cell": "gru", "batch_size": bs, "num_steps": ns}
        points.append({"key": key, "config": resolved_config(cfg)})
    plan = {"out": str(out), "rounds": 5, "min_seconds": 0.01, "min_updates": 5, "warmup_updates": 2,
            "threads": 1, "device": "cpu", "points": points}  # fmt: skip
    plan.update(over)
    return plan


def _run(plan_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sweep.speed", str(plan_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_speed_phase_end_to_end_writes_one_row_per_point_and_round_and_skips_a_rerun(make_cfg, tmp_path):
    out = tmp_path / "sweep" / "speed.parquet"
    plan = _plan(make_cfg, out)
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))

    first = _run(plan_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("speed phase: round ") == 5
    df = pd.read_parquet(out)
    assert list(df.columns) == COLUMNS
    assert len(df) == 10
    assert sorted(df.groupby(["batch_size", "num_steps"]).size().tolist()) == [5, 5]
    assert sorted(df["round"].unique().tolist()) == [0, 1, 2, 3, 4]
    # round r starts at point r mod 2: the first point of the plan goes first in rounds 0, 2, 4 only
    firsts = df[df["order"] == 0].sort_values("round")["batch_size"].tolist()
    assert firsts == [1, 2, 1, 2, 1]
    assert (df["updates"] >= 5).all() and (df["seconds"] > 0).all()
    expected = df["updates"] * df["batch_size"] * df["num_steps"] / df["seconds"]
    pd.testing.assert_series_equal(df["tokens_per_s"], expected, check_names=False)
    pd.testing.assert_series_equal(df["us_per_update"], df["seconds"] / df["updates"] * 1e6, check_names=False)
    assert (df["threads"] == 1).all() and (df["device"] == "cpu").all() and df["finite"].all()

    meta = json.loads((out.parent / "speed.json").read_text())
    assert meta["plan"] == plan and meta["plan_sha256"] == plan_hash(plan)
    assert {"cpu", "torch", "threads"} <= set(meta["environment"])
    calibrated = {(c["key"]["batch_size"], c["key"]["num_steps"]): c["n_updates"] for c in meta["calibration"]}
    by_point = df.groupby(["batch_size", "num_steps"])["updates"].unique()
    assert {k: int(v[0]) for k, v in by_point.items()} == calibrated  # every round uses the calibrated length

    mtime = out.stat().st_mtime_ns
    again = _run(plan_path)
    assert again.returncode == 0 and again.stdout.strip() == "speed phase: already done", again.stdout
    assert out.stat().st_mtime_ns == mtime

    plan_path.write_text(json.dumps({**plan, "rounds": 4}))  # another plan: not done, timed again
    third = _run(plan_path)
    assert third.returncode == 0, third.stderr
    assert len(pd.read_parquet(out)) == 8


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"points": []}, "points"),
        ({"rounds": None}, "rounds"),
        ({"min_seconds": -1}, "min_seconds"),
        ({"device": "tpu"}, "device"),
        ("drop:min_updates", "min_updates"),
        ("bad-key", "points[1].key.batch_size"),
        ("bad-config", "points[0].config"),
    ],
)
def test_a_bad_plan_exits_2_with_one_line_naming_the_field_and_writes_nothing(
    make_cfg, tmp_path, capsys, change, field
):
    out = tmp_path / "sweep" / "speed.parquet"
    plan = _plan(make_cfg, out)
    if change == "drop:min_updates":
        del plan["min_updates"]
    elif change == "bad-key":
        plan["points"][1]["key"]["batch_size"] = 64
    elif change == "bad-config":
        plan["points"][0]["config"]["batch_size"] = 0
    else:
        plan.update(change)
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    assert main([str(plan_path)]) == 2  # in process: the command's own exit path is tested below
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], lines
    assert not (tmp_path / "sweep").exists()


def test_the_command_exits_2_on_a_plan_that_is_not_json_and_writes_nothing(tmp_path):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text('{"out": ')
    result = _run(plan_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PLAN_JSON" in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_the_speed_phase_trains_the_network_train_trains(make_cfg):
    # 70 updates of 8 x 8 on 4096 tokens cross a pass boundary (63 updates a pass, the first window has no target)
    cfg = make_cfg(*TINY, "model=lstm", "batch_size=8", "num_steps=8", "budget.amount=70")
    point = Point({"task": "echo", "cell": "lstm", "batch_size": 8, "num_steps": 8}, build_setup(cfg, CPU))
    seconds_a, finite_a = timed_updates(point, 30, CPU)  # two visits: state and stream position carry over
    seconds_b, finite_b = timed_updates(point, 40, CPU)
    assert seconds_a > 0 and seconds_b > 0 and finite_a and finite_b
    assert point.setup.stream.passes == 2
    trained = train(cfg).model
    for a, b in zip(point.setup.model.parameters(), trained.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_plan_hash_names_the_device_class_not_the_word_auto(monkeypatch):
    """A GPU rerun of `device: auto` must not find a CPU timing file done (and the CPU hash stays the same)."""
    from sweep import record

    plan = {k: 1 for k in ("points", "rounds", "min_seconds", "min_updates", "warmup_updates", "threads")}
    on_cpu = plan_hash({**plan, "device": "cpu"})
    monkeypatch.setattr(record, "device_class", lambda device, environ=None: "cpu")
    assert plan_hash({**plan, "device": "auto"}) == on_cpu
    monkeypatch.setattr(record, "device_class", lambda device, environ=None: "cuda")
    assert plan_hash({**plan, "device": "auto"}) != on_cpu
    assert plan_hash({**plan, "device": "auto"}) == plan_hash({**plan, "device": "cuda"})
