"""The Optuna grid sweeper's implementation, imported only when a sweep instantiates it (optuna_sweeper.py is the
registered shim that Hydra's plugin scan executes on every start; `_` modules are skipped by the scan).

The sweep: check the settings and every grid point, group the points into cells (one study each), then loop:
ask each open cell for trials, hand their runs to the launcher in batches, settle each trial once its runs are
back; then run each tuned cell's best parameters on the grid's own seeds (the test phase) and write the results.
The pieces live in the modules named below; this one only orders them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import optuna
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution

from hydra_plugins.rnn_sweep_optuna import _cells, _checks, _owners, _results, _samplers, _trials
from hydra_plugins.rnn_sweep_optuna import _outcomes as oc
from hydra_plugins.rnn_sweep_optuna import _search_space as ss
from sweep._hydra_api import SweeperBase
from sweep.optuna_setup import absolute_url, default_storage_url, open_storage, plain_spec, public_url
from sweep.plan import PlannedJob, TuneSettings, batch_limit, override_key, plan_jobs, plan_points
from sweep.record import MULTIRUN_FILE, is_done

log = logging.getLogger(__name__)


class OptunaGridSweeperImpl(SweeperBase):
    def __init__(self, max_batch_size: int | None, params: dict[str, str] | None, settings: TuneSettings) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.s = settings
        self.job_idx = 0
        self.launched: list[_trials.TrialJob] = []

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        # The settings as written, not as Hydra instantiated them: a sweeper config without `_recursive_: false`
        # hands `{_target_: ...}` values over as built objects, and the trial runs need the setting itself
        # (to build the same pruner) and each study its own sampler seed.
        for key in ("sampler", "pruner"):
            node = OmegaConf.select(config, f"hydra.sweeper.{key}", default=None)
            setattr(self.s, key, plain_spec(node))

    @property
    def max_failed(self) -> int:
        return self.s.n_trials if self.s.max_failed_trials is None else self.s.max_failed_trials

    @property
    def hidden(self) -> set[str]:
        """Override keys that do not name folders (results_dir, name, experiment, ...)."""
        return set(self.config.hydra.job.config.override_dirname.exclude_keys)

    # ----------------------------------------------------------------------------------------------- sweep
    def sweep(self, arguments: list[str]) -> Any:
        s, loader = self.s, self.hydra_context.config_loader
        space = _checks.check_settings(s)
        points = plan_jobs(self, arguments)
        _checks.check_cells(points, space, s, loader, self.config)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / MULTIRUN_FILE)
        url = absolute_url(s.storage or default_storage_url(sweep_dir))
        storage = optuna.storages.get_storage(open_storage(url))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        prefix = s.study_prefix or str(self.config.name)
        cells = [
            _cells.open_cell(storage, cell, members, space, s, prefix)
            for cell, members in _cells.group(points, loader, self.config)
        ]
        log.info(
            "%d grid cells x %d trials x %d search seeds (search: %s; objective: mean %s, %s; sampler %s, pruner %s); "
            "then %d test runs on the grid's seeds; storage %s",
            len(cells),
            s.n_trials,
            len(s.search_seeds),
            ", ".join(f"{k}={v}" for k, v in s.search.items()),
            s.objective,
            s.direction,
            _samplers.describe(s.sampler),
            s.pruner,
            len(points),
            public_url(url),
        )
        heartbeat = _owners.Heartbeat(storage, s.heartbeat_s)
        heartbeat.start()
        try:
            self._loop(cells, space, url, heartbeat)
        finally:
            heartbeat.stopped.set()
            for tj in self.launched:  # interrupted: settle what ran from its records, fail the rest
                if not tj.settled:
                    try:
                        _trials.settle(tj, s.objective, list(s.search_seeds))
                    except Exception as exc:
                        log.debug("could not settle trial %d: %s", tj.number, exc)
        tested = self._test_phase(cells, space)
        trial_runs = [PlannedJob(r.overrides, r.out_dir, r.signature) for tj in self.launched for r in tj.runs]
        _results.finish(cells, tested, trial_runs, s, url, _samplers.describe(s.sampler), self.hidden, sweep_dir)
        return []

    def _loop(self, cells: list[_cells.Cell], space: dict[str, Any], url: str, heartbeat: _owners.Heartbeat) -> None:
        s = self.s
        while True:
            batch: list[_trials.TrialJob] = []
            waiting = False
            for cell in cells:
                if not cell.open:
                    continue
                need, wait = self._needed(cell)
                waiting |= wait
                if need <= 0:
                    continue
                asked = [
                    _trials.ask(cell, space, list(s.search_seeds), url, self.hydra_context.config_loader, self.config)
                    for _ in range(min(need, s.parallel_per_cell))
                ]
                kept = _trials.drop_surplus(cell, asked, s.n_trials)
                if len(kept) < len(asked):  # another process took the last slots: wait for its trials
                    waiting = True
                batch.extend(kept)
            if batch:
                self._run(batch, heartbeat)
            elif waiting:
                time.sleep(s.poll_s)
            else:
                return

    def _needed(self, cell: _cells.Cell) -> tuple[int, bool]:
        """(trials to ask now, whether to wait for trials running elsewhere); closes a cell that is done."""
        s = self.s
        trials = cell.study.get_trials(deepcopy=False)
        stale = [t for t in trials if _owners.is_stale(t, s.stale_after_s)]
        if stale:
            _trials.recover(cell, stale, s.objective, Path(self.config.hydra.sweep.dir))
            trials = cell.study.get_trials(deepcopy=False)
        c = oc.counts(trials)
        if c["finished"] >= s.n_trials:
            cell.open = False
            return 0, False
        if c["bad"] >= self.max_failed:
            cell.open, cell.exhausted = False, True
            log.warning("%s: %d trials diverged or failed: giving up with %d of %d finished", cell.name, c["bad"],
                        c["finished"], s.n_trials)  # fmt: skip
            return 0, False
        need = s.n_trials - c["finished"] - c["running"]
        return need, need <= 0  # nothing to ask: the missing trials are running in another process

    def _run(self, batch: list[_trials.TrialJob], heartbeat: _owners.Heartbeat) -> None:
        """Launch every run of the batch's trials; a trial is told once all its runs are back."""
        runs = [(tj, run) for tj in batch for run in tj.runs]
        # longest first: the workers then run out of work together. The sort is stable, so each trial's first
        # search seed (the run that reports to the pruner) starts before its others.
        runs.sort(key=lambda pair: -pair[0].cell.job.cost)
        limit = batch_limit(self.config.hydra.launcher, self.max_batch_size) or len(runs)
        heartbeat.add([tj.trial_id for tj in batch])
        self.launched.extend(batch)
        for start in range(0, len(runs), limit):
            chunk = runs[start : start + limit]
            try:
                self.launcher.launch([run.overrides for _, run in chunk], initial_job_idx=self.job_idx)
            except Exception as exc:  # a launcher that lost a worker: the records say which runs are missing
                log.error("launcher error (%s: %s); settling the batch from its records", type(exc).__name__, exc)
            self.job_idx += len(chunk)
            for _, run in chunk:
                run.launched = True
            for tj in batch:
                if not tj.settled and all(run.launched for run in tj.runs):
                    _trials.settle(tj, self.s.objective, list(self.s.search_seeds))
                    heartbeat.discard(tj.trial_id)

    # ----------------------------------------------------------------------------------------------- test phase
    def _test_phase(self, cells: list[_cells.Cell], space: dict[str, Any]) -> dict[str, list[PlannedJob]]:
        """Run each tuned cell's best parameters on the grid's own seeds, as ordinary grid runs in the grid
        points' folders (optim.lr_protocol=tuned): the records the report judges. Complete test runs are not
        run again."""
        fixed = {k: v for k, v in space.items() if not isinstance(v, BaseDistribution)}
        plan: list[tuple[str, list[str]]] = []
        for cell in cells:
            if not _results.tuned(cell, self.s):
                continue
            best = _results.best_trial(cell, self.s.direction)
            assert best is not None
            params = {**best.params, **fixed}
            for p in cell.points:
                base = [
                    o for o in p.overrides if override_key(o) not in params and override_key(o) != "optim.lr_protocol"
                ]
                plan.append((cell.name, [
                    *base,
                    *(f"{k}={ss.format_value(v)}" for k, v in params.items()),
                    f"optim.lr_protocol={_results.TUNED}",
                    # the grid point's own folder: a searched value is not part of a grid point's name
                    f"hydra.sweep.subdir={ss.quote(p.out_dir.name)}",
                ]))  # fmt: skip
        if not plan:
            return {}
        jobs = plan_points(self, [overrides for _, overrides in plan])
        by_cell: dict[str, list[PlannedJob]] = {}
        for (name, _), job in zip(plan, jobs, strict=True):
            by_cell.setdefault(name, []).append(job)
        todo = sorted((j for j in jobs if not is_done(j.out_dir, j.signature)), key=lambda j: -j.cost)
        log.info("test phase: %d runs at each cell's tuned parameters on the grid's seeds: %d already complete, "
                 "%d to run", len(jobs), len(jobs) - len(todo), len(todo))  # fmt: skip
        limit = batch_limit(self.config.hydra.launcher, self.max_batch_size) or len(todo) or 1
        for start in range(0, len(todo), limit):
            chunk = todo[start : start + limit]
            try:
                self.launcher.launch([j.overrides for j in chunk], initial_job_idx=self.job_idx)
            except Exception as exc:  # a lost worker (killed, out of memory): its runs show up as missing
                log.error("launcher error (%s: %s): see the summary for missing runs", type(exc).__name__, exc)
            self.job_idx += len(chunk)
        return by_cell
