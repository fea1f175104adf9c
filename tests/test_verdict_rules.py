"""Each verdict rule of docs/claims.md against the wrong rule it replaces (a mutation test).

Every table here is hand-built so that the right answer is obvious from how it was made. Each `test_*` states the
right rule and passes with it; its `test_mutation_*` swaps in the wrong rule (a module-level rule function of
analysis/verdicts.py, or a threshold) and requires the first test to fail.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from analysis import stats, verdicts
from analysis.synthetic import runs_table, speed_table
from analysis.thresholds import load_thresholds
from analysis.verdicts import INCONCLUSIVE, REFUTED, SUPPORTED, judge

PLATEAU = "plateau 8192"


@pytest.fixture(scope="module")
def th() -> dict[str, Any]:
    return load_thresholds()


def claim(table: pd.DataFrame, th: dict[str, Any], cid: str, speed: pd.DataFrame | None = None) -> verdicts.Verdict:
    return next(v for v in judge(table, th, speed) if v.claim.id == cid)


def learned(**outcomes) -> pd.DataFrame:
    """GRU on echo at num_steps 16 (> lag 8), trained to a plateau: every batch size recalls the lag."""
    base = dict(cells=("gru",), batch_sizes=(1, 4, 16), num_steps=(16,), budget=PLATEAU)
    return runs_table(**{**base, **outcomes})


# ------------------------------------------------------------------------------- C2: which pairs are compared
# Batch 4 ends worse (0.5 nats) than batch 1 and batch 16 (0.2): the thread's own pair (1, 4) differs, the extremes
# (1, 16) do not.
NON_MONOTONE = learned(valid_loss=lambda cell, bs, ns, seed: 0.5 if bs == 4 else 0.2)


def test_c2_tests_the_threads_pair_and_every_neighbouring_pair(th):
    c2 = claim(NON_MONOTONE, th, "C2")
    assert c2.verdict == REFUTED  # only the extremes (1 vs 16, equal) would call it supported
    assert set(zip(c2.details["bs_small"], c2.details["bs_large"], strict=True)) == {(1.0, 4.0), (4.0, 16.0)}
    assert "thread's pair 1 vs 4: 0 equivalent, 1 different of 1" in c2.statistic


def test_mutation_comparing_only_the_extreme_batches(th, monkeypatch):
    monkeypatch.setattr(verdicts, "c2_pairs", lambda sizes: [(sizes[0], sizes[-1])])
    with pytest.raises(AssertionError):
        test_c2_tests_the_threads_pair_and_every_neighbouring_pair(th)


def test_c2_pairs_of_a_grid():
    assert verdicts.c2_pairs([1.0, 2.0, 4.0, 8.0]) == [(1.0, 4.0), (1.0, 2.0), (2.0, 4.0), (4.0, 8.0)]
    assert verdicts.c2_pairs([4.0, 16.0, 64.0]) == [(4.0, 16.0), (16.0, 64.0)]


# ------------------------------------------------------------------------------- C2: chance, pair by pair
# Batch 16 learns (accuracy 0.95); batches 1 and 4 sit at chance (0.25, loss ln 4). Their equal losses say
# nothing, although batch 16 of the same group learned.
def _chance(cell: str, bs: int, ns: int, seed: int) -> float:
    return 0.95 if bs == 16 else 0.25


ONE_LEARNS = learned(
    valid_accuracy=_chance,
    acc_lag_8=_chance,
    valid_loss=lambda cell, bs, ns, seed: 0.2 if bs == 16 else 1.386,
    memory_capacity=lambda cell, bs, ns, seed: 0.93 if bs == 16 else 0.0,
)


def every_batch_at_chance(g: pd.DataFrame, pair: tuple[float, float], th: dict[str, Any]) -> verdicts.Why | None:
    """The audited rule: a group is at chance only when EVERY batch size's accuracy upper bound is below chance +
    margin, whatever the pair compared."""
    level = float(g["chance_accuracy"].iloc[0])
    uppers = [stats.t_interval(b["valid_accuracy"], 0.95)[2] for _, b in g.groupby("batch_size")]
    if all(u < level + th["c2"]["chance_margin"] for u in uppers):
        return "pair_at_chance", {"small": pair[0], "big": pair[1], "bound": level + th["c2"]["chance_margin"]}
    return None


def test_c2_chance_is_tested_on_the_pair_compared(th):
    c2 = claim(ONE_LEARNS, th, "C2")
    assert c2.verdict == REFUTED  # the one informative pair, 4 vs 16, differs
    assert list(c2.uninformative["group"]) == ["cell=gru, num_steps=16, batch 1 vs 4"]


def test_mutation_chance_over_all_batch_sizes(th, monkeypatch):
    monkeypatch.setattr(verdicts, "pair_at_chance", every_batch_at_chance)
    with pytest.raises(AssertionError):  # (1, 4) would count as "equivalent": a tie, inconclusive
        test_c2_chance_is_tested_on_the_pair_compared(th)


# ------------------------------------------------------------------------------- C2: Holm across the pairs
OFFSETS = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])


def _holm_loss(cell: str, bs: int, ns: int, seed: int) -> float:
    """Seeds spread ±0.035 nats; batch sizes 2 and 8 sit 0.01 nats above 1, 4, 16: each pair's TOST p is
    0.011-0.026, below alpha one at a time, but five pairs are tested."""
    shift = 0.01 if bs in (2, 8) else 0.0
    return 0.2 + shift + 0.035 * OFFSETS[seed if bs in (1, 4, 16) else 4 - seed]


HOLM = learned(batch_sizes=(1, 2, 4, 8, 16), noise=0.0, valid_loss=_holm_loss)


def test_c2_is_holm_corrected_across_the_pairs_of_a_setting(th):
    c2 = claim(HOLM, th, "C2")
    loss = c2.details[c2.details["outcome"] == "valid_loss"]
    assert len(loss) == 5 and (loss["p_tost"] < th["alpha"]).all()  # each pair alone: equivalent
    assert (loss["p_tost_holm"] >= th["alpha"]).all() and set(loss["group_state"]) == {"undecided"}
    assert c2.verdict == INCONCLUSIVE


def test_mutation_no_correction_across_pairs(th, monkeypatch):
    monkeypatch.setattr(verdicts, "holm", lambda p: list(p))
    with pytest.raises(AssertionError):
        test_c2_is_holm_corrected_across_the_pairs_of_a_setting(th)


def test_holm_matches_statsmodels():
    p = [0.01, 0.04, np.nan, 0.03, 0.2]
    ours = verdicts.holm(p)
    ref = multipletests([0.01, 0.04, 0.03, 0.2], method="holm")[1]
    assert np.isnan(ours[2]) and [ours[i] for i in (0, 1, 3, 4)] == pytest.approx(list(ref))


# ------------------------------------------------------------------------------- C2 / C1: budgets and direction
def s_curve(cell: str, bs: int, ns: int, seed: int) -> float:
    """Updates to target S(B) = 100 (1 + 12 / B): seconds to target fall from batch 1 to 16 at the speed phase's
    tokens/s (2000 B^0.9)."""
    return 100.0 * (1 + 12.0 / bs)


# The larger batch learns MORE at every pair (0.6 -> 0.4 -> 0.2 nats) and gets there sooner: C2 is refuted (batch
# size changes what is learned), yet nothing here says batch size buys anything but speed at no cost in quality.
LEARNS_MORE = learned(valid_loss=lambda cell, bs, ns, seed: {1: 0.6, 4: 0.4, 16: 0.2}[bs], updates_to_target=s_curve)


def test_c1_reads_the_direction_of_c2_on_each_pair(th):
    assert claim(LEARNS_MORE, th, "C2").verdict == REFUTED
    c1 = claim(LEARNS_MORE, th, "C1", speed_table(cells=("gru",)))
    assert set(c1.details["quality"]) == {"better"} and set(c1.details["state"]) == {"buys speed"}
    assert c1.verdict == SUPPORTED


def test_mutation_c1_reads_c2s_word(th, monkeypatch):
    original = verdicts.c1_quality
    monkeypatch.setattr(
        verdicts, "c1_quality", lambda pair, c2: "worse" if c2.verdict == REFUTED else original(pair, c2)
    )
    with pytest.raises(AssertionError):
        test_c1_reads_the_direction_of_c2_on_each_pair(th)


def test_budget_limited_gaps_are_never_c2(th):
    """The same gap at equal tokens is learning speed: C2 and C1 are not judged there."""
    budget = LEARNS_MORE.assign(budget="tokens 131072")
    for cid in ("C1", "C2"):
        v = claim(budget, th, cid, speed_table(cells=("gru",)))
        assert v.verdict == INCONCLUSIVE and not v.splits["applies"].any() and v.sentence.startswith("Not judged")


# ------------------------------------------------------------------------------- aggregation
def test_ties_are_inconclusive(th):
    """gru's pair ends equivalent, lstm's differs: one for, one against."""
    table = runs_table(cells=("gru", "lstm"), batch_sizes=(1, 16), num_steps=(16,), budget=PLATEAU,
                       valid_loss=lambda cell, bs, ns, seed: 0.2 + 0.3 * (cell == "lstm" and bs == 16))  # fmt: skip
    c2 = claim(table, th, "C2")
    assert "1 equivalent / 1 different" in c2.statistic and c2.verdict == INCONCLUSIVE
    assert verdicts.by_fractions(1, 1, 2, th) == INCONCLUSIVE and verdicts.by_fractions(0, 2, 2, th) == REFUTED


def ties_to_refuted(n_for: int, n_against: int, n: int, th: dict[str, Any]) -> str:
    """The audited rule: at least `majority` against refutes, so a tie refutes."""
    if n == 0:
        return INCONCLUSIVE
    return SUPPORTED if n_for / n > th["majority"] else REFUTED if n_against / n >= th["majority"] else INCONCLUSIVE


def test_mutation_ties_to_refuted(th, monkeypatch):
    monkeypatch.setattr(verdicts, "by_fractions", ties_to_refuted)
    with pytest.raises(AssertionError):
        test_ties_are_inconclusive(th)


def _setting(protocol: str, differs: bool, rng: int) -> pd.DataFrame:
    gen = np.random.default_rng(rng)

    def loss(cell: str, bs: int, ns: int, seed: int) -> float:
        return (0.2 + 0.3 * (bs == 16)) if differs else 0.5 + gen.normal(0, 0.3)  # seeds scatter: undecided

    return runs_table(cells=("gru",), batch_sizes=(1, 16), num_steps=(16,), budget=PLATEAU, protocol=protocol,
                      valid_loss=loss, rng=rng)  # fmt: skip


ONE_OF_THREE = pd.concat([_setting("fixed lr", True, 0), _setting("scaled lr", False, 1),
                          _setting("searched lr", False, 2)], ignore_index=True)  # fmt: skip


def test_one_setting_does_not_outvote_settings_that_could_not_judge(th):
    c2 = claim(ONE_OF_THREE, th, "C2")
    assert dict(zip(c2.splits["split"], c2.splits["verdict"], strict=True)) == {
        "echo · plateau 8192 · fixed lr": REFUTED,
        "echo · plateau 8192 · scaled lr": INCONCLUSIVE,
        "echo · plateau 8192 · searched lr": INCONCLUSIVE,
    }
    assert c2.verdict == INCONCLUSIVE
    assert c2.decided_in == ("echo · plateau 8192 · fixed lr",) and len(c2.undecided_in) == 2
    assert "only 1 of 3 settings" in c2.sentence and "refuted in echo · plateau 8192 · fixed lr" in c2.sentence
    two = pd.concat([ONE_OF_THREE, _setting("tuned lr", True, 3)], ignore_index=True)
    assert claim(two, th, "C2").verdict == INCONCLUSIVE  # 2 of 4 is a tie, not a majority
    three = pd.concat([two, _setting("other lr", True, 4)], ignore_index=True)
    assert claim(three, th, "C2").verdict == REFUTED  # 3 of 5 settings decided, all refuted


def test_mutation_one_setting_outvotes_the_inconclusive_ones(th, monkeypatch):
    monkeypatch.setattr(verdicts, "enough_settings", lambda decided, applicable, th: decided > 0)
    with pytest.raises(AssertionError):
        test_one_setting_does_not_outvote_settings_that_could_not_judge(th)


# ------------------------------------------------------------------------------- C5: a "can" claim
def growth(slope: dict[int, float] | float, reduction: str = "mean", **kw) -> pd.DataFrame:
    """An exploding-regime grid (rnn, batch 16, num_steps 8/32/128) with the given window-gradient slope per
    num_steps, under the given loss reduction."""
    per = slope if isinstance(slope, dict) else dict.fromkeys((8, 32, 128), slope)
    t = runs_table(cells=("rnn",), batch_sizes=(16,), num_steps=(8, 32, 128), budget="updates 200",
                   growth_slope=lambda cell, bs, ns, seed: per[ns], growth_slope_initial=lambda *a: -0.4,
                   **kw)  # fmt: skip
    t["cfg.optim.loss_reduction"] = reduction
    return t


def test_c5_any_reliable_growth_under_a_mean_loss_is_amplification(th):
    """Slope 0.3 under a mean loss at every num_steps: a mean averages per-token gradients (an untrained network
    sits near -0.4), so a slope reliably above 0 means the backward pass amplifies."""
    assert claim(growth(0.3), th, "C5").verdict == SUPPORTED


def test_mutation_slope_threshold_for_a_summed_loss_on_a_mean_loss(th):
    wrong = {**th, "c5": {**th["c5"], "min_slope": 0.5}}
    with pytest.raises(AssertionError):
        test_c5_any_reliable_growth_under_a_mean_loss_is_amplification(wrong)


def test_c5_a_summed_loss_slope_is_read_less_one(th):
    """Slope 0.8 under the summed loss is -0.2 under the mean: the sum of L terms adds exactly 1."""
    c5 = claim(growth(0.8, "sum"), th, "C5")
    assert c5.verdict == INCONCLUSIVE and c5.details["slope"].max() < 0
    assert "Not seen in this regime" in c5.sentence and "sum loss" in c5.sentence


def test_mutation_summed_slope_read_as_is(th, monkeypatch):
    monkeypatch.setattr(verdicts, "c5_measure", lambda d: pd.DataFrame(
        {"slope": pd.to_numeric(d["growth_slope"]), "initial": pd.to_numeric(d["growth_slope_initial"])}))  # fmt: skip
    with pytest.raises(AssertionError):
        test_c5_a_summed_loss_slope_is_read_less_one(th)


def test_c5_a_positive_slope_at_one_num_steps_is_not_growth(th):
    """Positive only at num_steps 32 (the window that first holds the lag), negative elsewhere."""
    assert claim(growth({8: -0.3, 32: 0.6, 128: -0.2}), th, "C5").verdict == INCONCLUSIVE


def test_mutation_a_single_step_counts(th):
    with pytest.raises(AssertionError):
        test_c5_a_positive_slope_at_one_num_steps_is_not_growth({**th, "c5": {**th["c5"], "min_num_steps": 1}})


def test_c5_the_jacobian_explodes_only_above_norm_preserving(th):
    """Per-step gain e^0.05 and a product at the longest L above norm-preserving (log-norm 2): explodes. The same
    gain from a product that is still below norm-preserving at the longest L (-1) shrinks every perturbation."""
    kw = dict(jacobian_slope=lambda *a: 0.05)
    assert claim(growth(-0.3, jacobian_log_norm_max_L=lambda *a: 2.0, **kw), th, "C5").verdict == SUPPORTED
    creeping = claim(growth(-0.3, jacobian_log_norm_max_L=lambda *a: -1.0, **kw), th, "C5")
    assert creeping.verdict == INCONCLUSIVE


def test_mutation_a_positive_jacobian_slope_alone(th, monkeypatch):
    monkeypatch.setattr(verdicts, "c5_jacobian_explodes", lambda low, max_l_low, th: low > 0.01)
    with pytest.raises(AssertionError):
        test_c5_the_jacobian_explodes_only_above_norm_preserving(th)


def test_c5_one_regime_that_shows_it_decides_and_the_others_refute_nothing(th):
    regimes = pd.concat([growth(0.3).assign(protocol="radius 2"), growth(-0.3).assign(protocol="radius 1"),
                         growth(-0.3).assign(protocol="radius 1.5")], ignore_index=True)  # fmt: skip
    c5 = claim(regimes, th, "C5")
    assert c5.verdict == SUPPORTED and c5.decided_in == ("echo · updates 200 · radius 2",)
    assert REFUTED not in set(c5.splits["verdict"]) and "not seen in the others" in c5.sentence
    none = claim(regimes[regimes["protocol"] != "radius 2"], th, "C5")
    assert none.verdict == INCONCLUSIVE and none.sentence.startswith("Not seen in the regimes tested (2:")


# ------------------------------------------------------------------------------- C7: which jitter
# The training-minibatch loss jitter falls as 1/sqrt(b) (sampling noise of a b x 16-token loss: batch 1 / batch
# 16 = 4x), but on one fixed held-out batch the loss moves as much at batch 1 as at batch 16: the parameters of
# batch 1 are no more erratic.
SAMPLING_ONLY = learned(batch_sizes=(1, 16), param_jitter=lambda *a: 0.01,
                        sampling_jitter=lambda cell, bs, ns, seed: 0.2 / bs**0.5,
                        loss_jitter=lambda cell, bs, ns, seed: 0.2 / bs**0.5)  # fmt: skip


def test_c7_erratic_reads_the_parameters_not_the_minibatch_noise(th):
    c7 = claim(SAMPLING_ONLY, th, "C7", speed_table())
    row = c7.details.iloc[0]
    assert row["state"] == "calm" and row["sampling_ratio"] == pytest.approx(row["sampling_expected"], rel=0.05)
    assert c7.verdict != SUPPORTED and "sampling jitter" in c7.statistic


def test_mutation_minibatch_loss_jitter_as_erratic(th):
    with pytest.raises(AssertionError):
        test_c7_erratic_reads_the_parameters_not_the_minibatch_noise(
            {**th, "c7": {**th["c7"], "outcome": "loss_jitter"}}
        )
