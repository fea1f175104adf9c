"""The semantics docs/protocol.md says must be exact: stream layout, carried state, truncation at window boundaries,
loss, norms, budgets, seeds."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch

from sweep.data import IGNORE, batchify, get_batch, num_windows, repackage_hidden
from sweep.model import RecurrentModel, sequence_loss
from sweep.tasks import TaskData, make_task
from sweep.train import build_model, late_jitter, seed_everything, train, window_forward
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
    result = train(make_cfg(*TINY, "batch_size=8", "num_steps=8", "budget.amount=150", "measure.jitter_updates=0"))
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


# --- the loop itself: carried state, budgets, untimed work, erratic-training summary ---------------------------

_CARRY = [
    "task=echo",
    "task.lag=2",  # every window of 4 columns has a target: no forward-only windows to account for
    "task.train_tokens=64",  # 2 rows of 32 -> 8 windows a pass
    "task.valid_tokens=1024",
    "batch_size=2",
    "num_steps=4",
    "budget=updates",
    "budget.amount=20",  # passes of 8, 8 and 4 updates
    "model.hidden_size=8",
    "model.embedding_size=4",
    "measure.enabled=false",
    "measure.noise_scale=false",
    "eval.points=2",
    "measure.jitter_updates=0",  # the end-of-run jitter updates a copy on its own windows (tests/test_erratic.py)
]


def test_train_itself_feeds_each_window_the_detached_state_the_previous_window_returned(make_cfg, monkeypatch):
    calls: list[dict] = []
    original = RecurrentModel.window_logits  # what the training update calls

    def recording(self, tokens, state=None):
        logits, out = original(self, tokens, state)
        if self.training:  # evaluation runs in eval mode on the held-out stream: not a training window
            h_in = state[0] if isinstance(state, tuple) else state
            h_out = out[0] if isinstance(out, tuple) else out
            calls.append({"x": tokens.clone(), "h_in": h_in.clone(), "grad_in": h_in.requires_grad,
                          "h_out": h_out.detach().clone()})  # fmt: skip
        return logits, out

    monkeypatch.setattr(RecurrentModel, "window_logits", recording)
    cfg = make_cfg(*_CARRY, "model=lstm")
    result = train(cfg)
    assert len(calls) == result.summary["updates"] == 20 and result.summary["passes"] == 3

    inputs, _ = make_task(cfg).rows("train", 2)
    for i, call in enumerate(calls):
        window = i % 8
        assert torch.equal(call["x"], inputs[:, 4 * window : 4 * window + 4])  # windows in stream order
        assert not call["grad_in"]  # detached: no gradient can flow into the previous window
        if window == 0:  # the start of a pass: a fresh zero state
            assert torch.count_nonzero(call["h_in"]) == 0, i
        else:
            # exactly what the previous window returned. A train() that zeroed the state every window would
            # pass zeros here while the previous window's output is not zero (checked next), so it would fail;
            # one that never reset would fail the zero check at windows 8 and 16.
            assert torch.equal(call["h_in"], calls[i - 1]["h_out"]), i
            assert torch.count_nonzero(call["h_in"]) > 0, i


def _reference_losses(cfg, carry: bool) -> np.ndarray:
    """A plain TBPTT loop written from docs/protocol.md, with the state carried or (carry=False) zeroed per window."""
    seed_everything(cfg.seed)
    data = make_task(cfg)
    model = build_model(cfg, data)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    inputs, targets = data.rows("train", cfg.batch_size)
    losses = []
    while len(losses) < cfg.budget.amount:
        state = model.init_state(cfg.batch_size)
        for i in range(inputs.shape[1] // cfg.num_steps):
            if len(losses) == cfg.budget.amount:
                break
            x, y = get_batch(inputs, targets, i, cfg.num_steps)
            if not carry:
                state = model.init_state(cfg.batch_size)
            logits, state = model(x, repackage_hidden(state))
            loss = sequence_loss(logits, y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip, foreach=True)
            opt.step()
            losses.append(loss.item())
    return np.array(losses)


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_train_matches_a_reference_loop_that_carries_the_state_and_not_one_that_zeroes_it(make_cfg, cell):
    cfg = make_cfg(*_CARRY, f"model={cell}")
    losses = train(cfg).steps["loss"].to_numpy()
    np.testing.assert_allclose(losses, _reference_losses(cfg, carry=True), rtol=1e-6)
    zeroed = _reference_losses(cfg, carry=False)
    # the first window of the run starts from zeros either way; after it the two loops must part
    assert losses[0] == pytest.approx(zeroed[0], rel=1e-6)
    assert np.max(np.abs(losses[1:] - zeroed[1:])) > 1e-4


@pytest.mark.parametrize(
    ("kind", "amount", "updates"),
    [
        ("updates", 37, 37),
        ("tokens", 4096, 128),  # 4096 / (8 x 4) = 128 exactly
        ("tokens", 4095, 128),
        ("tokens", 4097, 129),  # train stops at the first update whose tokens reach the budget: ceil, not floor
    ],
)
def test_budget_arithmetic(make_cfg, kind, amount, updates):
    result = train(make_cfg(*TINY, "batch_size=8", "num_steps=4", f"budget={kind}", f"budget.amount={amount}"))
    assert result.summary["updates"] == updates
    assert result.summary["tokens"] == updates * 8 * 4


def test_noise_scale_and_measures_at_eval_points_leave_the_trajectory_alone(make_cfg, monkeypatch):
    def meddling_noise_scale(model, data, cfg, device):
        # consumes the global RNG and leaves gradients behind, as a careless measure could
        torch.randn(1000)
        x = torch.randint(data.vocab_size, (3, cfg.num_steps))
        model(x)[0].sum().backward()
        return {"noise_g2": 1.0, "noise_trace": 2.0, "noise_b_simple": 2.0, "noise_b_small": 8, "noise_b_big": 64}

    seen = []

    def meddling_measures(model, data, cfg, device, initial=None):
        seen.append(initial)
        torch.randn(1000)
        return {"m": 1.0}, pd.DataFrame({"k": [1], "value": [0.0]})

    monkeypatch.setitem(sys.modules, "sweep.noise_scale", types.SimpleNamespace(noise_scale_at=meddling_noise_scale))
    common = [*TINY, "budget.amount=40", "eval.points=4", "measure.checkpoints=2"]
    quiet = train(make_cfg(*common, "measure.noise_scale=false"))
    busy = train(make_cfg(*common, "measure.noise_scale=true", "measure.noise_points=0"), measure_fn=meddling_measures)
    np.testing.assert_array_equal(quiet.steps["loss"].to_numpy(), busy.steps["loss"].to_numpy())
    np.testing.assert_array_equal(quiet.steps["grad_norm"].to_numpy(), busy.steps["grad_norm"].to_numpy())
    assert len(busy.evals) == 4 and busy.evals["noise_b_simple"].notna().all()
    assert "noise_b_simple" not in quiet.evals
    # noise_points=2 of 4 evaluations: the 2nd and the last carry it, the others have no noise values
    some = train(make_cfg(*common, "measure.noise_scale=true", "measure.noise_points=2"))
    assert some.evals["noise_b_simple"].notna().tolist() == [False, True, False, True]
    np.testing.assert_array_equal(quiet.steps["loss"].to_numpy(), some.steps["loss"].to_numpy())

    # measures got the network as initialised: a separate copy, equal to a fresh build from the same seed
    assert len(seen) == 3 and all(s is seen[0] for s in seen) and seen[0] is not busy.model
    cfg = make_cfg(*common)
    seed_everything(cfg.seed)
    fresh = build_model(cfg, make_task(cfg))
    for a, b in zip(seen[0].parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(busy.model.parameters(), fresh.parameters(), strict=True))


def test_late_jitter_on_a_hand_computed_series():
    loss = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 1.2, 1.0, 1.2])  # the early descent is left out
    norm = np.array([9.0, 9.0, 9.0, 9.0, 1.0, 3.0, 1.0, 3.0])
    out = late_jitter(loss, norm)
    assert out["loss_jitter"] == pytest.approx(0.2)
    assert out["loss_jitter_rel"] == pytest.approx(0.2 / 1.1)
    assert out["grad_norm_cv_late"] == pytest.approx(np.std([1, 3, 1, 3], ddof=1) / 2)
    flat = late_jitter(np.full(10, 2.0), np.full(10, 1.0))
    assert flat["loss_jitter"] == 0.0 and flat["grad_norm_cv_late"] == 0.0
    assert late_jitter(np.array([1.0, 1.0, 1.0, np.nan]), np.ones(4))["loss_jitter"] is None
    assert late_jitter(np.ones(3), np.ones(3))["loss_jitter"] is None


def test_summary_reports_late_jitter(make_cfg):
    result = train(make_cfg(*TINY, "budget.amount=40"))
    expected = late_jitter(result.steps["loss"].to_numpy(), result.steps["grad_norm"].to_numpy())
    assert {k: result.summary[k] for k in expected} == expected
    assert result.summary["loss_jitter"] > 0


def test_an_on_eval_hook_that_says_stop_prunes_the_run_at_that_evaluation(make_cfg):
    """The hook sees each evaluation point during training (not the final one) and can stop the run there."""
    cfg = make_cfg("budget.amount=40", "eval.points=4", "model.hidden_size=8", "measure.enabled=false")
    seen: list[tuple[int, dict]] = []

    def hook(update: int, metrics: dict) -> bool:
        seen.append((update, metrics))
        return len(seen) == 2

    full = train(cfg)
    pruned = train(cfg, on_eval=hook)
    assert [u for u, _ in seen] == [10, 20]
    assert pruned.status == "pruned" and pruned.summary["updates"] == 20
    assert list(pruned.evals["step"]) == [10, 20]  # no final evaluation after a prune
    assert seen[1][1]["valid_loss"] == pytest.approx(pruned.evals["loss"].iloc[-1])
    # up to the prune, the same trajectory as the run that was not stopped
    assert pruned.steps["loss"].tolist() == full.steps["loss"].iloc[:20].tolist()
    never = train(cfg, on_eval=lambda u, m: False)
    assert never.status == "complete" and never.steps["loss"].tolist() == full.steps["loss"].tolist()


# --- recurrent init ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cell", "gates"), [("rnn", 1), ("gru", 3), ("lstm", 4)])
@pytest.mark.parametrize("radius", [0.5, 1.0, 1.7])
def test_orthogonal_recurrent_init_sets_every_gate_block_to_the_spectral_radius(cell, gates, radius):
    hidden = 16
    torch.manual_seed(0)
    model = RecurrentModel(cell, 5, 5, 1, embedding_size=4, hidden_size=hidden, num_layers=2,
                           recurrent_init="orthogonal", spectral_radius=radius)  # fmt: skip
    for layer in range(2):
        weight = getattr(model.rnn, f"weight_hh_l{layer}").detach()
        assert weight.shape == (gates * hidden, hidden)
        for block in weight.split(hidden):
            assert torch.linalg.eigvals(block.double()).abs().max().item() == pytest.approx(radius, abs=1e-5)
            # orthogonal x radius: every singular value is the radius too, not only the largest eigenvalue
            assert torch.allclose(block.T @ block, radius**2 * torch.eye(hidden), atol=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_recurrent_init_default_draws_as_before_and_orthogonal_changes_only_the_recurrent_weights(make_cfg, cell):
    def build(*extra: str) -> RecurrentModel:
        cfg = make_cfg(*TINY, f"model={cell}", *extra)
        seed_everything(cfg.seed)
        return build_model(cfg, make_task(cfg))

    torch.manual_seed(0)
    plain = RecurrentModel(cell, 5, 5, 1, embedding_size=4, hidden_size=8)  # the constructor without the keys
    torch.manual_seed(0)
    explicit = RecurrentModel(cell, 5, 5, 1, embedding_size=4, hidden_size=8, recurrent_init="default")
    for a, b in zip(plain.state_dict().values(), explicit.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    default, ortho = build(), build("model.recurrent_init=orthogonal", "model.spectral_radius=1.3")
    again = build("model.recurrent_init=orthogonal", "model.spectral_radius=1.3")
    for (name, a), b, c in zip(default.named_parameters(), ortho.parameters(), again.parameters(), strict=True):
        assert torch.equal(b, c), name  # same seed, same weights: drawn from the seeded global RNG
        assert torch.equal(a, b) != name.startswith("rnn.weight_hh"), name  # the default's, but for weight_hh


def test_default_recurrent_init_and_loss_reduction_train_as_they_always_did(make_cfg):
    """Pinned from the code before recurrent_init and loss_reduction existed (commit 0288493): the first losses
    of a TINY LSTM run, float32 bit for bit."""
    steps = train(make_cfg(*TINY, "model=lstm", "optim.loss_reduction=mean", "model.recurrent_init=default")).steps
    assert steps["loss"].iloc[[0, 1, 19]].tolist() == PINNED_LSTM_LOSSES


PINNED_LSTM_LOSSES = [1.4575749635696411, 1.4473474025726318, 1.387399435043335]  # updates 1, 2 and 20


# --- loss reduction ----------------------------------------------------------------------------------------------

_SUM = [*TINY, "task.lag=4", "num_steps=4", "batch_size=8", "optim=sgd", "optim.clip=0", "budget.amount=3"]


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_summed_loss_scales_the_first_gradient_by_num_steps_and_records_the_mean_loss(make_cfg, cell):
    # echo lag 4 at num_steps 4: window 0 has no target (run forward only), window 1 has no IGNORE at all
    mean = train(make_cfg(*_SUM, f"model={cell}")).steps
    summed = train(make_cfg(*_SUM, f"model={cell}", "optim.loss_reduction=sum")).steps
    assert summed["loss"].iloc[0] == mean["loss"].iloc[0]  # the same mean per token before any update
    assert summed["grad_norm"].iloc[0] == pytest.approx(4 * mean["grad_norm"].iloc[0], rel=1e-5)
    assert summed["loss"].iloc[1] != mean["loss"].iloc[1]  # SGD: a step num_steps times longer followed


def test_summed_loss_counts_defined_targets_per_row_and_head(make_cfg):
    # lags 1 and 2 at num_steps 4: the first window holds 3 + 2 targets per row of 2 heads -> factor 2.5
    lags = [*_SUM, "task=lags", "task.lags=[1,2]", "model=gru"]
    mean = train(make_cfg(*lags)).steps
    summed = train(make_cfg(*lags, "optim.loss_reduction=sum")).steps
    assert summed["grad_norm"].iloc[0] == pytest.approx(2.5 * mean["grad_norm"].iloc[0], rel=1e-5)
