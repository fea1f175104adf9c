"""Planning a sweep, shared by the grid sweeper and the Optuna grid sweeper (hydra_plugins/): expand the grid,
compose and validate every point before anything runs, name each point's folder and signature, order the work,
size batches for the launcher, and summarize what the records say. Both plugins import it from here and never
from each other (docs/scale-out.md).

Light on purpose (Hydra, OmegaConf; sweep modules imported inside the functions that need them): Hydra's plugin
scan imports the plugins' registered modules on every start, and the sweep's parent process never trains.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from sweep._hydra_api import SweeperBase, split_arguments
from sweep.cpus import usable_cpus
from sweep.errors import RunFailed
from sweep.record import SWEEP_PLAN_FILE, SWEEP_SUMMARY_FILE

log = logging.getLogger(__name__)

PLAN_FILE = SWEEP_PLAN_FILE
SUMMARY_FILE = SWEEP_SUMMARY_FILE
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
WAIT_POLL_S = 2.0  # how often the end of a sweep looks at points running elsewhere


# ------------------------------------------------------------------------------------------- tuning settings
# Both `hydra/sweeper=grid` and `hydra/sweeper=optuna_grid` carry them, so an experiment preset turns a grid into
# a tuned grid by setting `hydra.sweeper.search` alone (a preset cannot replace the sweeper that the primary
# config picks: Hydra keeps the first `override hydra/sweeper` it meets). With `search` empty they are unused.
@dataclass
class TuneSettings:
    # OmegaConf reads these annotations: Optional[...] rather than `X | None`
    search: dict[str, str] = field(default_factory=dict)  # Optuna search per grid cell; empty = plain grid
    # every trial runs once per search seed and is judged on the mean; the grid's own seeds are kept for the test
    # phase, so the outcomes the report judges were never used to pick the lr (docs/scale-out.md)
    search_seeds: list[int] = field(default_factory=lambda: [1000, 1001])
    n_trials: int = 10  # finished trials per cell (complete, or stopped by the pruner), over reruns and processes
    max_failed_trials: Optional[int] = None  # noqa: UP045  per cell, diverged + failed runs; null = n_trials
    objective: str = "valid_loss"  # a summary metric of the run record (dotted path: lag_accuracy.8)
    direction: str = "minimize"  # minimize | maximize
    storage: Optional[str] = None  # noqa: UP045  null = sqlite:///<sweep dir>/optuna.db
    study_prefix: Optional[str] = None  # noqa: UP045  null = the config's `name`
    sampler: Any = "tpe"  # a short name (tpe, random, qmc, gp, cmaes, ...), a class path, or {_target_: ...}
    pruner: Any = None  # null | none | median | hyperband | {_target_: ...}: stops trial runs at evaluations
    sampler_seed: Optional[int] = None  # noqa: UP045  null = fresh randomness (right for several processes)
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    parallel_per_cell: int = 1  # trials asked at once in each cell (a batch is this x the open cells)
    heartbeat_s: float = 30.0  # a running trial's owner refreshes its heartbeat this often ...
    stale_after_s: float = 300.0  # ... and other machines take it for dead after this long without one
    poll_s: float = 5.0  # wait between looks while other processes run a cell's last trials


TUNE_KEYS = tuple(TuneSettings.__dataclass_fields__)


# ------------------------------------------------------------------------------------------------- planning
class SweepFailed(RunFailed):
    """Some jobs failed or left no record: exit 1 with one line (sweep/errors.py), not a usage error."""


@dataclass
class PlannedJob:
    overrides: list[str]
    out_dir: Path
    signature: str
    cost: float = 1.0  # relative expected run time, for scheduling only
    config: DictConfig | None = None  # the composed job config (the phases read it)


def expected_cost(cfg: DictConfig) -> float:
    """A rough relative run time: updates x a per-update cost that grows with num_steps and, sublinearly on a CPU,
    with batch_size. Only used to start long jobs first, so that a sweep does not end on one straggler."""
    per_update = cfg.num_steps * (1.0 + cfg.batch_size / 8.0) * (1.0 if cfg.model.cell == "rnn" else 2.0)
    kind, amount = cfg.budget.kind, float(cfg.budget.amount)
    if kind == "seconds":
        return amount
    if kind == "plateau":  # stops before its cap, sooner at a larger batch (fewer updates to a result)
        updates = amount * 4.0 / (4.0 + cfg.batch_size)
    else:
        updates = amount if kind == "updates" else amount / (cfg.batch_size * cfg.num_steps)
    return updates * per_update


def grid_points(sweeper: SweeperBase, arguments: list[str]) -> list[list[str]]:
    """The override lists of every grid point: the union over `grids` (each joined with `params`; the command
    line wins over both), in order, without duplicates."""
    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    params = dict(getattr(sweeper, "params", None) or {})
    points: dict[tuple[str, ...], list[str]] = {}
    for sub in getattr(sweeper, "grids", None) or [{}]:
        conf = [f"{k}={v}" for k, v in {**params, **dict(sub)}.items()] + list(arguments)
        for batch in split_arguments(parser.parse_overrides(conf), None):
            for o in batch:
                points.setdefault(tuple(sorted(o)), list(o))
    return list(points.values())


def plan_jobs(sweeper: SweeperBase, arguments: list[str]) -> list[PlannedJob]:
    """Expand the grid (config params + command line), compose and validate every point."""
    return plan_points(sweeper, grid_points(sweeper, arguments))


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def override_dirname(overrides: list[str], exclude_keys: list[str], item_sep: str = ",", kv_sep: str = "=") -> str:
    """Hydra's `hydra.job.override_dirname` of a list of overrides: the lines whose key is not excluded, sorted,
    joined. Hydra computes it when it composes a job config; recomputing it lets the planner derive a point's
    config from a composed sibling instead of composing each of hundreds of points (~0.09 s each).
    tests/test_protocol.py checks it against Hydra's own, so a change upstream fails there first."""
    lines = sorted(o for o in overrides if override_key(o) not in set(exclude_keys))
    return item_sep.join(lines).replace("=", kv_sep)


def with_values(job_cfg: DictConfig, overrides: list[str], values: dict[str, Any]) -> DictConfig:
    """A copy of a composed job config with plain (non-group, non-interpolated) keys set to `values` and its
    override list replaced by `overrides`: what composing `overrides` would give when they differ from the
    sibling's only in those keys."""
    import copy

    from omegaconf import open_dict

    cfg = copy.deepcopy(job_cfg)
    od = cfg.hydra.job.config.override_dirname
    with open_dict(cfg):
        for key, value in values.items():
            OmegaConf.update(cfg, key, value, merge=False)
        cfg.hydra.job.override_dirname = override_dirname(overrides, list(od.exclude_keys), od.item_sep, od.kv_sep)
        cfg.hydra.overrides.task = list(overrides)
    return cfg


def _plain_int(overrides: list[str], key: str) -> int | None:
    """The value of `key=<int>` when it is given exactly once, as a plain integer; else None."""
    found = [o for o in overrides if override_key(o) == key]
    if len(found) != 1 or found[0].startswith(("+", "~")):
        return None
    text = found[0].split("=", 1)[1]
    return int(text) if text.lstrip("-").isdigit() else None


def plan_points(sweeper: SweeperBase, points: list[list[str]]) -> list[PlannedJob]:
    """Compose and validate every point; bad input anywhere stops the sweep before anything is written.

    Points that differ only in `seed=<int>` share one composition: the seed is a plain key that no config
    group or interpolation reads, so the sibling's config with the seed set is the composed config (a test
    compares the two), and a 5-seed grid composes a fifth of its points."""
    from sweep.config import ConfigError, validate
    from sweep.corpus import check_task
    from sweep.record import signature

    loader = sweeper.hydra_context.config_loader
    jobs: list[PlannedJob] = []
    seen: dict[Path, list[str]] = {}
    composed: dict[tuple[str, ...], DictConfig] = {}
    for overrides in points:
        seed = _plain_int(overrides, "seed")
        seedless = tuple(sorted(o for o in overrides if override_key(o) != "seed"))
        if seed is not None and seedless in composed:
            job_cfg = with_values(composed[seedless], overrides, {"seed": seed})
        else:
            job_cfg = loader.load_sweep_config(master_config=sweeper.config, sweep_overrides=overrides)
            if seed is not None:
                composed[seedless] = job_cfg
        try:
            validate(job_cfg)
            check_task(job_cfg)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (grid point: {' '.join(overrides) or 'defaults'})") from None
        out_dir = Path(job_cfg.hydra.sweep.dir) / str(job_cfg.hydra.sweep.subdir)
        if out_dir in seen:
            raise ConfigError(
                f"invalid sweep: grid points {seen[out_dir]} and {overrides} would share the folder {out_dir}"
            )
        seen[out_dir] = overrides
        jobs.append(PlannedJob(overrides, out_dir, signature(job_cfg), expected_cost(job_cfg), job_cfg))
    return jobs


def launcher_parallelism(launcher_cfg: Any, max_batch_size: int | None = None) -> int:
    """How many jobs of a sweep run at once on one machine, so that each takes cores // n torch threads (cores:
    the CPUs this process may use, sweep/cpus.py).

    joblib: n_jobs (-1 = all cores). submitit_local: every job of a launched batch runs at once, and the
    sweepers cap a batch at `max_batch_size`, or at cores // cpus_per_task (all cores when unset).
    submitit_slurm: 1, each job runs alone in its own allocation (cpus_per_task cores, which the job's
    usable CPUs already are). ray: ray.init's num_cpus (all cores when unset) // the num_cpus each task asks
    for in ray.remote (1 when unset).
    """
    cores = usable_cpus()
    kind = str(launcher_cfg.get("_target_", None) or "").rsplit(".", 1)[-1]
    if "n_jobs" in launcher_cfg:
        n_jobs = launcher_cfg.get("n_jobs")
        n = cores if n_jobs is None or n_jobs < 0 else n_jobs
    elif kind == "LocalLauncher":
        cpus = launcher_cfg.get("cpus_per_task", None)
        n = max_batch_size or (cores // cpus if cpus else cores)
    elif kind == "RayLauncher":
        ray = launcher_cfg.get("ray", None) or {}
        total = (ray.get("init", None) or {}).get("num_cpus", None) or cores
        per = (ray.get("remote", None) or {}).get("num_cpus", None) or 1
        n = int(total // per)
    else:
        n = 1
    return max(1, int(n))


def batch_limit(launcher_cfg: Any, max_batch_size: int | None) -> int | None:
    """The most jobs to hand the launcher at once: `max_batch_size`; else, for a launcher that starts every
    job it is given at once on this machine (submitit_local), as many as the cores take; else no limit."""
    if max_batch_size:
        return int(max_batch_size)
    if str(launcher_cfg.get("_target_", None) or "").endswith("submitit_launcher.LocalLauncher"):
        return launcher_parallelism(launcher_cfg)
    return None


def _ttl(job: PlannedJob) -> float:
    return float(OmegaConf.select(job.config, "lease.ttl_s", default=120.0)) if job.config is not None else 120.0


def running_elsewhere(job: PlannedJob) -> str | None:
    """The owner of the live lease on a point that has no record yet, else None."""
    from sweep.lease import live_holder
    from sweep.record import read_run

    if read_run(job.out_dir) is not None:
        return None
    return live_holder(job.out_dir, _ttl(job))


def summarize(jobs: list[PlannedJob]) -> dict[str, Any]:
    from sweep.record import read_run

    per_job = {}
    for job in jobs:
        rec = read_run(job.out_dir)
        if rec is None:
            status = "running elsewhere" if running_elsewhere(job) else "missing"
        elif rec.get("signature") != job.signature:
            status = "stale"
        else:
            status = rec.get("status", "missing")
        per_job[str(job.out_dir)] = {"status": status, "overrides": job.overrides}
    counts = Counter(v["status"] for v in per_job.values())
    return {"counts": dict(counts), "jobs": per_job}


def write_plan(
    sweep_dir: Path, jobs: list[PlannedJob] | dict[str, list[PlannedJob]], pending: dict[str, Any] | None = None
) -> None:
    """Every point of the sweep (folder relative to `sweep_dir`, overrides, signature, phase, expected cost, lease
    ttl), written before the first job starts, so that a reader of a killed or still-running sweep
    (`python -m sweep.status`, analysis) knows what is missing. `jobs`: the grid's points, or phase -> points
    (lr_search, grid); `pending`: phases whose points are not known yet (the grid, while the lr search runs)."""
    from sweep.record import write_json

    phases = {"grid": jobs} if isinstance(jobs, list) else jobs
    points = [
        {
            "folder": _rel(j.out_dir, sweep_dir),
            "overrides": j.overrides,
            "signature": j.signature,
            "phase": phase,
            "cost": j.cost,
            "ttl_s": _ttl(j),
        }
        for phase, js in phases.items()
        for j in js
    ]
    write_json(sweep_dir / PLAN_FILE, {"points": points, **({"pending": pending} if pending else {})})


def _rel(folder: Path, sweep_dir: Path) -> str:
    return str(folder.relative_to(sweep_dir)) if folder.is_relative_to(sweep_dir) else str(folder)
