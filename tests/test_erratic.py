"""How erratic training is at its end (claim C7; docs/protocol.md, "Training semantics"): param_jitter (how much
one update moves the loss on fixed data), sampling_jitter (how much the loss moves between minibatches at fixed
parameters) and their ratio, measured on copies after the final evaluation."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

import sweep.train
from sweep.train import JITTER_KEYS, WindowStream, _fixed_batch_loss, build_setup, erratic_end, train
from tests.conftest import TINY

GRU = [*TINY, "model=gru", "budget.amount=60", "optim.clip=0"]
WALL = ("time_s", "train_seconds", "tokens_per_s")


def test_a_tiny_lr_leaves_the_fixed_batch_loss_still_while_minibatches_still_differ(make_cfg):
    s = train(make_cfg(*GRU, "optim.lr=1e-9")).summary
    assert s["param_jitter"] < 1e-6  # updates of ~1e-9 per weight: below float32's resolution of a loss ~1.4
    assert s["sampling_jitter"] > 1e-3  # 16 rows of 16 random symbols: windows differ by far more
    assert s["jitter_ratio"] == pytest.approx(s["param_jitter"] / s["sampling_jitter"])


def test_param_jitter_grows_with_the_learning_rate(make_cfg):
    small, large = (train(make_cfg(*GRU, f"optim.lr={lr}")).summary for lr in (1e-3, 0.1))
    assert large["param_jitter"] > 10 * small["param_jitter"] > 0
    assert large["jitter_ratio"] > small["jitter_ratio"]


def test_jitter_on_or_off_leaves_the_record_and_the_returned_model_unchanged(make_cfg):
    def measures(model, data, cfg, device, initial=None):  # runs after the jitter: sees the RNG as without it
        return {"draw": torch.rand(1).item()}, pd.DataFrame({"k": [1], "value": [0.0]})

    on, off = (train(make_cfg(*GRU, "model=lstm", f"measure.jitter_updates={n}"), measure_fn=measures) for n in (16, 0))
    pd.testing.assert_frame_equal(on.steps.drop(columns="time_s"), off.steps.drop(columns="time_s"), check_exact=True)
    pd.testing.assert_frame_equal(on.evals.drop(columns="time_s"), off.evals.drop(columns="time_s"), check_exact=True)
    assert on.summary["passes"] == off.summary["passes"]  # the run's own stream did not move on
    for a, b in zip(on.model.state_dict().values(), off.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert {k: off.summary[k] for k in JITTER_KEYS} == dict.fromkeys(JITTER_KEYS)
    assert all(on.summary[k] > 0 for k in JITTER_KEYS)
    rest_on = {k: v for k, v in on.summary.items() if k not in (*JITTER_KEYS, *WALL)}
    rest_off = {k: v for k, v in off.summary.items() if k not in (*JITTER_KEYS, *WALL)}
    assert rest_on == rest_off


def test_the_extra_updates_continue_the_training_stream_on_copies(make_cfg):
    """erratic_end by hand: its updates are the next ones training would have made, and it leaves the run alone."""
    cfg = make_cfg(*GRU, "budget.amount=10")
    run = build_setup(cfg, torch.device("cpu"))
    state = None
    for _ in range(10):
        x, y, state = run.stream.next_window(state)
        _, _, state, _ = run.update(x, y, state, False)
    before = copy.deepcopy(run.model.state_dict()), copy.deepcopy(run.optimizer.state_dict()["state"])
    position = run.stream.index, run.stream.passes
    held_in, held_tg = run.data.rows("valid", cfg.batch_size)

    fixed_losses: list[float] = []
    real = sweep.train._fixed_batch_loss

    def recording(held):
        fixed_losses.append(real(held))
        return fixed_losses[-1]

    with pytest.MonkeyPatch.context() as m:
        m.setattr(sweep.train, "_fixed_batch_loss", recording)
        out = erratic_end(cfg, run, state, 4, torch.device("cpu"))
    assert (run.stream.index, run.stream.passes) == position
    for a, b in zip(before[0].values(), run.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for p, saved in before[1].items():
        for k, v in saved.items():
            assert torch.equal(v, run.optimizer.state_dict()["state"][p][k])
    # training on: 4 more updates of the real run, the fixed held-out loss after each
    want = [_fixed_batch_loss(WindowStream(run.model, held_in, held_tg, cfg.num_steps))]
    for _ in range(4):
        x, y, state = run.stream.next_window(state)
        _, _, state, _ = run.update(x, y, state, False)
        want.append(_fixed_batch_loss(WindowStream(run.model, held_in, held_tg, cfg.num_steps)))
    assert fixed_losses == want
    assert out["param_jitter"] == pytest.approx(float(np.median(np.abs(np.diff(want)))))


def test_the_fixed_batch_is_the_first_held_out_window_with_a_target(make_cfg):
    # echo lag 8 at num_steps 4: windows 0 and 1 of the held-out rows have no target; window 2 is the batch,
    # reached from a zero state through the first two
    cfg = make_cfg(*TINY, "num_steps=4", "batch_size=4")
    run = build_setup(cfg, torch.device("cpu"))
    inputs, targets = run.data.rows("valid", 4)
    held = WindowStream(run.model, inputs, targets, 4)
    got = _fixed_batch_loss(held)
    with torch.no_grad():
        _, state = run.model(inputs[:, :8], run.model.init_state(4))
        logits, _ = run.model(inputs[:, 8:12], state)
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 4), targets[0, :, 8:12].reshape(-1)).item()
    assert got == pytest.approx(want, rel=1e-6)
    assert _fixed_batch_loss(held) == got  # the same batch every time
    s = train(cfg).summary
    assert s["param_jitter"] is not None and s["sampling_jitter"] > 0


def test_no_jitter_for_a_diverged_run_or_without_a_held_out_window(make_cfg):
    diverged = train(make_cfg(*TINY, "model=rnn", "optim=sgd", "optim.lr=1e6", "optim.clip=0"))
    assert diverged.status == "diverged"
    assert {k: diverged.summary[k] for k in JITTER_KEYS} == dict.fromkeys(JITTER_KEYS)
    # 1024 held-out tokens in 16 rows: 64 columns, no window of 128
    short = train(make_cfg(*TINY, "num_steps=128", "task.train_tokens=8192"))
    assert short.status == "complete" and short.summary["param_jitter"] is None
