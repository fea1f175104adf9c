"""Each measure of docs/measures.md against networks whose answer is known.

- a hand-built delay line: an RNN whose hidden state is a shift register of one-hot slots, with heads that
  read chosen slots, so it recalls exactly the lags it is wired for;
- an RNN with zero recurrent weights: its output at t depends on x_t alone;
- randomly initialised LSTM/GRU/RNN and a network trained where it cannot learn: they use no context;
- a hand-built LSTM that keeps inputs in its cell state while its output h is exactly zero;
- an RNN whose backward Jacobian has gain 1.5: its window gradient grows with the window length;
- (slow) LSTMs trained on echo lag 8 at num_steps 16 and 4.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from sweep import measures
from sweep.config import Config, ConfigError, OptimConfig, validate
from sweep.measures import FULL_CONTEXT, measure_all
from sweep.model import RecurrentModel, sequence_loss
from sweep.tasks import TaskData

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
SHIFT_INPUT = 0.5  # slot 0 holds tanh(0.5 * one_hot(x_t)): small enough that tanh stays close to linear
READ_GAIN = 50.0  # decoder gain on the slot a head reads: the recalled symbol wins by a wide margin


# ----------------------------------------------------------------------------------------------------------
# Helpers


def measure_cfg(rows: int = 8, **measure: object) -> DictConfig:
    """The schema's defaults with the given measure.* overrides (measure_all reads only measure and eval)."""
    cfg = OmegaConf.structured(Config)
    cfg.eval.rows = rows
    with open_dict(cfg):  # keys the schema may not have yet (measure_all reads them with defaults)
        for key, value in measure.items():
            cfg.measure[key] = value
    return cfg


def symbol_task(lags: list[int], vocab: int = 4, valid_tokens: int = 4096, seed: int = 0) -> TaskData:
    gen = torch.Generator().manual_seed(seed)
    return TaskData(
        name="echo" if len(lags) == 1 else "lags",
        vocab_size=vocab,
        out_vocab=vocab,
        train=torch.randint(vocab, (1024,), generator=gen),
        valid=torch.randint(vocab, (valid_tokens,), generator=gen),
        lags=lags,
    )


def text_task(vocab: int = 10, valid_tokens: int = 4096, seed: int = 0) -> TaskData:
    gen = torch.Generator().manual_seed(seed)
    return TaskData(
        name="text",
        vocab_size=vocab,
        out_vocab=vocab,
        train=torch.randint(vocab, (1024,), generator=gen),
        valid=torch.randint(vocab, (valid_tokens,), generator=gen),
    )


def delay_line(vocab: int, head_lags: list[int], served: set[int], slots: int) -> RecurrentModel:
    """A tanh RNN whose hidden state is `slots` one-hot blocks, block j holding x_{t-j}; the head for lag L
    reads block L when L is in `served`, else nothing (it then predicts a constant: chance accuracy)."""
    model = RecurrentModel("rnn", vocab, vocab, len(head_lags), embedding_size=vocab, hidden_size=slots * vocab)
    eye = torch.eye(vocab)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embedding.weight.copy_(eye)
        model.rnn.weight_ih_l0[:vocab] = SHIFT_INPUT * eye
        for j in range(1, slots):  # block j-1 at t-1 -> block j at t; the last block is dropped
            model.rnn.weight_hh_l0[j * vocab : (j + 1) * vocab, (j - 1) * vocab : j * vocab] = eye
        for h, lag in enumerate(head_lags):
            if lag in served:
                model.decoder.weight[h * vocab : (h + 1) * vocab, lag * vocab : (lag + 1) * vocab] = READ_GAIN * eye
    return model


def zero_recurrence_rnn(vocab: int, heads: int = 1, seed: int = 0) -> RecurrentModel:
    torch.manual_seed(seed)
    model = RecurrentModel("rnn", vocab, vocab, heads, embedding_size=16, hidden_size=32)
    with torch.no_grad():
        model.rnn.weight_hh_l0.zero_()
    return model


def rows_of(frame, measure: str):
    part = frame[frame["measure"] == measure]
    return part.set_index("k")


# ----------------------------------------------------------------------------------------------------------
# Hand-built delay line


def test_delay_line_measures_its_own_lag():
    lag = 5
    model = delay_line(4, [lag], {lag}, slots=lag + 1)
    data = symbol_task([lag])
    cfg = measure_cfg(contexts=list(range(1, 13)), horizon_max_k=16, probe_max_k=10)
    summary, frame = measure_all(model, data, cfg, "cpu")

    recall = rows_of(frame, "recall")
    assert recall.loc[lag, "value"] > 0.99
    assert summary["span"] == lag
    assert summary["memory_capacity"] == pytest.approx(1.0, abs=0.02)

    # the target at t is x_{t-5}: with five real tokens the head reads a noise token (confidently wrong 3 times
    # in 4); with six it reads the real one, so every paired difference is exactly 0
    context = rows_of(frame, "context")
    full = context.loc[FULL_CONTEXT, "value"]
    assert (context.loc[1:lag, "value"] > full + 5).all()
    assert (context.loc[1:lag, "p_value"] < 1e-6).all()
    assert (context.loc[lag + 1 : 12, "value"] == full).all()
    assert (context.loc[lag + 1 : 12, "p_value"] == 1.0).all()
    assert summary["effective_context"] == lag + 1
    assert summary["effective_context_censored"] is False
    assert summary["context_method"] == "warm-unigram"

    # only e_{t-5} reaches the output: the gradient is exactly zero at every other distance
    gradient = rows_of(frame, "gradient")
    assert gradient.loc[lag, "value"] == 1.0
    assert gradient.drop(index=lag)["value"].abs().max() == 0.0
    assert summary["gradient_horizon"] == lag
    assert summary["gradient_peak_k"] == lag
    assert summary["gradient_explodes"] is False

    # the state holds x_t .. x_{t-5} and nothing older
    probe = rows_of(frame, "probe")
    assert (probe.loc[0:lag, "value"] > 0.99).all()
    assert (probe.loc[lag + 1 :, "value"] < probe.loc[lag + 1 :, "chance"] + 0.05).all()
    assert summary["probe_span"] == lag


def test_span_needs_every_shorter_lag():
    """A delay line serving lags 1, 2, 4 and 6 but not 3: the span stops at 2; capacity counts all four."""
    lags, served = [1, 2, 3, 4, 6], {1, 2, 4, 6}
    model = delay_line(4, lags, served, slots=7)
    data = symbol_task(lags)
    summary, frame = measure_all(model, data, measure_cfg(contexts=list(range(1, 11)), horizon_max_k=12), "cpu")

    recall = rows_of(frame, "recall")
    assert (recall.loc[sorted(served), "value"] > 0.99).all()
    assert recall.loc[3, "value"] == pytest.approx(0.25, abs=0.03)
    assert recall.loc[3, "ci_low"] <= 0.25 <= recall.loc[3, "ci_high"] + 0.02
    assert summary["span"] == 2
    assert summary["memory_capacity"] == pytest.approx(4.0, abs=0.1)
    assert summary["effective_context"] == 7  # the longest served lag (6) needs 7 tokens
    assert summary["gradient_horizon"] == 6
    gradient = rows_of(frame, "gradient")
    # every served lag reaches the loss (by how much depends on how confident that head is)
    assert (gradient.loc[sorted(served), "value"] > 0).all()
    assert gradient.drop(index=sorted(served))["value"].abs().max() == 0.0


# ----------------------------------------------------------------------------------------------------------
# No recurrence


def test_zero_recurrence_uses_one_token():
    model = zero_recurrence_rnn(10)
    summary, frame = measure_all(model, text_task(10), measure_cfg(horizon_max_k=32, probe_max_k=8), "cpu")

    assert summary["span"] is None and summary["memory_capacity"] is None  # no recall on text
    context = rows_of(frame, "context")
    assert summary["effective_context"] == 1
    assert summary["effective_context_censored"] is False
    np.testing.assert_allclose(context["value"], context.loc[FULL_CONTEXT, "value"], atol=1e-5)

    gradient = rows_of(frame, "gradient")
    assert gradient.loc[0, "raw"] > 0
    assert gradient.loc[1:, "raw"].abs().max() == 0.0
    assert summary["gradient_horizon"] == 0
    assert summary["gradient_horizon_censored"] is False

    probe = rows_of(frame, "probe")
    assert probe.loc[0, "value"] > 0.99  # h_t is a function of x_t alone ...
    assert summary["probe_span"] == 0  # ... and of nothing before it


def test_zero_recurrence_recalls_nothing():
    model = zero_recurrence_rnn(4, heads=2)
    summary, _ = measure_all(model, symbol_task([1, 2]), measure_cfg(), "cpu")
    assert summary["span"] == 0
    assert abs(summary["memory_capacity"]) < 0.1


# ----------------------------------------------------------------------------------------------------------
# Random initialisation


@pytest.fixture(scope="module")
def random_lstm_result():
    torch.manual_seed(0)
    lags = [1, 2, 4, 8, 16, 32, 64]
    model = RecurrentModel("lstm", 4, 4, len(lags), embedding_size=32, hidden_size=64)
    data = symbol_task(lags, valid_tokens=1 << 14)
    return model, measure_all(model, data, measure_cfg(rows=32), "cpu")


def test_random_network_recalls_near_chance(random_lstm_result):
    _, (summary, frame) = random_lstm_result
    recall = rows_of(frame, "recall")
    assert (recall.loc[8:, "value"] - 0.25).abs().max() < 0.03
    assert summary["span"] <= 2
    assert summary["memory_capacity"] < 0.5
    # a random LSTM keeps the last inputs in its state (probe) without using them (recall)
    probe = rows_of(frame, "probe")
    assert probe.loc[0, "value"] > 0.9
    assert probe.loc[64, "value"] < probe.loc[64, "chance"] + 0.05
    assert 1 <= summary["probe_span"] < 64
    assert summary["gradient_log_slope"] < 0  # vanishing: the gradient shrinks with distance


def test_interface_is_json_and_tidy(random_lstm_result):
    _, (summary, frame) = random_lstm_result
    json.dumps(summary, allow_nan=False)  # plain, finite values only
    expected = {
        "span": int,
        "memory_capacity": float,
        "effective_context": int,
        "effective_context_censored": bool,
        "context_method": str,
        "full_context_loss": float,
        "gradient_horizon": int,
        "gradient_horizon_censored": bool,
        "gradient_flat": bool,
        "gradient_explodes": bool,
        "gradient_log_slope": float,
        "gradient_log_slope_ci_low": float,
        "gradient_log_slope_ci_high": float,
        "gradient_peak_norm": float,
        "probe_span": int,
        "probe_span_cell": int,
        "growth_slope": float,
        "growth_slope_ci_low": float,
        "growth_slope_ci_high": float,
        "growth_ratio": float,
        "jacobian_log_norm_max_L": float,
        "jacobian_slope": float,
        "jacobian_slope_ci_low": float,
        "jacobian_slope_ci_high": float,
        "jacobian_explodes": bool,
        "measure_seconds": float,
    }
    for key, kind in expected.items():
        assert type(summary[key]) is kind, key
    for key in expected:
        if key.startswith(("growth", "jacobian")):
            assert summary[f"{key}_initial"] is None  # no initial network given
    assert list(frame.columns) == measures.COLUMNS
    assert set(frame["measure"]) == {"recall", "context", "gradient", "probe", "probe_cell", "growth", "jacobian"}
    assert set(frame["net"]) == {"trained"}
    context = rows_of(frame, "context")
    assert list(context.index) == [1, 2, 4, 8, 16, 32, 64, 128, FULL_CONTEXT]
    assert context.loc[:128, "p_value"].between(0, 1).all() and np.isnan(context.loc[FULL_CONTEXT, "p_value"])
    assert frame.loc[frame["measure"] != "context", "p_value"].isna().all()
    assert summary["full_context_loss"] == pytest.approx(context.loc[FULL_CONTEXT, "value"])
    assert list(rows_of(frame, "gradient").index) == list(range(129))
    assert list(rows_of(frame, "growth").index) == [4, 8, 16, 32, 64, 128]
    assert (rows_of(frame, "growth")["n"] == 8).all()
    assert list(rows_of(frame, "jacobian").index) == [4, 8, 16, 32, 64, 128]
    assert (rows_of(frame, "jacobian")["n"] == 8).all()
    bounded = frame.dropna(subset=["ci_low"])
    assert (bounded["ci_low"] <= bounded["value"] + 1e-12).all()
    assert (bounded["value"] <= bounded["ci_high"] + 1e-12).all()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_untrained_network_uses_no_context(cell):
    """A random network's output barely depends on its inputs, and a warm state is one it is used to: the
    ablation must not read that as context use (a zero-state restart did, up to d = 128)."""
    torch.manual_seed(3)
    lags = [1, 2, 4, 8]
    model = RecurrentModel(cell, 4, 4, len(lags), embedding_size=32, hidden_size=64)
    summary, _ = measure_all(model, symbol_task(lags, valid_tokens=1 << 13), measure_cfg(rows=16), "cpu")
    assert summary["effective_context"] <= 2
    assert summary["effective_context_censored"] is False
    assert (summary["probe_span_cell"] is None) is (cell != "lstm")


def test_network_at_chance_uses_no_context():
    """An LSTM trained on echo lag 8 with windows of 4 tokens never gets a gradient from a target to its
    source: it stays at chance, and its effective context must say so."""
    torch.manual_seed(0)
    data = symbol_task([8], valid_tokens=1 << 13, seed=1)
    data.train = torch.randint(4, (1 << 14,), generator=torch.Generator().manual_seed(2))
    model = RecurrentModel("lstm", 4, 4, 1, embedding_size=16, hidden_size=32)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    inputs, targets = data.rows("train", 16)
    state = None
    for i in range(300):
        cols = slice((i * 4) % inputs.shape[1], (i * 4) % inputs.shape[1] + 4)
        if cols.start == 0:
            state = None
        logits, state = model(inputs[:, cols], state)
        state = tuple(s.detach() for s in state)
        loss = sequence_loss(logits, targets[:, :, cols])
        if torch.isfinite(loss):  # the first windows of a pass have no target
            opt.zero_grad()
            loss.backward()
            opt.step()
    summary, frame = measure_all(model, data, measure_cfg(rows=16), "cpu")
    assert abs(rows_of(frame, "recall").loc[8, "value"] - 0.25) < 0.03  # at chance ...
    assert summary["effective_context"] <= 2  # ... and using no context


def test_measures_leave_the_model_and_rng_alone():
    torch.manual_seed(1)
    model = RecurrentModel("gru", 4, 4, 1, embedding_size=8, hidden_size=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    cfg = measure_cfg(horizon_max_k=16, contexts=[1, 2, 4])
    for training in (True, False):
        model.train(training)
        measure_all(model, symbol_task([2]), cfg, "cpu")
        assert model.training is training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_short_held_out_rows_shrink_the_measures():
    """Rows of 40 tokens cannot hold a 64-token context or a 129-token gradient window: both shrink to fit."""
    model = zero_recurrence_rnn(10)
    summary, frame = measure_all(model, text_task(10, valid_tokens=8 * 40), measure_cfg(), "cpu")
    assert rows_of(frame, "context").index.max() == 16  # d = 16 reads 32 columns (16 of them noise) of 39
    assert rows_of(frame, "gradient").index.max() == 38  # 39 inputs per row (text: the last token is a target)
    assert summary["effective_context"] == 1


# ----------------------------------------------------------------------------------------------------------
# The rules on their own


def test_gradient_summary_known_profiles():
    k = np.arange(21, dtype=float)
    decay = measures.gradient_summary(0.5**k, 0.01)  # 0.5^6 = 0.016 >= 1 %, 0.5^7 = 0.008 < 1 %
    assert decay["gradient_horizon"] == 6
    assert decay["gradient_log_slope"] == pytest.approx(math.log(0.5))
    assert decay["gradient_explodes"] is False and decay["gradient_horizon_censored"] is False

    grow = measures.gradient_summary(1.1**k, 0.01)
    assert grow["gradient_horizon"] == 20 and grow["gradient_horizon_censored"] is True
    assert grow["gradient_explodes"] is True
    assert grow["gradient_log_slope"] == pytest.approx(math.log(1.1))

    # decays, then grows back, but stays below the near peak: not an explosion
    dip = measures.gradient_summary(np.r_[0.5 ** k[:15], 0.5**14 * 1.5 ** k[1:7]], 0.01)
    assert dip["gradient_log_slope"] > 0 and dip["gradient_explodes"] is False

    underflow = measures.gradient_summary(np.where(k < 8, 0.1**k, 0.0), 0.01)
    assert underflow["gradient_horizon"] == 2
    assert underflow["gradient_log_slope"] == pytest.approx(math.log(0.1))  # fitted after the peak

    zero = measures.gradient_summary(np.zeros(5), 0.01)
    assert zero["gradient_horizon"] == 0 and zero["gradient_log_slope"] is None


def test_effective_context_rule():
    rule = measures.effective_context
    assert rule([1, 2, 4, 8], np.array([5.0, 3.0, 1.005, 1.0]), 1.0, 0.01, 0.0) == (4, False)
    # within tolerance at d = 1 by chance, not at 2: the profile must stay within from d on
    assert rule([1, 2, 4, 8], np.array([1.0, 2.0, 1.0, 1.0]), 1.0, 0.01, 0.0) == (4, False)
    assert rule([1, 2, 4], np.array([3.0, 2.0, 1.5]), 1.0, 0.01, 0.0) == (4, True)
    # the absolute floor: a 0.004-nat excess over a 0.001-nat loss is within 0.01 nats
    assert rule([1, 2], np.array([0.5, 0.005]), 0.001, 0.01, 0.01) == (2, False)
    assert rule([1, 2], np.array([0.5, 0.005]), 0.001, 0.01, 0.0) == (2, True)


def test_wilson_matches_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    successes, trials = np.array([0, 3, 50, 99, 100]), np.array([10, 10, 100, 100, 100])
    low, high = measures._wilson(successes, trials, 0.9)
    ref_low, ref_high = proportion_confint(successes, trials, alpha=0.1, method="wilson")
    np.testing.assert_allclose(low, ref_low, atol=1e-12)
    np.testing.assert_allclose(high, ref_high, atol=1e-12)


def test_mean_ci_matches_scipy():
    from scipy import stats

    samples = np.random.default_rng(0).normal(size=(12, 3))
    _, low, high = measures._mean_ci(samples, 0.95)
    ref_low, ref_high = stats.t.interval(0.95, 11, loc=samples.mean(0), scale=stats.sem(samples, axis=0))
    np.testing.assert_allclose(low, ref_low)
    np.testing.assert_allclose(high, ref_high)


def test_probe_classes_keep_frequent_types():
    valid = torch.tensor([5] * 6 + [2] * 5 + [7] * 4 + [0, 1, 3, 4])
    mapping = measures.probe_classes(valid, vocab_size=8, max_classes=4)
    assert mapping[[5, 2, 7]].tolist() == [0, 1, 2]
    assert set(mapping[[0, 1, 3, 4, 6]].tolist()) == {3}
    assert measures.probe_classes(valid, vocab_size=8, max_classes=8).tolist() == list(range(8))


# ----------------------------------------------------------------------------------------------------------
# Configuration


@pytest.fixture(scope="module")
def compose():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import sweep.cli  # noqa: F401 (registers the schema and the resolvers the config uses)

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        yield hydra_compose


def _claim_subgrids(cfg: DictConfig) -> list[tuple[list[str], list[int]]]:
    """Each sub-grid of the claim preset that a dependency-length claim reads: (its overrides other than
    num_steps, its num_steps). The exploding-gradient sub-grids (a summed loss, claim C5) read no context or
    horizon, so their windows do not size those measures."""
    out = []
    for g in cfg.hydra.sweeper.get("grids") or []:
        if "num_steps" not in g or "optim.loss_reduction" in g:
            continue
        fixed = [f"{k}={v}" for k, v in g.items() if k != "num_steps" and "," not in str(v)]
        out.append((fixed, [int(v) for v in str(g["num_steps"]).split(",")]))
    return out


def test_default_contexts_reach_four_times_the_claim_grid(compose):
    """The measures must look at least 4x beyond the longest window each sub-grid of the claim preset trains with,
    read from the preset and composed as that sub-grid's points are (a task preset such as task=lm brings its own
    measure settings; a grid that grows must not outgrow its measures silently)."""
    cfg = compose("config", overrides=["experiment=claim"], return_hydra_config=True)
    subgrids = _claim_subgrids(cfg)
    assert len(subgrids) >= 3  # the preset was read, not an empty grid
    for fixed, steps in subgrids:
        point = compose("config", overrides=["experiment=claim", *fixed, f"num_steps={max(steps)}"])
        validate(point)
        assert max(point.measure.contexts) >= 4 * max(steps), fixed
        assert point.measure.horizon_max_k >= 4 * max(steps), fixed


@pytest.mark.parametrize(
    "override",
    [
        "measure.ci_level=1.5",
        "measure.chance_margin=-0.1",
        "measure.context_abs_tolerance=-1",
        "measure.context_positions=0",
        "measure.horizon_windows=0",
        "measure.probe_max_k=0",
        "measure.probe_max_classes=1",
        "measure.probe_ridge=0",
        "measure.checkpoints=-1",
    ],
)
def test_bad_measure_config_is_rejected(compose, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key):
        validate(compose("config", overrides=[override]))


# ----------------------------------------------------------------------------------------------------------
# Trained networks


@pytest.mark.slow
def test_num_steps_sets_the_learned_span_on_echo_lag_8(compose):
    """LSTMs trained on echo lag 8 for 1200 updates: at num_steps 16 the gradient reaches the lag inside a
    window and the network learns it; at num_steps 4 it never does.

    Measured (seed 0, 1 thread): num_steps 16 -> span 8, gradient horizon 33 (peak at k = 8), effective
    context 16; num_steps 4 -> span 0, effective context 1, and a gradient horizon censored at 128 with a flat
    far half (log-slope -0.0015 per step, interval [-0.0033, 0.0003]): the failed network is a near-integrator
    whose 50x smaller gradient reaches far but carries nothing it uses. The horizon alone does not separate
    the two; its censoring and flatness flags, recall and context ablation do.
    """
    from sweep.train import train

    base = [
        "task=echo",
        "task.lag=8",
        "task.vocab_size=4",
        "model=lstm",
        "model.hidden_size=64",
        "optim=adam",
        "optim.lr=0.01",
        "budget=updates",
        "budget.amount=1200",
        "batch_size=16",
        "eval.points=1",
        "threads=1",
        "seed=0",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        long = train(compose("config", overrides=[*base, "num_steps=16"]), measure_fn=measure_all).summary
        short = train(compose("config", overrides=[*base, "num_steps=4"]), measure_fn=measure_all).summary
    finally:
        torch.set_num_threads(threads)

    assert long["span"] >= 8 and long["gradient_horizon"] >= 8
    assert long["gradient_peak_k"] == 8  # the gradient peaks at the lag it learned to read
    assert 9 <= long["effective_context"] <= 32 and not long["effective_context_censored"]

    assert not (short["span"] >= 8 and short["gradient_horizon"] >= 8)
    assert short["span"] == 0 and short["memory_capacity"] < 0.1
    assert short["effective_context"] < 8  # it uses less context than the lag needs
    assert short["gradient_peak_norm"] < long["gradient_peak_norm"] / 10
    # the far-reaching horizon of the failed network is flagged, so it is never read as a learned length
    assert short["gradient_horizon_censored"] or short["gradient_flat"]
    assert not long["gradient_horizon_censored"] and not long["gradient_flat"]


# ----------------------------------------------------------------------------------------------------------
# Gradient growth with window length (claim C5)


def gain_rnn(gain: float, vocab: int = 4, hidden: int = 8, seed: int = 0, orthogonal: bool = False) -> RecurrentModel:
    """A tanh RNN with no input weights (h stays exactly 0, where tanh' = 1) and W_hh = gain * I (or gain * Q,
    Q a random orthogonal matrix: spectral radius gain): its backward Jacobian is exactly W_hh, so a window's
    gradient w.r.t. the input weights sums terms of norm gain^k."""
    torch.manual_seed(seed)
    model = RecurrentModel("rnn", vocab, vocab, 1, embedding_size=vocab, hidden_size=hidden)
    basis = torch.linalg.qr(torch.randn(hidden, hidden))[0] if orthogonal else torch.eye(hidden)
    with torch.no_grad():
        model.rnn.weight_ih_l0.zero_()
        model.rnn.bias_ih_l0.zero_()
        model.rnn.bias_hh_l0.zero_()
        model.rnn.weight_hh_l0.copy_(gain * basis)
    return model


def with_loss_reduction(cfg: DictConfig, reduction: str) -> DictConfig:
    with open_dict(cfg):
        cfg.optim = OptimConfig(name="sgd", loss_reduction=reduction)
    return cfg


def test_window_gradient_grows_with_recurrent_gain():
    cfg = measure_cfg(growth_lengths=[2, 4, 8, 16], probe=False, contexts=[1, 2])
    summary, frame = measure_all(gain_rnn(1.5), text_task(4), cfg, "cpu")
    growth = rows_of(frame, "growth")
    assert list(growth.index) == [2, 4, 8, 16]
    assert growth["value"].is_monotonic_increasing
    assert summary["growth_slope_ci_low"] > 0.5  # 1.5^16 / 16 against 1.5^2 / 2: a steep log-log slope
    assert summary["growth_ratio"] > 20


def test_window_gradient_of_a_network_without_recurrence_does_not_grow():
    """Without recurrence the window's mean-per-token loss averages independent per-token gradients: its
    norm can only fall (towards the norm of the expected gradient) as the window gets longer."""
    summary, frame = measure_all(zero_recurrence_rnn(10), text_task(10), measure_cfg(probe=False), "cpu")
    assert list(rows_of(frame, "growth").index) == [4, 8, 16, 32, 64, 128]
    assert summary["growth_slope"] < 0
    assert summary["growth_slope_ci_high"] < 0.05
    assert summary["growth_ratio"] < 1


def test_summed_loss_window_gradient_grows_at_spectral_radius_2():
    """The TF tutorial's loss (mean per token x L) at W_hh = 2 Q: the gradient grows with L, and each window's
    norm is exactly L times its mean-loss norm, so the log-log slope is exactly 1 more."""
    model = gain_rnn(2.0, orthogonal=True)
    cfg = measure_cfg(growth_lengths=[2, 4, 8, 16], probe=False, contexts=[1, 2], jacobian_probes=0)
    mean, _ = measure_all(model, text_task(4), with_loss_reduction(cfg, "mean"), "cpu")
    summed, frame = measure_all(model, text_task(4), with_loss_reduction(cfg, "sum"), "cpu")
    assert summed["growth_slope"] > 0 and summed["growth_slope_ci_low"] > 1
    assert rows_of(frame, "growth")["value"].is_monotonic_increasing
    assert summed["growth_slope"] == pytest.approx(mean["growth_slope"] + 1, abs=1e-4)


def test_summed_loss_grows_without_recurrence():
    """Why the growth slope is read on a mean loss: with a summed loss a network without recurrence has a
    slope > 0 (its norm grows ~ sqrt(L)), though nothing is amplified."""
    cfg = measure_cfg(probe=False, jacobian_probes=0)
    mean, _ = measure_all(zero_recurrence_rnn(10), text_task(10), with_loss_reduction(cfg, "mean"), "cpu")
    summed, _ = measure_all(zero_recurrence_rnn(10), text_task(10), with_loss_reduction(cfg, "sum"), "cpu")
    assert mean["growth_slope"] < 0 < summed["growth_slope"]


def test_growth_is_measured_on_the_initial_network_too():
    trained, initial = gain_rnn(1.5), zero_recurrence_rnn(4)
    cfg = measure_cfg(growth_lengths=[2, 4, 8, 16], probe=False, contexts=[1, 2])
    rng = torch.get_rng_state()
    initial.train()
    summary, frame = measure_all(trained, text_task(4), cfg, "cpu", initial=initial)
    assert initial.training and all(p.grad is None for p in initial.parameters())
    assert torch.equal(rng, torch.get_rng_state())
    growth = frame[frame["measure"] == "growth"]
    assert sorted(growth["net"].unique()) == ["initial", "trained"]
    assert summary["growth_slope_ci_low"] > 0.5
    assert summary["growth_slope_initial"] < 0 < summary["growth_slope"]
    by_net = growth.set_index(["net", "k"])["value"]
    assert by_net["initial", 16] < by_net["initial", 2]


def test_growth_profile_slope_is_the_per_window_least_squares_slope():
    lengths = [4, 8, 16, 32]
    rng = np.random.default_rng(0)
    slopes = np.array([0.5, 0.7, 0.6, 0.4, 0.8])
    norms = np.exp(np.log(lengths)[None, :] * slopes[:, None] + rng.normal(0, 0.01, (5, 4)))
    scalars, frame = measures.growth_profile(lengths, norms, 0.95, "trained")
    assert scalars["growth_slope"] == pytest.approx(slopes.mean(), abs=0.02)
    from scipy import stats

    per_window = [stats.linregress(np.log(lengths), np.log(n)).slope for n in norms]
    low, high = stats.t.interval(0.95, 4, loc=np.mean(per_window), scale=stats.sem(per_window))
    assert (scalars["growth_slope_ci_low"], scalars["growth_slope_ci_high"]) == pytest.approx((low, high))
    assert scalars["growth_ratio"] == pytest.approx(norms[:, -1].mean() / norms[:, 0].mean())
    np.testing.assert_allclose(frame["value"], norms.mean(0))


# ----------------------------------------------------------------------------------------------------------
# LSTM cell state


def cell_only_lstm() -> RecurrentModel:
    """An LSTM whose output gate is shut (sigmoid(-200) is exactly 0 in float32, so h = 0) while its cells
    hold x_t (units 0-3: forget gate shut, c = one_hot(x_t)) and a decaying trace (units 4-7: forget gate
    1/2, c = sum_j 2^-j one_hot(x_{t-j})); their difference is linear in one_hot(x_{t-1}) plus smaller terms."""
    vocab = 4
    model = RecurrentModel("lstm", vocab, vocab, 1, embedding_size=vocab, hidden_size=2 * vocab)
    eye = torch.eye(vocab)
    H = 2 * vocab
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embedding.weight.copy_(eye)
        model.rnn.bias_ih_l0[:H] = 100.0  # input gate open
        model.rnn.bias_ih_l0[H : H + vocab] = -200.0  # forget gate shut on units 0-3, 1/2 on units 4-7
        model.rnn.weight_ih_l0[2 * H : 2 * H + vocab] = 100.0 * eye  # cell input: one_hot(x_t)
        model.rnn.weight_ih_l0[2 * H + vocab : 3 * H] = 100.0 * eye
        model.rnn.bias_ih_l0[3 * H :] = -200.0  # output gate shut
    return model


def test_probe_reads_the_lstm_cell_state():
    cfg = measure_cfg(probe_max_k=4, contexts=[1, 2], horizon_max_k=8)
    summary, frame = measure_all(cell_only_lstm(), symbol_task([1]), cfg, "cpu")
    probe, cell = rows_of(frame, "probe"), rows_of(frame, "probe_cell")
    assert (probe["value"] <= probe["chance"] + 0.05).all()  # h is exactly zero: nothing to decode
    assert summary["probe_span"] == 0
    assert (cell.loc[0:1, "value"] > 0.99).all()  # the cells hold x_t and x_{t-1}
    assert summary["probe_span_cell"] >= 1


def test_lstm_cell_states_match_the_fused_module():
    torch.manual_seed(0)
    model = RecurrentModel("lstm", 5, 5, 1, embedding_size=6, hidden_size=7, num_layers=2)
    tokens = torch.randint(5, (3, 9))
    state = (torch.randn(2, 3, 7), torch.randn(2, 3, 7))
    with torch.no_grad():
        emb = model.embedding(tokens)
        hidden, _ = model.rnn(emb, state)
        cells = measures.lstm_top_cells(model, emb, state, hidden, measures._lower_layers(model))
        stepped, s = [], state
        for t in range(tokens.shape[1]):  # the fused module, one column at a time
            _, s = model.rnn(emb[:, t : t + 1], s)
            stepped.append(s[1][-1])
    torch.testing.assert_close(cells, torch.stack(stepped, 1), atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Missing heads, paired tests, slope intervals


def test_a_head_without_held_out_targets_is_missing_not_wrong():
    """Rows of 40 tokens hold no target for lag 64: that head is skipped, not counted at accuracy 0."""
    lags = [1, 2, 64]
    model = delay_line(4, lags, {1, 2}, slots=3)
    summary, frame = measure_all(
        model, symbol_task(lags, valid_tokens=8 * 40), measure_cfg(contexts=[1, 2, 3, 4]), "cpu"
    )
    recall = rows_of(frame, "recall")
    assert recall.loc[64, "n"] == 0 and np.isnan(recall.loc[64, "value"])
    assert summary["memory_capacity"] == pytest.approx(2.0, abs=0.05)  # would be 2 - 1/3 if counted as 0
    assert summary["span"] == 2
    assert summary["effective_context"] == 3  # the missing head constrains no position


def test_paired_p_value_matches_scipy():
    from scipy import stats

    rng = np.random.default_rng(1)
    full = rng.normal(1.0, 0.3, 50)
    ablated = np.stack([full + rng.normal(0.05, 0.2, 50), full + rng.normal(-0.05, 0.2, 50)])
    p = measures.paired_greater_p(ablated, full[None, :])
    ref = [stats.ttest_rel(a, full, alternative="greater").pvalue for a in ablated]
    np.testing.assert_allclose(p, ref, rtol=1e-10)
    assert measures.paired_greater_p(full[None, :], full[None, :])[0] == 1.0


def test_slope_interval_matches_scipy():
    from scipy import stats

    x = np.arange(10.0)
    y = 0.3 * x + np.random.default_rng(2).normal(0, 0.5, 10)
    slope, low, high = measures.slope_ci(x, y, 0.9)
    fit = stats.linregress(x, y)
    half = stats.t.ppf(0.95, 8) * fit.stderr
    assert (slope, low, high) == pytest.approx((fit.slope, fit.slope - half, fit.slope + half))


def test_flat_and_exploding_need_the_slope_interval():
    k = np.arange(41, dtype=float)
    wiggle = 1 + 0.01 * np.sin(k)
    # a near-integrator: the far-half slope's interval lies inside +-0.01 per step
    flat = measures.gradient_summary(0.3 * wiggle, 0.01, flat_slope=0.01)
    assert flat["gradient_flat"] is True and flat["gradient_explodes"] is False
    assert flat["gradient_horizon_censored"] is True
    assert -0.01 <= flat["gradient_log_slope_ci_low"] <= flat["gradient_log_slope_ci_high"] <= 0.01
    # growing for sure (interval above 0) but by less than the minimum effect: flat, not exploding
    slow = measures.gradient_summary(np.exp(0.005 * k) * wiggle, 0.01, flat_slope=0.01)
    assert slow["gradient_log_slope_ci_low"] > 0
    assert slow["gradient_explodes"] is False and slow["gradient_flat"] is True
    # the same profile against a smaller minimum effect explodes, and is no longer flat
    strict = measures.gradient_summary(np.exp(0.005 * k) * wiggle, 0.01, flat_slope=0.001)
    assert strict["gradient_explodes"] is True and strict["gradient_flat"] is False
    # noisy growth whose interval reaches below the minimum effect does not count as exploding
    noisy = np.exp(0.025 * k + np.random.default_rng(5).normal(0, 0.3, len(k)))
    assert noisy[-1] >= noisy[:21].max()  # so only the interval can stop it
    loose = measures.gradient_summary(noisy, 0.01, flat_slope=0.01)
    assert loose["gradient_log_slope"] > 0.01 and loose["gradient_log_slope_ci_low"] < 0.01
    assert loose["gradient_explodes"] is False
    decay = measures.gradient_summary(0.5**k, 0.01)
    assert decay["gradient_flat"] is False
