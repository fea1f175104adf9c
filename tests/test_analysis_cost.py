"""Cost to result: the critical batch size of Shallue et al.'s S(B) and E(B) curves, recovered from curves whose
B_crit is known; the interpolated crossing; B_simple read where a run crossed its target; plateau runs at the cap."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import cost
from analysis.tables import interpolate_crossing, text_targets, time_to_target_runs

BATCH = (1, 2, 4, 8, 16, 32, 64)


def _seeds(curve, noise: float = 0.05, seeds: int = 5, rng: int = 0) -> dict[int, np.ndarray]:
    gen = np.random.default_rng(rng)
    return {b: curve(b) * np.exp(gen.normal(0.0, noise, seeds)) for b in BATCH}


# -------------------------------------------------------------------------------------------------- the fits
@pytest.mark.parametrize("rng", [0, 1, 2])
def test_steps_fit_recovers_a_known_critical_batch(rng):
    fit = cost.fit_critical_batch(_seeds(lambda b: 100 * (1 + 12 / b), rng=rng), "steps")
    assert fit["status"] == "fitted"
    assert fit["ci_low"] < 12 < fit["ci_high"] and fit["b_crit"] == pytest.approx(12, rel=0.1)
    assert fit["scale"] == pytest.approx(100, rel=0.05)  # S_min
    assert fit["ci_high"] / fit["ci_low"] < 1.5  # 5 seeds at 5 % noise pin it down, not a vacuous interval


@pytest.mark.parametrize("rng", [0, 1])
def test_tokens_fit_recovers_a_known_critical_batch(rng):
    fit = cost.fit_critical_batch(_seeds(lambda b: 5000 * (1 + b / 12), rng=rng), "tokens")
    assert fit["status"] == "fitted" and fit["ci_low"] < 12 < fit["ci_high"]
    assert fit["scale"] == pytest.approx(5000, rel=0.05)  # E_min


def test_the_bootstrap_is_reproducible():
    values = _seeds(lambda b: 100 * (1 + 12 / b))
    assert cost.fit_critical_batch(values)["ci_low"] == cost.fit_critical_batch(values)["ci_low"]


def test_perfect_scaling_has_no_critical_batch_inside_the_grid():
    # halving the updates at every doubling all the way: the knee lies beyond the largest batch tried
    fit = cost.fit_critical_batch(_seeds(lambda b: 6400 / b), "steps")
    assert math.isnan(fit["b_crit"]) and fit["status"] == "not identified: B_crit > largest batch (64)"
    assert np.isinf(fit["ci_high"])
    # and no gain at all from batch size: the knee lies below the smallest batch
    flat = cost.fit_critical_batch(_seeds(lambda b: 300.0), "steps")
    assert math.isnan(flat["b_crit"]) and flat["status"].endswith("< smallest batch (1)")


def test_fewer_than_four_batch_sizes_are_not_fitted():
    values = {b: v for b, v in _seeds(lambda b: 100 * (1 + 12 / b)).items() if b <= 4}
    fit = cost.fit_critical_batch(values)
    assert math.isnan(fit["b_crit"]) and fit["status"].startswith("not fitted: 3 batch size(s)")


def _per_run(curve, noise=0.05, seeds=5, rng=0, ns=32) -> pd.DataFrame:
    rows = []
    for b, vals in _seeds(curve, noise, seeds, rng).items():
        for s, u in enumerate(vals):
            rows.append({"run_id": f"b{b}s{s}", "split": "echo · plateau cap 8192 · fixed lr", "regime": "plateau",
                         "task": "echo", "cell": "gru", "num_steps": ns, "batch_size": b, "seed": s,
                         "target": "accuracy ≥ 0.9", "target_source": "fixed", "reached": True,
                         "crossing": "interpolated", "updates": u, "tokens": u * b * ns, "seconds": np.nan,
                         "updates_prev": u / 1.19, "tokens_prev": u / 1.19 * b * ns, "seconds_prev": np.nan,
                         "updates_eval": u * 1.1, "tokens_eval": u * 1.1 * b * ns, "seconds_eval": np.nan,
                         "b_simple": 10.0 * (1 + 0.1 * s), "b_simple_how": "interpolated",
                         "b_simple_distance": 1.0})  # fmt: skip
    return pd.DataFrame(rows)


def test_b_crit_table_fits_both_curves_and_leaves_out_a_point_not_every_seed_reached():
    per_run = _per_run(lambda b: 100 * (1 + 12 / b))
    miss = per_run.index[(per_run["batch_size"] == 64) & (per_run["seed"] == 0)]
    per_run.loc[miss, ["reached", "updates", "tokens"]] = [False, np.nan, np.nan]
    row = cost.b_crit_table(per_run).iloc[0]
    assert row["batch sizes fitted"] == "1, 2, 4, 8, 16, 32" and row["left out (not every seed reached)"] == "64"
    assert row["B_crit (steps) ci_low"] < 12 < row["B_crit (steps) ci_high"]
    # tokens = updates x B x num_steps here, so E(B) is the same least-squares problem: the same B_crit
    assert row["B_crit (tokens)"] == pytest.approx(row["B_crit (steps)"], rel=1e-6)
    assert row["E_min"] == pytest.approx(32 * row["S_min"] * row["B_crit (steps)"], rel=1e-6)
    # B_simple at target: geometric mean over the 34 runs that reached it, beside B_crit
    expected = float(np.exp(np.mean(np.log(per_run.loc[per_run["reached"], "b_simple"]))))
    assert row["B_simple at target"] == pytest.approx(expected) and row["B_simple runs"] == 34
    shown = cost.show_b_crit(cost.b_crit_table(_per_run(lambda b: 6400 / b))).iloc[0]
    assert shown["B_crit from updates (S)"] == "not identified: B_crit > largest batch (64)"


# ---------------------------------------------------------------------------------------- the crossing
def test_the_crossing_is_interpolated_in_log_updates():
    # accuracy 0.8 at update 40, 0.95 at 80: 0.9 is two thirds of the way in log updates
    u, before, at, how = interpolate_crossing([10, 20, 40, 80, 160], [0.3, 0.6, 0.8, 0.95, 0.97], 0.9)
    assert (before, at, how) == (40, 80, "interpolated") and u == pytest.approx(40 * 2 ** (2 / 3))
    # a loss falling through its target (lower is better)
    u, *_ = interpolate_crossing([100, 200], [2.0, 1.0], 1.5, higher=False)
    assert u == pytest.approx(100 * 2**0.5)
    # met at the first evaluation: read there, an upper bound; never met: not reached
    assert interpolate_crossing([16, 32], [0.95, 0.99], 0.9) == (16, 0.0, 16, "first evaluation")
    assert interpolate_crossing([16, 32], [0.5, 0.6], 0.9)[3] == "not reached"


def test_time_to_target_runs_interpolates_updates_and_tokens():
    runs = pd.DataFrame([{"run_id": "r", "split": "s", "task": "echo", "cell": "gru", "batch_size": 4,
                          "num_steps": 25, "seed": 0, "cfg.task.lag": 8}])  # fmt: skip
    steps = [10, 20, 40, 80, 160]
    evals = pd.DataFrame({"run_id": "r", "step": steps, "tokens": [100 * s for s in steps],
                          "acc_lag_8": [0.3, 0.6, 0.8, 0.95, 0.97]})  # fmt: skip
    row = time_to_target_runs(runs, evals, None).iloc[0]
    u = 40 * 2 ** (2 / 3)
    assert row["reached"] and row["crossing"] == "interpolated" and row["updates"] == pytest.approx(u)
    assert row["tokens"] == pytest.approx(100 * u)  # 100 tokens per update: linear in updates between them
    assert (row["updates_prev"], row["updates_eval"], row["target_source"]) == (40, 80, "fixed")


def test_a_text_target_is_derived_from_the_worst_batch_size_that_converged():
    runs = pd.DataFrame([
        {"run_id": f"{b}-{s}", "split": "text", "task": "text", "cell": "lstm", "batch_size": b, "num_steps": 16,
         "seed": s, "regime": "plateau", "converged": conv, "best_valid_loss": loss}
        for b, s, loss, conv in [(16, 0, 5.0, True), (16, 1, 5.2, True), (64, 0, 5.4, True), (64, 1, 5.6, True),
                                 (64, 2, 9.0, False)]  # the run stuck at the cap does not set the target
    ])  # fmt: skip
    target, worst = text_targets(runs, pd.DataFrame())[("text", "lstm", 16)]
    assert worst == 64 and target == pytest.approx(5.5 + 0.02)
    evals = pd.DataFrame({"run_id": "16-0", "step": [10, 20], "tokens": [10, 20], "loss": [6.0, 5.0]})
    row = time_to_target_runs(runs, evals, None).iloc[0]
    assert row["reached"] and row["target_source"].startswith("derived: worst seed-mean best loss (batch 64)")
    assert row["updates"] == pytest.approx(10 * 2 ** ((6.0 - 5.52) / 1.0))


# ----------------------------------------------------------------------------------- B_simple at target
def test_b_simple_is_read_between_the_measurements_around_the_crossing():
    steps, b = [16, 64, 256, 1024], [4.0, 8.0, 16.0, 32.0]  # B_simple ∝ sqrt(updates)
    value, how, dist = cost.b_simple_at(steps, b, 128.0)
    assert how == "interpolated" and value == pytest.approx(math.sqrt(8 * 16)) and dist == 1
    assert cost.b_simple_at(steps, b, 64.0) == (8.0, "at the crossing", 1.0)
    # beyond the last measurement: the nearest, with how far away it was
    assert cost.b_simple_at(steps, b, 2048.0) == (32.0, "nearest (before the crossing)", 0.5)
    assert cost.b_simple_at([16, 64], [np.nan, np.nan], 32.0)[1] == "no noise measurement"


def test_b_simple_runs_reads_each_run_at_its_own_crossing():
    per_run = pd.DataFrame({"run_id": ["a", "b", "c"], "reached": [True, True, False],
                            "updates": [100.0, 400.0, np.nan]})  # fmt: skip
    evals = pd.DataFrame({"run_id": ["a"] * 3 + ["b"] * 3, "step": [50, 100, 200] * 2,
                          "noise_b_simple": [1.0, 2.0, 3.0, 10.0, np.nan, 30.0]})  # fmt: skip
    got = cost.b_simple_runs(per_run, evals).set_index("run_id")
    assert got.loc["a", "b_simple"] == 2.0 and got.loc["a", "b_simple_how"] == "at the crossing"
    assert got.loc["b", "b_simple"] == 30.0 and got.loc["b", "b_simple_distance"] == 0.5
    assert "c" not in got.index  # not reached: no crossing to read it at


# ------------------------------------------------------------------------------------------- cap listing
def _plateau_runs(reasons: list[str | None], converged: list[bool | None]) -> pd.DataFrame:
    return pd.DataFrame({
        "split": "echo · plateau cap 8192 · fixed lr", "cell": "gru", "num_steps": 32, "batch_size": 1,
        "seed": range(len(reasons)), "status": "complete", "regime": "plateau", "stop_reason": reasons,
        "converged": converged, "stopped_at_update": 8192.0,
        "best_valid_loss": [0.1 * (i + 1) for i in range(len(reasons))],
    })  # fmt: skip


def test_plateau_runs_at_the_cap_are_listed_per_grid_point():
    runs = _plateau_runs(["cap", "plateau", "cap"], [False, True, False])
    runs = pd.concat([runs, _plateau_runs(["plateau"], [True]).assign(batch_size=64)], ignore_index=True)
    caps = cost.cap_runs(runs)
    assert len(caps) == 1
    row = caps.iloc[0]
    assert (row["batch_size"], row["at the cap"], row["seeds"], row["stopped at update"]) == (1, "2/3", "0, 2", "8192")
    assert row["best held-out loss (mean)"] == pytest.approx(0.2)
    assert cost.cap_sentence(runs, caps).startswith("2 of 4 plateau runs hit their cap")
    # a record without stop_reason but converged False still counts; a diverged plateau run is not "at the cap"
    older = _plateau_runs([None, "diverged"], [False, None])
    assert cost.cap_runs(older)["at the cap"].tolist() == ["1/2"]


def test_every_plateau_run_converged_or_none_was_trained_to_a_plateau():
    runs = _plateau_runs(["plateau", "plateau"], [True, True])
    assert cost.cap_runs(runs).empty
    assert cost.cap_sentence(runs, cost.cap_runs(runs)).startswith("Every plateau run converged (2 runs")
    fixed = runs.assign(regime="budget", stop_reason="budget", converged=None)
    assert cost.cap_sentence(fixed, cost.cap_runs(fixed)) == "No run in this folder was trained to a plateau."
