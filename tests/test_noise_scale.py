"""The gradient noise scale B_simple (docs/measures.md): the estimator against linear regression, where the
noise scale is known in closed form, and the training-loop hook on a small network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from sweep.config import Config
from sweep.model import RecurrentModel
from sweep.noise_scale import estimate, noise_scale_at
from sweep.tasks import TaskData

D, SIGMA = 10, 1.0
B_SMALL, B_BIG = 4, 64
TOLERANCE = 0.05  # relative; the estimate's spread over seeds at these sample sizes is ~1.2 %


def squared_minibatch_gradients(rng: np.random.Generator, delta: np.ndarray, batches: int, size: int) -> np.ndarray:
    """|mean gradient|^2 of `batches` minibatches of `size` examples of the loss 1/2 (x.w - y)^2 at w = w* + delta,
    with x ~ N(0, I_D) and y = x.w* + eps, eps ~ N(0, SIGMA^2): the per-example gradient is x (x.delta - eps)."""
    x = rng.standard_normal((batches, size, D))
    eps = rng.normal(0.0, SIGMA, (batches, size))
    grads = x * (x @ delta - eps)[..., None]
    return (grads.mean(1) ** 2).sum(-1)


def test_estimator_recovers_the_closed_form_noise_scale():
    rng = np.random.default_rng(0)
    delta = np.full(D, 1 / math.sqrt(D))  # |delta|^2 = 1
    # G = delta and Sigma = (|delta|^2 + sigma^2) I + delta delta^T, so:
    g2_true = float(delta @ delta)
    trace_true = D * (g2_true + SIGMA**2) + g2_true
    b_true = trace_true / g2_true  # 21

    small = squared_minibatch_gradients(rng, delta, 40_000, B_SMALL)
    big = squared_minibatch_gradients(rng, delta, 5_000, B_BIG)
    g2, trace, b_simple = estimate(small, big, B_SMALL, B_BIG)
    assert g2 == pytest.approx(g2_true, rel=TOLERANCE)
    assert trace == pytest.approx(trace_true, rel=TOLERANCE)
    assert b_simple == pytest.approx(b_true, rel=TOLERANCE)

    # taking the big batch's |G_big|^2 as |G|^2 (it still holds tr(Sigma) / B_big of noise) misses by ~25 %:
    # the tolerance is tight enough to tell the two apart
    assert trace / big.mean() != pytest.approx(b_true, rel=TOLERANCE)


def test_estimator_averages_before_dividing():
    # B_small = 1, B_big = 2: |G|^2 = 2 |G_big|^2 - |G_small|^2, tr(Sigma) = 2 (|G_small|^2 - |G_big|^2).
    # Pair 1 (3, 2): |G|^2 = 1, tr = 2, ratio 2; pair 2 (1, 0.4): |G|^2 = -0.2, tr = 1.2, ratio -6.
    # Averaging the ratios gives a meaningless -2; the ratio of the averages is 1.6 / 0.4 = 4.
    g2, trace, b_simple = estimate([3.0, 1.0], [2.0, 0.4], 1, 2)
    assert (g2, trace, b_simple) == pytest.approx((0.4, 1.6, 4.0))
    # no signal left over the noise: undefined, neither infinite nor negative
    assert math.isnan(estimate([2.0], [1.0], 1, 2)[2])
    assert math.isnan(estimate([2.0], [0.9], 1, 2)[2])
    with pytest.raises(ValueError, match="b_small"):
        estimate([1.0], [1.0], 4, 4)


def test_noise_scale_at_leaves_the_model_and_rng_alone():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    data = TaskData(
        name="echo",
        vocab_size=4,
        out_vocab=4,
        train=torch.randint(4, (1024,), generator=gen),
        valid=torch.randint(4, (4096,), generator=gen),
        lags=[2],
    )
    model = RecurrentModel("lstm", 4, 4, 1, embedding_size=8, hidden_size=16)
    cfg = OmegaConf.structured(Config)
    cfg.num_steps = 8
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    model.eval()
    out = noise_scale_at(model, data, cfg, "cpu")
    assert set(out) == {"noise_g2", "noise_trace", "noise_b_simple", "noise_b_small", "noise_b_big"}
    assert (out["noise_b_small"], out["noise_b_big"]) == (8, 64)
    for key in ("noise_g2", "noise_trace", "noise_b_simple"):
        assert math.isfinite(out[key]) and out[key] > 0, key
    assert model.training is False
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert noise_scale_at(model, data, cfg, "cpu") == out  # deterministic
