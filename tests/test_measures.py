"""Each dependency-length measure against networks whose answer is known (issue 3, "Done means" 1 and 2).

- a hand-built delay line: an RNN whose hidden state is a shift register of one-hot slots, with heads that
  read chosen slots, so it recalls exactly the lags it is wired for;
- an RNN with zero recurrent weights: its output at t depends on x_t alone;
- a randomly initialised LSTM: it keeps a little recent information and uses none of it;
- (slow) LSTMs trained on echo lag 8 at num_steps 16 and 4.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from sweep import measures
from sweep.config import Config, ConfigError, validate
from sweep.measures import FULL_CONTEXT, measure_all
from sweep.model import RecurrentModel
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

    # the target at t is x_{t-5}: five tokens of context leave it unknown, six give the full-context loss
    context = rows_of(frame, "context")
    assert context.loc[lag, "value"] == pytest.approx(math.log(4), abs=0.01)
    assert context.loc[lag + 1, "value"] == pytest.approx(context.loc[FULL_CONTEXT, "value"], abs=1e-4)
    assert summary["effective_context"] == lag + 1
    assert summary["effective_context_censored"] is False

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
        "full_context_loss": float,
        "gradient_horizon": int,
        "gradient_explodes": bool,
        "gradient_log_slope": float,
        "probe_span": int,
        "measure_seconds": float,
    }
    for key, kind in expected.items():
        assert type(summary[key]) is kind, key
    assert list(frame.columns) == measures.COLUMNS
    assert set(frame["measure"]) == {"recall", "context", "gradient", "probe"}
    context = rows_of(frame, "context")
    assert list(context.index) == [1, 2, 4, 8, 16, 32, 64, 128, FULL_CONTEXT]
    assert summary["full_context_loss"] == pytest.approx(context.loc[FULL_CONTEXT, "value"])
    assert list(rows_of(frame, "gradient").index) == list(range(129))
    bounded = frame.dropna(subset=["ci_low"])
    assert (bounded["ci_low"] <= bounded["value"] + 1e-12).all()
    assert (bounded["value"] <= bounded["ci_high"] + 1e-12).all()


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
    assert rows_of(frame, "context").index.max() == 32
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


def test_default_contexts_reach_four_times_the_claim_grid(compose):
    cfg = compose("config")
    validate(cfg)
    assert max(cfg.measure.contexts) >= 4 * 32
    assert cfg.measure.horizon_max_k >= 4 * 32


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
# Trained networks (issue 3, "Done means" 2)


@pytest.mark.slow
def test_num_steps_sets_the_learned_span_on_echo_lag_8(compose):
    """LSTMs trained on echo lag 8 for 1200 updates: at num_steps 16 the gradient reaches the lag inside a
    window and the network learns it; at num_steps 4 it never does.

    Measured (seed 0, 1 thread): num_steps 16 -> span 8, gradient horizon 33 (peak at k = 8), effective
    context 16; num_steps 4 -> span 0, effective context 1, and a gradient horizon censored at 128: the failed
    network is a near-integrator whose flat, 50x smaller gradient reaches far but carries nothing it uses.
    So the horizon alone does not separate the two; recall and context ablation do.
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
