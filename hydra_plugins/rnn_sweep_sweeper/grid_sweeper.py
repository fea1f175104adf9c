"""`hydra/sweeper=grid`: Hydra's basic grid sweeper, plus what a long sweep needs.

- Every grid point is composed and validated before anything is launched or written: bad input anywhere in the
  grid stops the sweep with one message and no records.
- Grid points whose folder already holds a complete record with the same config signature are not scheduled
  again (a rerun after a kill schedules only what is missing).
- `grids`: a list of sub-grids whose union is swept (each joined with `params` and the command line), so one
  preset can give two tasks different grids.
- `speed`: a speed phase of its own (docs/protocol.md): every distinct (task, cell, batch_size, num_steps) of
  the grid timed one at a time, in interleaved rounds, before anything trains; `speed.parquet` in the sweep
  folder. `speed.only` runs that phase alone (experiment=speed).
- `lr_search`: a short search over `values` of optim.lr, pooled over `seeds`, before the grid; each grid point
  then trains with the lr that gave the lowest mean held-out objective for its group (`lr_search.json`).
- Several sweep processes may share one grid folder (two terminals, two cluster submissions): a job whose point
  another process is training (its live `lease.json`, sweep/lease.py) is skipped, and at the end the sweep waits
  for those points until each has a record or its lease expires (its holder died): then it trains them itself.
- At the end it writes `sweep_summary.json` (complete / diverged / failed / missing per job) and exits
  non-zero if any job failed or left no record.
- Ctrl-C: exit status 130 and one line saying how many points are complete and how many were not started.
"""

import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.rnn_sweep_optuna.settings import TUNE_KEYS, TuneSettings
from sweep.errors import RunFailed

log = logging.getLogger(__name__)


@dataclass
class SpeedPhaseConf:
    """The speed phase (docs/protocol.md): one timed job at a time, interleaved rounds, warm-up excluded."""

    enabled: bool = False
    only: bool = False  # time the grid's points and train nothing (experiment=speed)
    tasks: list[str] = field(default_factory=list)  # time only these tasks' points (empty = every task)
    rounds: int = 5
    min_seconds: float = 0.5  # each timed segment at least this long ...
    min_updates: int = 100  # ... and at least this many updates
    warmup_updates: int = 20
    threads: int = 1  # torch threads of the timed job (recorded with every row)
    device: str = "auto"


@dataclass
class LrSearchConf:
    """A short lr search before the grid: every group of grid points that differ only in the seed (after
    `overrides` are applied) gets the lr in `values` with the lowest held-out `objective`, averaged over
    `seeds` (never chosen per seed: that would select on noise). Search seeds differ from the grid's, so the
    outcomes the report judges were never used to pick the lr."""

    values: list[float] = field(default_factory=list)  # empty = no search
    seeds: list[int] = field(default_factory=lambda: [1000, 1001])
    overrides: list[str] = field(default_factory=list)  # settings of the search runs, e.g. num_steps=16
    objective: str = "valid_loss"  # a summary metric, minimised


@dataclass
class GridSweeperConf(TuneSettings):
    """A grid; with `search` set, a grid x an Optuna search in every grid point (rnn_sweep_optuna)."""

    _target_: str = "hydra_plugins.rnn_sweep_sweeper.grid_sweeper.GridSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045 (OmegaConf reads these annotations)
    params: Optional[dict[str, str]] = None  # noqa: UP045
    grids: Optional[list[dict[str, Any]]] = None  # noqa: UP045  sub-grids, swept as a union
    speed: SpeedPhaseConf = field(default_factory=SpeedPhaseConf)
    lr_search: LrSearchConf = field(default_factory=LrSearchConf)


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="rnn-sweep")


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
    updates = amount if kind == "updates" else amount / (cfg.batch_size * cfg.num_steps)
    return updates * per_update


def grid_points(sweeper: BasicSweeper, arguments: list[str]) -> list[list[str]]:
    """The override lists of every grid point: the union over `grids` (each joined with `params`; the command
    line wins over both), in order, without duplicates."""
    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    params = dict(getattr(sweeper, "params", None) or {})
    points: dict[tuple[str, ...], list[str]] = {}
    for sub in getattr(sweeper, "grids", None) or [{}]:
        conf = [f"{k}={v}" for k, v in {**params, **dict(sub)}.items()] + list(arguments)
        for batch in BasicSweeper.split_arguments(parser.parse_overrides(conf), None):
            for o in batch:
                points.setdefault(tuple(sorted(o)), list(o))
    return list(points.values())


def plan_jobs(sweeper: BasicSweeper, arguments: list[str]) -> list[PlannedJob]:
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


def plan_points(sweeper: BasicSweeper, points: list[list[str]]) -> list[PlannedJob]:
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
    """How many jobs of a sweep run at once on one machine, so that each takes cores // n torch threads.

    joblib: n_jobs (-1 = all cores). submitit_local: every job of a launched batch runs at once, and the
    sweepers cap a batch at `max_batch_size`, or at cores // cpus_per_task (all cores when unset).
    submitit_slurm: each job has its own allocation of cpus_per_task cores. ray: ray.init's num_cpus (all
    cores when unset) // the num_cpus each task asks for in ray.remote (1 when unset).
    """
    cores = os.cpu_count() or 1
    kind = str(launcher_cfg.get("_target_", None) or "").rsplit(".", 1)[-1]
    if "n_jobs" in launcher_cfg:
        n_jobs = launcher_cfg.get("n_jobs")
        n = cores if n_jobs is None or n_jobs < 0 else n_jobs
    elif kind == "LocalLauncher":
        cpus = launcher_cfg.get("cpus_per_task", None)
        n = max_batch_size or (cores // cpus if cpus else cores)
    elif kind == "SlurmLauncher":
        cpus = launcher_cfg.get("cpus_per_task", None)
        n = cores // cpus if cpus else 1
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


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
WAIT_POLL_S = 2.0  # how often the end of a sweep looks at points running elsewhere


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


PLAN_FILE = "sweep_plan.json"


def write_plan(sweep_dir: Path, jobs: list[PlannedJob]) -> None:
    """Every point of the grid (folder, overrides, signature), written before the first job starts, so that a
    reader of a killed or still-running sweep knows what is missing."""
    from sweep.record import write_json

    write_json(sweep_dir / PLAN_FILE, {
        "points": [{"folder": j.out_dir.name, "overrides": j.overrides, "signature": j.signature} for j in jobs],
    })  # fmt: skip


class GridSweeper(BasicSweeper):
    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        grids: list[dict[str, Any]] | None = None,
        speed: Any = None,
        lr_search: Any = None,
        **tune: Any,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        unknown = set(tune) - set(TUNE_KEYS)
        if unknown:
            raise TypeError(f"GridSweeper: unknown settings {sorted(unknown)}")
        self.grids = grids
        self.speed = speed
        self.lr_search = lr_search
        self.tune = tune
        self.tuner: Sweeper | None = None
        self._leased: set[Path] = set()  # folders of launched jobs that another process held the lease of

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        if self.tune.get("search"):  # a tuned grid: hand the whole sweep to the Optuna grid sweeper
            from hydra_plugins.rnn_sweep_optuna.optuna_sweeper import OptunaGridSweeper

            tuner = OptunaGridSweeper(max_batch_size=self.max_batch_size, params=self.params, **self.tune)
            self.tuner = tuner
            self.tuner.setup(hydra_context=hydra_context, task_function=task_function, config=config)
            return
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        from sweep.record import is_done, write_json

        if self.tuner is not None:
            return self.tuner.sweep(arguments)
        from hydra_plugins.rnn_sweep_sweeper import _phases

        speed = self.speed or {}
        search = self.lr_search or {}
        if search.get("values") and any(a.split("=", 1)[0].lstrip("+~") == "optim.lr" for a in arguments):
            from sweep.config import ConfigError

            raise ConfigError(
                "invalid sweep: optim.lr is chosen by hydra.sweeper.lr_search; set hydra.sweeper.lr_search.values=[] "
                "to give optim.lr yourself"
            )
        if search.get("values"):
            _phases.check_search(search)
        jobs: list[PlannedJob] | None = None
        try:
            t0 = time.perf_counter()
            jobs = plan_jobs(self, arguments)
            log.info("planned %d grid points (composed and validated) in %.1f s", len(jobs), time.perf_counter() - t0)
            sweep_dir = Path(self.config.hydra.sweep.dir)
            sweep_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
            if speed.get("enabled") or speed.get("only"):  # first: nothing else trains while it times
                _phases.run_speed_phase(jobs, speed, sweep_dir)
                if speed.get("only"):
                    return []
            if search.get("values"):
                chosen = _phases.run_lr_search(self, jobs, search, sweep_dir)
                jobs = _phases.with_chosen_lr(jobs, chosen)
            write_plan(sweep_dir, jobs)
            returns = self._launch(jobs, is_done)
            returns += self._wait_elsewhere(jobs, is_done)
        except KeyboardInterrupt:
            self._interrupted(jobs, is_done)

        summary = summarize(jobs)
        write_json(sweep_dir / "sweep_summary.json", summary)
        counts = summary["counts"]
        log.info("sweep finished: %s", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        ok = ("complete", "diverged", "running elsewhere")
        bad = {d: v for d, v in summary["jobs"].items() if v["status"] not in ok}
        if bad:
            names = "; ".join(f"{Path(d).name} ({v['status']})" for d, v in list(bad.items())[:10])
            raise SweepFailed(
                f"sweep finished with {len(bad)} of {len(jobs)} jobs not complete: {names}"
                f"{' ...' if len(bad) > 10 else ''} (details in {sweep_dir / 'sweep_summary.json'})"
            )
        return returns

    @staticmethod
    def _interrupted(jobs: list[PlannedJob] | None, is_done) -> None:
        """Ctrl-C: one line, exit 130. A running job released its lease on the way out (sweep/run.py) and keeps
        its checkpoint, so rerunning the same command resumes."""
        if jobs is None:
            line = "interrupted while planning the grid (rerun the same command to resume)"
        else:
            done = sum(is_done(j.out_dir, j.signature) for j in jobs)
            not_started = sum(not j.out_dir.exists() for j in jobs)
            line = (
                f"interrupted: {done} of {len(jobs)} points complete, {not_started} not started "
                "(rerun the same command to resume)"
            )
        sys.stderr.write(line + os.linesep)
        sys.stderr.flush()
        raise SystemExit(EXIT_INTERRUPTED)

    def _wait_elsewhere(self, jobs: list[PlannedJob], is_done) -> list[Any]:
        """Points skipped because another process held their lease: wait until each has a record; a point whose
        lease ends with no record (its holder was killed, or stopped by Ctrl-C) is launched here again."""
        from sweep.record import read_run

        returns: list[Any] = []
        watch = [j for j in jobs if j.out_dir in self._leased or running_elsewhere(j)]
        shown: tuple[str, ...] = ()
        while True:
            watch = [j for j in watch if read_run(j.out_dir) is None]
            if not watch:
                return returns
            free = [j for j in watch if not running_elsewhere(j)]
            if free:
                log.info("%d points running elsewhere stopped without a record: running them here", len(free))
                self._leased = set()
                returns += self._launch(free, is_done)
                watch = [j for j in watch if j not in free or j.out_dir in self._leased]
                continue
            names = tuple(j.out_dir.name for j in watch)
            if names != shown:
                log.info("waiting for %d points running elsewhere: %s", len(watch), ", ".join(names[:5]))
                shown = names
            time.sleep(WAIT_POLL_S)

    def _launch(self, jobs: list[PlannedJob], is_done) -> list[Any]:
        """Launch the jobs that have no whole record yet, longest first, in batches the launcher can take."""
        todo = [job for job in jobs if not is_done(job.out_dir, job.signature)]
        todo.sort(key=lambda job: -job.cost)  # longest first: the workers then run out of work together
        log.info("grid of %d points: %d already complete, %d to run", len(jobs), len(jobs) - len(todo), len(todo))
        returns = []
        batch = batch_limit(self.config.hydra.launcher, self.max_batch_size) or len(todo) or 1
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            try:
                rets = self.launcher.launch([j.overrides for j in chunk], initial_job_idx=start)
                returns.append(rets)
                self._leased |= {j.out_dir for j, r in zip(chunk, rets, strict=False) if _leased(r)}
            except Exception as exc:  # a lost worker (killed, out of memory): its jobs show up as missing
                log.error("launcher error (%s: %s): see the summary for missing jobs", type(exc).__name__, exc)
        return returns


def _leased(ret: Any) -> bool:
    """A job return saying the point was left to the process that holds its lease (sweep/run.py)."""
    from hydra.core.utils import JobStatus

    return getattr(ret, "status", None) == JobStatus.COMPLETED and getattr(ret, "_return_value", None) == "leased"


assert issubclass(GridSweeper, Sweeper)
