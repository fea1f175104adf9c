"""The text task: PTB/WikiText conventions, the built-in corpus, and the measures on a language model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sweep.corpus import BUILTIN_CORPUS, builtin_corpus_text, tokenize
from sweep.tasks import build_vocab, make_task
from sweep.train import train
from tests.conftest import REPO

WIKITEXT = REPO.parent / "shared" / "data" / "wikitext-2"
SMALL_LM = ["task=text", "model.hidden_size=16", "model.embedding_size=8", "budget.amount=40", "num_steps=8",
            "batch_size=8", "eval.points=1", "eval.max_tokens=4096", "measure.context_positions=64",
            "measure.contexts=[1,2,4,8,32]", "measure.horizon_max_k=32", "measure.horizon_windows=4",
            "measure.probe_max_k=8"]  # fmt: skip


def test_tokenize_follows_ptb_conventions():
    text = " = Valkyria Chronicles = \n\n The <unk> game , released in 2011 .\n"
    assert tokenize(text, "word") == ["=", "Valkyria", "Chronicles", "=", "<eos>", "<eos>",
                                      "The", "<unk>", "game", ",", "released", "in", "2011", ".", "<eos>"]  # fmt: skip
    assert tokenize("ab c\n", "char") == ["a", "b", " ", "c", "<eos>"]


def test_vocab_is_by_frequency_keeps_unk_and_caps():
    vocab = build_vocab(["b", "a", "b", "c", "b", "a"], max_vocab=3)
    assert vocab == ["b", "a", "<unk>"]
    assert build_vocab(["x", "<unk>", "x"]) == ["x", "<unk>"]


def test_builtin_corpus_is_deterministic_and_large_enough_offline():
    text = builtin_corpus_text()
    assert text == builtin_corpus_text()
    assert len(tokenize(text, "word")) > 20_000 and len(tokenize(text, "char")) > 100_000


def test_builtin_corpus_at_char_level_trains_and_records_all_measures(make_cfg):
    result = train(make_cfg(*SMALL_LM, "task.level=char"), measure_fn=_measures())
    s = result.summary
    assert s["task_info"]["corpus"] == BUILTIN_CORPUS and len(s["task_info"]["corpus_sha256"]) == 64
    assert s["task_info"]["vocab_size"] < 200  # characters, not words
    assert s["valid_loss"] < math.log(s["task_info"]["vocab_size"])  # better than uniform after 40 updates
    for key in ("effective_context", "gradient_horizon", "probe_span", "full_context_loss"):
        assert s[key] is not None, key
    assert s.get("span") is None  # recall span is for echo/lags only
    assert set(result.profiles["measure"]) >= {"context", "gradient", "probe"}


@pytest.mark.skipif(not (WIKITEXT / "test.txt").is_file(), reason="../shared/data/wikitext-2 is not beside the repo")
def test_wikitext_at_word_level_keeps_unk_and_maps_unseen_valid_words_to_unk(make_cfg):
    cfg = make_cfg(*SMALL_LM, f"task.path={WIKITEXT / 'test.txt'}", f"task.valid_path={WIKITEXT / 'valid.txt'}",
                   "task.max_vocab=2000")  # fmt: skip
    data = make_task(cfg)
    assert data.itos is not None and "<unk>" in data.itos and "<eos>" in data.itos
    assert data.vocab_size == 2000
    unk = data.itos.index("<unk>")
    assert (data.valid == unk).float().mean() > (data.train == unk).float().mean() * 0.5  # unseen types -> <unk>
    result = train(cfg, measure_fn=_measures())
    assert result.status == "complete" and result.summary["effective_context"] is not None
    assert Path(result.summary["task_info"]["corpus"]).name == "test.txt"


def _measures():
    from sweep.measures import measure_all

    return measure_all
