"""Gradient noise scale B_simple (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training",
appendix A), measured on held-out windows at each evaluation point; docs/measures.md gives the reasons.

The squared norm of a minibatch-mean gradient over B independent examples has expectation
E|G_B|^2 = |G|^2 + tr(Sigma) / B, where G is the true gradient and Sigma the per-example gradient covariance.
Two batch sizes B_small < B_big give unbiased estimates of both terms:

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)

and B_simple = tr(Sigma) / |G|^2, the batch size above which a larger batch stops buying a proportional speed-up.
Each estimate alone is very noisy and the ratio of noisy quantities is biased, so, as McCandlish et al. do, the
numerator and the denominator are averaged over many measurements first and divided once. When the averaged
|G|^2 estimate is <= 0 (the noise swamps the signal, e.g. near a minimum) B_simple is undefined: `estimate`
returns NaN for it and `noise_scale_at` returns None.

Here an "example" is a held-out row of num_steps tokens, the unit of batch_size, so B_simple is in rows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sweep.data import IGNORE
from sweep.model import RecurrentModel, sequence_loss


def estimate(
    g2_small: np.ndarray | list[float], g2_big: np.ndarray | list[float], b_small: float, b_big: float
) -> tuple[float, float, float]:
    """(|G|^2, tr(Sigma), B_simple) from squared norms of minibatch-mean gradients at two batch sizes.

    `g2_small` and `g2_big` are arrays of measurements (paired or not); each is averaged before the estimators
    are formed (the estimators are linear, so this equals averaging the per-pair estimates), and B_simple is
    the ratio of the averages. B_simple is NaN when the |G|^2 estimate is <= 0.
    """
    small = np.asarray(g2_small, dtype=float)
    big = np.asarray(g2_big, dtype=float)
    if not (0 < b_small < b_big):
        raise ValueError(f"b_small, b_big: need 0 < b_small < b_big, got {b_small}, {b_big}")
    if small.size == 0 or big.size == 0:
        raise ValueError("g2_small, g2_big: need at least one measurement each")
    s, b = float(small.mean()), float(big.mean())
    g2 = (b_big * b - b_small * s) / (b_big - b_small)
    trace = (s - b) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace, (trace / g2 if g2 > 0 else math.nan)


def _sq_norm(grads: tuple[torch.Tensor | None, ...]) -> float:
    return float(sum(float((g.double() ** 2).sum()) for g in grads if g is not None))


def noise_scale_at(model: RecurrentModel, data: Any, cfg: DictConfig, device: torch.device | str) -> dict[str, Any]:
    """B_simple of `model` now, on the held-out stream (the run's num_steps; module doc for the method).

    The stream is cut into `measure.noise_rows` rows; the state is warmed by reading every row up to the first
    window and then carried (detached, as in training) through `measure.noise_windows` windows of num_steps
    columns at the end of the rows. In each window: the gradient of the mean loss over each group of
    `measure.noise_small` rows (B_small) and, as their target-weighted mean, over all rows (B_big). Leaves the
    parameters' .grad, the train/eval mode and the global RNG untouched.
    """
    rows = int(OmegaConf.select(cfg, "measure.noise_rows", default=64))
    small = int(OmegaConf.select(cfg, "measure.noise_small", default=8))
    windows = int(OmegaConf.select(cfg, "measure.noise_windows", default=4))
    num_steps = int(cfg.num_steps)
    if not (0 < small < rows and rows % small == 0):
        raise ValueError(f"measure.noise_small: must divide measure.noise_rows and be smaller, got {small}, {rows}")
    empty: dict[str, Any] = {
        "noise_g2": None,
        "noise_trace": None,
        "noise_b_simple": None,
        "noise_b_small": small,
        "noise_b_big": rows,
    }
    inputs, targets = (x.to(device) for x in data.rows("valid", rows))
    windows = min(windows, inputs.shape[1] // num_steps)
    if windows < 1:
        return empty
    first = inputs.shape[1] - windows * num_steps
    params = [p for p in model.parameters() if p.requires_grad]
    groups = rows // small
    g2_small: list[float] = []
    g2_big: list[float] = []
    was_training = model.training
    model.train()  # cuDNN's RNN backward needs training mode; these cells behave the same in both
    try:
        with torch.no_grad():
            state = model(inputs[:, :first])[1] if first > 0 else model.init_state(rows, inputs.device)
        for w in range(windows):
            cols = slice(first + w * num_steps, first + (w + 1) * num_steps)
            x, y = inputs[:, cols], targets[:, :, cols]
            total: list[torch.Tensor] | None = None
            counted = 0
            for g in range(groups):
                part = slice(g * small, (g + 1) * small)
                yg = y[:, part]
                n = int((yg != IGNORE).sum())
                if n == 0:
                    continue
                st = tuple(s[:, part] for s in state) if isinstance(state, tuple) else state[:, part]
                with torch.enable_grad():
                    logits, _ = model(x[part], st)
                    grads = torch.autograd.grad(sequence_loss(logits, yg), params, allow_unused=True)
                if n == small * num_steps * y.shape[0]:  # a full group: its mean-per-token loss is one sample
                    g2_small.append(_sq_norm(grads))
                weighted = [torch.zeros_like(p) if gr is None else gr * n for p, gr in zip(params, grads, strict=True)]
                total = weighted if total is None else [a + b for a, b in zip(total, weighted, strict=True)]
                counted += n
            if total is not None and counted:
                g2_big.append(_sq_norm(tuple(t / counted for t in total)))
            with torch.no_grad():
                _, state = model(x, state)
    finally:
        model.train(was_training)
    if not g2_small or not g2_big:
        return empty
    g2, trace, b_simple = estimate(g2_small, g2_big, small, rows)
    return {
        **empty,
        "noise_g2": g2,
        "noise_trace": trace,
        "noise_b_simple": b_simple if math.isfinite(b_simple) else None,
    }
