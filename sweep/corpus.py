"""Text corpora without tensors: the built-in corpus, PTB/WikiText tokenisation, and the checks that a task's
data can fill the configured layout. Kept free of torch so that a sweep's parent process, which validates every
grid point before launching, starts in a fraction of a second.
"""

from __future__ import annotations

import codecs
import functools
import importlib
import inspect
import warnings
from pathlib import Path

from omegaconf import DictConfig

from sweep.config import ConfigError

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
    with warnings.catch_warnings():  # deprecated aliases (typing.io, ...) warn when their docstrings are read
        warnings.simplefilter("ignore", DeprecationWarning)
        return _docstrings()


def _docstrings() -> str:
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


class NotText(ValueError):
    """A corpus file that is not text in its encoding; `text_splits` names the field that points at it."""


def check_encoding(encoding: str) -> None:
    """Raise ConfigError unless `encoding` is a text codec Python knows (not a bytes-to-bytes one like base64)."""
    try:
        info = codecs.lookup(encoding)
    except (LookupError, TypeError):
        info = None
    if info is None or not getattr(info, "_is_text_encoding", True):
        raise ConfigError(
            f"invalid config: task.encoding={encoding!r}: must be a text encoding Python knows "
            "(e.g. utf-8, latin-1, cp1252, utf-16)"
        )


def read_corpus(path: str, encoding: str = "utf-8") -> str:
    """A corpus file's text, decoded strictly; NotText when it holds a NUL (a binary file) or cannot be decoded."""
    data = Path(path).read_bytes()
    try:
        ascii_nul = "\0".encode(encoding) == b"\0"  # false for utf-16/32, whose text holds NUL bytes
    except UnicodeError:
        ascii_nul = False
    nul = data.find(b"\0") if ascii_nul else -1
    if nul >= 0:
        raise NotText(f"not a text file (NUL byte at byte {nul})")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise NotText(
            f"not {encoding} text at byte {exc.start} (set task.encoding, e.g. task.encoding=latin-1)"
        ) from None
    if "\0" in text:
        raise NotText(f"not a text file (NUL character at character {text.index(chr(0))})")
    return text


@functools.lru_cache(maxsize=8)
def load_tokens(path: str | None, level: str, encoding: str = "utf-8") -> tuple[str, ...]:
    """Tokens of a corpus file (or of the built-in corpus when path is None); cached, since sweeps reread it."""
    if path is None:
        return tuple(tokenize(builtin_corpus_text(), level))
    return tuple(tokenize(read_corpus(path, encoding), level))


def text_splits(cfg: DictConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Training and held-out tokens of a text task; ConfigError (naming the field) for a file that is missing,
    not text in task.encoding, or the same file as the training corpus."""
    task = cfg.task
    check_encoding(task.encoding)
    for key in ("path", "valid_path"):
        path = task[key]
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"invalid config: task.{key}={path!r}: must be an existing text file")
    if task.path is not None and task.valid_path is not None and Path(task.path).samefile(task.valid_path):
        raise ConfigError(
            f"invalid config: task.valid_path={task.valid_path!r}: is the training corpus task.path; held-out "
            "text must be another file (or leave task.valid_path unset to hold out task.valid_fraction of it)"
        )
    tokens = _tokens(cfg, "path")
    if task.valid_path is not None:
        return tokens, _tokens(cfg, "valid_path")
    cut = int(len(tokens) * (1 - task.valid_fraction))
    return tokens[:cut], tokens[cut:]


def _tokens(cfg: DictConfig, key: str) -> tuple[str, ...]:
    path = cfg.task[key]
    try:
        return load_tokens(path, cfg.task.level, cfg.task.encoding)
    except NotText as exc:
        raise ConfigError(f"invalid config: task.{key}={path!r}: {exc}") from None
    except OSError as exc:
        raise ConfigError(
            f"invalid config: task.{key}={path!r}: must be a readable text file ({exc.strerror or exc})"
        ) from None


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
