"""One job: skip it if its record is already whole, else train and write the record atomically."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from sweep import lease, record, stop
from sweep.config import ConfigError, validate
from sweep.cpus import default_threads
from sweep.train import resolve_device, train

log = logging.getLogger(__name__)


def _measure_fn(cfg: DictConfig):
    if not cfg.measure.enabled:
        return None
    from sweep.measures import measure_all  # imported lazily: only runs that measure pay for it

    return measure_all


def _trial_reporter(cfg: DictConfig):
    """An Optuna trial's run reports its evaluation points (and may be pruned); a plain run has no hook and
    never imports optuna."""
    if cfg.get("trial") is None:
        return None
    from sweep.pruning import reporter_for

    return reporter_for(cfg)


def run_job(
    cfg: DictConfig,
    out_dir: Path,
    parallel_jobs: int = 1,
    launcher: str | None = None,
    extra: dict | None = None,
) -> dict[str, Any]:
    """Run one grid point into `out_dir` and return its record. Bad config raises ConfigError, writing nothing.
    A stop requested by a signal (sweep/stop.py) raises stop.Stopped once the checkpoint is saved and the lease
    released; a point whose live lease another process holds returns {"status": "leased", "owner": ...}."""
    out_dir = Path(out_dir)
    try:
        validate(cfg)
    except ConfigError:
        _remove_if_empty(out_dir, Path(cfg.results_dir))
        raise
    with stop.handling():  # SIGTERM (SIGINT, a scheduler's preemption signal): checkpoint, release, Stopped
        return _run_leased(cfg, out_dir, parallel_jobs, launcher, extra)


def _run_leased(
    cfg: DictConfig, out_dir: Path, parallel_jobs: int, launcher: str | None, extra: dict | None
) -> dict[str, Any]:
    sig = record.signature(cfg)
    existing = record.read_run(out_dir)
    if record.record_is_done(existing, sig):
        log.info("skip %s: complete record with signature %s", out_dir, sig)
        return existing  # type: ignore[return-value]

    out_dir.mkdir(parents=True, exist_ok=True)
    held = lease.acquire(out_dir, float(cfg.lease.ttl_s))
    if isinstance(held, str):  # another sweep process trains this point now: leave it to that one
        log.info("skip %s: being trained by %s", out_dir, held)
        return {"status": "leased", "owner": held, "signature": sig}
    try:
        existing = record.read_run(out_dir)  # the previous holder may have finished it after our first look
        if record.record_is_done(existing, sig):
            log.info("skip %s: complete record with signature %s", out_dir, sig)
            return existing  # type: ignore[return-value]
        log.info("train %s (lease %s)", out_dir, held.owner)
        held.start_renewing()
        if stop.requested:  # the signal came while the lease was being taken: nothing trained yet
            raise stop.Stopped(stop.signal_number, -1)
        rec = _train_and_record(cfg, out_dir, sig, parallel_jobs, launcher, extra)
        if stop.requested:  # it came after the last update (final evaluation, measures): the record is whole
            raise stop.Stopped(stop.signal_number, -1)
        return rec
    except ConfigError:  # bad input found while training (a corpus too short): leave nothing behind
        held.release()
        _remove_if_empty(out_dir, Path(cfg.results_dir))
        raise
    except stop.Stopped as exc:
        stop.settle()
        held.release()
        exc.line = _stopped_line(exc, out_dir)
        log.warning("%s", exc.line)
        raise
    finally:  # after run.json is written, on failure, on Ctrl-C and on a stop
        held.release()


def _stopped_line(exc: stop.Stopped, out_dir: Path) -> str:
    """What a stopped job left behind, in one line: a whole record, a checkpoint to resume from, or nothing."""
    from sweep import checkpoint

    how = f"stopped by {stop.signal_name(exc.signum)}"
    if record.read_run(out_dir) is not None:
        return f"{how} after the run ended: its record in {out_dir} is whole"
    at = f" at update {exc.update}" if exc.update >= 0 else ""
    if checkpoint.path_in(out_dir).is_file():
        return f"{how}{at}: checkpoint in {out_dir}, lease released; rerun the same command to resume"
    return f"{how}{at} before its first checkpoint: lease released; a rerun starts {out_dir} afresh"


def _train_and_record(
    cfg: DictConfig, out_dir: Path, sig: str, parallel_jobs: int, launcher: str | None, extra: dict | None
) -> dict[str, Any]:
    record.clean_stale(out_dir)
    threads = cfg.threads or default_threads(parallel_jobs)
    torch.set_num_threads(threads)
    rec: dict[str, Any] = {
        "version": record.RECORD_VERSION,
        "signature": sig,
        "config": record.resolved_config(cfg),
        **(extra or {}),
    }
    try:
        device = resolve_device(cfg.device)
        rec["env"] = record.environment(device, threads, parallel_jobs, launcher)
        # warmed before its first job (sweep/worker.py); read, not imported: the worker module imports this one
        rec["env"]["warmed_worker"] = bool(getattr(sys.modules.get("sweep.worker"), "WARMED", False))
        _inject_failure(out_dir)
        result = train(cfg, measure_fn=_measure_fn(cfg), checkpoint_dir=out_dir, on_eval=_trial_reporter(cfg))
    except ConfigError:
        raise
    except Exception as exc:  # one job's failure is recorded, never allowed to stop the sweep
        log.error("run failed in %s: %s", out_dir, exc)
        rec.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        rec.setdefault("env", None)
        rec["summary"] = {}
        record.write_json(out_dir / record.RUN_FILE, rec)
        return rec
    record.write_table(out_dir / "steps.parquet", result.steps)
    record.write_table(out_dir / "evals.parquet", result.evals)
    if not result.profiles.empty:
        record.write_table(out_dir / "profiles.parquet", result.profiles)
    rec.update(status=result.status, summary=result.summary)
    record.write_json(out_dir / record.RUN_FILE, rec)  # last: its presence means the run is whole
    _remove_checkpoint(out_dir)
    s = result.summary
    log.info(
        "%s %s: %d updates, train loss %s, valid loss %s, %.0f tok/s",
        result.status,
        out_dir.name,
        s["updates"],
        _fmt(s.get("train_loss")),
        _fmt(s.get("valid_loss")),
        s["tokens_per_s"] or 0,
    )
    return rec


def _remove_checkpoint(out_dir: Path) -> None:
    """The record is whole: a mid-run checkpoint (sweep/checkpoint.py, when present) is no longer needed."""
    try:
        from sweep import checkpoint
    except ImportError:
        return
    with contextlib.suppress(OSError):
        checkpoint.remove(out_dir)


def _inject_failure(out_dir: Path) -> None:
    """Fault injection for tests of failure handling: RNN_SWEEP_FAIL_IF=<text> fails every run whose folder
    name contains <text>, as a bug in training would (no config value can make a valid run raise on purpose)."""
    needle = os.environ.get("RNN_SWEEP_FAIL_IF")
    if needle and needle in out_dir.name:
        raise RuntimeError(f"injected failure (RNN_SWEEP_FAIL_IF={needle!r})")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _remove_if_empty(out_dir: Path, results_dir: Path) -> None:
    """Bad input leaves nothing behind: drop the job folder if it holds no more than Hydra's own start-up files,
    then the folders above it that this left empty, up to the results folder."""
    if not out_dir.is_dir():
        return
    leftovers = [p for p in out_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
    if leftovers:
        return
    shutil.rmtree(out_dir, ignore_errors=True)
    stop = results_dir.resolve()
    parent = out_dir.resolve().parent
    while parent != stop and stop in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    if parent == stop and not any(stop.iterdir()):
        stop.rmdir()
