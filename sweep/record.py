"""Run records on disk: signatures, atomic writes, the environment a run was timed in, and reading them back.

A run folder holds `steps.parquet`, `evals.parquet`, `profiles.parquet` and `run.json`, each written to a temp
file and renamed into place; `run.json` is written last, so its presence means the run is whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:  # torch and pandas are imported where used: a sweep's parent process never needs them
    import pandas as pd
    import torch

RUN_FILE = "run.json"
RECORD_VERSION = 1
# Keys that change how a run is shown or where it is written, never what it computes: left out of the signature.
_NOT_IN_SIGNATURE = (
    "progress_every_s",
    "results_dir",
    "name",
    "threads",
    "device",
    "study",
    "trial",
    "checkpoint",
    "lease",
)
DONE_STATUSES = ("complete", "diverged")  # a rerun skips these; `failed` and missing runs are run again


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config, resolved, without Hydra's own node (a sweep-time config still carries it)."""
    return {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key, value in cfg.items()
        if key != "hydra"
    }


def signature(cfg: DictConfig | dict[str, Any]) -> str:
    """sha256 (first 16 hex) of the resolved config, less the keys that cannot change the result."""
    conf = resolved_config(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    for key in _NOT_IN_SIGNATURE:
        conf.pop(key, None)
    blob = json.dumps(conf, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run_dirname(overrides: str) -> str:
    """A run folder's name from its override string (Hydra's override_dirname), safe as one path component.

    '/' in a value (a corpus path) is escaped so each run is one folder; an empty string (the defaults) becomes
    'base'; a name too long for a file system keeps its start and gains a hash of the whole.
    """
    name = (overrides or "base").replace("%", "%25").replace(os.sep, "%2F")
    if len(name) > 200:
        name = f"{name[:180]}~{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return name


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temp file renamed into place. A failed write (disk full, I/O error, interrupt) removes its
    temp file and leaves the previous file at `path`, if any, whole; the error propagates to the caller."""
    tmp = _tmp_path(path)
    try:
        write(tmp)
        _replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"  # fails before any write
    _write_atomic(Path(path), lambda tmp: tmp.write_text(text))


def write_table(path: Path, df: pd.DataFrame) -> None:
    _write_atomic(Path(path), lambda tmp: df.to_parquet(tmp, index=False))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_run(folder: Path) -> dict[str, Any] | None:
    """The run record in `folder`, or None when it is missing or unreadable (a partial write never is)."""
    try:
        return json.loads((Path(folder) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_done(folder: Path, sig: str) -> bool:
    return record_is_done(read_run(folder), sig)


def record_is_done(rec: dict[str, Any] | None, sig: str) -> bool:
    """A record that a rerun skips: whole, made from the same config, and complete or diverged."""
    return bool(rec) and rec.get("signature") == sig and rec.get("status") in DONE_STATUSES


def clean_stale(folder: Path) -> None:
    """Remove temp files left by a killed writer, and any record of a run that is about to be redone."""
    for p in Path(folder).glob(".*.tmp-*"):
        p.unlink(missing_ok=True)
    for name in (RUN_FILE, "steps.parquet", "evals.parquet", "profiles.parquet"):
        (Path(folder) / name).unlink(missing_ok=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device, threads: int, parallel_jobs: int, launcher: str | None) -> dict[str, Any]:
    """Everything a speed figure depends on: hardware, threads, concurrency and versions."""
    import torch

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "device": str(device),
        "gpu": gpu,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "parallel_jobs": parallel_jobs,
        "launcher": launcher,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "versions": {p: _version(p) for p in ("hydra-core", "omegaconf", "numpy", "pandas", "optuna", "rnn-sweep")},
        "git_commit": _git_commit(),
        "argv": sys.argv,
    }
