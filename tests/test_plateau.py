"""budget=plateau (docs/protocol.md, "Training semantics"): geometric evaluation points, the plateau rule, and the
summary keys that say why and where a run ended."""

from __future__ import annotations

import itertools
import math
import sys
import types

import numpy as np
import pandas as pd
import pytest

from sweep.train import eval_fractions, geometric_points, plateaued, train
from tests.conftest import TINY

INF, NAN = math.inf, math.nan


def first_stop(curve: list[float], patience: int, min_delta: float) -> int | None:
    """The evaluation (0-based) at which a run with held-out losses `curve` stops, as train() asks the rule after
    every evaluation; None when it never does."""
    for i in range(len(curve)):
        if plateaued(curve[: i + 1], patience, min_delta):
            return i
    return None


# --- the rule ----------------------------------------------------------------------------------------------------


def test_a_flat_curve_stops_after_patience_evaluations_without_improvement():
    assert first_stop([2.0, 1.5, 1.2, 1.1, 1.1, 1.1, 1.1, 1.1], patience=3, min_delta=0.01) == 6
    # i = 6: the last 3 (1.1, 1.1, 1.1) are not 0.01 below the best before them (1.1)
    assert plateaued([2.0, 1.5, 1.2, 1.1, 1.1, 1.1, 1.1], 3, 0.01)
    assert not plateaued([2.0, 1.5, 1.2, 1.1, 1.1, 1.1], 3, 0.01)  # 1.1 is 0.1 below 1.2: still improving


def test_a_curve_that_keeps_falling_never_stops():
    falling = [2.0 * 0.9**k for k in range(40)]  # each step ~10 % lower: far more than min_delta per patience
    assert first_stop(falling, patience=4, min_delta=0.01) is None
    # a slow descent stops once patience evaluations together gain less than min_delta
    slow = [1.0 - 0.001 * k for k in range(40)]
    assert first_stop(slow, patience=4, min_delta=0.01) == 4


def test_improvement_is_measured_against_the_best_before_the_window_not_the_last_value():
    # overfitting: the loss falls, then rises; the rise is no improvement on the best, so the run stops patience
    # evaluations after the minimum
    overfit = [2.0, 1.5, 1.0, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4]
    assert first_stop(overfit, patience=3, min_delta=0.01) == 6
    # a dip inside the window below best - min_delta is an improvement, whatever the window's last value
    assert not plateaued([1.0, 1.0, 0.5, 1.2], 2, 0.1)
    # exactly min_delta better is an improvement; less is not
    assert not plateaued([1.0, 0.75], 1, 0.25)
    assert plateaued([1.0, 0.76], 1, 0.25)


def test_a_rising_or_diverging_curve_stops_and_non_finite_losses_are_no_improvement():
    assert first_stop([1.0, 1.2, 1.5, 3.0, 10.0], patience=2, min_delta=0.0) == 2
    assert first_stop([1.0, 0.9, NAN, INF, NAN], patience=2, min_delta=0.01) == 3
    assert plateaued([1.0, NAN, NAN], 2, 0.01) and plateaued([NAN, NAN, NAN], 2, 0.0)
    # a finite loss after nothing but non-finite ones is an improvement
    assert not plateaued([NAN, INF, 5.0], 1, 0.01)
    # a non-finite value is never "the best": the earlier finite best still counts
    assert not plateaued([2.0, NAN, 1.0], 1, 0.5)


def test_the_rule_needs_more_than_patience_evaluations():
    assert not plateaued([], 1, 0.0)
    assert not plateaued([1.0, 1.0, 1.0, 1.0], 4, 0.01)
    assert plateaued([1.0, 1.0, 1.0, 1.0, 1.0], 4, 0.01)


# --- the evaluation points ---------------------------------------------------------------------------------------


def test_geometric_points_double_every_per_doubling_evaluations_and_end_at_the_cap():
    points = geometric_points(16, 4, 8192)
    assert points[:9] == [16, 19, 23, 27, 32, 38, 45, 54, 64]
    assert points[-1] == 8192 and points[-2] == round(16 * 2 ** (35 / 4)) == 6889
    assert all(a < b for a, b in itertools.pairwise(points))
    assert {16 * 2**d for d in range(10)} <= set(points)  # every doubling of `first` is a point
    # deduplicated: small values round to the same update
    assert geometric_points(1, 4, 10) == [1, 2, 3, 4, 5, 6, 7, 8, 10]
    assert geometric_points(16, 4, 16) == [16] and geometric_points(100, 2, 30) == [30]  # the cap is always there
    assert geometric_points(4, 1, 33) == [4, 8, 16, 32, 33]


def test_eval_fractions_linear_and_geometric(make_cfg):
    assert eval_fractions(make_cfg("eval.points=4")) == [0.25, 0.5, 0.75, 1.0]
    cfg = make_cfg("budget=plateau", "budget.amount=100", "eval.first=10", "eval.per_doubling=1")
    assert eval_fractions(cfg) == [0.1, 0.2, 0.4, 0.8, 1.0]
    upd = make_cfg("budget.amount=100", "eval.spacing=geometric", "eval.first=10", "eval.per_doubling=1")
    assert eval_fractions(upd) == [0.1, 0.2, 0.4, 0.8, 1.0]


def test_a_geometric_updates_run_evaluates_at_the_geometric_points_and_at_its_end(make_cfg):
    cfg = make_cfg(*TINY, "budget.amount=50", "eval.spacing=geometric", "eval.first=3", "eval.per_doubling=2")
    result = train(cfg)
    assert result.evals["step"].tolist() == geometric_points(3, 2, 50) == [3, 4, 6, 8, 12, 17, 24, 34, 48, 50]
    s = result.summary
    assert s["stop_reason"] == "budget" and s["converged"] is None and s["stopped_at_update"] == 50 == s["updates"]
    # the same training as with linear spacing: evaluation never touches the trajectory
    linear = train(make_cfg(*TINY, "budget.amount=50"))
    np.testing.assert_array_equal(result.steps["loss"].to_numpy(), linear.steps["loss"].to_numpy())
    assert linear.evals["step"].tolist() == [25, 50]


# --- real runs ---------------------------------------------------------------------------------------------------

PLATEAU = [
    *TINY,
    "budget=plateau",
    "budget.amount=2000",
    "eval.first=4",
    "eval.per_doubling=2",
    "budget.patience=2",
    "budget.min_delta=0.01",
    "budget.min_updates=0",
]  # the rule as these tests count it, not the preset's


def test_a_plateau_run_stops_before_the_cap_and_records_that_it_converged(make_cfg):
    result = train(make_cfg(*PLATEAU))
    s, evals = result.summary, result.evals
    assert result.status == "complete"
    assert s["stop_reason"] == "plateau" and s["converged"] is True
    assert s["updates"] == s["stopped_at_update"] == len(result.steps) < 2000
    # the evaluation it stopped at is the final one, not repeated after the loop
    assert evals["step"].tolist() == geometric_points(4, 2, 2000)[: len(evals)]
    assert evals["step"].iloc[-1] == s["updates"] and evals["step"].is_unique
    assert s["valid_loss"] == pytest.approx(evals["loss"].iloc[-1])
    assert plateaued(evals["loss"].tolist(), 2, 0.01) and not plateaued(evals["loss"].iloc[:-1].tolist(), 2, 0.01)
    best = evals["loss"].idxmin()
    assert s["best_valid_loss"] == evals["loss"].min() and s["best_valid_update"] == evals["step"][best]


def test_the_rule_is_not_asked_before_min_updates(make_cfg):
    """budget.min_updates: a run whose held-out loss is flat from the start (lr so small nothing moves) would stop
    at its first chance; with min_updates it trains on to the first evaluation at or past it, then stops there."""
    flat = [*PLATEAU, "optim.lr=1e-9"]
    early = train(make_cfg(*flat))
    assert early.summary["stop_reason"] == "plateau" and early.summary["updates"] < 64
    late = train(make_cfg(*flat, "budget.min_updates=64"))
    points = geometric_points(4, 2, 2000)
    assert late.summary["stop_reason"] == "plateau"
    assert late.summary["updates"] == min(p for p in points if p >= 64)


def test_a_plateau_run_that_reaches_its_cap_records_cap_and_not_converged(make_cfg):
    result = train(make_cfg(*PLATEAU, "budget.amount=7"))  # evaluations at 4, 6 and the cap: the rule needs 3
    s = result.summary
    assert result.status == "complete" and s["stop_reason"] == "cap" and s["converged"] is False
    assert s["updates"] == s["stopped_at_update"] == 7
    assert result.evals["step"].tolist() == [4, 6, 7]  # the last evaluation is at the cap


def test_fixed_budgets_pruned_and_diverged_runs_say_why_they_ended(make_cfg):
    fixed = train(make_cfg(*TINY)).summary
    assert (fixed["stop_reason"], fixed["converged"], fixed["stopped_at_update"]) == ("budget", None, 20)
    assert fixed["best_valid_update"] in (10, 20) and math.isfinite(fixed["best_valid_loss"])
    pruned = train(make_cfg(*PLATEAU), on_eval=lambda update, metrics: update >= 6)
    assert pruned.status == "pruned" and pruned.summary["stop_reason"] == "pruned"
    assert pruned.summary["converged"] is None and pruned.summary["stopped_at_update"] == 6
    diverged = train(make_cfg(*PLATEAU, "model=rnn", "optim=sgd", "optim.lr=1e6", "optim.clip=0"))
    assert diverged.status == "diverged" and diverged.summary["stop_reason"] == "diverged"
    assert diverged.summary["converged"] is None


def test_measure_checkpoints_are_fractions_of_the_cap_and_the_noise_scale_goes_with_the_plateau_stop(
    make_cfg, monkeypatch
):
    def noise_scale_at(model, data, cfg, device):
        return {"noise_b_simple": 1.0}

    monkeypatch.setitem(sys.modules, "sweep.noise_scale", types.SimpleNamespace(noise_scale_at=noise_scale_at))
    measured = []

    def measures(model, data, cfg, device, initial=None):
        measured.append(1)
        return {"m": float(len(measured))}, pd.DataFrame({"k": [1], "value": [0.0]})

    cfg = make_cfg(*PLATEAU, "budget.amount=20", "measure.checkpoints=1", "measure.noise_scale=true",
                   "measure.noise_points=1")  # fmt: skip
    result = train(cfg, measure_fn=measures)
    assert result.summary["stop_reason"] == "plateau" and result.summary["updates"] == 11
    # measure.checkpoints=1: at half the cap (update 10), then at the end (update 11)
    assert [r["step"] for r in result.summary["measure_checkpoints"]] == [10] and len(measured) == 2
    # noise_points=1 over the cap's 6 evaluation points would be its last (the cap's): the plateau stop carries it
    assert result.evals["noise_b_simple"].notna().tolist() == [False, False, False, True]
