"""num_steps decides whether a lag-8 echo is learnable, at the same budget."""

from __future__ import annotations

import pytest

from sweep.train import train


@pytest.mark.slow
def test_echo_lag_8_is_learned_at_num_steps_16_and_not_at_4(make_cfg):
    common = ["task=echo", "task.lag=8", "task.vocab_size=4", "model=gru", "batch_size=16", "budget=updates",
              "budget.amount=1000", "measure.enabled=false", "seed=0"]  # fmt: skip
    long_window = train(make_cfg(*common, "num_steps=16")).summary
    short_window = train(make_cfg(*common, "num_steps=4")).summary
    assert long_window["tokens"] == 4 * short_window["tokens"]  # same updates, 4x the tokens per update
    assert long_window["lag_accuracy"]["8"] >= 0.85, long_window["lag_accuracy"]
    # within a window of 4, no gradient ever connects a target to the input 8 steps back
    assert short_window["lag_accuracy"]["8"] <= 0.4, short_window["lag_accuracy"]


@pytest.mark.slow
def test_trained_to_a_plateau_a_window_of_4_stops_at_chance_while_16_learns_the_lag(make_cfg):
    common = ["task=echo", "task.lag=8", "task.vocab_size=4", "model=gru", "batch_size=16", "budget=plateau",
              "budget.amount=2000", "measure.enabled=false", "seed=0"]  # fmt: skip
    short_window = train(make_cfg(*common, "num_steps=4")).summary
    # nothing to learn within a window of 4: the held-out loss stays at ln 4 and the rule stops the run at its first
    # chance, the first evaluation past budget.min_updates (256)
    assert short_window["stop_reason"] == "plateau" and short_window["converged"] is True
    assert short_window["updates"] < 400 and short_window["lag_accuracy"]["8"] <= 0.4
    long_window = train(make_cfg(*common, "num_steps=16")).summary
    assert long_window["stop_reason"] in ("plateau", "cap") and long_window["updates"] > short_window["updates"]
    assert long_window["lag_accuracy"]["8"] >= 0.85 and long_window["best_valid_loss"] < 0.2
