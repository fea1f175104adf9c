"""The state-to-state Jacobian measure (docs/measures.md, measure 6) on networks whose Jacobian is known.

- a tanh RNN with no input weights and W_hh = a Q (Q orthogonal): h stays exactly 0, where tanh' = 1, so
  J_L = (a Q)^L and ln(||J_L||_F / sqrt(D)) = L ln a exactly: a = 0.5 vanishes, 1 is flat, 1.5 explodes;
- an LSTM with every weight 0 and the forget-gate bias at b: c stays 0, f = sigmoid(b) and, for L >= 1,
  J_L = [[0, o f^L I], [0, f^L I]] (h from h, h from c; c from h, c from c) with o = sigmoid(0) = 1/2;
- random LSTM and GRU cells, against the exact Jacobian from torch.autograd.functional.jacobian.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from sweep import measures
from sweep.config import OptimConfig
from sweep.measures import measure_all
from sweep.model import RecurrentModel
from tests.test_measures import measure_cfg, rows_of, text_task

LENGTHS = [2, 4, 8, 16, 32]
# Probe noise: with D state numbers and P probes, the estimate of ||J||_F^2 of a J with equal singular values
# is ||J||_F^2 chi2(D P) / (D P), so its log-norm (half the log) has sd ~ sqrt(1 / (2 D P)): 0.088 for
# D = 16, P = 4, 0.031 for the mean over 8 windows. The probes are shared by every L, so in these products
# (a scalar times an L-independent matrix) the noise is the same at each L and the slope is exact.
LOG_NORM_TOL = 0.2  # > 6 sd of an 8-window mean at D = 16, P = 4
SLOPE_TOL = 1e-5  # float32 rounding of the weights (a Q is stored in float32), well below any slope we read


def orthogonal(n: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed)))
    return q


def linear_rnn(gain: float, hidden: int = 16, seed: int = 0) -> RecurrentModel:
    """A tanh RNN in its linear regime: no input weights, no biases (h stays exactly 0) and W_hh = gain * Q.
    The input weights are zero rather than tiny because any input grows as gain^t for gain > 1 until tanh
    saturates, which would leave the linear regime along the carried rows."""
    torch.manual_seed(seed)
    model = RecurrentModel("rnn", 4, 4, 1, embedding_size=4, hidden_size=hidden)
    with torch.no_grad():
        model.rnn.weight_ih_l0.zero_()
        model.rnn.bias_ih_l0.zero_()
        model.rnn.bias_hh_l0.zero_()
        model.rnn.weight_hh_l0.copy_(gain * orthogonal(hidden, seed))
    return model


def gated_lstm(forget_bias: float, hidden: int = 8) -> RecurrentModel:
    """An LSTM with every weight and bias 0 but the forget gate's bias: c stays 0 and is multiplied by
    sigmoid(forget_bias) each step; h = o tanh(c) with o = 1/2."""
    model = RecurrentModel("lstm", 4, 4, 1, embedding_size=4, hidden_size=hidden)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.rnn.bias_ih_l0[hidden : 2 * hidden] = forget_bias  # PyTorch's gate order: input, forget, cell, output
    return model


def jacobian_cfg(**measure: object):
    """Growth windows of LENGTHS; the other measures cut to a minimum (they are tested in test_measures.py)."""
    small = {"probe": False, "contexts": [1], "context_positions": 8, "horizon_max_k": 2, "horizon_windows": 2}
    return measure_cfg(growth_lengths=LENGTHS, **small, **measure)


def jacobian_summary(summary: dict, suffix: str = "") -> dict:
    return {k[: len(k) - len(suffix)] if suffix else k: v for k, v in summary.items() if k.startswith("jacobian")}


# ----------------------------------------------------------------------------------------------------------
# Known products


@pytest.mark.parametrize(("gain", "explodes"), [(0.5, False), (1.0, False), (1.5, True)])
def test_linear_rnn_slope_is_ln_gain(gain, explodes):
    summary, frame = measure_all(linear_rnn(gain), text_task(4), jacobian_cfg(), "cpu")
    assert summary["jacobian_slope"] == pytest.approx(math.log(gain), abs=SLOPE_TOL)
    assert summary["jacobian_slope_ci_low"] <= summary["jacobian_slope"] <= summary["jacobian_slope_ci_high"]
    assert summary["jacobian_log_norm_max_L"] == pytest.approx(max(LENGTHS) * math.log(gain), abs=LOG_NORM_TOL)
    assert summary["jacobian_explodes"] is explodes
    rows = rows_of(frame, "jacobian")
    assert list(rows.index) == LENGTHS
    assert (rows["n"] == 8).all() and set(rows["net"]) == {"trained"}
    np.testing.assert_allclose(rows["value"], np.array(LENGTHS) * math.log(gain), atol=LOG_NORM_TOL)


def test_norm_preserving_product_is_flat_not_exploding():
    """gain 1: the product is orthogonal at every L; the slope interval lies inside +-flat_slope."""
    summary, _ = measure_all(linear_rnn(1.0), text_task(4), jacobian_cfg(), "cpu")
    flat = 0.01
    assert -flat < summary["jacobian_slope_ci_low"] and summary["jacobian_slope_ci_high"] < flat
    assert abs(summary["jacobian_log_norm_max_L"]) < LOG_NORM_TOL


@pytest.mark.parametrize("forget_bias", [10.0, -10.0])
def test_lstm_forget_gate_sets_the_cell_product(forget_bias):
    """||J_L||_F^2 = H f^(2L) (1 + o^2) over D = 2H numbers: ln(||J_L|| / sqrt(D)) = ln(1.25 / 2) / 2 + L ln f.
    Forget bias +10 carries c unchanged (ln f = -4.5e-5 per step: the product does not decay); -10 wipes it."""
    summary, frame = measure_all(gated_lstm(forget_bias), text_task(4), jacobian_cfg(), "cpu")
    ln_f = math.log(torch.sigmoid(torch.tensor(forget_bias, dtype=torch.float64)).item())
    assert summary["jacobian_slope"] == pytest.approx(ln_f, abs=SLOPE_TOL)
    expected = 0.5 * math.log(1.25 / 2) + np.array(LENGTHS) * ln_f
    # D = 16 here too, so the same probe-noise tolerance holds
    np.testing.assert_allclose(rows_of(frame, "jacobian")["value"], expected, atol=LOG_NORM_TOL)
    assert summary["jacobian_explodes"] is False
    if forget_bias > 0:
        assert summary["jacobian_slope_ci_low"] > -0.01  # not decaying: within the flat band
    else:
        assert summary["jacobian_slope_ci_high"] < -9


def test_random_lstm_with_open_forget_gate_does_not_decay():
    """With random recurrent weights the h paths add to the c carry, but a forget bias of +10 still keeps
    the product from decaying, while bias 0 (f ~ 1/2) makes it vanish."""
    slopes = {}
    for bias in (10.0, 0.0):
        torch.manual_seed(0)
        model = RecurrentModel("lstm", 4, 4, 1, embedding_size=8, hidden_size=16)
        with torch.no_grad():
            model.rnn.bias_ih_l0[16:32] = bias
            model.rnn.bias_hh_l0[16:32] = 0.0
        summary, _ = measure_all(model, text_task(4), jacobian_cfg(), "cpu")
        slopes[bias] = summary
    assert slopes[10.0]["jacobian_slope_ci_low"] > -0.01
    assert slopes[10.0]["jacobian_log_norm_max_L"] > 0.5 * math.log(0.5) - LOG_NORM_TOL  # at least the c block
    assert slopes[0.0]["jacobian_slope_ci_high"] < -0.1


# ----------------------------------------------------------------------------------------------------------
# The estimator against the exact Jacobian


def exact_log_norms(rnn: torch.nn.RNNBase, emb: torch.Tensor, state, lengths: list[int]) -> np.ndarray:
    """ln(||d s_L / d s_0||_F / sqrt(D)) of window 0 from the full Jacobian, s = every layer's h then c."""
    cell = rnn.double()
    lstm = isinstance(state, tuple)
    layers, hidden = cell.num_layers, cell.hidden_size
    parts = state if lstm else (state,)
    s0 = torch.cat([p[:, 0].reshape(-1) for p in parts]).double()
    x = emb[:1].double()

    def final(flat: torch.Tensor, length: int) -> torch.Tensor:
        pieces = [p.view(layers, 1, hidden) for p in flat.chunk(len(parts))]
        st = tuple(pieces) if lstm else pieces[0]
        _, end = cell(x[:, :length], st)
        return torch.cat([p[:, 0].reshape(-1) for p in (end if lstm else (end,))])

    out = []
    for length in lengths:
        jac = torch.autograd.functional.jacobian(lambda s, n=length: final(s, n), s0)
        out.append(math.log(float(torch.linalg.matrix_norm(jac)) / math.sqrt(len(s0))))
    return np.array(out)


@pytest.mark.parametrize(("cell", "layers"), [("lstm", 2), ("gru", 1)])
def test_probe_estimate_matches_the_exact_jacobian(cell, layers):
    """A random cell on a random warm state: 512 probes estimate ln ||J||_F to ~ sqrt(1 / (2 P)) = 0.03 or
    better (the bound for a rank-one J); 0.15 leaves 5 sd."""
    torch.manual_seed(0)
    model = RecurrentModel(cell, 4, 4, 1, embedding_size=8, hidden_size=6, num_layers=layers)
    emb = torch.randn(3, 16, 8)
    h = torch.randn(layers, 3, 6) * 0.5
    state = (h, torch.randn(layers, 3, 6)) if cell == "lstm" else h
    lengths = [1, 3, 7, 16]
    estimate = measures.state_jacobian_log_norms(model.rnn, emb, state, lengths, probes=512)
    assert estimate.shape == (3, len(lengths))
    exact = exact_log_norms(model.rnn, emb, state, lengths)  # after: it converts the cell to float64
    np.testing.assert_allclose(estimate[0], exact, atol=0.15)


# ----------------------------------------------------------------------------------------------------------
# Wiring, side effects, cost switch


def test_initial_network_and_side_effects():
    """The measure reads the trained and the initial network, restores their modes, leaves parameters, .grad and
    the global RNG alone, and two runs give the same numbers (private, seeded probes)."""
    trained, initial = linear_rnn(1.5), linear_rnn(0.5, seed=1)
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    rng = torch.get_rng_state()
    trained.train()
    initial.eval()
    summary, frame = measure_all(trained, text_task(4), jacobian_cfg(), "cpu", initial=initial)
    again, _ = measure_all(trained, text_task(4), jacobian_cfg(), "cpu", initial=initial)
    assert torch.equal(rng, torch.get_rng_state())
    assert trained.training and not initial.training
    assert all(p.grad is None for net in (trained, initial) for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert jacobian_summary(summary) == jacobian_summary(again)
    assert summary["jacobian_explodes"] is True and summary["jacobian_explodes_initial"] is False
    assert summary["jacobian_slope_initial"] == pytest.approx(math.log(0.5), abs=SLOPE_TOL)
    rows = frame[frame["measure"] == "jacobian"]
    assert sorted(rows["net"].unique()) == ["initial", "trained"]


def test_zero_probes_turn_the_measure_off():
    summary, frame = measure_all(linear_rnn(1.5), text_task(4), jacobian_cfg(jacobian_probes=0), "cpu")
    assert "jacobian" not in set(frame["measure"])
    keys = ["jacobian_log_norm_max_L", "jacobian_slope", "jacobian_slope_ci_low", "jacobian_slope_ci_high"]
    for key in [*keys, "jacobian_explodes"]:
        assert summary[key] is None and summary[f"{key}_initial"] is None


def test_summed_loss_config_reaches_the_growth_measure():
    """optim.loss_reduction = sum multiplies each window's loss by L: every window's log-log slope gains
    exactly 1, so the growth slope says nothing about amplification unless the loss is a mean."""
    cfg = jacobian_cfg()
    with open_dict(cfg):
        cfg.optim = OptimConfig(name="sgd", loss_reduction="mean")
    mean, _ = measure_all(linear_rnn(1.0), text_task(4), cfg, "cpu")
    cfg.optim.loss_reduction = "sum"
    summed, _ = measure_all(linear_rnn(1.0), text_task(4), cfg, "cpu")
    assert summed["growth_slope"] == pytest.approx(mean["growth_slope"] + 1, abs=1e-4)
    assert summed["jacobian_slope"] == mean["jacobian_slope"]  # the Jacobian has no loss in it
