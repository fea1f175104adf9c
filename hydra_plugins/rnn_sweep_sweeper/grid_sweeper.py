"""`hydra/sweeper=grid`: Hydra's basic grid sweeper, plus what a long sweep needs.

- Every grid point is composed and validated before anything is launched or written: bad input anywhere in the
  grid stops the sweep with one message and no records.
- Grid points whose folder already holds a complete record with the same config signature are not scheduled
  again (a rerun after a kill schedules only what is missing).
- At the end it writes `sweep_summary.json` (complete / diverged / failed / missing per job) and exits non-zero
  if any job failed or left no record.
"""

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.rnn_sweep_sweeper.grid_sweeper.GridSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045 (OmegaConf reads these annotations)
    params: Optional[dict[str, str]] = None  # noqa: UP045


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="rnn-sweep")


class SweepFailed(CompactHydraException):
    pass


@dataclass
class PlannedJob:
    overrides: list[str]
    out_dir: Path
    signature: str


def plan_jobs(sweeper: BasicSweeper, arguments: list[str]) -> list[PlannedJob]:
    """Expand the grid (config params + command line), compose and validate every point."""
    from sweep.config import ConfigError, validate
    from sweep.record import signature
    from sweep.tasks import check_task

    params_conf = sweeper._parse_config()
    params_conf.extend(arguments)
    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    batches = BasicSweeper.split_arguments(parser.parse_overrides(params_conf), None)
    loader = sweeper.hydra_context.config_loader
    jobs: list[PlannedJob] = []
    seen: dict[Path, list[str]] = {}
    for overrides in (list(o) for batch in batches for o in batch):
        job_cfg = loader.load_sweep_config(master_config=sweeper.config, sweep_overrides=overrides)
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
        jobs.append(PlannedJob(overrides, out_dir, signature(job_cfg)))
    return jobs


def summarize(jobs: list[PlannedJob]) -> dict[str, Any]:
    from sweep.record import read_run

    per_job = {}
    for job in jobs:
        rec = read_run(job.out_dir)
        if rec is None:
            status = "missing"
        elif rec.get("signature") != job.signature:
            status = "stale"
        else:
            status = rec.get("status", "missing")
        per_job[str(job.out_dir)] = {"status": status, "overrides": job.overrides}
    counts = Counter(v["status"] for v in per_job.values())
    return {"counts": dict(counts), "jobs": per_job}


class GridSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        from sweep.record import is_done, write_json

        jobs = plan_jobs(self, arguments)
        todo = [job for job in jobs if not is_done(job.out_dir, job.signature)]
        log.info(
            "grid of %d points: %d already complete, %d to run", len(jobs), len(jobs) - len(todo), len(todo)
        )
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns = []
        batch = self.max_batch_size or len(todo) or 1
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            returns.append(self.launcher.launch([j.overrides for j in chunk], initial_job_idx=start))

        summary = summarize(jobs)
        write_json(sweep_dir / "sweep_summary.json", summary)
        counts = summary["counts"]
        log.info("sweep finished: %s", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        bad = {d: v for d, v in summary["jobs"].items() if v["status"] not in ("complete", "diverged")}
        if bad:
            names = "; ".join(f"{Path(d).name} ({v['status']})" for d, v in list(bad.items())[:10])
            raise SweepFailed(
                f"sweep finished with {len(bad)} of {len(jobs)} jobs not complete: {names}"
                f"{' ...' if len(bad) > 10 else ''} (details in {sweep_dir / 'sweep_summary.json'})"
            )
        return returns


assert issubclass(GridSweeper, Sweeper)
