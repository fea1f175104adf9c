"""The record contract: what a run, a sweep and the analysis agree on, in one torch-free module.

A run folder holds `steps.parquet`, `evals.parquet`, `profiles.parquet` and `run.json`, each written to a temp
file and renamed into place; `run.json` is written last, so its presence means the run is whole. Beside the runs a
sweep writes its plan, its summary, the speed phase and the lr search (file names below). This module also holds
what both the runner and the analysis must compute the same way: the signature (which keys cannot change a
result; the device class, docs/measures.md "Device class"), the folder name of a grid point (`run_dirname`, the
resolver conf/config.yaml uses), the statuses a rerun skips and the verdicts read, the summary keys, and the
recall rules (a lag reached, the span, the memory capacity; docs/measures.md section 1).

It imports neither torch, numpy nor pandas at module level: a sweep's parent process and `analysis` import it
(a test checks).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata, util
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:  # torch and pandas are imported where used: a sweep's parent process never needs them
    import pandas as pd
    import torch

RECORD_VERSION = 1

# ------------------------------------------------------------------------------------------------ file names
RUN_FILE = "run.json"  # written last: its presence means the run is whole
SERIES = ("steps", "evals", "profiles")
STEPS_FILE, EVALS_FILE, PROFILES_FILE = (f"{name}.parquet" for name in SERIES)
SERIES_FILES = {name: f"{name}.parquet" for name in SERIES}
SWEEP_PLAN_FILE = "sweep_plan.json"  # every planned point (folder, overrides, signature), before any job starts
SWEEP_SUMMARY_FILE = "sweep_summary.json"  # every job's status, when a sweep ends
MULTIRUN_FILE = "multirun.yaml"  # Hydra's own copy of the sweep config: the grid when no summary was written
SPEED_FILE = "speed.parquet"  # the speed phase (sweep/speed.py)
SPEED_PLAN_FILE = "speed.json"  # its plan and environment, written last
LR_SEARCH_FILE = "lr_search.json"  # the lr search's table and chosen lr per group (grid and optuna sweepers)
BEST_TRIALS_FILE = "best_trials.json"  # a tuning sweep's best trial per grid cell

# --------------------------------------------------------------------------------------------------- statuses
COMPLETE, DIVERGED, FAILED, PRUNED = "complete", "diverged", "failed", "pruned"
STATUSES = (COMPLETE, DIVERGED, FAILED, PRUNED)
# What the verdicts read: a run that trained its whole budget, or stopped because its loss went non-finite.
JUDGED_STATUSES = (COMPLETE, DIVERGED)
# What a rerun skips (with the same signature). A pruned trial (an Optuna pruner stopped it early) is finished:
# rerunning it would spend the budget the pruner saved, and it is never judged. `failed` and missing runs run again.
DONE_STATUSES = (COMPLETE, DIVERGED, PRUNED)
FINISHED_STATUSES = DONE_STATUSES  # alias: "finished" = no longer to be run

# -------------------------------------------------------------------------------------------------- signature
# Keys that change how a run is shown or where it is written, never what it computes: left out of the signature.
# `device` is replaced by its class (cpu / cuda / mps): see device_class.
SIGNATURE_EXCLUDED = (
    "progress_every_s",
    "results_dir",
    "name",
    "threads",
    "device",
    "study",
    "trial",
    "study_storage",
    "checkpoint",
    "lease",
)
_NOT_IN_SIGNATURE = SIGNATURE_EXCLUDED  # the earlier private name, still imported by some callers
DEVICE_CLASSES = ("cpu", "cuda", "mps")

# ----------------------------------------------------------------------------------------------- summary keys
# Scalar keys of run.json's `summary` the analysis reads: columns (NaN) even when no record has them (failed runs,
# records written before a measure existed). `lag_accuracy` and `lag_count` are per-lag dicts beside them.
SUMMARY_KEYS = (
    "tokens_per_s",
    "train_loss",
    "valid_loss",
    "valid_accuracy",
    "grad_norm_max",
    "grad_norm_median",
    "chance_accuracy",
    "diverged_at_step",
    "span",
    "memory_capacity",
    "effective_context",
    "gradient_horizon",
    "gradient_explodes",
    # measures added after the first record version (docs/measures.md): NaN in older records
    "effective_context_censored",
    "context_method",
    "gradient_flat",
    "gradient_horizon_censored",
    "gradient_log_slope",
    "growth_slope",
    "growth_slope_ci_low",
    "growth_slope_ci_high",
    "growth_ratio",
    "growth_slope_initial",
    "growth_slope_ci_low_initial",
    "growth_slope_ci_high_initial",
    "growth_ratio_initial",
    "probe_span",
    "probe_span_cell",
    "loss_jitter",
    "loss_jitter_rel",
    "grad_norm_cv_late",
    "clip_fraction",
    "lr",
    # the claim protocol's budget=plateau and end-of-run jitter (docs/protocol.md, "Training semantics")
    "stop_reason",
    "converged",
    "stopped_at_update",
    "best_valid_loss",
    "best_valid_update",
    "param_jitter",
    "sampling_jitter",
    "jitter_ratio",
    # the state-to-state Jacobian product against L (docs/measures.md, measure 6)
    *(
        f"jacobian_{key}{net}"
        for net in ("", "_initial")
        for key in ("log_norm_max_L", "slope", "slope_ci_low", "slope_ci_high", "explodes")
    ),
)
LAG_ACCURACY, LAG_COUNT = "lag_accuracy", "lag_count"


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config, resolved, without Hydra's own node (a sweep-time config still carries it)."""
    return {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key, value in cfg.items()
        if key != "hydra"
    }


def signature(cfg: DictConfig | dict[str, Any]) -> str:
    """sha256 (first 16 hex) of the resolved config, less the keys that cannot change the result, plus the
    device class when it is not cpu.

    Timings and floating-point results differ between a CPU and a GPU, so a point measured on one is not done
    on the other. A cpu-class signature is the hash it always was (records written before the device class
    counted stay valid on a CPU machine); a cuda or mps run hashes `device_class` too.
    """
    conf = resolved_config(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    device = conf.get("device", "auto")
    for key in SIGNATURE_EXCLUDED:
        conf.pop(key, None)
    cls = device_class(str(device) if device is not None else "auto")
    if cls != "cpu":
        conf["device_class"] = cls
    blob = json.dumps(conf, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def device_class(device: str, environ: Mapping[str, str] | None = None) -> str:
    """The class of device a run with config value `device` trains on (cpu / cuda / mps), without importing torch.

    An explicit value names its class ("cuda:1" -> cuda). `auto` resolves as sweep/train.py's resolve_device
    does (cuda when torch can use a GPU, else cpu; never mps), probed cheaply: cpu when CUDA_VISIBLE_DEVICES is
    set to "" or "-1" (no GPU visible), when the installed torch is a CPU build (its version.py says cuda =
    None), or when no NVIDIA driver is present (/proc/driver/nvidia/version, else nvidia-smi on PATH).
    The probe runs where the signature is computed: a sweep whose parent process runs on a machine without the
    jobs' GPU (a SLURM login node) should say device=cuda explicitly.
    """
    name = device.split(":", 1)[0].strip().lower()
    if name in DEVICE_CLASSES:
        return name
    if name != "auto":
        raise ValueError(f"device: {device!r} is not one of auto, {', '.join(DEVICE_CLASSES)}")
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return "cpu"
    if not _torch_built_with_cuda():
        return "cpu"
    return "cuda" if _nvidia_driver_present() else "cpu"


def _torch_built_with_cuda() -> bool:
    """Whether the installed torch is a CUDA build, read from torch/version.py (importing torch costs seconds)."""
    try:
        spec = util.find_spec("torch")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        try:
            text = (Path(folder) / "version.py").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("cuda"):  # `cuda: Optional[str] = '12.4'` or `= None`
                return line.split("=", 1)[-1].strip() not in ("None", "")
    return False


def _nvidia_driver_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def run_dirname(overrides: str) -> str:
    """A run folder's name from its override string (Hydra's override_dirname), safe as one path component.

    '/' in a value (a corpus path) is escaped so each run is one folder; an empty string (the defaults) becomes
    'base'; a name too long for a file system keeps its start and gains a hash of the whole.
    """
    name = (overrides or "base").replace("%", "%25").replace("/", "%2F")
    if os.sep != "/":
        name = name.replace(os.sep, "%5C")
    if len(name) > 200:
        name = f"{name[:180]}~{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return name


def register_resolvers() -> None:
    """Register `run_dirname`, the resolver conf/config.yaml names folders with (idempotent): whoever composes the
    project's config (the entry point, tests, a notebook) gets the same folder names as the analysis rebuilds."""
    if not OmegaConf.has_resolver("run_dirname"):
        OmegaConf.register_new_resolver("run_dirname", run_dirname)


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
    """A record that a rerun skips: whole, made from the same config, and finished (DONE_STATUSES)."""
    return bool(rec) and rec.get("signature") == sig and rec.get("status") in DONE_STATUSES


def clean_stale(folder: Path) -> None:
    """Remove temp files left by a killed writer, and any record of a run that is about to be redone."""
    for p in Path(folder).glob(".*.tmp-*"):
        p.unlink(missing_ok=True)
    for name in (RUN_FILE, *SERIES_FILES.values()):
        (Path(folder) / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- recall rules
# One definition for the runner (sweep/measures.py) and the analysis (analysis/load.py, for records without a
# span): docs/measures.md section 1.
def wilson_interval(successes: float, trials: float, level: float) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927); (nan, nan) without trials."""
    if not trials or trials <= 0:
        return math.nan, math.nan
    n = float(trials)
    p = float(successes) / n
    z = NormalDist().inv_cdf(0.5 + level / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(centre - half, 0.0), min(centre + half, 1.0)


def lag_reached(accuracy: float, ci_low: float, chance: float, margin: float) -> bool:
    """A lag is reached when its accuracy is at least chance + margin AND its interval lies above chance (a
    point estimate over the margin on few targets is not enough). A missing accuracy (NaN) is not reached."""
    return bool(accuracy >= chance + margin and ci_low > chance)


def span(lags: Iterable[int], reached: Iterable[bool]) -> int:
    """The longest lag reached with every shorter lag reached too (0 when the shortest is not): a lucky long lag
    after a failed short one does not count."""
    longest = 0
    for lag, ok in sorted(zip(list(lags), list(reached), strict=True)):
        if not ok:
            break
        longest = lag
    return int(longest)


def memory_capacity(accuracies: Iterable[float], counts: Iterable[float], chance: float) -> float | None:
    """Sum over the measured lags of (acc - chance) / (1 - chance), NOT floored at 0 (noise around chance then
    cancels). A head with no held-out target (count 0) or no accuracy is missing, not wrong: left out.
    None when no head was measured."""
    terms = [
        (float(a) - chance) / (1 - chance)
        for a, n in zip(list(accuracies), list(counts), strict=True)
        if n is not None and not _nan(n) and n > 0 and a is not None and not _nan(a)
    ]
    return float(sum(terms)) if terms else None


def recall_summary(
    lags: Iterable[int],
    accuracies: Iterable[float],
    counts: Iterable[float],
    chance: float,
    margin: float,
    level: float,
) -> dict[str, Any]:
    """`span` and `memory_capacity` from each lag's held-out accuracy and target count (the Wilson interval is
    computed from round(acc * count) successes). A head without targets (count 0, or no accuracy) is missing,
    not wrong: left out of both, so the span runs over the measured lags."""
    measured = [
        (int(k), float(a), float(n))
        for k, a, n in zip(list(lags), list(accuracies), list(counts), strict=True)
        if not _nan(a) and not _nan(n) and float(n) > 0
    ]
    reached = [lag_reached(a, wilson_interval(round(a * n), n, level)[0], chance, margin) for _, a, n in measured]
    return {
        "span": span([k for k, _, _ in measured], reached),
        "memory_capacity": memory_capacity([a for _, a, _ in measured], [n for _, _, n in measured], chance),
    }


def _nan(x: Any) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True


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
