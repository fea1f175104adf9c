"""Verdicts on real run records (tests/fixtures/records, tests/fixtures/speed.parquet; how they were made and
what a reader can check is in tests/fixtures/README.md) and on documented tables whose answer is known.

Mutation tests: each audited mistake (a relative loss gap, a main-effects-only ANOVA, a C3 interval that merely
overlaps the band, the max grad norm over training for C5) is swapped in for the rule it replaces, and the
verdict (or effect size) must change. A needed column missing from the fixture fails a test; nothing skips.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.weightstats import ttost_ind

from analysis import stats, verdicts
from analysis.load import load_results
from analysis.synthetic import runs_table, speed_table
from analysis.thresholds import ThresholdsError, load_thresholds
from analysis.verdicts import (
    INCONCLUSIVE,
    MIXED,
    NO_SPEED,
    REFUTED,
    SUPPORTED,
    Verdict,
    combine,
    judge,
    split_table,
    synthesize,
    verdict_table,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def th():
    return load_thresholds()


@pytest.fixture(scope="module")
def records() -> pd.DataFrame:
    runs = load_results(FIXTURES / "records").runs
    need(runs, ["task", "task_label", "budget", "protocol", "split", "cell", "batch_size", "num_steps", "seed",
                "status", "folder", "valid_loss", "valid_accuracy", "chance_accuracy", "acc_lag_8", "memory_capacity",
                "span"])  # fmt: skip
    return runs


@pytest.fixture(scope="module")
def speed() -> pd.DataFrame:
    sp = pd.read_parquet(FIXTURES / "speed.parquet")
    need(sp, ["task", "cell", "batch_size", "num_steps", "round", "tokens_per_s", "us_per_update"])
    return sp


def need(df: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in df]
    assert not missing, f"fixture lacks columns {missing}: regenerate it (tests/fixtures/make_fixtures.sh)"


def by_claim(verdict_list: list[Verdict]) -> dict[str, Verdict]:
    return {v.claim.id: v for v in verdict_list}


def verdicts_of(table: pd.DataFrame, th, speed=None) -> dict[str, str]:
    return {v.claim.id: v.verdict for v in judge(table, th, speed)}


def echo(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["task"] == "echo"]


# ------------------------------------------------------------------------------------ the fixture's facts
def test_fixture_facts_a_reader_can_check(records):
    """tests/fixtures/README.md: GRU on echo (lag 8) at equal tokens; a window of 4 cannot reach lag 8."""
    e = echo(records)
    assert e["seed"].nunique() == 5 and len(e) == 20
    acc = e.set_index(["batch_size", "num_steps", "seed"]).sort_index()["acc_lag_8"]
    assert (acc.xs(4, level="num_steps") < 0.3).all()  # num_steps 4: at chance (0.25) at both batch sizes
    assert (acc.xs(16, level="num_steps") > 0.89).sum() == 9  # num_steps 16: recalled in 9 of 10 runs ...
    assert acc.loc[(4, 16, 4)] < 0.7  # ... batch 4 seed 4 still learning (0.68)
    lags = records[records["task"] == "lags"].set_index(["num_steps", "seed"]).sort_index()
    assert len(lags) == 10
    assert (lags.loc[4, "span"] == 8).all() and (lags.loc[16, "span"] == 16).all()  # span 8 from windows of 4


# ------------------------------------------------------------------------------------------------- C2
PLATEAU = "plateau 8192"  # hand-made tables of runs trained to a plateau (capped at 8192 updates)


def as_plateau(runs: pd.DataFrame) -> pd.DataFrame:
    """The fixture read as if its runs had been trained to a plateau (they ran at equal tokens): the pair
    machinery on real records, where the answer is the fixture README's."""
    return runs.assign(regime="plateau")


def test_c2_is_not_judged_at_a_fixed_budget(records, th):
    c2 = by_claim(judge(echo(records), th))["C2"]
    assert c2.verdict == INCONCLUSIVE and c2.sentence.startswith("Not judged")
    assert not c2.splits["applies"].any() and c2.decided_in == () and c2.undecided_in == ()


def test_c2_on_the_fixture_lists_chance_pairs_and_is_decided_by_the_rest(records, th):
    c2 = by_claim(judge(as_plateau(echo(records)), th))["C2"]
    unin = c2.uninformative
    assert list(unin.columns) == ["split", "group", "reason"]
    assert list(unin["group"]) == ["cell=gru, num_steps=4, batch 4 vs 16"] and "chance" in unin["reason"].iloc[0]
    ns4 = echo(records).loc[lambda d: d["num_steps"] == 4, "folder"]
    assert not set(c2.deciding["folder"]) & set(ns4)  # nothing decided by a pair that learned nothing
    assert len(set(c2.deciding["folder"])) == 10  # the 10 runs at num_steps 16
    loss = c2.details[c2.details["outcome"] == "valid_loss"].iloc[0]
    # batch 16 - batch 4 = +0.016 nats, but batch 4 seed 4 (0.56 nats) makes the interval far wider than ±0.05
    assert loss["diff"] == pytest.approx(0.0156, abs=0.001) and loss["group_state"] == "undecided"
    assert c2.verdict == INCONCLUSIVE


def test_mutation_relative_loss_gap_on_the_fixture_refutes_c2(records, th, monkeypatch):
    monkeypatch.setattr(verdicts, "c2_difference", relative_gap)
    # 0.153 / 0.137 - 1 = 11 % "gap" > 0.05: the audited rule calls two overlapping groups different
    assert by_claim(judge(as_plateau(echo(records)), th))["C2"].verdict == REFUTED


def c2_table(**outcomes) -> pd.DataFrame:
    base = dict(valid_accuracy=lambda *a: 1.0, acc_lag_8=lambda *a: 1.0, memory_capacity=lambda *a: 1.0,
                span=lambda *a: 8.0)  # fmt: skip
    return runs_table(cells=("gru",), batch_sizes=(1, 16), num_steps=(16,), budget=PLATEAU, **{**base, **outcomes})


TINY_LOSSES = c2_table(valid_loss=lambda cell, bs, ns, seed: 0.0002 if bs == 1 else 0.0077)  # the audit's example


def relative_gap(big, small, margin: float, alpha: float) -> verdicts.PairTest:
    """The audited mistake: a relative loss gap (0.0077 / 0.0002 - 1 = 3750 %) against the margin."""
    gap = float(np.mean(big) / np.mean(small) - 1)
    beyond = abs(gap) > margin
    return verdicts.PairTest(gap, gap, gap, margin, 1.0 if beyond else 0.0, 0.0 if beyond else 1.0,
                             "different" if beyond else "equivalent")  # fmt: skip


def test_c2_reads_absolute_loss_differences(th):
    assert verdicts_of(TINY_LOSSES, th)["C2"] == SUPPORTED  # 0.0075 nats apart: equivalent within 0.05


def test_mutation_relative_loss_gap_changes_c2(th, monkeypatch):
    monkeypatch.setattr(verdicts, "c2_difference", relative_gap)
    with pytest.raises(AssertionError):
        test_c2_reads_absolute_loss_differences(th)


def test_uninformative_pairs_are_listed_and_never_counted(th):
    """One informative pair differs; three pairs at chance have equal losses. Counted as agreement they would
    make C2 "supported" (3 of 4); listed as uninformative they leave it refuted (1 of 1 different)."""
    table = runs_table(
        cells=("gru",), batch_sizes=(1, 16), num_steps=(4, 6, 7, 16), budget=PLATEAU,
        valid_loss=lambda cell, bs, ns, seed: (0.2 if bs == 16 else 0.6) if ns > 8 else 1.386,
    )  # fmt: skip
    c2 = by_claim(judge(table, th))["C2"]
    assert c2.verdict == REFUTED
    assert sorted(c2.uninformative["group"]) == [f"cell=gru, num_steps={n}, batch 1 vs 16" for n in (4, 6, 7)]
    assert set(c2.details["num_steps"]) == {16}
    at_chance = runs_table(cells=("gru",), batch_sizes=(1, 16), num_steps=(4, 6), budget=PLATEAU)
    assert verdicts_of(at_chance, th)["C2"] == INCONCLUSIVE  # nothing learned anywhere: no agreement either


def test_c2_undecided_when_seeds_scatter_more_than_the_margin(th):
    gen = np.random.default_rng(3)
    noisy = c2_table(valid_loss=lambda *a: 0.5 + gen.normal(0, 0.3))
    assert verdicts_of(noisy, th)["C2"] == INCONCLUSIVE


# ------------------------------------------------------------------------------------------------- C3
def speed_rows(ratio_by_round: list[float], base: float = 1000.0) -> pd.DataFrame:
    """A speed phase of one point (gru, num_steps 16): batch 1 at `base` tokens/s, batch 4 at base*ratio per
    round, so the paired log ratios are exactly log(ratio_by_round)."""
    rows = []
    for r, ratio in enumerate(ratio_by_round):
        for bs, tps in ((1, base), (4, base * ratio)):
            rows.append({"task": "echo", "cell": "gru", "batch_size": bs, "num_steps": 16, "round": r,
                         "tokens_per_s": tps, "us_per_update": 1e6 * bs * 16 / tps})  # fmt: skip
    return pd.DataFrame(rows)


# geometric mean 2.77x, paired-by-round 95 % t-interval [1.54, 4.99]: it overlaps [3, 5] but is not inside it
WIDE = speed_rows(list(2.77 * np.exp([-0.6, -0.3, 0.0, 0.3, 0.6])))


def test_c3_interval_that_only_overlaps_the_band_is_straddling(th):
    c3 = by_claim(judge(runs_table(), th, WIDE))["C3"]
    row = c3.details.iloc[0]
    assert row["ci_low"] == pytest.approx(1.54, abs=0.01) and row["ci_high"] == pytest.approx(4.99, abs=0.01)
    assert row["state"] == "straddling"
    assert c3.verdict == INCONCLUSIVE


def test_mutation_overlap_instead_of_inside_changes_c3(th, monkeypatch):
    def overlaps(low: float, high: float, band: tuple[float, float]) -> str:
        return "inside" if low <= band[1] and high >= band[0] else "outside"

    monkeypatch.setattr(verdicts, "c3_state", overlaps)
    with pytest.raises(AssertionError):
        test_c3_interval_that_only_overlaps_the_band_is_straddling(th)


def test_c3_inside_outside_and_superlinear(th):
    tight = [0.98, 0.99, 1.0, 1.01, 1.02]
    assert verdicts_of(runs_table(), th, speed_rows([3.9 * x for x in tight]))["C3"] == SUPPORTED
    assert verdicts_of(runs_table(), th, speed_rows([2.0 * x for x in tight]))["C3"] == REFUTED
    c3 = by_claim(judge(runs_table(), th, speed_rows([4.6 * x for x in tight])))["C3"]
    assert bool(c3.details["superlinear"].iloc[0]) and c3.details["state"].iloc[0] == "flagged"
    assert c3.verdict == INCONCLUSIVE  # a speed-up above the batch ratio is a measurement problem, not support


def test_c3_on_the_real_speed_phase_is_a_paired_interval_per_point(records, speed, th):
    c3 = by_claim(judge(records, th, speed))["C3"]
    assert len(c3.details) == 2  # gru x num_steps 4, 16
    assert set(c3.details["state"]) <= {"inside", "outside", "straddling", "flagged"}
    point = speed[speed["num_steps"] == 16]
    a = point[point["batch_size"] == 4].set_index("round")["tokens_per_s"]
    b = point[point["batch_size"] == 1].set_index("round")["tokens_per_s"]
    d = np.log(a / b)
    half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    row = c3.details[c3.details["num_steps"] == 16].iloc[0]
    assert row["ratio"] == pytest.approx(np.exp(d.mean()))
    assert row["ci_low"] == pytest.approx(np.exp(d.mean() - half))
    assert row["ci_high"] == pytest.approx(np.exp(d.mean() + half))
    assert c3.deciding["folder"].str.startswith("speed.parquet").all()


# ------------------------------------------------------------------------------------------------- C1
def s_curve(cell, bs, ns, seed) -> float:
    """Updates to target S(B) = 100 (1 + 12 / B) (Shallue et al. 2019), reached only by windows > the lag."""
    return 100.0 * (1 + 12.0 / bs) if ns > 8 else np.nan


def test_speed_claims_come_from_the_speed_phase_only(records, th):
    out = by_claim(judge(records, th))
    assert out["C3"].verdict == INCONCLUSIVE and NO_SPEED in out["C3"].sentence
    table = runs_table(budget=PLATEAU, updates_to_target=s_curve)
    fast = table.assign(tokens_per_s=table["tokens_per_s"] * table["batch_size"] ** 3)  # runs' own timing
    assert verdicts_of(table, th, speed_table()) == verdicts_of(fast, th, speed_table())
    assert by_claim(judge(table, th))["C1"].sentence.endswith(NO_SPEED + ".")  # wall-clock needs the speed phase


def test_c1_needs_time_to_target_to_fall_at_matched_quality(th):
    """Seconds to target = S(B) x B x L / tokens/s(B) falls from batch 1 to 16 (1300 -> 459 -> 231 in units of
    L / 2000) with equal plateau losses: every informative pair buys speed."""
    c1 = by_claim(judge(runs_table(budget=PLATEAU, updates_to_target=s_curve), th, speed_table()))["C1"]
    assert c1.verdict == SUPPORTED
    assert set(c1.details["state"]) == {"buys speed"} and set(c1.details["time"]) == {"faster"}
    assert "cell=rnn, num_steps=4, batch 1 vs 4" in set(c1.uninformative["group"])  # no window reached the target
    flat = speed_table(tokens_per_s=lambda cell, bs, ns: 5000.0)  # a bigger batch buys no throughput: seconds rise
    assert verdicts_of(runs_table(budget=PLATEAU, updates_to_target=s_curve), th, flat)["C1"] == REFUTED
    worse = runs_table(budget=PLATEAU, updates_to_target=s_curve, valid_loss=lambda cell, bs, ns, seed: 0.2 + 0.1 * bs)
    c1_worse = by_claim(judge(worse, th, speed_table()))["C1"]
    assert c1_worse.verdict == REFUTED and set(c1_worse.details["state"]) == {"costs quality"}


def test_c1_is_not_judged_at_a_fixed_budget_and_reads_its_own_split(records, speed, th):
    c1 = by_claim(judge(echo(records), th, speed))["C1"]
    assert c1.verdict == INCONCLUSIVE and c1.sentence.startswith("Not judged")
    as_trained = by_claim(judge(as_plateau(echo(records)), th, speed))["C1"]
    assert "no time to target" in as_trained.sentence  # the fixture has no crossings of its target


def test_c1_reads_a_crossing_table_where_given(th):
    """analysis/cost.py's per-run crossings (split, reached, seconds) replace the updates_to_target column."""
    table = runs_table(cells=("gru",), batch_sizes=(1, 4), num_steps=(16,), budget=PLATEAU)
    split = "echo · plateau 8192 · fixed lr"
    rows = [{"split": split, "cell": "gru", "batch_size": bs, "num_steps": 16, "seed": s, "reached": True,
             "seconds": (100.0 if bs == 1 else 30.0) * (1 + 0.01 * s)} for bs in (1, 4) for s in range(5)]  # fmt: skip
    c1 = by_claim(judge(table, th, cost=pd.DataFrame(rows)))["C1"]
    assert c1.verdict == SUPPORTED and c1.details["seconds_ratio"].iloc[0] == pytest.approx(0.3, rel=1e-3)
    slower = pd.DataFrame(rows).assign(seconds=lambda d: np.where(d["batch_size"] == 4, 300.0, 100.0) + d["seed"])
    assert by_claim(judge(table, th, cost=slower))["C1"].verdict == REFUTED


# ------------------------------------------------------------------------------------------------- C4
def test_c4_on_the_echo_fixture_is_a_floor(records, th):
    """num_steps 4 <= lag 8 at chance in both batch-size groups, num_steps 16 learns: the floor reading."""
    c4 = by_claim(judge(echo(records), th))["C4"]
    d = c4.details.set_index("batch_size")
    assert (d["state"] == "floor").all() and d.loc[4, "short_max"] < 0.3 and d.loc[16, "long_max"] > 0.9
    assert c4.verdict == SUPPORTED and "reading: floor" in c4.statistic
    assert "bound cannot fail" in c4.statistic  # echo's span (0 or 8) is reported for what it is


def test_c4_a_window_no_longer_than_the_lag_that_learns_breaks_the_floor(th):
    learns = runs_table(cells=("gru",), batch_sizes=(4,), num_steps=(4, 16), budget=PLATEAU,
                        valid_accuracy=lambda *a: 0.95, acc_lag_8=lambda *a: 0.95)  # fmt: skip
    c4 = by_claim(judge(learns, th))["C4"]
    assert c4.verdict == REFUTED and "reading: neither" in c4.statistic


def test_c4_on_the_lags_fixture_reads_neither(records, th):
    c4 = by_claim(judge(records[records["task"] == "lags"], th))["C4"]
    assert "bound refuted: 5/10 runs with span > num_steps (largest excess 4)" in c4.statistic
    # memory capacity grows 4.0 -> 4.3 lags, but windows of 4 recall lag 8: the carried state learns past the window
    assert c4.verdict == REFUTED and "reading: neither" in c4.statistic
    assert (c4.deciding["why"].str.contains("> num_steps")).any()


def test_c4_every_window_longer_than_the_lag_cannot_show_a_floor(th):
    table = runs_table(num_steps=(16, 32), budget=PLATEAU)  # echo lag 8: learned at both, no window too short
    c4 = by_claim(judge(table, th))["C4"]
    assert c4.verdict == INCONCLUSIVE
    assert c4.uninformative["reason"].str.contains("exceeds the longest lag").all()


def test_c4_not_at_equal_updates_and_censored_horizons_unused(th):
    table = runs_table(budget="updates 1000")
    c4 = by_claim(judge(table, th))["C4"]
    assert c4.sentence.startswith("Not judged") and "equal updates" in c4.sentence
    flagged = runs_table()
    flagged["gradient_horizon_censored"] = flagged["num_steps"] == 16
    flagged["gradient_flat"] = False
    numbers = verdicts.judge_c4(verdicts.prepare(flagged), th).numbers
    assert numbers["horizon_censored"] == numbers["horizon_usable"] == 30
    assert numbers["context_old"] == 60 and numbers["context_usable"] == 0  # no context_method: old ablation


# ------------------------------------------------------------------------------------------------- C5
# A window's gradient norm shrinks with window length (slope -0.3 under the mean loss), but the max grad norm
# over training grows steeply with num_steps (it spikes while a network learns): the audited measure would call
# that explosion.
NO_GROWTH = runs_table(growth_slope=lambda *a: -0.3, grad_norm_max=lambda cell, bs, ns, seed: 0.5 * ns**2)


def max_over_training(d: pd.DataFrame) -> pd.DataFrame:
    """The audited mistake: the max grad norm over training, as a log-slope against num_steps."""
    slope = np.log(pd.to_numeric(d["grad_norm_max"])) / np.log(d["num_steps"])
    return pd.DataFrame({"slope": slope, "initial": np.nan}, index=d.index)


def test_c5_reads_growth_at_fixed_parameters(th):
    c5 = by_claim(judge(NO_GROWTH, th))["C5"]
    assert c5.verdict == INCONCLUSIVE and "Not seen in this regime" in c5.sentence  # a "can" claim: never refuted
    assert verdicts_of(runs_table(), th)["C5"] == SUPPORTED  # slope 0.8 > 0 at both num_steps


def test_mutation_max_over_training_changes_c5(th, monkeypatch):
    monkeypatch.setattr(verdicts, "c5_measure", max_over_training)
    with pytest.raises(AssertionError):
        test_c5_reads_growth_at_fixed_parameters(th)


def test_c5_without_the_growth_measure_is_inconclusive_and_rising_divergence_supports(th):
    c5 = by_claim(judge(runs_table(growth_slope=None, growth_slope_initial=None), th))["C5"]
    assert c5.verdict == INCONCLUSIVE and "measure missing" in c5.sentence
    one = NO_GROWTH.copy()
    one.loc[(one["num_steps"] == 16) & (one["seed"] == 0) & (one["cell"] == "rnn") & (one["batch_size"] == 1),
            "status"] = "diverged"  # fmt: skip
    assert verdicts_of(one, th)["C5"] == INCONCLUSIVE  # one divergence in 60 runs is no trend with num_steps
    rising = NO_GROWTH.copy()
    rising.loc[rising["num_steps"] == 16, "status"] = "diverged"
    assert verdicts_of(rising, th)["C5"] == SUPPORTED


# ------------------------------------------------------------------------------------------------- C7
def jitter(**outcomes) -> pd.DataFrame:
    """param_jitter 2x at batch 1 vs 4 (1/sqrt(b)), sampling jitter at fixed parameters 1/sqrt(b) as well."""
    base = dict(param_jitter=lambda cell, bs, ns, seed: 0.1 / bs**0.5,
                sampling_jitter=lambda cell, bs, ns, seed: 0.3 / bs**0.5)  # fmt: skip
    return runs_table(**{**base, **outcomes})


def test_c7_erratic_and_cheap(th):
    c7 = by_claim(judge(jitter(), th, speed_table()))["C7"]
    assert c7.verdict == SUPPORTED
    row = c7.details.set_index(["cell", "num_steps", "batch_size"]).loc[("rnn", 16.0, 4.0)]
    assert row["sampling_ratio"] == pytest.approx(2.0, rel=0.05) and row["sampling_expected"] == 2.0
    calm = jitter(param_jitter=lambda *a: 0.1)
    assert verdicts_of(calm, th, speed_table())["C7"] == MIXED  # cheap per update, but not erratic
    assert verdicts_of(jitter(), th)["C7"] == INCONCLUSIVE  # cost per update unmeasured without a speed phase
    c7 = by_claim(judge(runs_table(), th, speed_table()))["C7"]  # loss_jitter only: no param_jitter recorded
    assert "measure missing" in c7.sentence and "param_jitter" in c7.sentence


# ------------------------------------------------------------------------------------------- effect sizes
def interaction_table() -> pd.DataFrame:
    """Outcome set by batch_size x num_steps jointly (high where both are small or both large), no main effect."""
    return runs_table(
        cells=("gru",), batch_sizes=(1, 16), num_steps=(4, 16), noise=0.02,
        valid_loss=lambda cell, bs, ns, seed: 2.0 if (bs == 1) == (ns == 4) else 1.0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def erratic() -> pd.DataFrame:
    runs = load_results(FIXTURES / "erratic").runs
    need(runs, ["batch_size", "seed", "status", "loss_jitter", "loss_jitter_rel", "budget"])
    return runs


def test_c7_on_the_erratic_fixture_is_undecided_without_the_fixed_batch_measure(erratic, speed, th):
    """tests/fixtures/README.md: GRU, echo, num_steps 16, 400 updates; batch 1's training-minibatch loss jumps
    more between updates in every seed, but the records predate param_jitter: C7 cannot say whether the
    PARAMETERS move more (tests/test_verdict_rules.py: reading the minibatch loss jitter instead is a mutation)."""
    j = erratic.set_index(["batch_size", "seed"])["loss_jitter"]
    assert j.xs(1).min() > j.xs(16).max()
    c7 = by_claim(judge(erratic, th, speed.assign(sweep="fixture")))["C7"]
    assert c7.verdict == INCONCLUSIVE and "param_jitter" in c7.sentence


def test_mutation_relative_jitter_hides_the_erratic_batch(erratic, speed, th):
    # dividing by the loss: batch 16 learned more (lower loss), so its relative jitter rises towards batch 1's
    wrong = {**th, "c7": {**th["c7"], "outcome": "loss_jitter_rel"}}
    c7 = by_claim(judge(erratic, wrong, speed.assign(sweep="fixture")))["C7"]
    assert c7.details.iloc[0]["state"] != "erratic" and c7.verdict != SUPPORTED


def test_c5_on_the_fixture_a_positive_slope_at_one_num_steps_is_not_explosion(records, th):
    """tests/fixtures/README.md: every untrained GRU's window gradient shrinks with L (mean loss); on echo, trained
    networks at num_steps 16 have positive slopes (batch 16: interval above 0) but num_steps 4 does not: the step
    where a window first holds the lag, at one num_steps only. Not seen anywhere, and never refuted."""
    c5 = by_claim(judge(records, th))["C5"]
    d = c5.details
    assert (d["slope_initial"] < 0).all()
    point = d[(d["split"].str.startswith("echo")) & (d["batch_size"] == 16) & (d["num_steps"] == 16)].iloc[0]
    assert point["ci_low"] > 0 and bool(point["amplifies"]) and point["state"] == "not seen"
    assert set(c5.splits["verdict"]) == {INCONCLUSIVE} and c5.verdict == INCONCLUSIVE
    assert c5.sentence.startswith("Not seen in the regimes tested (2:") and "refuted" not in c5.splits["verdict"]


def test_partial_eta2_comes_from_the_full_factorial():
    eta = stats.partial_eta2(interaction_table(), "valid_loss")
    assert eta.get("batch_size:num_steps", np.nan) > 0.9
    assert eta["batch_size"] < 0.2 and eta["num_steps"] < 0.2


def test_mutation_main_effects_only_anova_changes_the_effect_sizes(monkeypatch):
    monkeypatch.setattr(stats, "anova_formula", lambda outcome, factors: f"{outcome} ~ " + " + ".join(
        f"C({f})" for f in factors))  # fmt: skip
    with pytest.raises(AssertionError):
        test_partial_eta2_comes_from_the_full_factorial()


def test_fixture_effect_sizes_num_steps_dominates_and_accuracy_goes_to_a_glm(records):
    """On the echo fixture only the window (4 < lag 8 < 16) matters; batch 4 vs 16 hardly moves loss."""
    eta = stats.partial_eta2(echo(records), "valid_loss")
    assert eta["num_steps"] > 0.9 and eta["batch_size"] < 0.05 and "batch_size:num_steps" in eta
    shares = stats.deviance_shares(echo(records), "valid_accuracy", trials=100)
    assert shares["num_steps"] > 0.8 and shares["batch_size"] < 0.05
    assert stats.level_range(echo(records)["batch_size"], "batch") == "batch 4–16 (4×)"


# ------------------------------------------------------------------------------------------------ the rest
def test_two_seeds_are_never_judged(th):
    out = verdicts_of(runs_table(seeds=(0, 1), budget=PLATEAU), th, speed_table())
    assert {k: v for k, v in out.items() if k != "C3"} == dict.fromkeys(
        ("C1", "C2", "C4", "C5", "C6", "C7"), INCONCLUSIVE
    )


def claims_true(**kw) -> pd.DataFrame:
    return jitter(budget=PLATEAU, updates_to_target=s_curve, **kw)


def test_every_claim_supported_when_the_data_make_it_true_and_fields_are_filled(th):
    vs = judge(claims_true(), th, speed_table())
    assert {v.claim.id: v.verdict for v in vs} == dict.fromkeys(("C1", "C2", "C3", "C4", "C5", "C6", "C7"), SUPPORTED)
    for v in vs:
        assert list(v.deciding.columns) == ["split", "folder", "why"]
        assert list(v.uninformative.columns) == ["split", "group", "reason"]
        assert len(v.deciding) > 0
    vt = verdict_table(vs)
    assert {"statement", "verdict", "metric", "comparison", "statistic", "evidence"} <= set(vt.columns)
    assert all(any(ch.isdigit() for ch in s) for s in vt.loc[vt["claim"] != "C6", "evidence"])


def test_c6_is_judged_at_a_plateau_only_and_fixed_budgets_quote_it(th):
    both = pd.concat([claims_true(), runs_table(budget="updates 1000", rng=1)], ignore_index=True)
    vs = by_claim(judge(both, th, speed_table()))
    c6 = dict(zip(vs["C6"].splits["split"], vs["C6"].splits["verdict"], strict=True))
    assert c6 == {"echo · plateau 8192 · fixed lr": SUPPORTED, "echo · updates 1000 · fixed lr": INCONCLUSIVE}
    budget = vs["C6"].splits.set_index("split").loc["echo · updates 1000 · fixed lr"]
    assert not budget["applies"] and "trained to a plateau: C1 supported" in budget["sentence"]
    assert vs["C6"].verdict == SUPPORTED and vs["C6"].decided_in == ("echo · plateau 8192 · fixed lr",)
    assert len(split_table(list(vs.values()))) == 7 * 2 - 1  # C3 has one split per task (the speed phase)


def test_stats_helpers_match_scipy_and_statsmodels(th):
    x = np.array([1.0, 2.0, 3.0, 4.0, 6.0])
    _, low, high, n = stats.t_interval(x, 0.95)
    ref = sps.t.interval(0.95, 4, loc=x.mean(), scale=sps.sem(x))
    assert (low, high) == pytest.approx(ref) and n == 5
    a, b = np.array([1.0, 1.1, 0.9, 1.05, 0.95]), np.array([1.02, 1.12, 0.93, 1.0, 0.97])
    eq = stats.tost(a, b, 0.2, 0.05)
    assert eq.p_tost == pytest.approx(ttost_ind(a, b, -0.2, 0.2, usevar="unequal")[0])
    assert eq.state == "equivalent" and stats.tost(a + 1, b, 0.2, 0.05).state == "different"
    assert np.isnan(stats.mean_ci([1.0], th)[1])
    assert stats.spearman([1, 2, 3, 4], [1, 2, np.inf, np.inf])[0] > 0.9  # a diverged run ranks highest


def test_combine_and_synthesize():
    assert combine([SUPPORTED, SUPPORTED]) == SUPPORTED
    assert combine([SUPPORTED, REFUTED]) == MIXED
    assert combine([SUPPORTED, INCONCLUSIVE]) == SUPPORTED
    assert combine([]) == INCONCLUSIVE
    assert synthesize(SUPPORTED, REFUTED, MIXED) == REFUTED
    assert synthesize(SUPPORTED, INCONCLUSIVE, SUPPORTED) == INCONCLUSIVE


def test_thresholds_file_missing_a_key_is_refused(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("min_seeds: 3\n")
    with pytest.raises(ThresholdsError, match="recommended_seeds"):
        load_thresholds(bad)


def test_speed_table_missing_a_column_is_refused(th):
    with pytest.raises(ValueError, match="tokens_per_s"):
        judge(runs_table(), th, speed_table().drop(columns=["tokens_per_s"]))


def test_text_is_at_chance_only_at_the_uniform_guess_loss(th):
    """Text (V = 1000, ln V = 6.91): accuracy 0.002 is near 1/V, yet a loss of 5.5 nats means token frequencies
    were learned, so the pair counts; at 6.9 nats (not clearly below ln V - 0.02) it does not."""

    def text(loss: float) -> pd.DataFrame:
        return runs_table(cells=("lstm",), batch_sizes=(4, 16), num_steps=(16,), task="text", noise=0.001,
                          budget=PLATEAU, valid_loss=lambda *a: loss, valid_accuracy=lambda *a: 0.002,
                          chance_accuracy=lambda *a: 0.001, acc_lag_8=None, memory_capacity=None)  # fmt: skip

    learned = by_claim(judge(text(5.5), th))["C2"]
    assert learned.uninformative.empty and learned.verdict == SUPPORTED  # within ±0.02 nats
    uniform = by_claim(judge(text(6.9), th))["C2"]
    assert "uniform-guess" in uniform.uninformative["reason"].iloc[0] and uniform.verdict == INCONCLUSIVE
