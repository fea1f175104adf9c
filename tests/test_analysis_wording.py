"""Judges return numbers and reason codes; analysis/wording.py writes every sentence (docs/claims.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pandas as pd

from analysis import verdicts
from analysis import wording as say
from analysis.synthetic import runs_table
from analysis.thresholds import load_thresholds

SOURCE = Path(verdicts.__file__).read_text()


def _codes_used() -> set[str]:
    return set(re.findall(r'(?:_why|say\.reason)\("([a-z0-9_]+)"', SOURCE)) | set(
        re.findall(r'"(?:growth|bound|cheap|floor)_reason": "([a-z0-9_]+)"', SOURCE)
    )


def test_every_reason_a_judge_gives_has_a_sentence_and_none_is_dead():
    used = _codes_used()
    assert used == set(say.REASONS), (used - set(say.REASONS), set(say.REASONS) - used)


def test_the_judges_hold_no_sentence():
    """String literals in verdicts.py are codes, labels and column names, not prose: none has four words or more
    outside docstrings and the errors raised on bad input (a verdict sentence written there would bypass
    wording.py)."""
    tree = ast.parse(SOURCE)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    errors = {id(c) for r in ast.walk(tree) if isinstance(r, ast.Raise) for c in ast.walk(r)}
    prose = [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings | errors
        if len(n.value.split()) >= 4
    ]
    assert prose == []


def test_claims_read_their_text_from_wording():
    assert [c.id for c in verdicts.CLAIMS.values()] == list(say.CLAIM_TEXT)
    assert verdicts.CLAIMS["C3"].text == say.CLAIM_TEXT["C3"][0] and "4" in verdicts.CLAIMS["C3"].text


def test_an_inconclusive_split_carries_its_code_and_the_sentence_quotes_its_numbers():
    th = load_thresholds()
    two_seeds = runs_table(cells=("gru",), batch_sizes=(1, 4), num_steps=(4, 16), seeds=(0, 1), budget="plateau 8192")
    result = verdicts.judge_c2(verdicts.prepare(two_seeds), th)
    assert result.verdict == verdicts.INCONCLUSIVE and result.reason_code == "few_seeds"
    assert result.reason == say.reason("few_seeds", seeds=2.0, need=th["min_seeds"])
    assert f"need {th['min_seeds']}" in result.reason and "only 2 seed(s)" in result.reason
    vs = {v.claim.id: v for v in verdicts.judge(two_seeds, th)}
    assert "only 2 seed(s)" in vs["C2"].sentence


def test_reason_codes_render_with_the_values_given():
    assert say.reason("pair_at_chance", small=1, big=4, bound=0.3) == (
        "neither batch 1 nor batch 4 clearly above chance (accuracy interval's lower end ≤ 0.30)"
    )
    assert say.reason("speed_no_task", task="lags").endswith("task lags")
    assert isinstance(pd.DataFrame([("g", say.reason("no_span"))], columns=["group", "reason"]), pd.DataFrame)


def test_a_split_where_a_claim_does_not_apply_says_so_and_is_not_counted():
    """C2 at a fixed budget is learning speed: the split says "not judged", and the claim's sentence does not
    count it among the settings that could not judge."""
    th = load_thresholds()
    budget = runs_table(cells=("gru",), batch_sizes=(1, 4), num_steps=(16,))
    result = verdicts.judge_c2(verdicts.prepare(budget), th)
    assert not result.applicable and result.reason_code == "c2_plateau_only"
    assert say.sentence("C2", result).startswith("Not judged: ")
    both = pd.concat([budget, runs_table(cells=("gru",), batch_sizes=(1, 4), num_steps=(16,), budget="plateau 8192")])
    c2 = {v.claim.id: v for v in verdicts.judge(both, th)}["C2"]
    assert c2.decided_in == ("echo · plateau 8192 · fixed lr",) and c2.undecided_in == ()
    assert "Could not judge" not in c2.sentence
