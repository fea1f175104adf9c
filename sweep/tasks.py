"""Tasks as streams: echo and lags (iid symbols, recall at a lag) and text (a language model on a corpus).

A task yields, for a split and a number of rows, `inputs` [B, L] and `targets` [H, B, L] (one row of targets per
output head, IGNORE where a target is undefined). Data never needs a download: echo/lags are generated from the
seed, and the default text corpus is built from the docstrings of Python's own standard library.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig

from sweep.corpus import BUILTIN_CORPUS, check_task, text_splits
from sweep.data import IGNORE, batchify


@dataclass
class TaskData:
    """One task's streams. `lags` is set for echo/lags (one head per lag), None for text."""

    name: str
    vocab_size: int
    out_vocab: int
    train: torch.Tensor  # 1-D token stream
    valid: torch.Tensor
    lags: list[int] | None = None
    itos: list[str] | None = None
    info: dict = field(default_factory=dict)

    @property
    def num_heads(self) -> int:
        return len(self.lags) if self.lags else 1

    @property
    def chance(self) -> float:
        return 1.0 / self.out_vocab

    def rows(self, split: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs [B, L] and targets [H, B, L] for a split laid out in `batch_size` rows."""
        rows = batchify(self.train if split == "train" else self.valid, batch_size)
        if self.lags is None:  # language model: predict the next token
            return rows[:, :-1], rows[:, 1:].unsqueeze(0)
        targets = torch.full((len(self.lags), *rows.shape), IGNORE, dtype=rows.dtype)
        for h, lag in enumerate(self.lags):
            # target at column t is the input at t - lag of the same row; the first `lag` columns have none,
            # because their source token lies in another row that this row's state never saw
            targets[h, :, lag:] = rows[:, :-lag]
        return rows, targets


def _symbols(vocab_size: int, length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(vocab_size, (length,), generator=gen)


def build_vocab(tokens: list[str], max_vocab: int = 0) -> list[str]:
    """Types by descending frequency (ties alphabetical, so it is deterministic); `<unk>` always present."""
    counts = Counter(tokens)
    ordered = sorted(counts, key=lambda t: (-counts[t], t))
    has_unk = "<unk>" in ordered
    if max_vocab and len(ordered) + (not has_unk) > max_vocab:  # max_vocab counts <unk> too
        ordered = [*[t for t in ordered if t != "<unk>"][: max_vocab - 1], "<unk>"]
    elif not has_unk:
        ordered.append("<unk>")
    return ordered


def encode(tokens: tuple[str, ...] | list[str], stoi: dict[str, int]) -> torch.Tensor:
    unk = stoi["<unk>"]
    return torch.tensor([stoi.get(t, unk) for t in tokens], dtype=torch.long)


def make_task(cfg: DictConfig) -> TaskData:
    """Build the task's streams, after checking that they are long enough for the configured layout."""
    check_task(cfg)
    task, seed = cfg.task, cfg.seed
    if task.name in ("echo", "lags"):
        lags = [int(task.lag)] if task.name == "echo" else [int(k) for k in task.lags]
        # train and held-out streams from independent generators derived from the seed
        return TaskData(
            name=task.name,
            vocab_size=task.vocab_size,
            out_vocab=task.vocab_size,
            train=_symbols(task.vocab_size, task.train_tokens, 2 * seed),
            valid=_symbols(task.vocab_size, task.valid_tokens, 2 * seed + 1),
            lags=lags,
        )
    train_tokens, valid_tokens = text_splits(cfg)
    itos = build_vocab(list(train_tokens), task.max_vocab)
    stoi = {t: i for i, t in enumerate(itos)}
    source = task.path or BUILTIN_CORPUS
    text_id = hashlib.sha256(" ".join(train_tokens).encode()).hexdigest()
    return TaskData(
        name="text",
        vocab_size=len(itos),
        out_vocab=len(itos),
        train=encode(train_tokens, stoi),
        valid=encode(valid_tokens, stoi),
        itos=itos,
        info={
            "corpus": source,
            "corpus_sha256": text_id,
            "train_tokens": len(train_tokens),
            "valid_tokens": len(valid_tokens),
            "vocab_size": len(itos),
        },
    )
