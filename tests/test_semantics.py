"""The semantics DESIGN.md says must be exact: stream layout, truncation at window boundaries, loss, norms, seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sweep.data import IGNORE, batchify, get_batch, num_windows, repackage_hidden
from sweep.model import RecurrentModel, sequence_loss
from sweep.tasks import TaskData
from sweep.train import train, window_forward
from tests.conftest import TINY


def test_batchify_cuts_the_stream_into_contiguous_rows_and_drops_the_tail():
    rows = batchify(torch.arange(11), 3)
    assert rows.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_text_rows_pair_each_input_with_the_next_token_and_windows_step_by_num_steps():
    data = TaskData("text", vocab_size=20, out_vocab=20, train=torch.arange(20), valid=torch.arange(4))
    inputs, targets = data.rows("train", 2)
    # rows [0..9] and [10..19]; inputs drop the last column, targets are the inputs shifted by one
    assert inputs.tolist() == [list(range(0, 9)), list(range(10, 19))]
    assert targets.tolist() == [[list(range(1, 10)), list(range(11, 20))]]
    assert num_windows(inputs, 4) == 2  # 9 columns -> two whole windows of 4, the ragged column dropped
    x, y = get_batch(inputs, targets, 1, 4)
    assert x.tolist() == [[4, 5, 6, 7], [14, 15, 16, 17]]
    assert y.tolist() == [[[5, 6, 7, 8], [15, 16, 17, 18]]]


def test_echo_targets_are_the_input_lag_steps_back_in_the_same_row():
    stream = torch.tensor([3, 1, 0, 2, 2, 1, 0, 3])
    data = TaskData("lags", vocab_size=4, out_vocab=4, train=stream, valid=stream, lags=[1, 2])
    inputs, targets = data.rows("train", 2)
    assert inputs.tolist() == [[3, 1, 0, 2], [2, 1, 0, 3]]
    assert targets.tolist() == [
        [[IGNORE, 3, 1, 0], [IGNORE, 2, 1, 0]],  # lag 1
        [
            [IGNORE, IGNORE, 3, 1],
            [IGNORE, IGNORE, 2, 1],
        ],  # lag 2: no target where the source is in another row
    ]


@pytest.fixture
def lstm() -> RecurrentModel:
    torch.manual_seed(0)
    return RecurrentModel("lstm", vocab_size=5, out_vocab=5, num_heads=1, embedding_size=4, hidden_size=8)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_forward_sees_the_previous_window_but_its_gradient_stops_at_the_boundary(cell):
    torch.manual_seed(0)
    model = RecurrentModel(cell, vocab_size=5, out_vocab=5, num_heads=1, embedding_size=4, hidden_size=8)
    prev = torch.tensor([[1, 2, 3, 4]])
    window = torch.tensor([[0, 1, 2, 3]])
    target = torch.tensor([[[1, 2, 3, 4]]])

    def window_loss(prev_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prev_emb = model.embedding(prev_tokens).detach().requires_grad_(True)
        _, state = model.forward_embedded(prev_emb, model.init_state(1))
        logits, _ = window_forward(model, window, state)
        return sequence_loss(logits, target), prev_emb

    loss_a, prev_emb = window_loss(prev)
    loss_b, _ = window_loss(torch.tensor([[4, 4, 0, 0]]))
    assert loss_a.item() != loss_b.item()  # the carried state makes the forward pass depend on the last window
    loss_a.backward()
    assert prev_emb.grad is None or torch.count_nonzero(prev_emb.grad) == 0  # ... but no gradient reaches it
    assert model.embedding.weight.grad is not None  # the window's own inputs do get gradient


@pytest.mark.parametrize("num_steps", [1, 4, 9])
def test_inside_a_window_the_gradient_reaches_back_num_steps_minus_one_positions(lstm, num_steps):
    tokens = torch.randint(5, (2, num_steps))
    emb = lstm.embedding(tokens).detach().requires_grad_(True)
    logits, _ = lstm.forward_embedded(emb, repackage_hidden(lstm.init_state(2)))
    # the loss at the window's last position only
    last = torch.nn.functional.cross_entropy(logits[:, -1, 0], tokens[:, 0])
    last.backward()
    reach = emb.grad.norm(dim=-1)  # [B, T]: gradient of the last position's loss w.r.t. each input
    assert torch.all(reach > 0), "every position of the window, num_steps - 1 back included, gets gradient"


def test_loss_is_the_mean_cross_entropy_per_defined_target_token():
    logits = torch.randn(2, 3, 2, 4)  # [B, T, heads, V]
    targets = torch.tensor([[[1, 2, IGNORE], [0, IGNORE, 3]], [[2, 2, 2], [1, 0, 3]]])  # [heads, B, T]
    manual = []
    for h in range(2):
        for b in range(2):
            for t in range(3):
                if targets[h, b, t] != IGNORE:
                    manual.append(-torch.log_softmax(logits[b, t, h], -1)[targets[h, b, t]])
    assert sequence_loss(logits, targets).item() == pytest.approx(torch.stack(manual).mean().item(), rel=1e-6)


def test_recorded_grad_norm_is_the_global_norm_before_clipping(make_cfg):
    cfg = make_cfg(*TINY, "optim.clip=1e-6", "budget.amount=12")
    result = train(cfg)
    steps = result.steps
    assert (steps["grad_norm"] > 1e-3).all()  # far above the clip threshold: measured before clipping
    assert steps["clipped"].all() and result.summary["clip_fraction"] == 1.0


def test_same_seed_gives_identical_losses_and_another_seed_does_not(make_cfg):
    a = train(make_cfg(*TINY, "seed=3", "model=gru")).steps
    b = train(make_cfg(*TINY, "seed=3", "model=gru")).steps
    c = train(make_cfg(*TINY, "seed=4", "model=gru")).steps
    np.testing.assert_array_equal(a["loss"].to_numpy(), b["loss"].to_numpy())
    np.testing.assert_array_equal(a["grad_norm"].to_numpy(), b["grad_norm"].to_numpy())
    assert not np.array_equal(a["loss"].to_numpy(), c["loss"].to_numpy())


def test_state_is_reset_at_each_pass_and_budget_counts_updates(make_cfg, monkeypatch):
    resets = []
    original = RecurrentModel.init_state

    def counting(self, batch_size, device=None):
        resets.append(batch_size)
        return original(self, batch_size, device)

    monkeypatch.setattr(RecurrentModel, "init_state", counting)
    # 4096 tokens in 8 rows of 512 -> 512 // 8 = 64 windows a pass, the first (lag 8) without targets
    result = train(make_cfg(*TINY, "batch_size=8", "num_steps=8", "budget.amount=150"))
    assert result.summary["updates"] == 150
    assert result.summary["passes"] == 3 == len([r for r in resets if r == 8])
    assert result.summary["tokens"] == 150 * 8 * 8


@pytest.mark.parametrize(
    ("kind", "amount", "check"),
    [
        ("tokens", 4096, lambda s: s["tokens"] >= 4096 and s["tokens"] - 4096 < 8 * 4),
        ("seconds", 0.3, lambda s: 0.3 <= s["train_seconds"] < 5),
    ],
)
def test_token_and_second_budgets_stop_where_they_say(make_cfg, kind, amount, check):
    result = train(make_cfg(*TINY, "batch_size=8", "num_steps=4", f"budget={kind}", f"budget.amount={amount}"))
    assert check(result.summary), result.summary


def test_lr_scaling_rules(make_cfg):
    from sweep.config import effective_lr

    base = ["optim.lr=0.01", "optim.base_batch_size=4", "batch_size=16"]
    assert effective_lr(make_cfg(*base)) == pytest.approx(0.01)
    assert effective_lr(make_cfg(*base, "optim.lr_scaling=linear")) == pytest.approx(0.04)
    assert effective_lr(make_cfg(*base, "optim.lr_scaling=sqrt")) == pytest.approx(0.02)
    assert math.isclose(train(make_cfg(*TINY, *base, "optim.lr_scaling=sqrt")).summary["lr"], 0.02)
