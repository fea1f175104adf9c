"""`hydra/sweeper=optuna_grid`: a grid over scientific parameters x an Optuna search over nuisance parameters.

    hydra:
      sweeper:
        params:               # the grid, as for hydra/sweeper=grid (command-line sweeps join it)
          model: rnn,gru,lstm
          batch_size: 1,4,16,64
        search:               # searched by Optuna in every grid cell (search_space.py lists the syntax)
          optim.lr: tag(log, interval(1e-4, 1e-1))
        n_trials: 3           # COMPLETE trials per cell, in total over reruns and sweep processes
        objective: valid_loss # any summary metric of the run record (dotted path: lag_accuracy.8)
        direction: minimize

One Optuna study per grid cell, named `<study_prefix>:<cell folder>:<hash of the cell's config and search>`,
in `storage` (default: sqlite:///<sweep dir>/optuna.db; any SQLAlchemy URL such as postgresql://...; or
journal:<file>). The sweep process asks trials (ask-and-tell), hands them to the configured Hydra launcher
in batches, reads each trial's run record and tells Optuna its objective; diverged runs are told PRUNED and
failed ones FAIL, never as objective values. Each trial is a normal run record in `<cell folder>,trial=<n>`,
whose config carries `study` and `trial`. Rerunning the command continues every study until it holds
`n_trials` COMPLETE trials; several processes (on several machines, with a shared storage) can work on the
same studies at once.

At the end the sweep writes `best_trials.json` (the best trial of each cell: the "tuned lr" protocol) and
`sweep_summary.json` in the sweep folder, and exits non-zero when a trial run failed or a cell ran out of
tries.
"""

import contextlib
import hashlib
import json
import logging
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import optuna
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hydra_plugins.rnn_sweep_optuna import search_space as ss
from hydra_plugins.rnn_sweep_optuna import studies as st
from hydra_plugins.rnn_sweep_optuna.settings import TuneSettings
from hydra_plugins.rnn_sweep_sweeper.grid_sweeper import (
    PlannedJob,
    SweepFailed,
    batch_limit,
    plan_jobs,
    summarize,
)

log = logging.getLogger(__name__)

BEST_FILE = "best_trials.json"
SAMPLERS = ("tpe", "random", "qmc", "gp")


@dataclass
class OptunaGridSweeperConf(TuneSettings):
    _target_: str = "hydra_plugins.rnn_sweep_optuna.optuna_sweeper.OptunaGridSweeper"
    params: Optional[dict[str, str]] = None  # noqa: UP045  the grid (scientific parameters)
    max_batch_size: Optional[int] = None  # noqa: UP045  most trials handed to the launcher at once


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna_grid", node=OptunaGridSweeperConf, provider="rnn-sweep"
)


@dataclass
class Cell:
    job: PlannedJob  # the grid point (its out_dir names the cell; no run is written there)
    study: optuna.Study
    name: str
    open: bool = True
    exhausted: bool = False


@dataclass
class TrialJob:
    cell: Cell
    number: int
    trial_id: int
    params: dict[str, Any]
    overrides: list[str]
    out_dir: Path
    signature: str
    settled: bool = False
    state: str = "running"


class _Heartbeat(threading.Thread):
    """Refreshes the heartbeat of this process's unsettled trials (how other machines see it is alive)."""

    def __init__(self, storage: optuna.storages.BaseStorage, interval_s: float) -> None:
        super().__init__(name="optuna-heartbeat", daemon=True)
        self.storage, self.interval_s = storage, max(1.0, interval_s)
        self.trial_ids: set[int] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            with self.lock:
                ids = list(self.trial_ids)
            for trial_id in ids:
                # finished meanwhile, or a transient storage error: the next beat retries
                with contextlib.suppress(Exception):
                    st.beat(self.storage, trial_id)


class OptunaGridSweeper(BasicSweeper):
    def __init__(
        self,
        params: dict[str, str] | None = None,
        search: dict[str, str] | None = None,
        n_trials: int = 10,
        max_failed_trials: int | None = None,
        objective: str = "valid_loss",
        direction: str = "minimize",
        storage: str | None = None,
        study_prefix: str | None = None,
        sampler: str = "tpe",
        sampler_seed: int | None = None,
        sampler_kwargs: dict[str, Any] | None = None,
        parallel_per_cell: int = 1,
        max_batch_size: int | None = None,
        heartbeat_s: float = 30.0,
        stale_after_s: float = 300.0,
        poll_s: float = 5.0,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.search = {str(k): v for k, v in (search or {}).items()}
        self.n_trials = n_trials
        self.max_failed_trials = n_trials if max_failed_trials is None else max_failed_trials
        self.objective = objective
        self.direction = direction
        self.storage_url = storage
        self.study_prefix = study_prefix
        self.sampler_name = sampler
        self.sampler_seed = sampler_seed
        self.sampler_kwargs = dict(sampler_kwargs or {})
        self.parallel_per_cell = parallel_per_cell
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.poll_s = poll_s
        self.job_idx = 0
        self.launched: list[TrialJob] = []

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    # ----------------------------------------------------------------------------------------------- checks
    def _check_settings(self) -> dict[str, Any]:
        from sweep.config import ConfigError

        def need(ok: bool, key: str, allowed: str, value: Any) -> None:
            if not ok:
                raise ConfigError(f"invalid sweep: hydra.sweeper.{key}={value!r}: {allowed}")

        need(
            isinstance(self.n_trials, int) and self.n_trials > 0,
            "n_trials",
            "must be a positive integer",
            self.n_trials,
        )
        need(self.max_failed_trials >= 0, "max_failed_trials", "must be >= 0", self.max_failed_trials)
        need(
            self.direction in ("minimize", "maximize"),
            "direction",
            "must be minimize or maximize",
            self.direction,
        )
        need(
            self.sampler_name in SAMPLERS,
            "sampler",
            f"must be one of {', '.join(SAMPLERS)}",
            self.sampler_name,
        )
        need(
            self.parallel_per_cell > 0,
            "parallel_per_cell",
            "must be a positive integer",
            self.parallel_per_cell,
        )
        need(bool(self.objective), "objective", "must name a summary metric (e.g. valid_loss)", self.objective)
        space = ss.parse_search_space(self.search)
        need(
            any(isinstance(d, BaseDistribution) for d in space.values()),
            "search",
            "must search at least one parameter, e.g. {optim.lr: 'tag(log, interval(1e-4, 1e-1))'}",
            self.search,
        )
        return space

    def _check_cells(self, cells: list[PlannedJob], space: dict[str, Any]) -> None:
        """Search keys must not be grid keys, and both ends of every range must make a valid config."""
        from sweep.config import ConfigError, validate

        for cell in cells:
            keys = {o.split("=", 1)[0].lstrip("+~") for o in cell.overrides}
            both = sorted(keys & set(space))
            if both:
                raise ConfigError(
                    f"invalid sweep: {', '.join(both)} is both swept/overridden on the command line or in "
                    "hydra.sweeper.params and searched in hydra.sweeper.search: keep it in one of them"
                )
        loader = self.hydra_context.config_loader
        for key, dist in space.items():
            for value in ss.extremes(dist):
                overrides = [*cells[0].overrides, f"{key}={ss.format_value(value)}"]
                try:
                    validate(loader.load_sweep_config(master_config=self.config, sweep_overrides=overrides))
                except ConfigError as exc:
                    raise ConfigError(f"invalid search space: {key}={self.search[key]}: {exc}") from None
                except Exception as exc:
                    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    raise ConfigError(f"invalid search space: {key}={self.search[key]}: {first}") from None

    # ----------------------------------------------------------------------------------------------- studies
    def _cell_hash(self, cell: PlannedJob, space: dict[str, Any]) -> str:
        from sweep.record import _NOT_IN_SIGNATURE, resolved_config

        job_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(cell.overrides))
        conf = resolved_config(job_cfg)
        for key in (*_NOT_IN_SIGNATURE, "study", "trial"):
            conf.pop(key, None)
        for key in space:  # the searched values differ from trial to trial, not from cell to cell
            *parents, leaf = key.split(".")
            holder: Any = conf
            for part in parents:
                holder = holder.get(part) if isinstance(holder, dict) else None
            if isinstance(holder, dict):
                holder.pop(leaf, None)
        blob = {
            "config": conf,
            "search": ss.describe(self.search),
            "objective": self.objective,
            "direction": self.direction,
        }
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:8]

    def _make_sampler(self, digest: str, n_existing: int) -> optuna.samplers.BaseSampler:
        seed = None
        if self.sampler_seed is not None:
            # qmc continues one scrambled sequence per study; the others must not redraw the same points
            offset = 0 if self.sampler_name == "qmc" else n_existing
            seed = (self.sampler_seed * 1_000_003 + int(digest, 16) + offset) % 2**31
        kw = dict(self.sampler_kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if self.sampler_name == "random":
                return optuna.samplers.RandomSampler(seed=seed, **kw)
            if self.sampler_name == "qmc":
                kw.setdefault("scramble", True)
                return optuna.samplers.QMCSampler(seed=seed, **kw)
            if self.sampler_name == "gp":
                return optuna.samplers.GPSampler(seed=seed, **kw)
            kw.setdefault("constant_liar", True)  # parallel asks in one study spread out
            return optuna.samplers.TPESampler(seed=seed, **kw)

    def _open(self, storage: optuna.storages.BaseStorage, cell: PlannedJob, space: dict[str, Any]) -> Cell:
        digest = self._cell_hash(cell, space)
        prefix = self.study_prefix or str(self.config.name)
        name = f"{prefix}:{cell.out_dir.name}:{digest}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(study_name=name, storage=storage, direction=self.direction, load_if_exists=True)
        study.sampler = self._make_sampler(digest, len(study.get_trials(deepcopy=False)))
        attrs = {
            "cell_overrides": list(cell.overrides),
            "cell_folder": cell.out_dir.name,
            "objective": self.objective,
            "search": ss.describe(self.search),
            "config_hash": digest,
        }
        for key, value in attrs.items():
            if study.user_attrs.get(key) != value:
                study.set_user_attr(key, value)
        return Cell(job=cell, study=study, name=name)

    # ----------------------------------------------------------------------------------------------- trials
    def _ask(self, cell: Cell, space: dict[str, Any]) -> TrialJob:
        from sweep.record import signature

        dists = {k: d for k, d in space.items() if isinstance(d, BaseDistribution)}
        fixed = {k: d for k, d in space.items() if not isinstance(d, BaseDistribution)}
        trial = cell.study.ask(dists)
        trial_id = trial._trial_id
        st.claim(cell.study, trial_id)
        try:
            params = {k: (trial.params[k] if k in dists else fixed[k]) for k in space}
            folder = f"{cell.job.out_dir.name},trial={trial.number}"
            overrides = [
                *cell.job.overrides,
                *(f"{k}={ss.format_value(v)}" for k, v in params.items()),
                f"study={ss.quote(cell.name)}",
                f"trial={trial.number}",
                f"hydra.sweep.subdir={ss.quote(folder)}",
            ]
            job_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            out_dir = Path(job_cfg.hydra.sweep.dir) / str(job_cfg.hydra.sweep.subdir)
            sig = signature(job_cfg)
            storage = cell.study._storage
            storage.set_trial_user_attr(trial_id, "folder", folder)
            storage.set_trial_user_attr(trial_id, "run_dir", str(out_dir.resolve()))
            storage.set_trial_user_attr(trial_id, "signature", sig)
            if fixed:
                storage.set_trial_user_attr(trial_id, "fixed_params", {k: fixed[k] for k in fixed})
        except BaseException:
            st.tell(cell.study, trial.number, TrialState.FAIL, None, "could not compose the trial's config")
            raise
        return TrialJob(cell, trial.number, trial_id, params, overrides, out_dir, sig)

    def _drop_surplus(self, cell: Cell, asked: list[TrialJob]) -> list[TrialJob]:
        """Two processes may ask at the same moment: a trial runs only if fewer than n_trials trials with a
        smaller number are COMPLETE or RUNNING, so a study never ends with more than n_trials COMPLETE."""
        if not asked:
            return asked
        trials = cell.study.get_trials(deepcopy=False)
        keep = []
        for tj in sorted(asked, key=lambda t: t.number):
            ahead = sum(
                1 for t in trials if t.number < tj.number and t.state in (TrialState.COMPLETE, TrialState.RUNNING)
            )
            if ahead >= self.n_trials:
                cell.study._storage.set_trial_user_attr(tj.trial_id, "surplus", True)
                st.tell(
                    cell.study,
                    tj.number,
                    TrialState.FAIL,
                    None,
                    "surplus: n_trials already complete or running",
                )
                log.info("%s: trial %d not needed (another process took the last slots)", cell.name, tj.number)
            else:
                keep.append(tj)
        return keep

    def _find_record(self, trial: FrozenTrial) -> dict[str, Any] | None:
        from sweep.record import read_run

        sweep_dir = Path(self.config.hydra.sweep.dir)
        for folder in (trial.user_attrs.get("run_dir"), trial.user_attrs.get("folder")):
            if folder:
                rec = read_run(sweep_dir / folder)  # an absolute run_dir replaces sweep_dir
                if rec is not None:
                    return rec
        return None

    def _recover(self, cell: Cell, stale: list[FrozenTrial]) -> None:
        """Settle trials whose sweep process died: from their run record when the run got that far."""
        for t in stale:
            sig = t.user_attrs.get("signature")
            rec = self._find_record(t) if sig else None
            if rec is None:
                state, value, reason = (
                    TrialState.FAIL,
                    None,
                    "stale: its sweep process died before the run ended",
                )
            else:
                state, value, reason = st.outcome(rec, sig, self.objective)
            try:
                if rec is None:
                    cell.study._storage.set_trial_user_attr(t._trial_id, "stale", True)
                settled = st.tell(cell.study, t.number, state, value, f"recovered: {reason}")
            except Exception as exc:  # finished by another process between the look and the tell
                log.debug("could not settle stale trial %d of %s: %s", t.number, cell.name, exc)
                continue
            if settled:
                log.info("%s: stale trial %d settled as %s (%s)", cell.name, t.number, state.name, reason)

    def _settle(self, tj: TrialJob) -> None:
        from sweep.record import read_run

        rec = read_run(tj.out_dir)
        state, value, reason = st.outcome(rec, tj.signature, self.objective)
        st.tell(tj.cell.study, tj.number, state, value, reason)
        tj.settled = True
        tj.state = (rec or {}).get("status", "missing") if state != TrialState.COMPLETE else "complete"
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in tj.params.items())
        log.info(
            "%s trial %d (%s): %s%s",
            tj.cell.job.out_dir.name,
            tj.number,
            shown,
            state.name.lower(),
            f" {self.objective}={value:.5g}" if value is not None else f" ({reason})",
        )

    def _run(self, batch: list[TrialJob], heartbeat: _Heartbeat) -> None:
        limit = batch_limit(self.config.hydra.launcher, self.max_batch_size) or len(batch)
        with heartbeat.lock:
            heartbeat.trial_ids.update(tj.trial_id for tj in batch)
        for start in range(0, len(batch), limit):
            chunk = batch[start : start + limit]
            self.launched.extend(chunk)
            try:
                self.launcher.launch([tj.overrides for tj in chunk], initial_job_idx=self.job_idx)
            except Exception as exc:  # a launcher that lost a worker: the records say which runs are missing
                log.error("launcher error (%s: %s); settling the batch from its records", type(exc).__name__, exc)
            self.job_idx += len(chunk)
            for tj in chunk:
                self._settle(tj)
                with heartbeat.lock:
                    heartbeat.trial_ids.discard(tj.trial_id)

    # ----------------------------------------------------------------------------------------------- sweep
    def sweep(self, arguments: list[str]) -> Any:
        space = self._check_settings()
        cells = plan_jobs(self, arguments)
        self._check_cells(cells, space)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        url = self.storage_url or st.default_storage_url(sweep_dir)
        storage = optuna.storages.get_storage(st.make_storage(url))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        open_cells = [self._open(storage, cell, space) for cell in cells]
        log.info(
            "%d grid cells x %d trials (search: %s; objective: %s, %s); storage %s",
            len(open_cells),
            self.n_trials,
            ", ".join(f"{k}={v}" for k, v in self.search.items()),
            self.objective,
            self.direction,
            st.public_url(url),
        )
        heartbeat = _Heartbeat(storage, self.heartbeat_s)
        heartbeat.start()
        try:
            self._loop(open_cells, space, heartbeat)
        finally:
            heartbeat.stopped.set()
            for tj in self.launched:  # interrupted: settle what ran from its record, fail the rest
                if not tj.settled:
                    try:
                        self._settle(tj)
                    except Exception as exc:
                        log.debug("could not settle trial %d: %s", tj.number, exc)
        return self._finish(open_cells, url, sweep_dir)

    def _loop(self, cells: list[Cell], space: dict[str, Any], heartbeat: _Heartbeat) -> None:
        while True:
            batch: list[TrialJob] = []
            waiting = False
            for cell in cells:
                if not cell.open:
                    continue
                trials = cell.study.get_trials(deepcopy=False)
                stale = [t for t in trials if st.is_stale(t, self.stale_after_s)]
                if stale:
                    self._recover(cell, stale)
                    trials = cell.study.get_trials(deepcopy=False)
                c = st.counts(trials)
                if c["complete"] >= self.n_trials:
                    cell.open = False
                    continue
                if c["bad"] >= self.max_failed_trials:
                    cell.open, cell.exhausted = False, True
                    log.warning(
                        "%s: %d trials diverged or failed: giving up with %d of %d complete",
                        cell.name,
                        c["bad"],
                        c["complete"],
                        self.n_trials,
                    )
                    continue
                need = self.n_trials - c["complete"] - c["running"]
                if need <= 0:  # the missing trials are running in another process
                    waiting = True
                    continue
                asked = [self._ask(cell, space) for _ in range(min(need, self.parallel_per_cell))]
                kept = self._drop_surplus(cell, asked)
                if len(kept) < len(asked):  # another process took the last slots: wait for its trials
                    waiting = True
                batch.extend(kept)
            if batch:
                self._run(batch, heartbeat)
            elif waiting:
                time.sleep(self.poll_s)
            else:
                return

    def _finish(self, cells: list[Cell], url: str, sweep_dir: Path) -> list[Any]:
        from sweep.record import write_json

        best = {
            "version": 1,
            "objective": self.objective,
            "direction": self.direction,
            "n_trials": self.n_trials,
            "search": ss.describe(self.search),
            "storage": st.public_url(url),
            "written_at": st.now_iso(),
            "cells": [self._best_entry(cell, sweep_dir) for cell in cells],
        }
        write_json(sweep_dir / BEST_FILE, best)
        jobs = [PlannedJob(tj.overrides, tj.out_dir, tj.signature) for tj in self.launched]
        summary = summarize(jobs)
        summary["studies"] = {
            e["study"]: {
                "counts": e["counts"],
                "complete": e["complete"],
                "best_trial": (e["best"] or {}).get("trial"),
            }
            for e in best["cells"]
        }
        write_json(sweep_dir / "sweep_summary.json", summary)
        n_done = sum(1 for e in best["cells"] if e["complete"])
        log.info(
            "tuning finished: %d of %d cells with %d complete trials; this process ran %d trials (%s); best "
            "trials in %s",
            n_done,
            len(cells),
            self.n_trials,
            len(jobs),
            ", ".join(f"{n} {s}" for s, n in sorted(summary["counts"].items())) or "none",
            sweep_dir / BEST_FILE,
        )
        bad_jobs = {d: v for d, v in summary["jobs"].items() if v["status"] not in ("complete", "diverged")}
        short = [e["cell_folder"] for e in best["cells"] if not e["complete"]]
        if bad_jobs or short:
            parts = []
            if bad_jobs:
                names = "; ".join(f"{Path(d).name} ({v['status']})" for d, v in list(bad_jobs.items())[:10])
                parts.append(f"{len(bad_jobs)} of {len(jobs)} trial runs not complete: {names}")
            if short:
                parts.append(
                    f"{len(short)} of {len(cells)} cells short of {self.n_trials} complete trials: "
                    + "; ".join(short[:10])
                )
            raise SweepFailed(
                f"tuning finished with {' and '.join(parts)} (details in {sweep_dir / 'sweep_summary.json'})"
            )
        return []

    def _best_entry(self, cell: Cell, sweep_dir: Path) -> dict[str, Any]:
        from sweep.record import read_run

        trials = cell.study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        sign = 1.0 if self.direction == "minimize" else -1.0
        hidden = set(self.config.hydra.job.config.override_dirname.exclude_keys)
        entry: dict[str, Any] = {
            "study": cell.name,
            "cell_folder": cell.job.out_dir.name,
            # the grid point: every override that names the runs' folders, as {key: value text}
            "cell": {k: v for k, v in (o.split("=", 1) for o in cell.job.overrides if "=" in o) if k not in hidden},
            "overrides": list(cell.job.overrides),
            "counts": st.counts(trials),
            "complete": len(complete) >= self.n_trials,
            "trials": sorted(t.number for t in complete),
            "best": None,
        }
        if complete:
            b = min(complete, key=lambda t: (sign * float(t.value), t.number))
            folder = b.user_attrs.get("folder")
            rec = read_run(sweep_dir / folder) if folder else None
            entry["best"] = {
                "trial": b.number,
                "value": b.value,
                "params": {**b.params, **b.user_attrs.get("fixed_params", {})},
                "lr": ((rec or {}).get("summary") or {}).get("lr"),  # effective lr, after optim.lr_scaling
                "folder": folder,
                "run_dir": b.user_attrs.get("run_dir"),
            }
        return entry
