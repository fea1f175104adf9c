"""The grid sweeper's implementation, imported only when a sweep instantiates `hydra/sweeper=grid` (the leading
underscore keeps Hydra's plugin scan from executing it on every start)."""

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from sweep._hydra_api import SweeperBase, prewarm_joblib_workers, release_joblib_workers
from sweep.plan import (
    EXIT_INTERRUPTED,
    TUNE_KEYS,
    WAIT_POLL_S,
    PlannedJob,
    SweepFailed,
    batch_limit,
    launcher_parallelism,
    plan_jobs,
    running_elsewhere,
    summarize,
    write_plan,
)
from sweep.record import DONE_STATUSES, SWEEP_SUMMARY_FILE
from sweep.stop import Stopped, exit_status
from sweep.worker import warm_worker

log = logging.getLogger(__name__)


def _nothing() -> None:
    return None


def _tuner_class(path: str) -> type[Sweeper]:
    """The sweeper class named by `hydra.sweeper.tuner`; one line when it cannot be imported."""
    from hydra.utils import get_class

    from sweep.config import ConfigError

    try:
        cls = get_class(path)
    except Exception as exc:
        raise ConfigError(
            f"invalid sweep: hydra.sweeper.tuner={path!r}: cannot import that sweeper class ({exc.__cause__ or exc})"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Sweeper)):
        raise ConfigError(f"invalid sweep: hydra.sweeper.tuner={path!r}: not a Hydra Sweeper class")
    return cls


class GridSweeperImpl(SweeperBase):
    """The grid sweeper (hydra_plugins/rnn_sweep_sweeper/grid_sweeper.py documents what it does)."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        grids: list[dict[str, Any]] | None = None,
        speed: Any = None,
        lr_search: Any = None,
        tuner: str = "",
        dry_run: bool = False,
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
        self.tuner_class = tuner
        self.dry_run = dry_run
        self.tuner: Sweeper | None = None
        self._leased: set[Path] = set()  # folders of launched jobs that another process held the lease of

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        # a tuned grid: hand the whole sweep to the tuning sweeper (a dry run only lists the grid's points)
        if self.tune.get("search") and not self.dry_run:
            tuner = _tuner_class(self.tuner_class)(max_batch_size=self.max_batch_size, params=self.params, **self.tune)
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
        # the joblib launcher's workers import torch while the grid is planned (sweep/_hydra_api.py)
        warming = None if self.dry_run else prewarm_joblib_workers(self.launcher, warm_worker)
        try:
            t0 = time.perf_counter()
            jobs = plan_jobs(self, arguments)
            log.info("planned %d grid points (composed and validated) in %.1f s", len(jobs), time.perf_counter() - t0)
            if search.get("values"):  # a search seed the grid trains, or a task key no point has: refused here
                _phases.check_search_grid(jobs, search)
            if self.dry_run:
                print(self._dry_run(jobs), flush=True)
                return []
            sweep_dir = Path(self.config.hydra.sweep.dir)
            sweep_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
            if warming is not None:  # before anything is timed or launched: the pool is then reused as it is
                warming.join()
            if speed.get("enabled") or speed.get("only"):  # first: nothing else trains while it times
                _phases.run_speed_phase(jobs, speed, sweep_dir)
                if speed.get("only"):
                    return []
            earlier: dict[str, list[PlannedJob]] = {}
            if search.get("values"):
                chosen = _phases.run_lr_search(self, jobs, search, sweep_dir)
                earlier[_phases.LR_SEARCH_DIR] = chosen["runs"]
                jobs = _phases.with_chosen_lr(jobs, chosen)
            write_plan(sweep_dir, {**earlier, "grid": jobs})
            returns = self.run_jobs(jobs)
        except KeyboardInterrupt:
            self._interrupted(jobs, is_done)
        except Stopped as exc:  # SIGTERM (sweep/stop.py): the launcher forwarded it and its jobs checkpointed
            self._interrupted(jobs, is_done, exit_status(exc.signum))
        finally:
            release_joblib_workers()  # every job is back: no wait at exit for each worker to unload torch

        summary = summarize(jobs)
        write_json(sweep_dir / SWEEP_SUMMARY_FILE, summary)
        counts = summary["counts"]
        log.info("sweep finished: %s", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        ok = (*DONE_STATUSES, "running elsewhere")
        bad = {d: v for d, v in summary["jobs"].items() if v["status"] not in ok}
        if bad:
            names = "; ".join(f"{Path(d).name} ({v['status']})" for d, v in list(bad.items())[:10])
            raise SweepFailed(
                f"sweep finished with {len(bad)} of {len(jobs)} jobs not complete: {names}"
                f"{' ...' if len(bad) > 10 else ''} (details in {sweep_dir / SWEEP_SUMMARY_FILE})"
            )
        return returns

    def parallelism(self) -> int:
        return launcher_parallelism(self.config.hydra.launcher, self.max_batch_size)

    def run_jobs(self, jobs: list[PlannedJob], label: str = "") -> list[Any]:
        """Launch what is not done yet, then wait for the points other processes hold; one progress line as each
        job ends (sweep/status.py's Progress: it watches the records, so it sees every launcher's jobs end)."""
        from sweep.record import is_done
        from sweep.status import Progress

        with Progress(jobs, self.parallelism(), label=label, emit=log.info) as progress:
            returns = self._launch(jobs, is_done, progress.poll)
            returns += self._wait_elsewhere(jobs, is_done, progress.poll)
        return returns

    def _dry_run(self, jobs: list[PlannedJob]) -> str:
        """What the sweep would do, written nowhere: the points (done or to run), the phases before them, and
        jobs x threads."""
        from hydra_plugins.rnn_sweep_sweeper import _phases
        from sweep.cpus import default_threads  # the rule each job applies
        from sweep.record import is_done

        speed, search = self.speed or {}, self.lr_search or {}
        lines = [f"dry run: nothing is written (sweep folder {self.config.hydra.sweep.dir})"]
        if speed.get("enabled") or speed.get("only"):
            n = len(_phases.speed_points(jobs, list(speed.get("tasks") or []), list(speed.get("exclude") or [])))
            rounds, most = int(speed.get("rounds", 0)), int(speed.get("max_rounds", 0))
            lines.append(f"speed phase first: {n} points timed one at a time, {rounds} rounds, more up to {most} "
                         "until batch 4 / batch 1 is decided")  # fmt: skip
        grid_known = True
        if search.get("values") and not speed.get("only"):
            runs, chosen = _phases.plan_lr_search(self, jobs, search)
            done = sum(is_done(j.out_dir, j.signature) for j in runs)
            lines.append(f"lr search first: {len(runs)} runs, {done} already complete, {len(runs) - done} to run")
            if chosen is not None:
                jobs = _phases.with_chosen_lr(jobs, chosen)
            else:
                grid_known = False
                lines.append(
                    "  then each point below runs with its group's chosen lr (its folder is known once chosen)"
                )
        if self.tune.get("search"):
            grid_known = False
            keys = ", ".join(self.tune["search"])
            lines.append(
                f"tuning first: {keys} searched in every cell by {self.tuner_class.rsplit('.', 1)[-1]} "
                f"({self.tune.get('n_trials')} trials x {len(self.tune.get('search_seeds') or [])} search seeds per "
                "cell); then each point below runs with its cell's best value (its folder is known once tuned)"
            )
        done_flags = [grid_known and is_done(j.out_dir, j.signature) for j in jobs]
        shown = _varying(jobs)
        for job, done in zip(jobs, done_flags, strict=True):
            point = " ".join(o for o in job.overrides if o in shown) or "(defaults)"
            lines.append(f"  {'complete' if done else 'to run':<8}  {point}")
        n_done = sum(done_flags)
        parallel = self.parallelism()
        threads = (jobs[0].config.threads if jobs and jobs[0].config is not None else None) or default_threads(parallel)
        launcher = str(self.config.hydra.launcher.get("_target_", "")).rsplit(".", 1)[-1]
        done_text = (
            f"{n_done} already complete, {len(jobs) - n_done} to run"
            if grid_known
            else ("how many are complete is known after the phases above")
        )
        lines.append(f"{len(jobs)} points: {done_text}; {_n(parallel, 'job')} at once x {_n(threads, 'thread')} each "
                     f"({launcher})")  # fmt: skip
        return "\n".join(lines)

    @staticmethod
    def _interrupted(jobs: list[PlannedJob] | None, is_done, status: int = EXIT_INTERRUPTED) -> None:
        """Ctrl-C or SIGTERM: one line, exit 130 (143 for SIGTERM). A running job released its lease on the way out
        (sweep/run.py) and keeps its checkpoint, so rerunning the same command resumes."""
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
        raise SystemExit(status)

    def _wait_elsewhere(self, jobs: list[PlannedJob], is_done, poll: Callable[[], None] = _nothing) -> list[Any]:
        """Points skipped because another process held their lease, or whose job died holding it: wait until each
        has a record; a point whose lease ends with no record (its holder was killed, or stopped by Ctrl-C) is
        launched here again."""
        from sweep.lease import LEASE_FILE
        from sweep.record import read_run

        returns: list[Any] = []
        # a lease left in a folder with no record: its job was killed (here or elsewhere), and once its holder is
        # known to be gone (sweep/lease.py) the point is free at once, so it is run again below
        watch = [j for j in jobs if j.out_dir in self._leased or running_elsewhere(j)
                 or (read_run(j.out_dir) is None and (j.out_dir / LEASE_FILE).exists())]  # fmt: skip
        shown: tuple[str, ...] = ()
        while True:
            watch = [j for j in watch if read_run(j.out_dir) is None]
            if not watch:
                return returns
            free = [j for j in watch if not running_elsewhere(j)]
            if free:
                log.info("%d points running elsewhere stopped without a record: running them here", len(free))
                self._leased = set()
                returns += self._launch(free, is_done, poll)
                watch = [j for j in watch if j not in free or j.out_dir in self._leased]
                continue
            names = tuple(j.out_dir.name for j in watch)
            if names != shown:
                log.info("waiting for %d points running elsewhere: %s", len(watch), ", ".join(names[:5]))
                shown = names
            time.sleep(WAIT_POLL_S)

    def _launch(self, jobs: list[PlannedJob], is_done, poll: Callable[[], None] = _nothing) -> list[Any]:
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
            poll()  # the batch is back: its progress lines now, not at the next look of the watcher
        return returns


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _varying(jobs: list[PlannedJob]) -> set[str]:
    """The override lines that tell the points apart (those of keys whose value differs between points); every
    line when there is a single point."""
    from sweep.plan import override_key

    if len(jobs) < 2:
        return {o for j in jobs for o in j.overrides}
    values: dict[str, set[str]] = {}
    for j in jobs:
        for o in j.overrides:
            values.setdefault(override_key(o), set()).add(o)
    keys = {k for k, v in values.items() if len(v) > 1 or any(k not in map(override_key, j.overrides) for j in jobs)}
    return {o for j in jobs for o in j.overrides if override_key(o) in keys}


def _leased(ret: Any) -> bool:
    """A job return saying the point was left to the process that holds its lease (sweep/run.py)."""
    from hydra.core.utils import JobStatus

    return getattr(ret, "status", None) == JobStatus.COMPLETED and getattr(ret, "_return_value", None) == "leased"
