"""The speed phase (docs/protocol.md, "Speed phase"): visiting order, segment calibration, the superlinear flag,
the judged clock, the rule that stops the rounds, and the command end to end on tiny plans. No timing is asserted:
only how the timings are taken and recorded, and when the rounds stop."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from sweep.record import resolved_config
from sweep.speed import (
    COLUMNS,
    HASHED,
    Point,
    band_state,
    calibrate_updates,
    decide_pair,
    decision_pairs,
    judge_decisions,
    judged_clock,
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


# --- the judged clock and the rule that stops the rounds -------------------------------------------------------


def test_the_thread_cpu_clock_is_judged_only_on_a_cpu_with_one_thread():
    assert judged_clock("cpu", 1)[0] == "cpu"
    clock, reason = judged_clock("cpu", 4)
    assert clock == "wall" and "4 torch threads" in reason
    clock, reason = judged_clock("cuda", 1)
    assert clock == "wall" and "cuda" in reason


def _t_interval(logs: list[float], level: float) -> tuple[float, float]:
    """The reference: scipy.stats' t quantile (decide_pair uses scipy.special's)."""
    from scipy import stats

    n = len(logs)
    mean = sum(logs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return math.exp(mean - half), math.exp(mean + half)


@pytest.mark.parametrize(
    ("ratios", "state"),
    [
        ([4.0, 4.1, 3.9, 4.05, 3.95], "inside"),  # ~4 with 2 % spread: the interval sits within [3, 5]
        ([2.0, 2.1, 1.9, 2.05, 1.95], "outside"),  # ~2: wholly below the band
        ([6.0, 6.3, 5.8, 6.1, 5.9], "outside"),  # ~6: wholly above it
        ([2.0, 6.0, 3.0, 5.5, 2.5], "straddling"),  # the spread of a loaded machine: the interval crosses 3
        ([4.8, 5.3, 4.9, 5.2], "straddling"),  # centred near the upper end
    ],
)
def test_a_decision_is_taken_only_when_the_interval_lies_wholly_inside_or_outside_the_band(ratios, state):
    logs = [math.log(r) for r in ratios]
    out = decide_pair(logs, 3.0, 5.0, 0.95)
    low, high = _t_interval(logs, 0.95)
    assert out["low"] == pytest.approx(low) and out["high"] == pytest.approx(high)
    assert out["ratio"] == pytest.approx(math.exp(sum(logs) / len(logs)))
    assert out["rounds"] == len(ratios)
    assert out["state"] == state == band_state(low, high, 3.0, 5.0)
    assert out["decided"] is (state in ("inside", "outside"))


def test_more_rounds_of_the_same_spread_can_decide_what_fewer_could_not():
    few = [math.log(r) for r in (4.4, 5.2, 4.6)]
    assert decide_pair(few, 3.0, 5.0)["state"] == "straddling"
    assert decide_pair(few * 6, 3.0, 5.0)["decided"]  # the interval narrows as 1 / sqrt(rounds)


def test_one_round_or_none_decides_nothing_and_the_ends_of_the_band_count_as_inside():
    assert decide_pair([math.log(4.0)], 3.0, 5.0)["state"] == "undetermined"
    assert not decide_pair([], 3.0, 5.0)["decided"]
    assert band_state(3.0, 5.0, 3.0, 5.0) == "inside"
    assert band_state(2.0, 2.99, 3.0, 5.0) == "outside"
    assert band_state(math.nan, 4.0, 3.0, 5.0) == "undetermined"


def test_decision_pairs_are_the_groups_that_have_both_batch_sizes_and_rounds_pair_by_round():
    keys = [{"task": "echo", "cell": c, "batch_size": b, "num_steps": n} for c, b, n in
            (("gru", 1, 8), ("gru", 4, 8), ("gru", 4, 16), ("lstm", 1, 8), ("lstm", 4, 8))]  # fmt: skip
    pairs = decision_pairs(keys, [[1, 4, 3.0, 5.0]])
    assert [(p["cell"], p["num_steps"]) for p in pairs] == [("gru", 8), ("lstm", 8)]  # gru at 16 has no batch 1
    assert decision_pairs(keys, [[2, 4, 1.5, 2.5]]) == []
    # round 2 of batch 4 went non-finite: it drops out of the pair, and so does batch 1's round 2
    timings = ((1, 0, 100), (4, 0, 400), (1, 1, 110), (4, 1, 420), (1, 2, 100), (4, 2, 9e9))
    rows = [
        {"task": "echo", "cell": "gru", "num_steps": 8, "batch_size": b, "round": r, "tokens_per_s": tps,
         "finite": not (b == 4 and r == 2)}
        for b, r, tps in timings
    ]  # fmt: skip
    (d,) = judge_decisions(rows, pairs[:1], "tokens_per_s")
    assert d["rounds"] == 2
    assert d["ratio"] == pytest.approx(math.sqrt(4.0 * 420 / 110))


def test_a_plan_without_the_adaptive_fields_hashes_as_before_they_existed():
    plan = {k: 1 for k in HASHED} | {"device": "cpu"}
    before = hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()
    assert plan_hash(plan) == before
    assert plan_hash({**plan, "max_rounds": 15}) != before
    assert plan_hash({**plan, "decide": [[1, 4, 3.0, 5.0]]}) != plan_hash({**plan, "decide": [[1, 4, 3.0, 4.5]]})


# --- end to end -----------------------------------------------------------------------------------------------


def _plan(make_cfg, out: Path, sizes=((1, 4), (2, 8)), cell: str = "gru", extra=None, **over) -> dict:
    """A tiny plan; `extra`: batch size -> overrides of that point only."""
    points = []
    for bs, ns in sizes:
        cfg = make_cfg(*TINY, f"model={cell}", f"batch_size={bs}", f"num_steps={ns}", *(extra or {}).get(bs, []))
        key = {"task": "echo", "cell": cell, "batch_size": bs, "num_steps": ns}
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
    # the thread's CPU clock beside the wall clock, from the same segments
    assert (df["cpu_seconds"] > 0).all()
    cpu_expected = df["updates"] * df["batch_size"] * df["num_steps"] / df["cpu_seconds"]
    pd.testing.assert_series_equal(df["cpu_tokens_per_s"], cpu_expected, check_names=False)
    cpu_us = df["cpu_seconds"] / df["updates"] * 1e6
    pd.testing.assert_series_equal(df["cpu_us_per_update"], cpu_us, check_names=False)

    meta = json.loads((out.parent / "speed.json").read_text())
    assert meta["plan"] == plan and meta["plan_sha256"] == plan_hash(plan)
    # a plan without max_rounds / decide: exactly `rounds` rounds, judged on the thread's CPU clock (1 thread, cpu)
    assert (meta["clock"], meta["clock_column"], meta["rounds_done"]) == ("cpu", "cpu_tokens_per_s", 5)
    assert meta["stopped"] == "rounds" and meta["cap_hit"] is False and meta["decisions"] == []
    cvs = {(c["key"]["batch_size"], c["key"]["num_steps"]): c["cv"] for c in meta["cv"]}
    judged = df.groupby(["batch_size", "num_steps"])["cpu_tokens_per_s"]
    assert cvs == pytest.approx((judged.std() / judged.mean()).to_dict())
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


def _run_plan(plan: dict, tmp_path: Path) -> tuple[pd.DataFrame, dict]:
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    proc = _run(plan_path)
    assert proc.returncode == 0, proc.stderr
    out = Path(plan["out"])
    return pd.read_parquet(out), json.loads((out.parent / "speed.json").read_text())


def test_without_a_decision_pair_the_rounds_stop_at_the_minimum(make_cfg, tmp_path):
    # the default decide entry wants batch 1 and 4: this plan has 1 and 2, so nothing is left to decide
    plan = _plan(make_cfg, tmp_path / "s" / "speed.parquet", rounds=2, max_rounds=6, decide=[[1, 4, 3.0, 5.0]])
    df, meta = _run_plan(plan, tmp_path)
    assert sorted(df["round"].unique().tolist()) == [0, 1]
    assert (meta["rounds_done"], meta["stopped"], meta["cap_hit"], meta["decisions"]) == (2, "rounds", False, [])


def test_a_decided_pair_stops_the_rounds_at_the_minimum(make_cfg, tmp_path):
    # a band no real ratio of batch 2 over batch 1 leaves: decided inside as soon as there is an interval
    plan = _plan(make_cfg, tmp_path / "s" / "speed.parquet", sizes=((1, 4), (2, 4)), rounds=3, max_rounds=6,
                 decide=[[1, 2, 1e-3, 1e3]])  # fmt: skip
    df, meta = _run_plan(plan, tmp_path)
    assert df["round"].nunique() == 3 and meta["rounds_done"] == 3
    assert meta["stopped"] == "decided" and meta["cap_hit"] is False
    (d,) = meta["decisions"]
    assert (d["b1"], d["b2"], d["state"], d["decided"], d["rounds"]) == (1, 2, "inside", True, 3)
    one = df[df["batch_size"] == 1].set_index("round")["cpu_tokens_per_s"]
    two = df[df["batch_size"] == 2].set_index("round")["cpu_tokens_per_s"]
    assert d["ratio"] == pytest.approx(math.exp(sum(math.log(two[r] / one[r]) for r in range(3)) / 3))


def test_a_pair_that_cannot_be_decided_runs_to_max_rounds_and_says_the_cap_was_hit(make_cfg, tmp_path):
    # batch 2 trains a tanh RNN with SGD at lr 1e30, unclipped: its loss is NaN from the first visit, so no round
    # ever pairs and no interval exists, whatever the band
    diverge = {2: ["optim=sgd", "optim.lr=1e30", "optim.clip=0"]}
    plan = _plan(make_cfg, tmp_path / "s" / "speed.parquet", sizes=((1, 4), (2, 4)), cell="rnn", extra=diverge,
                 rounds=2, max_rounds=4, decide=[[1, 2, 1e-3, 1e3]])  # fmt: skip
    df, meta = _run_plan(plan, tmp_path)
    assert sorted(df["round"].unique().tolist()) == [0, 1, 2, 3]
    assert not df[df["batch_size"] == 2]["finite"].any()
    assert (meta["rounds_done"], meta["max_rounds"], meta["stopped"], meta["cap_hit"]) == (4, 4, "cap", True)
    (d,) = meta["decisions"]
    assert (d["state"], d["decided"], d["rounds"], d["low"]) == ("undetermined", False, 0, None)
    firsts = df[df["order"] == 0].sort_values("round")["batch_size"].tolist()
    assert firsts == [1, 2, 1, 2]  # the added rounds keep the rotation


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"points": []}, "points"),
        ({"max_rounds": 3}, "max_rounds"),  # fewer than rounds (5)
        ({"decide": [[1, 1, 3.0, 5.0]]}, "decide[0]"),
        ({"decide": [[1, 4, 5.0, 3.0]]}, "decide[0]"),
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
    a = timed_updates(point, 30, CPU)  # two visits: state and stream position carry over
    b = timed_updates(point, 40, CPU)
    assert a.seconds > 0 and b.seconds > 0 and a.cpu_seconds > 0 and b.cpu_seconds > 0 and a.finite and b.finite
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
