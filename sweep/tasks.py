"""Tasks as streams: echo and lags (iid symbols, recall at a lag) and text (a language model on a corpus).

A task yields, for a split and a number of rows, `inputs` [B, L] and `targets` [H, B, L] (one row of targets per
output head, IGNORE where a target is undefined). Data never needs a download: echo/lags are generated from the
seed, and the default text corpus is built from the docstrings of Python's own standard library.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from sweep.config import ConfigError
from sweep.data import IGNORE, batchify

# Modules whose docstrings form the built-in corpus. A fixed list keeps it the same on every machine running the
# same Python version; its sha256 goes into each run record so a change of Python shows up.
_STDLIB_MODULES = [
    "abc",
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "cmd",
    "codecs",
    "collections",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "enum",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http.client",
    "http.server",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "locale",
    "logging",
    "lzma",
    "mailbox",
    "mimetypes",
    "multiprocessing",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pickle",
    "pickletools",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "sqlite3",
    "ssl",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "traceback",
    "turtle",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "weakref",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "zipfile",
    "zoneinfo",
]

BUILTIN_CORPUS = "builtin:stdlib-docstrings"


def builtin_corpus_text() -> str:
    """The docstrings of a fixed list of standard-library modules and their public members, in a fixed order."""
    lines: list[str] = []
    for name in _STDLIB_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:  # a module missing from a minimal Python build is skipped, and the sha256 records it
            continue
        docs = [inspect.getdoc(module)]
        for attr in sorted(vars(module)):
            obj = getattr(module, attr, None)
            if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                docs.append(inspect.getdoc(obj))
        for doc in docs:
            if doc:
                lines.extend(line.strip() for line in doc.splitlines() if line.strip())
    return "\n".join(lines) + "\n"


def tokenize(text: str, level: str) -> list[str]:
    """PTB/WikiText conventions: whitespace tokens (word) or characters (char), `<eos>` at each line end."""
    tokens: list[str] = []
    for line in text.splitlines():
        tokens.extend(line.split() if level == "word" else list(line.strip()))
        tokens.append("<eos>")
    return tokens


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


@functools.lru_cache(maxsize=8)
def load_tokens(path: str | None, level: str) -> tuple[str, ...]:
    """Tokens of a corpus file (or of the built-in corpus when path is None); cached, since sweeps reread it."""
    if path is None:
        return tuple(tokenize(builtin_corpus_text(), level))
    return tuple(tokenize(Path(path).read_text(encoding="utf-8"), level))


def text_splits(cfg: DictConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    task = cfg.task
    for key in ("path", "valid_path"):
        path = task[key]
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"invalid config: task.{key}={path!r}: must be an existing text file")
    tokens = load_tokens(task.path, task.level)
    if task.valid_path is not None:
        return tokens, load_tokens(task.valid_path, task.level)
    cut = int(len(tokens) * (1 - task.valid_fraction))
    return tokens[:cut], tokens[cut:]


def check_task(cfg: DictConfig) -> None:
    """Raise ConfigError when the task's data cannot fill the configured layout (too short, too few targets)."""
    task = cfg.task
    if task.name in ("echo", "lags"):
        max_lag = task.lag if task.name == "echo" else max(task.lags)
        need = cfg.batch_size * (cfg.num_steps + max_lag)
        if task.train_tokens < need:
            raise ConfigError(
                f"invalid config: task.train_tokens={task.train_tokens}: must be >= batch_size x (num_steps + "
                f"max lag) = {need}"
            )
        return
    train, valid = text_splits(cfg)
    source = task.path or BUILTIN_CORPUS
    need = cfg.batch_size * (cfg.num_steps + 1)
    if len(train) < need:
        raise ConfigError(
            f"invalid config: task.path={source!r}: corpus too short ({len(train)} training tokens); "
            f"must hold >= batch_size x (num_steps + 1) = {need} tokens"
        )
    if len(valid) < 2 * cfg.eval.rows:
        raise ConfigError(
            f"invalid config: task.valid_path={task.valid_path or source!r}: held-out text too short "
            f"({len(valid)} tokens); must hold >= 2 x eval.rows = {2 * cfg.eval.rows} tokens"
        )


def build_vocab(tokens: list[str], max_vocab: int = 0) -> list[str]:
    """Types by descending frequency (ties alphabetical, so it is deterministic); `<unk>` always present."""
    counts = Counter(tokens)
    ordered = sorted(counts, key=lambda t: (-counts[t], t))
    if max_vocab and len(ordered) > max_vocab:
        ordered = [t for t in ordered if t != "<unk>"][: max_vocab - 1]
    if "<unk>" not in ordered:
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
