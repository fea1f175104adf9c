"""How long a dependency a network uses, measured four ways on held-out data (../shared/DESIGN.md, issue 3).

Every measure reads the held-out stream laid out as in evaluation: `data.rows("valid", cfg.eval.rows)` cuts
it into B rows of L columns; the state starts at zero at each row start and is carried along the row ("full
context"). Positions are picked deterministically (spread evenly over the rows), so two runs on the same data
measure the same positions, and no random generator is used, so measuring mid-training does not perturb
training. Confidence intervals are two-sided at level `cfg.measure.ci_level` (default 95 %).

1. Recall profile (echo/lags only). For each lag k of the task, acc_k = the held-out accuracy of head k
   (argmax prediction of x_{t-k}) over every position with a defined target, state carried along each row;
   the CI is the Wilson score interval. A lag is *reached* when acc_k >= chance + chance_margin and the CI's
   lower end > chance (chance = 1 / vocabulary size). `span` = the largest lag L of the task such that L and
   every shorter lag of the task are reached (0 if the shortest is not). `memory_capacity` = the sum over the
   task's lags of (acc_k - chance) / (1 - chance) on the raw accuracies: a term below chance is negative, so
   noise around chance averages out instead of adding up to a positive bias. It sums over the task's lags
   only (e.g. 1, 2, 4, ..., 64), so it is Jaeger's memory capacity only when the lags are 1..K.

2. Context ablation (Khandelwal et al. 2018). P = `context_positions` target positions (b, t) with
   t >= max(d) - 1 and every head's target defined. For each d in `contexts` the network reads only
   x_{t-d+1..t} from a zero state (state reset d tokens before the target) and its loss at t is taken; every
   d uses the SAME positions, and so does the full-context loss (state carried from the row start). The loss
   at a position is the cross-entropy per target token (mean over heads), i.e. the training loss. Profile:
   `value` = mean loss over the P positions with a t-interval; the full-context row has k = -1
   (`FULL_CONTEXT`). `effective_context` = the smallest tried d such that d and every larger tried d have
   loss_d <= full + max(context_tolerance * full, context_abs_tolerance). Requiring the larger d too makes it
   robust to a non-monotone profile; it equals "the smallest d within tolerance" when the profile falls
   monotonically. The absolute floor (default 0.01 nats) keeps a near-perfect model from being judged on
   thousandths of a nat (a recall network with full loss 0.04 nats loses ~0.001 nats when its state starts
   from zero rather than from a typical carried state); it is below 1 % of any text loss, so text follows
   Khandelwal's relative rule. If even the largest d fails, `effective_context` = the largest d tried and
   `effective_context_censored` = True. A network whose target at t depends on x_{t-k} needs d = k + 1.

3. Gradient horizon. W = `horizon_windows` held-out windows of K + 1 tokens (K = `horizon_max_k`), each
   starting from the state carried along its row. With e the embedding output (made a leaf), ell = the
   training loss at the window's last position t (mean over heads) and g(k) = the mean over windows of
   ||d ell / d e_{t-k}||_2, one backward pass gives g(0..K). Profile: `value` = g(k) / max_j g(j), `raw` =
   g(k), and a t-interval across windows scaled the same way. `gradient_horizon` = the largest k with
   g(k) >= horizon_fraction * max_j g(j) (0 when g is zero everywhere). Why not DESIGN.md's "the first k where
   g falls below a fraction of g(0)": a network that copies x_{t-k} has g(0) = 0 (its output ignores the
   current input) and a gradient that peaks at k, so g(0) is no scale and the first drop can come before the
   peak. For a profile that peaks at 0 and decays monotonically the two definitions agree.
   `gradient_horizon_censored` = the horizon reached K (the window was too short to see the gradient fall).
   `gradient_log_slope` = the least-squares slope of ln g(k) on k over the far half, k in [K/2, K] with g > 0
   (where float32 underflows to 0 there: over the k >= the peak with g > 0; None with fewer than two such k):
   the rate per step at which the backpropagated gradient grows (> 0) or vanishes (< 0), away from the near
   structure a task imposes. `gradient_explodes` = that slope is > 0 and g(K) >= max over k <= K/2 of g(k):
   the gradient grows with distance until it is larger far away than anywhere near (Pascanu et al. 2013).
   `gradient_peak_norm` = max_k g(k), the scale the profile was divided by.
   Caveat: the horizon describes the network's dynamics (how far a full-BPTT gradient would reach), not what
   truncated training used nor what the network learned. An LSTM that failed to learn echo lag 8 at
   num_steps 4 can be a near-integrator: g(k) stays at ~30 % of its peak out to k = 128 (horizon censored at
   K, log-slope ~ 0) while its peak norm is ~50x below a trained network's, and recall, context and probe all
   say it uses nothing beyond 1-2 steps. Read the horizon together with the log-slope and the peak norm.

4. Linear probe. On the top-layer hidden state h_t (the decoder's input; an LSTM's cell state is not read), a
   least-squares (ridge) linear classifier to one-hot targets decodes the class of x_{t-k}, for k = 0 ..
   `probe_max_k`; it is fitted on positions of the first half of the rows and tested on the second half (at
   most `probe_positions` each, t >= probe_max_k). Classes: the tokens themselves when the vocabulary has at
   most `probe_max_classes` types, else the (probe_max_classes - 1) most frequent types of the held-out
   stream and one class for the rest. Probe chance = the frequency of the most frequent class among the test
   positions (the best constant guess). `value` = test accuracy with a Wilson interval. `probe_span` = the
   largest k >= 1 such that every k' in 1..k is reached (the recall rule, against probe chance). It separates
   the information the state keeps (probe) from the information the network uses (recall, context).

`measure_all` returns (summary scalars, profiles frame). The frame is tidy, with columns `measure` ("recall",
"context", "gradient", "probe"), `k` (lag, context length d or distance; -1 = full context), `value`,
`ci_low`, `ci_high`, `n` (positions, windows or test predictions behind the value), `raw` (unnormalised mean
gradient norm; NaN for the other measures) and `chance` (recall and probe; NaN otherwise).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from scipy.special import stdtrit
from torch.nn import functional as F

from sweep.data import IGNORE
from sweep.model import RecurrentModel, State
from sweep.tasks import TaskData

FULL_CONTEXT = -1  # `k` of the full-context row of the context profile
COLUMNS = ["measure", "k", "value", "ci_low", "ci_high", "n", "raw", "chance"]
_CHUNK = 64  # columns per step of the full-context pass; gradient windows start at multiples of it


# ----------------------------------------------------------------------------------------------------------
# Positions


def _spread(n: int, count: int) -> torch.Tensor:
    """`count` distinct indices spread evenly over range(n) (all of them when count >= n)."""
    if count >= n:
        return torch.arange(n)
    return torch.arange(count) * (n - 1) // max(count - 1, 1)


def _grid_positions(rows: int, lo: int, hi: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `count` (row, column) pairs spread evenly over rows x columns [lo, hi), row-major."""
    width = hi - lo
    if width <= 0 or rows <= 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    idx = _spread(rows * width, count)
    return idx // width, lo + idx % width


@dataclass
class _Plan:
    """Which held-out positions each measure reads; all (row, column) index tensors."""

    contexts: list[int]
    ctx_b: torch.Tensor
    ctx_t: torch.Tensor
    probe_ks: list[int]
    probe_train: tuple[torch.Tensor, torch.Tensor]
    probe_test: tuple[torch.Tensor, torch.Tensor]
    horizon_k: int
    grad_b: torch.Tensor
    grad_s: torch.Tensor


def _plan(m: DictConfig, rows: int, length: int, max_lag: int, device: torch.device | str) -> _Plan:
    # Context: target column t needs the window [t - d + 1, t] inside its row and every head's target.
    contexts = sorted({int(d) for d in m.contexts if max(d - 1, max_lag) < length})
    ctx_lo = max(max(contexts, default=1) - 1, max_lag)
    ctx_b, ctx_t = _grid_positions(rows, ctx_lo, length, m.context_positions if contexts else 0)

    probe_k = min(int(m.probe_max_k), length - 1) if m.probe else -1
    half = max(rows // 2, 1)
    probe_train = _grid_positions(half, probe_k, length, m.probe_positions if probe_k >= 0 else 0)
    test_b, test_t = _grid_positions(rows - half, probe_k, length, m.probe_positions if probe_k >= 0 else 0)

    # Gradient windows start where the full pass saved a carried state (multiples of _CHUNK), else at 0.
    horizon_k = min(int(m.horizon_max_k), length - 1)
    starts = [s for s in range(_CHUNK, length - horizon_k, _CHUNK)] or [0]
    idx = _spread(rows * len(starts), m.horizon_windows)
    grad_b, grad_s = idx // len(starts), torch.tensor(starts)[idx % len(starts)]
    return _Plan(
        contexts=contexts,
        ctx_b=ctx_b.to(device),
        ctx_t=ctx_t.to(device),
        probe_ks=list(range(probe_k + 1)),
        probe_train=(probe_train[0].to(device), probe_train[1].to(device)),
        probe_test=((test_b + half).to(device), test_t.to(device)),
        horizon_k=horizon_k,
        grad_b=grad_b.to(device),
        grad_s=grad_s.to(device),
    )


# ----------------------------------------------------------------------------------------------------------
# Model helpers


def _decode(model: RecurrentModel, hidden: torch.Tensor) -> torch.Tensor:
    """Logits [..., heads, out_vocab] from top-layer hidden states [..., H]."""
    return model.decoder(hidden).unflatten(-1, (model.num_heads, model.out_vocab))


def _token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per target token at each position: logits [N, heads, V], targets [N, heads] -> [N],
    the mean over the heads whose target is defined (0 where none is)."""
    ce = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    defined = (targets != IGNORE).sum(1)
    return ce.sum(1) / defined.clamp(min=1)


def _select_state(state: State, rows: torch.Tensor) -> State:
    if isinstance(state, tuple):
        return tuple(s[:, rows].contiguous() for s in state)  # type: ignore[return-value]
    return state[:, rows].contiguous()


def _stack_states(states: list[State]) -> State:
    if isinstance(states[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*states, strict=True))  # type: ignore[return-value]
    return torch.cat(states, dim=1)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------
# The full-context pass: recall counts, full-context loss, probe features and carried states, in one sweep


@dataclass
class _FullPass:
    correct: torch.Tensor  # [heads]
    count: torch.Tensor  # [heads]
    ctx_loss: torch.Tensor  # [P] full-context loss at the context positions
    probe_train_h: torch.Tensor  # [N, H]
    probe_test_h: torch.Tensor
    states: dict[int, State]  # carried state of every row before column s, for s in the gradient starts


def _gather(hidden: torch.Tensor, b: torch.Tensor, t: torch.Tensor, c0: int, out: torch.Tensor) -> None:
    """Copy hidden[b, t - c0] into out for the positions whose column falls in this chunk."""
    inside = (t >= c0) & (t < c0 + hidden.shape[1])
    if inside.any():
        out[inside] = hidden[b[inside], t[inside] - c0]


@torch.no_grad()
def _full_pass(
    model: RecurrentModel, inputs: torch.Tensor, targets: torch.Tensor, plan: _Plan, recall: bool
) -> _FullPass:
    rows, length = inputs.shape
    heads, device, size = targets.shape[0], inputs.device, model.rnn.hidden_size
    correct = torch.zeros(heads, device=device)
    count = torch.zeros(heads, device=device)
    ctx_h = torch.zeros(len(plan.ctx_b), size, device=device)
    train_h = torch.zeros(len(plan.probe_train[0]), size, device=device)
    test_h = torch.zeros(len(plan.probe_test[0]), size, device=device)
    wanted = set(plan.grad_s.tolist())
    states: dict[int, State] = {}
    state = model.init_state(rows, device)
    for c0 in range(0, length, _CHUNK):
        if c0 in wanted:
            states[c0] = state
        hidden, state = model.rnn(model.embedding(inputs[:, c0 : c0 + _CHUNK]), state)
        if recall:
            y = targets[:, :, c0 : c0 + _CHUNK].permute(1, 2, 0)  # [B, T, heads]
            mask = y != IGNORE
            correct += ((_decode(model, hidden).argmax(-1) == y) & mask).sum(dim=(0, 1))
            count += mask.sum(dim=(0, 1))
        _gather(hidden, plan.ctx_b, plan.ctx_t, c0, ctx_h)
        _gather(hidden, *plan.probe_train, c0, train_h)
        _gather(hidden, *plan.probe_test, c0, test_h)
    ctx_targets = targets[:, plan.ctx_b, plan.ctx_t].T  # [P, heads]
    ctx_loss = _token_loss(_decode(model, ctx_h), ctx_targets)
    return _FullPass(correct, count, ctx_loss, train_h, test_h, states)


# ----------------------------------------------------------------------------------------------------------
# Statistics


# The Wilson interval is written out instead of calling statsmodels' proportion_confint (the tests check the
# two agree), and the t quantile comes from scipy.special, not scipy.stats: importing those costs 1.2-1.6 s
# per job process, several times what all the measures take.
def _wilson(successes: np.ndarray, trials: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for binomial proportions (Wilson 1927; Brown, Cai & DasGupta 2001)."""
    n = np.maximum(np.asarray(trials, dtype=float), 1.0)
    p = np.asarray(successes, dtype=float) / n
    z = NormalDist().inv_cdf(0.5 + level / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def _mean_ci(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over axis 0 with a t-interval (NaN bounds with fewer than two samples)."""
    n = samples.shape[0]
    mean = samples.mean(axis=0)
    if n < 2:
        nan = np.full_like(mean, np.nan, dtype=float)
        return mean, nan, nan
    half = stdtrit(n - 1, 0.5 + level / 2) * samples.std(axis=0, ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half


def _reached(acc: np.ndarray, ci_low: np.ndarray, chance: float, margin: float) -> np.ndarray:
    return (acc >= chance + margin) & (ci_low > chance)


def _span(ks: list[int], reached: np.ndarray) -> int:
    """The largest k such that every k' <= k in `ks` is reached (0 if the smallest is not)."""
    span = 0
    for k, ok in sorted(zip(ks, reached.tolist(), strict=True)):
        if not ok:
            break
        span = k
    return int(span)


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _frame(measure: str, k, value, ci_low, ci_high, n, raw=np.nan, chance=np.nan) -> pd.DataFrame:
    frame = pd.DataFrame(
        {"k": np.asarray(k, dtype=np.int64), "value": np.asarray(value, dtype=float)}, columns=["k", "value"]
    )
    frame["ci_low"] = np.asarray(ci_low, dtype=float)
    frame["ci_high"] = np.asarray(ci_high, dtype=float)
    frame["n"] = np.asarray(n, dtype=np.int64)
    frame["raw"] = np.asarray(raw, dtype=float)
    frame["chance"] = np.asarray(chance, dtype=float)
    frame.insert(0, "measure", measure)
    return frame[COLUMNS]


# ----------------------------------------------------------------------------------------------------------
# 1. Recall profile


def recall_profile(
    lags: list[int], correct: np.ndarray, count: np.ndarray, chance: float, margin: float, level: float
) -> tuple[dict[str, Any], pd.DataFrame]:
    acc = correct / np.maximum(count, 1)
    low, high = _wilson(correct, count, level)
    reached = _reached(acc, low, chance, margin) & (count > 0)
    scalars = {
        "span": _span(lags, reached),
        "memory_capacity": float(np.sum((acc - chance) / (1 - chance))),
    }
    return scalars, _frame("recall", lags, acc, low, high, count, chance=chance)


# ----------------------------------------------------------------------------------------------------------
# 2. Context ablation


@torch.no_grad()
def context_losses(model: RecurrentModel, inputs: torch.Tensor, targets: torch.Tensor, plan: _Plan) -> np.ndarray:
    """Loss per target token [len(contexts), P] seeing only the last d tokens (zero state before them)."""
    b, t = plan.ctx_b, plan.ctx_t
    y = targets[:, b, t].T
    out = []
    for d in plan.contexts:
        cols = t[:, None] + torch.arange(1 - d, 1, device=t.device)
        hidden, _ = model.rnn(model.embedding(inputs[b[:, None], cols]))
        out.append(_token_loss(_decode(model, hidden[:, -1]), y))
    return torch.stack(out).cpu().double().numpy()


def effective_context(
    contexts: list[int], losses: np.ndarray, full: float, rel_tol: float, abs_tol: float
) -> tuple[int, bool]:
    """Smallest d from which every tried d is within tolerance of the full-context loss; censored if none."""
    within = losses <= full + max(rel_tol * full, abs_tol)
    for i, d in enumerate(contexts):
        if within[i:].all():
            return int(d), False
    return int(contexts[-1]), True


def context_profile(
    contexts: list[int], losses: np.ndarray, full_loss: np.ndarray, m: DictConfig
) -> tuple[dict[str, Any], pd.DataFrame]:
    level = m.ci_level
    mean, low, high = _mean_ci(losses.T, level)
    full, full_low, full_high = _mean_ci(full_loss[:, None], level)
    d, censored = effective_context(contexts, mean, float(full[0]), m.context_tolerance, m.context_abs_tolerance)
    n = losses.shape[1]
    frame = _frame(
        "context",
        [*contexts, FULL_CONTEXT],
        [*mean, full[0]],
        [*low, full_low[0]],
        [*high, full_high[0]],
        [n] * (len(contexts) + 1),
    )
    scalars = {
        "effective_context": d,
        "effective_context_censored": censored,
        "full_context_loss": _finite(float(full[0])),
    }
    return scalars, frame


# ----------------------------------------------------------------------------------------------------------
# 3. Gradient horizon


def input_gradient_norms(
    model: RecurrentModel, inputs: torch.Tensor, targets: torch.Tensor, plan: _Plan, states: dict[int, State]
) -> np.ndarray:
    """||d ell_t / d e_{t-k}|| for k = 0..K, one row per window with a defined target: [windows, K + 1]."""
    K, b, s = plan.horizon_k, plan.grad_b, plan.grad_s
    cols = s[:, None] + torch.arange(K + 1, device=s.device)
    with torch.no_grad():
        emb = model.embedding(inputs[b[:, None], cols])
        y = targets[:, b, s + K].T  # [W, heads]
        keep = (y != IGNORE).any(1)
        # the carried state of each window's row at its start column
        state = _stack_states([_select_state(states[int(si)], b[i : i + 1]) for i, si in enumerate(s)])
    emb.requires_grad_(True)
    # cuDNN's RNN backward refuses eval mode; the native kernel computes the same gradient
    cudnn_off = torch.backends.cudnn.flags(enabled=False) if emb.is_cuda else nullcontext()
    with torch.enable_grad(), cudnn_off:
        hidden, _ = model.rnn(emb, state)
        loss = _token_loss(_decode(model, hidden[:, -1]), y).sum()  # windows are independent rows
        (grad,) = torch.autograd.grad(loss, emb)
    norms = torch.linalg.vector_norm(grad, dim=-1).flip(1)  # column k = distance k from the target
    return norms[keep].cpu().double().numpy()


def gradient_profile(norms: np.ndarray, m: DictConfig) -> tuple[dict[str, Any], pd.DataFrame]:
    K = norms.shape[1] - 1
    ks = np.arange(K + 1)
    if norms.shape[0] == 0:  # no window had a defined target
        g = low = high = np.full(K + 1, np.nan)
    else:
        g, low, high = _mean_ci(norms, m.ci_level)
    peak = float(np.nanmax(g)) if np.isfinite(g).any() else 0.0
    scale = peak if peak > 0 else 1.0
    frame = _frame("gradient", ks, g / scale, low / scale, high / scale, [norms.shape[0]] * (K + 1), raw=g)
    scalars = gradient_summary(g, m.horizon_fraction)
    return scalars, frame


def gradient_summary(g: np.ndarray, fraction: float) -> dict[str, Any]:
    """Horizon, censoring, far-half log-slope and explosion of a mean gradient-norm profile g(0..K)."""
    K = len(g) - 1
    finite = np.isfinite(g)
    peak = float(np.max(g[finite])) if finite.any() else 0.0
    if peak <= 0:
        return {
            "gradient_horizon": 0,
            "gradient_horizon_censored": False,
            "gradient_peak_k": None,
            "gradient_peak_norm": 0.0,
            "gradient_log_slope": None,
            "gradient_explodes": False,
        }
    above = np.flatnonzero(finite & (g >= fraction * peak))
    horizon = int(above[-1])
    positive = finite & (g > 0)
    tail = np.arange(K // 2, K + 1)
    tail = tail[positive[tail]]
    if len(tail) < 2:  # float32 underflowed to 0 in the far half: fit the decay after the peak instead
        tail = np.arange(int(np.argmax(np.where(finite, g, -np.inf))), K + 1)
        tail = tail[positive[tail]]
    slope = float(np.polyfit(tail, np.log(g[tail]), 1)[0]) if len(tail) >= 2 else None  # least squares
    near_max = float(np.max(np.where(finite[: K // 2 + 1], g[: K // 2 + 1], 0.0)))
    explodes = bool(slope is not None and slope > 0 and finite[K] and g[K] >= near_max and K > 0)
    return {
        "gradient_horizon": horizon,
        "gradient_horizon_censored": bool(horizon == K and K > 0),
        "gradient_peak_k": int(np.argmax(np.where(finite, g, -np.inf))),
        "gradient_peak_norm": peak,
        "gradient_log_slope": _finite(slope),
        "gradient_explodes": explodes,
    }


# ----------------------------------------------------------------------------------------------------------
# 4. Linear probe


def probe_classes(valid: torch.Tensor, vocab_size: int, max_classes: int) -> torch.Tensor:
    """Token -> probe class: identity for small vocabularies, else the most frequent types plus an 'other'."""
    if vocab_size <= max_classes:
        return torch.arange(vocab_size)
    counts = torch.bincount(valid.cpu(), minlength=vocab_size)
    order = torch.argsort(counts, descending=True, stable=True)
    mapping = torch.full((vocab_size,), max_classes - 1, dtype=torch.long)
    mapping[order[: max_classes - 1]] = torch.arange(max_classes - 1)
    return mapping


def _probe_labels(classes: torch.Tensor, b: torch.Tensor, t: torch.Tensor, ks: list[int]) -> torch.Tensor:
    """Class of x_{t-k} for each position and k: [N, len(ks)]."""
    return classes[b[:, None], t[:, None] - torch.tensor(ks, device=t.device)]


def ridge_probe_accuracy(
    train_h: torch.Tensor,
    train_y: torch.Tensor,
    test_h: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    ridge: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Test correct counts and majority-class counts per column of the labels [N, K]: one least-squares fit.

    All K classifiers share the Gram matrix, so the ridge system is solved once for every k's one-hot targets.
    """
    x = torch.cat([train_h, torch.ones(len(train_h), 1, device=train_h.device)], 1).double()
    gram = x.T @ x
    gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    onehot = F.one_hot(train_y, num_classes).flatten(1).double()  # [N, K * C]
    weights = torch.linalg.solve(gram, x.T @ onehot)
    xt = torch.cat([test_h, torch.ones(len(test_h), 1, device=test_h.device)], 1).double()
    pred = (xt @ weights).unflatten(1, (test_y.shape[1], num_classes)).argmax(-1)
    correct = (pred == test_y).sum(0)
    majority = F.one_hot(test_y, num_classes).sum(0).max(-1).values
    return correct.cpu().numpy().astype(float), majority.cpu().numpy().astype(float)


def probe_profile(
    model: RecurrentModel, data: TaskData, inputs: torch.Tensor, plan: _Plan, full: _FullPass, m: DictConfig
) -> tuple[dict[str, Any], pd.DataFrame]:
    classes = probe_classes(data.valid, data.vocab_size, m.probe_max_classes).to(inputs.device)[inputs]
    num_classes = int(classes.max()) + 1
    train_y = _probe_labels(classes, *plan.probe_train, plan.probe_ks)
    test_y = _probe_labels(classes, *plan.probe_test, plan.probe_ks)
    correct, majority = ridge_probe_accuracy(
        full.probe_train_h, train_y, full.probe_test_h, test_y, num_classes, m.probe_ridge
    )
    n = len(test_y)
    acc = correct / n
    low, high = _wilson(correct, np.full_like(correct, n), m.ci_level)
    chance = majority / n
    reached = (acc >= chance + m.chance_margin) & (low > chance)
    ks = np.asarray(plan.probe_ks)
    memory = ks >= 1  # k = 0 is the current input, not memory
    scalars = {
        "probe_span": _span(ks[memory].tolist(), reached[memory]),
        "probe_chance": _finite(float(chance.max())),
        "probe_classes": num_classes,
        "probe_max_k": int(ks[-1]),
    }
    return scalars, _frame("probe", ks, acc, low, high, [n] * len(ks), chance=chance)


# ----------------------------------------------------------------------------------------------------------


def _empty_context() -> dict[str, Any]:
    return {"effective_context": None, "effective_context_censored": None, "full_context_loss": None}


def measure_all(
    model: RecurrentModel, data: TaskData, cfg: DictConfig, device: torch.device | str
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Every measure on the held-out stream: (run.json summary scalars, tidy profiles); see the module doc.

    The model is put in eval mode and restored; its parameters and their .grad are left untouched.
    """
    start = time.perf_counter()
    m = cfg.measure
    was_training = model.training
    model.eval()
    try:
        inputs, targets = (x.to(device) for x in data.rows("valid", cfg.eval.rows))
        lags = list(data.lags) if data.lags else []
        plan = _plan(m, inputs.shape[0], inputs.shape[1], max(lags, default=0), inputs.device)
        full = _full_pass(model, inputs, targets, plan, recall=bool(lags))

        scalars: dict[str, Any] = {"span": None, "memory_capacity": None}
        frames = []
        if lags:
            s, f = recall_profile(
                lags,
                full.correct.cpu().double().numpy(),
                full.count.cpu().double().numpy(),
                data.chance,
                m.chance_margin,
                m.ci_level,
            )
            scalars.update(s)
            frames.append(f)
        if plan.contexts and len(plan.ctx_b):
            losses = context_losses(model, inputs, targets, plan)
            s, f = context_profile(plan.contexts, losses, full.ctx_loss.cpu().double().numpy(), m)
            scalars.update(s)
            frames.append(f)
        else:
            scalars.update(_empty_context())
        s, f = gradient_profile(input_gradient_norms(model, inputs, targets, plan, full.states), m)
        scalars.update(s)
        frames.append(f)
        if m.probe and len(plan.probe_train[0]) and len(plan.probe_test[0]):
            s, f = probe_profile(model, data, inputs, plan, full, m)
            scalars.update(s)
            frames.append(f)
    finally:
        model.train(was_training)
    scalars["measure_seconds"] = time.perf_counter() - start
    return scalars, pd.concat(frames, ignore_index=True)
