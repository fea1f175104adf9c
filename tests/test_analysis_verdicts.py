"""Verdict logic on synthetic run tables whose truth is known, in each direction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.stats import mean_ci, partial_eta2, ratio_ci, spearman
from analysis.synthetic import runs_table
from analysis.thresholds import ThresholdsError, load_thresholds
from analysis.verdicts import (
    INCONCLUSIVE,
    MIXED,
    REFUTED,
    SUPPORTED,
    combine,
    judge,
    split_table,
    synthesize,
    verdict_table,
)


@pytest.fixture(scope="module")
def th():
    return load_thresholds()


def verdicts_of(table: pd.DataFrame, th, **kw) -> dict[str, str]:
    return {v.claim.id: v.verdict for v in judge(table, th, **kw)}


def test_every_claim_supported_when_the_data_make_it_true(th):
    out = verdicts_of(runs_table(), th)
    assert out == dict.fromkeys(("C1", "C2", "C3", "C4", "C5", "C6"), SUPPORTED)


def test_batch_size_that_sets_the_span_refutes_c4_and_c2(th):
    table = runs_table(span=lambda cell, bs, ns, seed: 2.0 * bs, effective_context=None, gradient_horizon=None)
    out = verdicts_of(table, th)
    assert out["C4"] == REFUTED
    assert out["C2"] == REFUTED
    assert out["C6"] == REFUTED
    assert out["C1"] == SUPPORTED  # speed is untouched by what the span does


def test_claim_holding_for_echo_and_failing_for_lags_is_mixed_with_the_split_shown(th):
    echo = runs_table(task="echo")
    lags = runs_table(task="lags", span=lambda cell, bs, ns, seed: 8.0, effective_context=lambda *a: 4.0,
                      gradient_horizon=lambda *a: 8.0, rng=1)  # fmt: skip
    verdicts = judge(pd.concat([echo, lags], ignore_index=True), th)
    c4 = next(v for v in verdicts if v.claim.id == "C4")
    assert c4.verdict == MIXED
    per_split = dict(zip(c4.splits["split"], c4.splits["verdict"], strict=True))
    assert per_split == {
        "echo · tokens 65536 · fixed lr": SUPPORTED,
        "lags · tokens 65536 · fixed lr": REFUTED,
    }
    assert "supported in echo" in c4.sentence and "refuted in lags" in c4.sentence
    splits = split_table(verdicts)
    assert set(splits["claim"]) == {"C1", "C2", "C3", "C4", "C5", "C6"}
    assert len(splits) == 12


def test_one_seed_is_inconclusive_for_every_claim(th):
    out = verdicts_of(runs_table(seeds=(0,)), th)
    assert set(out.values()) == {INCONCLUSIVE}


def test_one_batch_size_leaves_batch_claims_inconclusive_but_judges_num_steps(th):
    out = verdicts_of(runs_table(batch_sizes=(8,)), th)
    assert out["C1"] == out["C2"] == out["C3"] == INCONCLUSIVE
    assert out["C4"] == SUPPORTED


def test_sublinear_speedup_refutes_c3_but_keeps_c1(th):
    table = runs_table(tokens_per_s=lambda cell, bs, ns, seed: 2000.0 * bs**0.5)  # bs4/bs1 = 2x
    out = verdicts_of(table, th)
    assert out["C3"] == REFUTED
    assert out["C1"] == SUPPORTED
    c3 = next(v for v in judge(table, th) if v.claim.id == "C3")
    assert "2.0" in c3.sentence  # the sentence cites the measured ratio


def test_c3_uses_the_tolerance_from_the_thresholds(th):
    table = runs_table(tokens_per_s=lambda cell, bs, ns, seed: 2000.0 * bs**0.5)
    loose = {**th, "c3": {**th["c3"], "tolerance": 0.6}}  # band [1.6, 6.4] contains 2x
    assert verdicts_of(table, loose)["C3"] == SUPPORTED


def test_flat_throughput_refutes_c1(th):
    out = verdicts_of(runs_table(tokens_per_s=lambda *a: 5000.0, noise=0.05), th)
    assert out["C1"] == REFUTED


def test_bench_timing_noise_can_make_a_speedup_indistinguishable(th):
    table = runs_table(tokens_per_s=lambda cell, bs, ns, seed: 2000.0 * (1 + 0.02 * np.log2(bs)))
    assert verdicts_of(table, th, bench_cv=0.0)["C1"] == SUPPORTED
    assert verdicts_of(table, th, bench_cv=0.2)["C1"] == REFUTED  # a 10 % gain inside 20 % timing spread


def test_loss_gap_between_batch_sizes_refutes_c2(th):
    out = verdicts_of(runs_table(valid_loss=lambda cell, bs, ns, seed: 1.0 + 0.1 * np.log2(bs)), th)
    assert out["C2"] == REFUTED


def test_noisy_loss_gap_is_inconclusive_for_c2_not_refuted(th):
    gen = np.random.default_rng(3)
    noisy = runs_table(valid_loss=lambda *a: 1.0 + abs(gen.normal(0, 0.3)), span=None, effective_context=None,
                       gradient_horizon=None, valid_accuracy=None)  # fmt: skip
    assert verdicts_of(noisy, th)["C2"] == INCONCLUSIVE


def test_falling_grad_norm_refutes_c5_and_divergence_at_long_windows_supports_it(th):
    falling = runs_table(grad_norm_max=lambda cell, bs, ns, seed: 4.0 / ns)
    assert verdicts_of(falling, th)["C5"] == REFUTED
    diverging = falling.copy()
    long = diverging["num_steps"] == 16
    diverging.loc[long & (diverging["seed"] == 0), "status"] = "diverged"
    diverging.loc[long & (diverging["seed"] == 0), "grad_norm_max"] = np.nan
    assert verdicts_of(diverging, th)["C5"] == SUPPORTED


def test_nothing_learned_anywhere_is_inconclusive_for_c4(th):
    table = runs_table(span=lambda *a: 0.0, effective_context=None, gradient_horizon=None, noise=0.0)
    assert verdicts_of(table, th)["C4"] == INCONCLUSIVE


def test_tuning_trials_other_than_the_best_are_not_judged(th):
    table = runs_table()
    table["in_verdicts"] = True
    bad = table.copy()
    bad["span"] = 2.0 * bad["batch_size"]  # would refute C4 if it were read
    bad["in_verdicts"] = False
    out = verdicts_of(pd.concat([table, bad], ignore_index=True), th)
    assert out["C4"] == SUPPORTED


def test_verdict_table_has_the_columns_the_report_promises(th):
    vt = verdict_table(judge(runs_table(), th))
    assert list(vt["claim"]) == ["C1", "C2", "C3", "C4", "C5", "C6"]
    assert {"statement", "verdict", "metric", "comparison", "statistic", "evidence"} <= set(vt.columns)
    assert all(any(ch.isdigit() for ch in s) for s in vt.loc[vt["claim"] != "C6", "evidence"])


def test_combine_and_synthesize():
    assert combine([SUPPORTED, SUPPORTED]) == SUPPORTED
    assert combine([SUPPORTED, REFUTED]) == MIXED
    assert combine([SUPPORTED, INCONCLUSIVE]) == SUPPORTED
    assert combine([INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([]) == INCONCLUSIVE
    assert synthesize(SUPPORTED, SUPPORTED, SUPPORTED) == SUPPORTED
    assert synthesize(SUPPORTED, REFUTED, MIXED) == REFUTED
    assert synthesize(SUPPORTED, INCONCLUSIVE, SUPPORTED) == INCONCLUSIVE
    assert synthesize(SUPPORTED, MIXED, SUPPORTED) == MIXED


def test_statistics_helpers(th):
    assert np.isnan(mean_ci([1.0], th)[1])
    mean, low, high, n = mean_ci([1.0, 2.0, 3.0, 4.0], th)
    assert (mean, n) == (2.5, 4) and low < mean < high
    ratio, low, high = ratio_ci([4.0, 4.2, 3.8], [1.0, 1.1, 0.9], th)
    assert ratio == pytest.approx(4.0) and low < 4.0 < high
    assert spearman([1, 2, 3], [5, 5, 5])[0] != spearman([1, 2, 3], [5, 5, 5])[0]  # NaN: constant side
    assert spearman([1, 2, 3, 4], [1, 2, np.inf, np.inf])[0] > 0.9  # a diverged run ranks highest
    df = runs_table()
    eta = partial_eta2(df, "tokens_per_s")
    assert eta["batch_size"] > 0.9 and eta["num_steps"] < 0.3


def test_thresholds_file_missing_a_key_is_refused(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("min_seeds: 2\n")
    with pytest.raises(ThresholdsError, match="min_levels"):
        load_thresholds(bad)
