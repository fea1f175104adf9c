"""How long a dependency a network uses, measured on held-out data; docs/measures.md gives the reasons.

Every measure reads the held-out stream laid out as in evaluation: `data.rows("valid", cfg.eval.rows)` cuts
it into B rows of L columns; the state starts at zero at each row start and is carried along the row ("full
context"). Positions are picked deterministically (spread evenly over the rows), so two runs on the same data
measure the same positions. The only random draws (the context ablation's noise tokens) come from a private
`torch.Generator` with a fixed seed, so measuring never touches the global RNG (training is not perturbed)
and two runs on the same data measure the same corruption. Intervals are two-sided at `cfg.measure.ci_level`.

1. Recall profile (echo/lags only). For each lag k of the task, acc_k = the held-out accuracy of head k
   (argmax prediction of x_{t-k}) over every position with a defined target, state carried along each row;
   the CI is the Wilson score interval. A head with no held-out target (a lag longer than a held-out row) is
   missing: its row has n = 0 and value NaN, and it is left out of memory_capacity. A lag is *reached* when
   acc_k >= chance + chance_margin and the CI's lower end > chance (chance = 1 / vocabulary size). `span` =
   the largest lag of the task such that it and every shorter lag of the task are reached (0 if the shortest
   is not). `memory_capacity` = the sum over the task's measured lags of (acc_k - chance) / (1 - chance) on the
   raw accuracies: a term below chance is negative, so noise around chance averages out instead of adding up.

2. Context ablation, "warm-unigram" (after Khandelwal et al. 2018). P = `context_positions` target positions
   (b, t): a grid of columns shared by every row (so the carried state is needed at few columns), with every
   defined head's target defined. Let D = the largest context tried and S = 2 D. For position t the network
   starts from the state carried along the row up to column t - S + 1 (a real, warm state) and reads S
   tokens: for context d, the last d tokens x_{t-d+1..t} are the real ones and the S - d older ones are
   replaced by tokens drawn i.i.d. from the held-out stream's unigram distribution (one noise draw per
   position, shared by every d, from a generator seeded with `NOISE_SEED`). So the state stays in its usual
   range (a zero state is one the network never saw in training, and restarting from it reads as context use
   even for a network at chance), and the information older than d is destroyed by >= D tokens of noise. The
   loss at t (cross-entropy per target token, mean over heads) is compared with the full-context loss at the
   SAME positions: per d, a one-sided paired t-test of "ablated loss > full loss" (p_value column; p = 1
   when every difference is 0). Profile: `value` = mean ablated loss with a t-interval; the full-context row
   has k = -1 (`FULL_CONTEXT`). `effective_context` = the smallest tried d such that for d and every larger
   tried d the mean paired increase (mean ablated - mean full) is <= max(context_tolerance * full,
   context_abs_tolerance). The rule is on the point estimate, not on the CI's upper bound: an upper-bound rule
   makes the context grow with the spread of the per-position losses and shrink with more positions, so a
   noisy network that uses nothing would read as using context; the p-values are stored for the analysis.
   The absolute floor (default 0.01 nats) keeps a near-perfect model from being judged on thousandths of a
   nat. If even the largest d fails, `effective_context` = the largest d and `effective_context_censored` =
   True. A network whose target at t depends on x_{t-k} needs d = k + 1. Cost: the shared noise prefix is run
   once per position and branched per d (S + sum(d) recurrent steps on a batch of P).

3. Gradient horizon. W = `horizon_windows` held-out windows of K + 1 tokens (K = `horizon_max_k`), each
   starting from the state carried along its row. With e the embedding output (made a leaf), ell = the
   training loss at the window's last position t (mean over heads) and g(k) = the mean over windows of
   ||d ell / d e_{t-k}||_2, one backward pass gives g(0..K). Profile: `value` = g(k) / max_j g(j), `raw` =
   g(k), and a t-interval across windows scaled the same way. `gradient_horizon` = the largest k with
   g(k) >= horizon_fraction * max_j g(j) (0 when g is zero everywhere); not "the first k below a fraction
   of g(0)", because a network that copies x_{t-k} has g(0) = 0 and its gradient peaks at k.
   `gradient_horizon_censored` = the horizon reached K (the window was too short to see the gradient fall).
   `gradient_log_slope` = the least-squares slope of ln g(k) on k over the far half, k in [K/2, K] with g > 0
   (where float32 underflows to 0 there: over the k >= the peak with g > 0; None with fewer than two such k),
   with `gradient_log_slope_ci_low/high` its t-interval from the least-squares standard error (None with
   fewer than three points). `gradient_flat` = that interval lies inside [-flat_slope, +flat_slope]
   (`measure.flat_slope`, default 0.01 per step: a factor of at most e^(0.01 K/2) over the far half): the
   gradient neither vanishes nor grows with distance, as for a near-integrator. A flat or censored profile
   says the network's dynamics reach far, not that it learned a length; the analysis must not read its
   horizon as one. `gradient_explodes` = the interval's lower end > flat_slope and g(K) >= max over
   k <= K/2 of g(k): the gradient grows with distance until it is larger far away than anywhere near
   (Pascanu et al. 2013). `gradient_peak_norm` = max_k g(k), the scale the profile was divided by.

4. Linear probe. On the top-layer hidden state h_t (the decoder's input) and, for an LSTM, also on the
   top-layer cell state c_t, a least-squares (ridge) linear classifier to one-hot targets decodes the class of
   x_{t-k}, for k = 0 .. `probe_max_k`; it is fitted on positions of the first half of the rows and tested on
   the second half (at most `probe_positions` each, t >= probe_max_k). Classes: the tokens themselves when the
   vocabulary has at most `probe_max_classes` types, else the (probe_max_classes - 1) most frequent types and
   one class for the rest. Probe chance = the frequency of the most frequent class among the test positions.
   `value` = test accuracy with a Wilson interval. `probe_span` (h) and `probe_span_cell` (c; None for GRU
   and RNN, which have no cell state) = the largest k >= 1 such that every k' in 1..k is reached (the recall
   rule, against probe chance). It separates the information the state keeps from the information used.

5. Gradient growth with window length, at fixed parameters (claim C5). For each L in `growth_lengths`, the
   same W = `growth_windows` held-out (row, start) pairs: from the state carried along the row to the start
   (detached, as in training), the training loss of the window of L tokens (sequence_loss: mean per target
   token) and the global L2 norm of its gradient w.r.t. every parameter, one window (one row) at a time.
   Profile rows measure="growth", k = L, value = mean norm over windows with a t-interval, n = windows,
   net = "trained" or "initial". `growth_slope` = the least-squares slope of ln norm on ln L; it is computed
   per window and averaged (the same as the slope of the mean log norm), and `growth_slope_ci_low/high` is
   the t-interval of that mean over the W per-window slopes: windows are the independent replicates, and
   the lengths within a window are paired, so pooling all (window, L) points would overstate the degrees of
   freedom. `growth_ratio` = mean norm at the longest L / mean norm at the shortest. A mean-per-token loss of
   a network without recurrence has a gradient that does not grow with L (it averages more terms); one whose
   backward Jacobian has gain > 1 grows geometrically. With `optim.loss_reduction` = "sum" (the TF PTB
   tutorial's loss) the window's loss is, as training then back-propagates it, the mean per target token x the
   defined targets per head (L when all are defined); that adds exactly 1 to the slope of every window (the
   norm is L times larger), amplification or not. The same keys with suffix `_initial` describe the network at
   initialisation when `measure_all(..., initial=net)` is given (None otherwise).

6. State-to-state Jacobian product, at fixed parameters (claim C5, after Pascanu et al. 2013). On the same
   W = `growth_windows` (row, start) pairs and lengths L in `growth_lengths`: the state s = every layer's h
   (and, for an LSTM, every layer's c), concatenated, D numbers, is taken from the row's carried state at the
   start and made a leaf; the cell reads the max(L) real held-out tokens that follow (parameters frozen, in
   float64 on a copy of the cell, so a product of 128 factors neither under- nor overflows), and for each L
   ||J_L||_F^2 of J_L = d s_{start+L} / d s_start is estimated as the mean over `jacobian_probes` Gaussian
   probes v ~ N(0, I_D) of ||v^T J_L||^2 (unbiased: E||v^T J||^2 = ||J||_F^2), one backward pass per L on a
   batch of W x probes rows. The probes are drawn once per window from a generator seeded with
   `JACOBIAN_SEED` and shared by every L: the lengths are compared on the same probes (paired, like the growth
   windows), so most of the probe noise cancels in the slope (all of it when J_L is a scalar times a fixed
   matrix). Cost: ~20 ms for a hidden-64 RNN, ~70 ms for an LSTM (one thread, W = 8, 4 probes, L to 128).
   Profile rows measure="jacobian", k = L, value = the mean over windows of ln(||J_L||_F / sqrt(D)) with a
   t-interval, n = windows (a window whose estimate is 0 or not finite at L is left out there), net as for
   growth. 0 means the product preserves norm on average (an orthogonal J has ||J||_F = sqrt(D)).
   `jacobian_log_norm_max_L` = that mean at the largest L; `jacobian_slope` = the least-squares slope of the
   mean on L (per step: ln of the mean gain of one step), `jacobian_slope_ci_low/high` its t-interval from the
   least-squares standard error (slope_ci; None with fewer than three lengths: it widens when the profile bends
   away from a straight line, e.g. a gain that saturates); `jacobian_explodes` = the interval's
   lower end > `flat_slope` and the value at the largest L > 0: the product grows with L and is larger than
   norm-preserving. Keys `_initial`: the network at initialisation; all None when `jacobian_probes` = 0.

`measure_all` returns (summary scalars, profiles frame). The frame is tidy, with columns `measure` ("recall",
"context", "gradient", "probe", "probe_cell", "growth", "jacobian"), `k` (lag, context length d, distance or
window length; -1 = full context), `value`, `ci_low`, `ci_high`, `n` (positions, windows or test predictions
behind the value), `raw` (unnormalised mean gradient norm; NaN for the other measures), `chance` (recall and
probes; NaN otherwise), `p_value` (context rows; NaN otherwise) and `net` ("initial" for growth and jacobian
rows of the initial network, "trained" everywhere else).
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from scipy.special import stdtr, stdtrit
from torch import nn
from torch.nn import functional as F

from sweep import record
from sweep.data import IGNORE
from sweep.model import RecurrentModel, State, sequence_loss
from sweep.tasks import TaskData

FULL_CONTEXT = -1  # `k` of the full-context row of the context profile
COLUMNS = ["measure", "k", "value", "ci_low", "ci_high", "n", "raw", "chance", "p_value", "net"]
CONTEXT_METHOD = "warm-unigram"
NOISE_SEED = 20180512  # the context ablation's noise tokens: fixed, so every run corrupts the same way
JACOBIAN_SEED = 20130216  # the Jacobian measure's probe vectors: fixed, so every run probes the same way
_CHUNK = 64  # columns per step of the full-context pass; gradient and growth windows start at multiples of it
_GROWTH_LENGTHS = [4, 8, 16, 32, 64, 128]


def _opt(cfg: DictConfig, key: str, default: Any) -> Any:
    """A measure key that older configs (records of earlier versions) may lack."""
    return OmegaConf.select(cfg, f"measure.{key}", default=default)


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
    if width <= 0 or rows <= 0 or count <= 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    idx = _spread(rows * width, count)
    return idx // width, lo + idx % width


def _column_grid(rows: int, lo: int, hi: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """About `count` (row, column) pairs on a few columns of [lo, hi) shared by every row: the ablation needs
    the carried state at each position's stretch start, and shared columns keep those few."""
    width = hi - lo
    if width <= 0 or rows <= 0 or count <= 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    cols = lo + _spread(width, -(-count // rows))
    b = torch.arange(rows).repeat_interleave(len(cols))
    t = cols.repeat(rows)
    keep = _spread(len(b), count)
    return b[keep], t[keep]


@dataclass
class _Plan:
    """Which held-out positions each measure reads; all (row, column) index tensors."""

    contexts: list[int]
    ctx_span: int  # S: columns each ablated position reads (noise + real)
    ctx_b: torch.Tensor
    ctx_t: torch.Tensor
    probe_ks: list[int]
    probe_train: tuple[torch.Tensor, torch.Tensor]
    probe_test: tuple[torch.Tensor, torch.Tensor]
    horizon_k: int
    grad_b: torch.Tensor
    grad_s: torch.Tensor
    growth_lengths: list[int]
    growth_b: torch.Tensor
    growth_s: torch.Tensor

    def state_columns(self) -> set[int]:
        """Columns where the full pass must save every row's carried state."""
        starts = (self.ctx_t - self.ctx_span + 1).tolist() if len(self.ctx_t) else []
        return {*starts, *self.grad_s.tolist(), *self.growth_s.tolist()}


def _window_starts(rows: int, length: int, span: int, count: int, first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` (row, start) pairs with start a multiple of _CHUNK (>= _CHUNK when it fits, so the state is
    warm and lag targets are defined) and start + span <= length; start `first` when nothing else fits."""
    starts = list(range(_CHUNK, length - span + 1, _CHUNK)) or [first]
    idx = _spread(rows * len(starts), count)
    return idx // len(starts), torch.tensor(starts)[idx % len(starts)]


def _plan(m: DictConfig, cfg: DictConfig, rows: int, length: int, max_lag: int, device: torch.device | str) -> _Plan:
    # Context: position t reads S = 2 max(d) columns [t - S + 1, t] of its row and needs every head's target.
    contexts = sorted({int(d) for d in m.contexts if max(2 * d - 1, max_lag) < length})
    span = 2 * max(contexts, default=0)
    ctx_b, ctx_t = _column_grid(rows, max(span - 1, max_lag), length, m.context_positions if contexts else 0)

    probe_k = min(int(m.probe_max_k), length - 1) if m.probe else -1
    half = max(rows // 2, 1)
    probe_train = _grid_positions(half, probe_k, length, m.probe_positions if probe_k >= 0 else 0)
    test_b, test_t = _grid_positions(rows - half, probe_k, length, m.probe_positions if probe_k >= 0 else 0)

    horizon_k = min(int(m.horizon_max_k), length - 1)
    grad_b, grad_s = _window_starts(rows, length, horizon_k + 1, m.horizon_windows)

    # every window, the shortest included, must hold a defined target: it starts at max_lag or later
    lengths = sorted({int(n) for n in _opt(cfg, "growth_lengths", _GROWTH_LENGTHS) if 1 <= n <= length - max_lag})
    growth_b, growth_s = _window_starts(
        rows, length, max(lengths, default=0), int(_opt(cfg, "growth_windows", 8)), first=max_lag
    )
    return _Plan(
        contexts=contexts,
        ctx_span=span,
        ctx_b=ctx_b.to(device),
        ctx_t=ctx_t.to(device),
        probe_ks=list(range(probe_k + 1)),
        probe_train=(probe_train[0].to(device), probe_train[1].to(device)),
        probe_test=((test_b + half).to(device), test_t.to(device)),
        horizon_k=horizon_k,
        grad_b=grad_b.to(device),
        grad_s=grad_s.to(device),
        growth_lengths=lengths,
        growth_b=growth_b.to(device),
        growth_s=growth_s.to(device),
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


def _states_at(states: dict[int, State], b: torch.Tensor, s: torch.Tensor) -> State:
    """The carried state of row b[i] before column s[i], for every i: batch dimension = len(b)."""
    cols = sorted(set(s.tolist()))
    where = {c: i for i, c in enumerate(cols)}
    pos = torch.tensor([where[c] for c in s.tolist()], device=b.device, dtype=torch.long)

    def pick(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(parts, 1)[:, pos, b].contiguous()  # [layers, cols, rows, H] -> [layers, N, H]

    first = states[cols[0]]
    if isinstance(first, tuple):
        return tuple(pick([states[c][i] for c in cols]) for i in range(len(first)))  # type: ignore[return-value]
    return pick([states[c] for c in cols])  # type: ignore[arg-type,list-item]


def _lower_layers(model: RecurrentModel) -> nn.LSTM | None:
    """An LSTM made of every layer of the model's LSTM but the top one (None for one layer): it yields the top
    layer's input sequence, which the fused module does not return."""
    rnn = model.rnn
    if rnn.num_layers == 1:
        return None
    lower = nn.LSTM(rnn.input_size, rnn.hidden_size, rnn.num_layers - 1, batch_first=True)
    lower.load_state_dict({k: v for k, v in rnn.state_dict().items() if int(k.rsplit("_l", 1)[1]) < rnn.num_layers - 1})
    return lower.to(model.decoder.weight.device).eval()


def lstm_top_cells(
    model: RecurrentModel, emb: torch.Tensor, state: State, hidden: torch.Tensor, lower: nn.LSTM | None
) -> torch.Tensor:
    """The top layer's cell state c_t [B, T, H] along a segment: nn.LSTM returns c only at the end, so it is
    recomputed from the layer's equations (gates from x_t and h_{t-1}, then c_t = f c_{t-1} + i g)."""
    rnn, top = model.rnn, model.rnn.num_layers - 1
    h0, c0 = state  # type: ignore[misc]
    x = emb if lower is None else lower(emb, (h0[:top].contiguous(), c0[:top].contiguous()))[0]
    h_prev = torch.cat([h0[top][:, None], hidden[:, :-1]], 1)
    gates = (
        x @ getattr(rnn, f"weight_ih_l{top}").T
        + h_prev @ getattr(rnn, f"weight_hh_l{top}").T
        + getattr(rnn, f"bias_ih_l{top}")
        + getattr(rnn, f"bias_hh_l{top}")
    )
    i, f, g, _ = gates.chunk(4, -1)  # PyTorch's gate order: input, forget, cell, output
    write = torch.sigmoid(i) * torch.tanh(g)
    keep = torch.sigmoid(f)
    c = c0[top]
    cells = []
    for step in range(hidden.shape[1]):
        c = keep[:, step] * c + write[:, step]
        cells.append(c)
    return torch.stack(cells, 1)


# ----------------------------------------------------------------------------------------------------------
# The full-context pass: recall counts, full-context loss, probe features and carried states, in one sweep


@dataclass
class _FullPass:
    correct: torch.Tensor  # [heads]
    count: torch.Tensor  # [heads]
    ctx_loss: torch.Tensor  # [P] full-context loss at the context positions
    probe_train_h: torch.Tensor  # [N, H]
    probe_test_h: torch.Tensor
    probe_train_c: torch.Tensor | None  # LSTM cell states at the same positions
    probe_test_c: torch.Tensor | None
    states: dict[int, State]  # carried state of every row before column s, for the columns the plan needs


def _gather(hidden: torch.Tensor, b: torch.Tensor, t: torch.Tensor, c0: int, out: torch.Tensor) -> None:
    """Copy hidden[b, t - c0] into out for the positions whose column falls in this segment."""
    inside = (t >= c0) & (t < c0 + hidden.shape[1])
    if inside.any():
        out[inside] = hidden[b[inside], t[inside] - c0]


@torch.no_grad()
def _full_pass(
    model: RecurrentModel, inputs: torch.Tensor, targets: torch.Tensor, plan: _Plan, recall: bool, cells: bool
) -> _FullPass:
    rows, length = inputs.shape
    heads, device, size = targets.shape[0], inputs.device, model.rnn.hidden_size
    correct = torch.zeros(heads, device=device)
    count = torch.zeros(heads, device=device)
    ctx_h = torch.zeros(len(plan.ctx_b), size, device=device)
    train_h = torch.zeros(len(plan.probe_train[0]), size, device=device)
    test_h = torch.zeros(len(plan.probe_test[0]), size, device=device)
    train_c = torch.zeros_like(train_h) if cells else None
    test_c = torch.zeros_like(test_h) if cells else None
    lower = _lower_layers(model) if cells else None
    wanted = plan.state_columns()
    bounds = [*sorted({*range(0, length, _CHUNK), *(c for c in wanted if 0 < c < length)}), length]
    states: dict[int, State] = {}
    state = model.init_state(rows, device)
    for c0, c1 in itertools.pairwise(bounds):
        if c0 in wanted:
            states[c0] = state
        emb = model.embedding(inputs[:, c0:c1])
        hidden, new_state = model.rnn(emb, state)
        if recall:
            y = targets[:, :, c0:c1].permute(1, 2, 0)  # [B, T, heads]
            mask = y != IGNORE
            correct += ((_decode(model, hidden).argmax(-1) == y) & mask).sum(dim=(0, 1))
            count += mask.sum(dim=(0, 1))
        _gather(hidden, plan.ctx_b, plan.ctx_t, c0, ctx_h)
        _gather(hidden, *plan.probe_train, c0, train_h)
        _gather(hidden, *plan.probe_test, c0, test_h)
        if train_c is not None and test_c is not None:
            cell = lstm_top_cells(model, emb, state, hidden, lower)
            _gather(cell, *plan.probe_train, c0, train_c)
            _gather(cell, *plan.probe_test, c0, test_c)
        state = new_state
    if length in wanted:
        states[length] = state
    ctx_targets = targets[:, plan.ctx_b, plan.ctx_t].T  # [P, heads]
    ctx_loss = _token_loss(_decode(model, ctx_h), ctx_targets)
    return _FullPass(correct, count, ctx_loss, train_h, test_h, train_c, test_c, states)


@torch.no_grad()
def _carried_states(model: RecurrentModel, inputs: torch.Tensor, columns: set[int]) -> dict[int, State]:
    """Every row's carried state before each of `columns` (a forward pass up to the last of them)."""
    states: dict[int, State] = {}
    state = model.init_state(inputs.shape[0], inputs.device)
    bounds = sorted({0, *columns})
    for c0, c1 in zip(bounds, [*bounds[1:], None], strict=True):
        states[c0] = state
        if c1 is not None:
            _, state = model.rnn(model.embedding(inputs[:, c0:c1]), state)
    return states


# ----------------------------------------------------------------------------------------------------------
# Statistics


# The Wilson interval and the t distribution are written with scipy.special, not scipy.stats or statsmodels
# (the tests check they agree): importing those costs 1.2-1.6 s per job process, more than the measures take.
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


def paired_greater_p(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One-sided paired t-test p-values of mean(a - b) > 0 along axis -1 (scipy.stats.ttest_rel with
    alternative="greater"); p = 1 where every difference is 0 or negative-constant, 0 where positive-constant."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = diff.shape[-1]
    mean = diff.mean(axis=-1)
    if n < 2:
        return np.full(mean.shape, np.nan)
    se = diff.std(axis=-1, ddof=1) / math.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 1.0 - stdtr(n - 1, mean / se)
    return np.where(se > 0, p, np.where(mean > 0, 0.0, 1.0))


def slope_ci(x: np.ndarray, y: np.ndarray, level: float) -> tuple[float, float | None, float | None]:
    """Least-squares slope of y on x with the t-interval from its standard error (scipy.stats.linregress's
    stderr); None bounds with fewer than three points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    xc = x - x.mean()
    sxx = float(xc @ xc)
    slope = float(xc @ (y - y.mean()) / sxx)
    n = len(x)
    if n < 3:
        return slope, None, None
    resid = y - y.mean() - slope * xc
    se = math.sqrt(float(resid @ resid) / (n - 2) / sxx)
    half = float(stdtrit(n - 2, 0.5 + level / 2)) * se
    return slope, slope - half, slope + half


def _reached(acc: np.ndarray, ci_low: np.ndarray, chance: float, margin: float) -> np.ndarray:
    """sweep.record.lag_reached (the one rule the analysis uses too), element by element."""
    chance = np.broadcast_to(np.asarray(chance, dtype=float), np.shape(acc))
    return np.array(
        [record.lag_reached(a, lo, c, margin) for a, lo, c in zip(acc, ci_low, chance, strict=True)], dtype=bool
    )


_span = record.span  # the longest k such that every k' <= k is reached (0 if the smallest is not)


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _frame(
    measure: str, k, value, ci_low, ci_high, n, raw=np.nan, chance=np.nan, p_value=np.nan, net: str = "trained"
) -> pd.DataFrame:
    frame = pd.DataFrame(
        {"k": np.asarray(k, dtype=np.int64), "value": np.asarray(value, dtype=float)}, columns=["k", "value"]
    )
    frame["ci_low"] = np.asarray(ci_low, dtype=float)
    frame["ci_high"] = np.asarray(ci_high, dtype=float)
    frame["n"] = np.asarray(n, dtype=np.int64)
    frame["raw"] = np.asarray(raw, dtype=float)
    frame["chance"] = np.asarray(chance, dtype=float)
    frame["p_value"] = np.asarray(p_value, dtype=float)
    frame["net"] = net
    frame.insert(0, "measure", measure)
    return frame[COLUMNS]


# ----------------------------------------------------------------------------------------------------------
# 1. Recall profile


def recall_profile(
    lags: list[int], correct: np.ndarray, count: np.ndarray, chance: float, margin: float, level: float
) -> tuple[dict[str, Any], pd.DataFrame]:
    measured = np.asarray(count) > 0  # a head without a held-out target is missing, not wrong
    acc = np.where(measured, correct / np.maximum(count, 1), np.nan)
    low, high = _wilson(correct, count, level)
    low, high = np.where(measured, low, np.nan), np.where(measured, high, np.nan)
    # the rule the analysis applies too: heads without a held-out target are missing, not accuracy 0
    scalars = record.recall_summary(lags, acc, count, chance, margin, level)
    return scalars, _frame("recall", lags, acc, low, high, count, chance=chance)


# ----------------------------------------------------------------------------------------------------------
# 2. Context ablation


def unigram(stream: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Token frequencies of a stream (float64, sums to 1)."""
    counts = torch.bincount(stream.cpu(), minlength=vocab_size).double()
    return counts / counts.sum()


@torch.no_grad()
def context_losses(
    model: RecurrentModel,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    plan: _Plan,
    states: dict[int, State],
    probs: torch.Tensor,
) -> np.ndarray:
    """Loss per target token [len(contexts), P] when every input older than d is unigram noise (module doc)."""
    b, t, span = plan.ctx_b, plan.ctx_t, plan.ctx_span
    start = t - span + 1
    real = inputs[b[:, None], start[:, None] + torch.arange(span, device=t.device)]  # [P, S]
    gen = torch.Generator().manual_seed(NOISE_SEED)
    noise = torch.multinomial(probs.float(), real.numel(), replacement=True, generator=gen)
    noise = noise.view(real.shape).to(real.device)
    y = targets[:, b, t].T
    state = _states_at(states, b, start)
    done = 0  # columns of the stretch already read as noise into `state`
    out: dict[int, torch.Tensor] = {}
    # Largest d first: the noise prefix of d is the prefix of every smaller d, so it is read once and branched.
    for d in sorted(plan.contexts, reverse=True):
        if span - d > done:
            _, state = model.rnn(model.embedding(noise[:, done : span - d]), state)
            done = span - d
        hidden, _ = model.rnn(model.embedding(real[:, span - d :]), state)
        out[d] = _token_loss(_decode(model, hidden[:, -1]), y)
    return torch.stack([out[d] for d in plan.contexts]).cpu().double().numpy()


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
        p_value=[*paired_greater_p(losses, full_loss[None, :]), np.nan],
    )
    scalars = {
        "effective_context": d,
        "effective_context_censored": censored,
        "context_method": CONTEXT_METHOD,
        "full_context_loss": _finite(float(full[0])),
    }
    return scalars, frame


# ----------------------------------------------------------------------------------------------------------
# 3. Gradient horizon


def _no_cudnn(x: torch.Tensor):
    # cuDNN's RNN backward refuses eval mode; the native kernel computes the same gradient
    return torch.backends.cudnn.flags(enabled=False) if x.is_cuda else nullcontext()


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
        state = _states_at(states, b, s)
    emb.requires_grad_(True)
    with torch.enable_grad(), _no_cudnn(emb):
        hidden, _ = model.rnn(emb, state)
        loss = _token_loss(_decode(model, hidden[:, -1]), y).sum()  # windows are independent rows
        (grad,) = torch.autograd.grad(loss, emb)
    norms = torch.linalg.vector_norm(grad, dim=-1).flip(1)  # column k = distance k from the target
    return norms[keep].cpu().double().numpy()


def gradient_profile(norms: np.ndarray, m: DictConfig, flat_slope: float) -> tuple[dict[str, Any], pd.DataFrame]:
    K = norms.shape[1] - 1
    ks = np.arange(K + 1)
    if norms.shape[0] == 0:  # no window had a defined target
        g = low = high = np.full(K + 1, np.nan)
    else:
        g, low, high = _mean_ci(norms, m.ci_level)
    peak = float(np.nanmax(g)) if np.isfinite(g).any() else 0.0
    scale = peak if peak > 0 else 1.0
    frame = _frame("gradient", ks, g / scale, low / scale, high / scale, [norms.shape[0]] * (K + 1), raw=g)
    scalars = gradient_summary(g, m.horizon_fraction, flat_slope, m.ci_level)
    return scalars, frame


def gradient_summary(g: np.ndarray, fraction: float, flat_slope: float = 0.01, level: float = 0.95) -> dict[str, Any]:
    """Horizon, censoring, far-half log-slope with its interval, flatness and explosion of a mean gradient-norm
    profile g(0..K)."""
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
            "gradient_log_slope_ci_low": None,
            "gradient_log_slope_ci_high": None,
            "gradient_flat": False,
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
    slope = low = high = None
    if len(tail) >= 2:
        slope, low, high = slope_ci(tail, np.log(g[tail]), level)
    near_max = float(np.max(np.where(finite[: K // 2 + 1], g[: K // 2 + 1], 0.0)))
    explodes = bool(low is not None and low > flat_slope and finite[K] and g[K] >= near_max and K > 0)
    return {
        "gradient_horizon": horizon,
        "gradient_horizon_censored": bool(horizon == K and K > 0),
        "gradient_peak_k": int(np.argmax(np.where(finite, g, -np.inf))),
        "gradient_peak_norm": peak,
        "gradient_log_slope": _finite(slope),
        "gradient_log_slope_ci_low": _finite(low),
        "gradient_log_slope_ci_high": _finite(high),
        "gradient_flat": bool(low is not None and high is not None and -flat_slope <= low and high <= flat_slope),
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
    data: TaskData,
    inputs: torch.Tensor,
    plan: _Plan,
    features: tuple[torch.Tensor, torch.Tensor],
    m: DictConfig,
    name: str = "probe",
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Probe of one state (h: name "probe"; LSTM c: name "probe_cell") from its train/test features."""
    classes = probe_classes(data.valid, data.vocab_size, m.probe_max_classes).to(inputs.device)[inputs]
    num_classes = int(classes.max()) + 1
    train_y = _probe_labels(classes, *plan.probe_train, plan.probe_ks)
    test_y = _probe_labels(classes, *plan.probe_test, plan.probe_ks)
    correct, majority = ridge_probe_accuracy(features[0], train_y, features[1], test_y, num_classes, m.probe_ridge)
    n = len(test_y)
    acc = correct / n
    low, high = _wilson(correct, np.full_like(correct, n), m.ci_level)
    chance = majority / n
    reached = _reached(acc, low, chance, m.chance_margin)
    ks = np.asarray(plan.probe_ks)
    memory = ks >= 1  # k = 0 is the current input, not memory
    if name != "probe":
        return {"probe_span_cell": _span(ks[memory].tolist(), reached[memory])}, _frame(
            name, ks, acc, low, high, [n] * len(ks), chance=chance
        )
    scalars = {
        "probe_span": _span(ks[memory].tolist(), reached[memory]),
        "probe_chance": _finite(float(chance.max())),
        "probe_classes": num_classes,
        "probe_max_k": int(ks[-1]),
    }
    return scalars, _frame(name, ks, acc, low, high, [n] * len(ks), chance=chance)


# ----------------------------------------------------------------------------------------------------------
# 5. Gradient growth with window length


def window_gradient_norms(
    model: RecurrentModel,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    plan: _Plan,
    states: dict[int, State],
    reduction: str = "mean",
) -> np.ndarray:
    """Global gradient norm of each window's training loss: [windows, lengths] (NaN: no defined target).

    `reduction` is `optim.loss_reduction`: "mean" per target token, or "sum", the TF PTB tutorial's loss as
    training back-propagates it (sweep/train.py): that mean x the defined targets per row and head, which is
    the window length L when every target is defined."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: must be mean or sum, got {reduction!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    b, s = plan.growth_b, plan.growth_s
    with torch.no_grad():
        start_state = _states_at(states, b, s)
    norms = np.full((len(b), len(plan.growth_lengths)), np.nan)
    with torch.enable_grad(), _no_cudnn(inputs):
        for w in range(len(b)):
            state = (
                tuple(x[:, w : w + 1] for x in start_state)
                if isinstance(start_state, tuple)
                else start_state[:, w : w + 1]
            )
            for j, length in enumerate(plan.growth_lengths):
                cols = slice(int(s[w]), int(s[w]) + length)
                y = targets[:, b[w] : b[w] + 1, cols]
                if not (y != IGNORE).any():
                    continue
                logits, _ = model(inputs[b[w] : b[w] + 1, cols], state)  # the state is detached already
                loss = sequence_loss(logits, y)
                if reduction == "sum":  # y is [heads, 1 row, L]
                    loss = loss * (y != IGNORE).sum() / y.shape[0]
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                norms[w, j] = float(
                    torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None]))
                )
    return norms


def growth_profile(
    lengths: list[int], norms: np.ndarray, level: float, net: str, suffix: str = ""
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Mean norm per length (t-interval over windows) and the log-log slope with a t-interval over windows."""
    windows = norms[np.isfinite(norms).all(1) & (norms > 0).all(1)]
    keys = [f"growth_{k}{suffix}" for k in ("slope", "slope_ci_low", "slope_ci_high", "ratio")]
    if len(windows) == 0 or len(lengths) < 2:
        return dict.fromkeys(keys), _frame("growth", [], [], [], [], [], net=net)
    mean, low, high = _mean_ci(windows, level)
    x = np.log(np.asarray(lengths, dtype=float))
    xc = x - x.mean()
    slopes = np.log(windows) @ xc / float(xc @ xc)  # least-squares slope of each window
    slope, s_low, s_high = _mean_ci(slopes[:, None], level)
    values = [slope[0], s_low[0], s_high[0], mean[-1] / mean[0]]
    scalars = {k: _finite(float(v)) for k, v in zip(keys, values, strict=True)}
    frame = _frame("growth", lengths, mean, low, high, [len(windows)] * len(lengths), net=net)
    return scalars, frame


def _growth(
    model: RecurrentModel,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    plan: _Plan,
    states: dict[int, State],
    level: float,
    net: str,
    suffix: str,
    reduction: str = "mean",
) -> tuple[dict[str, Any], pd.DataFrame]:
    norms = window_gradient_norms(model, inputs, targets, plan, states, reduction)
    return growth_profile(plan.growth_lengths, norms, level, net, suffix)


# ----------------------------------------------------------------------------------------------------------
# 6. State-to-state Jacobian product


def _flat_state(state: State) -> torch.Tensor:
    """[layers, N, H] (an LSTM's (h, c): both) -> [N, D]: every layer's h, then every layer's c."""
    parts = state if isinstance(state, tuple) else (state,)
    return torch.cat([x.transpose(0, 1).reshape(x.shape[1], -1) for x in parts], 1)


def _unflat_state(flat: torch.Tensor, layers: int, lstm: bool) -> State:
    """The inverse of _flat_state."""
    parts = [x.unflatten(1, (layers, -1)).transpose(0, 1).contiguous() for x in flat.chunk(2 if lstm else 1, 1)]
    return (parts[0], parts[1]) if lstm else parts[0]


def state_jacobian_log_norms(
    rnn: nn.RNNBase, emb: torch.Tensor, state: State, lengths: list[int], probes: int, seed: int = JACOBIAN_SEED
) -> np.ndarray:
    """ln(||d s_L / d s_0||_F / sqrt(D)) per window and L, estimated with `probes` Gaussian probes: [W, lengths].

    `emb` [W, max(lengths), E] are the inputs the cell reads from `state` ([layers, W, H], or an LSTM's (h, c));
    s is _flat_state's concatenation (D numbers). NaN where the estimate is 0 or not finite. The cell is
    copied to float64 with its parameters frozen: the model is not touched and no parameter gradient is made.
    """
    lengths = sorted(lengths)
    cell = copy.deepcopy(rnn).double().requires_grad_(False)
    lstm = isinstance(state, tuple)
    windows = emb.shape[0]
    s0 = _flat_state(state).detach().double()
    size = s0.shape[1]
    gen = torch.Generator().manual_seed(seed)
    # probe p of window w is row p * W + w: the probes ride in the batch, so one backward pass serves all
    v = torch.randn(probes * windows, size, generator=gen, dtype=torch.float64).to(s0.device)
    start = s0.repeat(probes, 1).requires_grad_(True)
    x = emb.detach().double().repeat(probes, 1, 1)
    out = np.full((windows, len(lengths)), np.nan)
    with torch.enable_grad(), _no_cudnn(x):
        st, done, ends = _unflat_state(start, cell.num_layers, lstm), 0, []
        for length in lengths:
            _, st = cell(x[:, done:length], st)
            done = length
            ends.append(_flat_state(st))
        for j, end in enumerate(ends):
            (g,) = torch.autograd.grad((v * end).sum(), start, retain_graph=j < len(ends) - 1)
            frob2 = g.square().sum(1).view(probes, windows).mean(0)  # E||v^T J||^2 = ||J||_F^2
            with np.errstate(divide="ignore", invalid="ignore"):
                log_norm = 0.5 * np.log(frob2.cpu().numpy() / size)
            out[:, j] = np.where(np.isfinite(log_norm), log_norm, np.nan)
    return out


def jacobian_profile(
    lengths: list[int], log_norms: np.ndarray, level: float, flat_slope: float, net: str, suffix: str = ""
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Mean normalised log-norm per L (t-interval over windows), its slope on L and the explosion flag."""
    keys = [f"jacobian_{k}{suffix}" for k in ("log_norm_max_L", "slope", "slope_ci_low", "slope_ci_high")]
    empty = {**dict.fromkeys(keys), f"jacobian_explodes{suffix}": None}
    if len(lengths) < 2 or log_norms.shape[0] == 0:
        return empty, _frame("jacobian", [], [], [], [], [], net=net)
    mean, low, high, n = (np.full(len(lengths), np.nan) for _ in range(4))
    for j in range(len(lengths)):
        ok = log_norms[np.isfinite(log_norms[:, j]), j]
        n[j] = len(ok)
        if len(ok):
            m, lo, hi = _mean_ci(ok[:, None], level)
            mean[j], low[j], high[j] = m[0], lo[0], hi[0]
    frame = _frame("jacobian", lengths, mean, low, high, n, net=net)
    fit = np.isfinite(mean)
    if fit.sum() < 2:
        return empty, frame
    slope, s_low, s_high = slope_ci(np.asarray(lengths, dtype=float)[fit], mean[fit], level)
    at_max = _finite(float(mean[-1]))
    explodes = bool(s_low is not None and s_low > flat_slope and at_max is not None and at_max > 0)
    values = [at_max, _finite(slope), _finite(s_low), _finite(s_high)]
    return {**dict(zip(keys, values, strict=True)), f"jacobian_explodes{suffix}": explodes}, frame


def _jacobian(
    model: RecurrentModel,
    inputs: torch.Tensor,
    plan: _Plan,
    states: dict[int, State],
    probes: int,
    level: float,
    flat_slope: float,
    net: str,
    suffix: str,
) -> tuple[dict[str, Any], pd.DataFrame]:
    b, s, lengths = plan.growth_b, plan.growth_s, plan.growth_lengths
    if not lengths or not len(b):
        return jacobian_profile([], np.zeros((0, 0)), level, flat_slope, net, suffix)
    with torch.no_grad():
        emb = model.embedding(inputs[b[:, None], s[:, None] + torch.arange(max(lengths), device=s.device)])
        state = _states_at(states, b, s)
    log_norms = state_jacobian_log_norms(model.rnn, emb, state, lengths, probes)
    return jacobian_profile(lengths, log_norms, level, flat_slope, net, suffix)


# ----------------------------------------------------------------------------------------------------------


def _empty_context() -> dict[str, Any]:
    return {
        "effective_context": None,
        "effective_context_censored": None,
        "context_method": CONTEXT_METHOD,
        "full_context_loss": None,
    }


def measure_all(
    model: RecurrentModel,
    data: TaskData,
    cfg: DictConfig,
    device: torch.device | str,
    initial: RecurrentModel | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Every measure on the held-out stream: (run.json summary scalars, tidy profiles); see the module doc.

    `initial` (the network at initialisation, same seed) adds the growth and Jacobian `_initial` keys and rows.
    Models are put in eval mode and restored; their parameters and .grad are left untouched, and the global
    RNG is not used.
    """
    start = time.perf_counter()
    m = cfg.measure
    nets = [x for x in (model, initial) if x is not None]
    modes = [x.training for x in nets]
    for x in nets:
        x.eval()
    try:
        inputs, targets = (x.to(device) for x in data.rows("valid", cfg.eval.rows))
        length = inputs.shape[1]
        lags = list(data.lags) if data.lags else []
        # heads whose lag exceeds a row have no target anywhere: they constrain no position
        max_lag = max((k for k in lags if k < length), default=0)
        plan = _plan(m, cfg, inputs.shape[0], length, max_lag, inputs.device)
        cells = bool(m.probe) and model.cell_name == "lstm"
        full = _full_pass(model, inputs, targets, plan, recall=bool(lags), cells=cells)
        level = m.ci_level

        scalars: dict[str, Any] = {"span": None, "memory_capacity": None}
        frames = []
        if lags:
            s, f = recall_profile(
                lags,
                full.correct.cpu().double().numpy(),
                full.count.cpu().double().numpy(),
                data.chance,
                m.chance_margin,
                level,
            )
            scalars.update(s)
            frames.append(f)
        if plan.contexts and len(plan.ctx_b):
            probs = unigram(data.valid, data.vocab_size)
            losses = context_losses(model, inputs, targets, plan, full.states, probs)
            s, f = context_profile(plan.contexts, losses, full.ctx_loss.cpu().double().numpy(), m)
            scalars.update(s)
            frames.append(f)
        else:
            scalars.update(_empty_context())
        flat = float(_opt(cfg, "flat_slope", 0.01))
        s, f = gradient_profile(input_gradient_norms(model, inputs, targets, plan, full.states), m, flat)
        scalars.update(s)
        frames.append(f)
        scalars["probe_span_cell"] = None
        if m.probe and len(plan.probe_train[0]) and len(plan.probe_test[0]):
            s, f = probe_profile(data, inputs, plan, (full.probe_train_h, full.probe_test_h), m)
            scalars.update(s)
            frames.append(f)
            if full.probe_train_c is not None and full.probe_test_c is not None:
                s, f = probe_profile(data, inputs, plan, (full.probe_train_c, full.probe_test_c), m, "probe_cell")
                scalars.update(s)
                frames.append(f)
        reduction = str(cfg.optim.get("loss_reduction", "mean")) if "optim" in cfg else "mean"
        probes = int(_opt(cfg, "jacobian_probes", 0))  # records of earlier versions had no Jacobian measure
        runs = [(model, full.states, "trained", "")]
        if initial is not None:
            runs.append((initial, _carried_states(initial, inputs, set(plan.growth_s.tolist())), "initial", "_initial"))
        for net, states, name, suffix in runs:
            s, f = _growth(net, inputs, targets, plan, states, level, name, suffix, reduction)
            scalars.update(s)
            frames.append(f)
            if probes:
                s, f = _jacobian(net, inputs, plan, states, probes, level, flat, name, suffix)
                scalars.update(s)
                frames.append(f)
        # what was not measured (no initial network, probes off) is in the summary as None
        for suffix in ("", "_initial"):
            unmeasured = {
                **growth_profile([], np.zeros((0, 0)), level, "", suffix)[0],
                **jacobian_profile([], np.zeros((0, 0)), level, flat, "", suffix)[0],
            }
            for key, value in unmeasured.items():
                scalars.setdefault(key, value)
    finally:
        for x, mode in zip(nets, modes, strict=True):
            x.train(mode)
    scalars["measure_seconds"] = time.perf_counter() - start
    return scalars, pd.concat([f for f in frames if len(f)], ignore_index=True)
