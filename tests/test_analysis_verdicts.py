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
def test_c2_on_the_fixture_lists_chance_groups_and_is_decided_by_the_rest(records, th):
    c2 = by_claim(judge(echo(records), th))["C2"]
    unin = c2.uninformative
    assert list(unin.columns) == ["split", "group", "reason"]
    assert list(unin["group"]) == ["cell=gru, num_steps=4"] and "chance" in unin["reason"].iloc[0]
    ns4 = echo(records).loc[lambda d: d["num_steps"] == 4, "folder"]
    assert not set(c2.deciding["folder"]) & set(ns4)  # nothing decided by a group that learned nothing
    assert len(set(c2.deciding["folder"])) == 10  # the 10 runs at num_steps 16
    loss = c2.details[c2.details["outcome"] == "valid_loss"].iloc[0]
    # batch 16 - batch 4 = +0.016 nats, but batch 4 seed 4 (0.56 nats) makes the interval far wider than ±0.05
    assert loss["diff"] == pytest.approx(0.0156, abs=0.001) and loss["state"] == "undecided"
    assert c2.verdict == INCONCLUSIVE


def test_mutation_relative_loss_gap_on_the_fixture_refutes_c2(records, th, monkeypatch):
    monkeypatch.setattr(verdicts, "c2_difference", relative_gap)
    # 0.153 / 0.137 - 1 = 11 % "gap" > 0.05: the audited rule calls two overlapping groups different
    assert by_claim(judge(echo(records), th))["C2"].verdict == REFUTED


def c2_table(**outcomes) -> pd.DataFrame:
    base = dict(valid_accuracy=lambda *a: 1.0, acc_lag_8=lambda *a: 1.0, memory_capacity=lambda *a: 1.0,
                span=lambda *a: 8.0)  # fmt: skip
    return runs_table(cells=("gru",), batch_sizes=(1, 16), num_steps=(16,), **{**base, **outcomes})


TINY_LOSSES = c2_table(valid_loss=lambda cell, bs, ns, seed: 0.0002 if bs == 1 else 0.0077)  # the audit's example


def relative_gap(big, small, margin: float, alpha: float) -> stats.Equivalence:
    """The audited mistake: a relative loss gap (0.0077 / 0.0002 - 1 = 3750 %) against the margin."""
    gap = float(np.mean(big) / np.mean(small) - 1)
    return stats.Equivalence(gap, gap, gap, margin, np.nan, "different" if abs(gap) > margin else "equivalent")


def test_c2_reads_absolute_loss_differences(th):
    assert verdicts_of(TINY_LOSSES, th)["C2"] == SUPPORTED  # 0.0075 nats apart: equivalent within 0.05


def test_mutation_relative_loss_gap_changes_c2(th, monkeypatch):
    monkeypatch.setattr(verdicts, "c2_difference", relative_gap)
    with pytest.raises(AssertionError):
        test_c2_reads_absolute_loss_differences(th)


def test_uninformative_groups_are_listed_and_never_counted(th):
    """One informative group differs; three groups at chance have equal losses. Counted as agreement they would
    make C2 "supported" (3 of 4); listed as uninformative they leave it refuted (1 of 1 different)."""
    table = runs_table(
        cells=("gru",), batch_sizes=(1, 16), num_steps=(4, 6, 7, 16),
        valid_loss=lambda cell, bs, ns, seed: (0.2 if bs == 16 else 0.6) if ns > 8 else 1.386,
    )  # fmt: skip
    c2 = by_claim(judge(table, th))["C2"]
    assert c2.verdict == REFUTED
    assert sorted(c2.uninformative["group"]) == [f"cell=gru, num_steps={n}" for n in (4, 6, 7)]
    assert set(c2.details["num_steps"]) == {16}
    at_chance = runs_table(cells=("gru",), batch_sizes=(1, 16), num_steps=(4, 6))
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
def test_speed_claims_come_from_the_speed_phase_only(records, th):
    out = by_claim(judge(records, th))
    for cid in ("C1", "C3"):
        assert out[cid].verdict == INCONCLUSIVE and NO_SPEED in out[cid].sentence
    table = runs_table()
    fast = table.assign(tokens_per_s=table["tokens_per_s"] * table["batch_size"] ** 3)  # runs' own timing
    assert verdicts_of(table, th, speed_table()) == verdicts_of(fast, th, speed_table())


def test_c1_needs_throughput_to_rise_and_learning_to_stay(th):
    assert verdicts_of(runs_table(), th, speed_table())["C1"] == SUPPORTED
    flat = speed_table(tokens_per_s=lambda cell, bs, ns: 5000.0)
    assert verdicts_of(runs_table(), th, flat)["C1"] == REFUTED
    learns_differently = runs_table(valid_loss=lambda cell, bs, ns, seed: 0.2 + 0.3 * (bs > 1))
    assert verdicts_of(learns_differently, th, speed_table())["C1"] == MIXED  # buys speed, and not only speed


def test_c1_on_the_fixture_is_judged_with_c2_of_its_split(records, speed, th):
    c1 = by_claim(judge(echo(records), th, speed))["C1"]
    assert "C2 inconclusive" in c1.statistic  # "mainly" is read from C2 of the same split
    assert len(c1.details) == 2 and c1.details["slope"].gt(0).all()
    assert c1.deciding["folder"].str.startswith("speed.parquet").all()


# ------------------------------------------------------------------------------------------------- C4
def test_c4_growth_on_the_fixture_straddling_the_lag_is_informative(records, th):
    c4 = by_claim(judge(echo(records), th))["C4"]
    d = c4.details.set_index("batch_size")
    assert bool(d.loc[4, "grows"]) and d.loc[4, "rho"] > 0.8 and d.loc[4, "p"] < 0.01
    assert c4.verdict == SUPPORTED  # grows, and echo's span (0 or 8) never exceeds num_steps


def test_c4_bound_on_the_lags_fixture_is_broken(records, th):
    c4 = by_claim(judge(records[records["task"] == "lags"], th))["C4"]
    assert "bound refuted (5/10 runs span > num_steps, largest excess 4)" in c4.statistic
    assert c4.verdict == MIXED  # memory capacity grows 4.0 -> 4.3 lags, but windows of 4 recall lag 8
    assert (c4.deciding["why"].str.contains("> num_steps")).any()


def test_c4_every_window_longer_than_the_lag_cannot_show_growth(th):
    table = runs_table(num_steps=(16, 32))  # echo lag 8: learned at both, nothing left to grow
    c4 = by_claim(judge(table, th))["C4"]
    assert c4.verdict == INCONCLUSIVE
    assert c4.uninformative["reason"].str.contains("exceeds the longest lag").all()


def test_c4_growth_only_at_equal_tokens_and_censored_horizons_unused(th):
    table = runs_table(budget="updates 1000")
    c4 = by_claim(judge(table, th))["C4"]
    assert "equal tokens only" in c4.statistic
    flagged = runs_table()
    flagged["gradient_horizon_censored"] = flagged["num_steps"] == 16
    flagged["gradient_flat"] = False
    numbers = verdicts.judge_c4(verdicts.prepare(flagged), th).numbers
    assert numbers["horizon_censored"] == numbers["horizon_usable"] == 30
    assert numbers["context_old"] == 60 and numbers["context_usable"] == 0  # no context_method: old ablation


# ------------------------------------------------------------------------------------------------- C5
# A window's gradient norm does not grow with window length (slope 0.1), but the max grad norm over training
# grows steeply with num_steps (it spikes while a network learns): the audited measure would call that explosion.
NO_GROWTH = runs_table(growth_slope=lambda *a: 0.1, grad_norm_max=lambda cell, bs, ns, seed: 0.5 * ns**2)


def max_over_training(d: pd.DataFrame) -> pd.DataFrame:
    """The audited mistake: the max grad norm over training, as a log-slope against num_steps."""
    slope = np.log(pd.to_numeric(d["grad_norm_max"])) / np.log(d["num_steps"])
    return pd.DataFrame({"slope": slope, "initial": np.nan}, index=d.index)


def test_c5_reads_growth_at_fixed_parameters(th):
    assert verdicts_of(NO_GROWTH, th)["C5"] == REFUTED
    assert verdicts_of(runs_table(), th)["C5"] == SUPPORTED  # slope 0.8 > 0.5 in every point


def test_mutation_max_over_training_changes_c5(th, monkeypatch):
    monkeypatch.setattr(verdicts, "c5_measure", max_over_training)
    with pytest.raises(AssertionError):
        test_c5_reads_growth_at_fixed_parameters(th)


def test_c5_without_the_growth_measure_is_inconclusive_and_divergence_supports(th):
    c5 = by_claim(judge(runs_table(growth_slope=None, growth_slope_initial=None), th))["C5"]
    assert c5.verdict == INCONCLUSIVE and "measure missing" in c5.sentence
    diverging = NO_GROWTH.copy()
    diverging.loc[(diverging["num_steps"] == 16) & (diverging["seed"] == 0), "status"] = "diverged"
    assert verdicts_of(diverging, th)["C5"] == SUPPORTED


# ------------------------------------------------------------------------------------------------- C7
def test_c7_erratic_and_cheap(th):
    assert verdicts_of(runs_table(), th, speed_table())["C7"] == SUPPORTED
    calm = runs_table(loss_jitter=lambda *a: 0.1)
    assert verdicts_of(calm, th, speed_table())["C7"] == MIXED  # cheap per update, but not erratic
    assert verdicts_of(runs_table(), th)["C7"] == INCONCLUSIVE  # cost per update unmeasured without a speed phase
    c7 = by_claim(judge(runs_table(loss_jitter=None), th, speed_table()))["C7"]
    assert "measure missing" in c7.sentence


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


def test_c7_on_the_erratic_fixture_batch_1_jumps_twice_as_much(erratic, speed, th):
    """tests/fixtures/README.md: GRU, echo, num_steps 16, 400 updates; batch 1 averages 16 token losses per update,
    batch 16 averages 256, and its loss jumps more from one update to the next in every seed."""
    j = erratic.set_index(["batch_size", "seed"])["loss_jitter"]
    assert j.xs(1).min() > j.xs(16).max()
    c7 = by_claim(judge(erratic, th, speed.assign(sweep="fixture")))["C7"]
    assert c7.verdict == SUPPORTED
    row = c7.details.iloc[0]
    assert row["state"] == "erratic" and row["ci_low"] > th["c7"]["min_factor"]
    assert set(c7.deciding["folder"]) == set(erratic["folder"])


def test_mutation_relative_jitter_hides_the_erratic_batch(erratic, speed, th):
    # dividing by the loss: batch 16 learned more (lower loss), so its relative jitter rises towards batch 1's
    wrong = {**th, "c7": {**th["c7"], "outcome": "loss_jitter_rel"}}
    c7 = by_claim(judge(erratic, wrong, speed.assign(sweep="fixture")))["C7"]
    assert c7.details.iloc[0]["state"] != "erratic" and c7.verdict != SUPPORTED


def test_c5_on_the_fixture_no_grid_point_grows_like_sqrt_l(records, th):
    """At fixed parameters the gradient norm of a window's mean loss does not grow faster than sqrt(L) for any
    fixture network (trained or initial): C5 is refuted on lags, and on echo one point's seeds scatter too much."""
    c5 = by_claim(judge(records, th))["C5"]
    d = c5.details
    assert (d["slope_initial"] < 0).all()  # an untrained GRU's window gradient shrinks with L
    lags = d[d["split"].str.startswith("lags")]
    assert (lags["ci_high"] < th["c5"]["min_slope"]).all() and (lags["state"] == "bounded").all()
    splits = c5.splits.set_index("split")["verdict"]
    assert splits[next(s for s in splits.index if s.startswith("lags"))] == REFUTED


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
    out = verdicts_of(runs_table(seeds=(0, 1)), th, speed_table())
    assert {k: v for k, v in out.items() if k not in ("C1", "C3")} == dict.fromkeys(
        ("C2", "C4", "C5", "C6", "C7"), INCONCLUSIVE
    )


def test_every_claim_supported_when_the_data_make_it_true_and_fields_are_filled(th):
    vs = judge(runs_table(), th, speed_table())
    assert {v.claim.id: v.verdict for v in vs} == dict.fromkeys(("C1", "C2", "C3", "C4", "C5", "C6", "C7"), SUPPORTED)
    for v in vs:
        assert list(v.deciding.columns) == ["split", "folder", "why"]
        assert list(v.uninformative.columns) == ["split", "group", "reason"]
        assert len(v.deciding) > 0
    vt = verdict_table(vs)
    assert {"statement", "verdict", "metric", "comparison", "statistic", "evidence"} <= set(vt.columns)
    assert all(any(ch.isdigit() for ch in s) for s in vt.loc[vt["claim"] != "C6", "evidence"])


def test_c6_is_judged_at_equal_tokens_only_and_mixed_splits_show(th):
    both = pd.concat([runs_table(), runs_table(budget="updates 1000", rng=1)], ignore_index=True)
    vs = by_claim(judge(both, th, speed_table()))
    c6 = dict(zip(vs["C6"].splits["split"], vs["C6"].splits["verdict"], strict=True))
    assert c6 == {"echo · tokens 65536 · fixed lr": SUPPORTED, "echo · updates 1000 · fixed lr": INCONCLUSIVE}
    assert "at equal tokens" in vs["C6"].splits.set_index("split").loc["echo · updates 1000 · fixed lr", "sentence"]
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
    were learned, so the group counts; at 6.9 nats it does not."""

    def text(loss: float) -> pd.DataFrame:
        return runs_table(cells=("lstm",), batch_sizes=(4, 16), num_steps=(16,), task="text", noise=0.001,
                          valid_loss=lambda *a: loss, valid_accuracy=lambda *a: 0.002,
                          chance_accuracy=lambda *a: 0.001, acc_lag_8=None, memory_capacity=None)  # fmt: skip

    learned = by_claim(judge(text(5.5), th))["C2"]
    assert learned.uninformative.empty and learned.verdict == SUPPORTED  # within ±0.02 nats
    uniform = by_claim(judge(text(6.9), th))["C2"]
    assert "uniform-guess" in uniform.uninformative["reason"].iloc[0] and uniform.verdict == INCONCLUSIVE
