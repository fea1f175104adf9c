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
