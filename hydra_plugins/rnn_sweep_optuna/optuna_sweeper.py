"""`hydra/sweeper=optuna_grid`: a grid over scientific parameters x an Optuna search over nuisance parameters.

    hydra:
      sweeper:
        params:               # the grid, as for hydra/sweeper=grid (command-line sweeps join it)
          model: rnn,gru,lstm
          batch_size: 1,4,16,64
          seed: 0,1,2,3,4     # the TEST seeds: the tuned lr of each cell is run on these
        search:               # searched by Optuna in every grid cell (search_space.py lists the syntax)
          optim.lr: tag(log, interval(1e-4, 1e-1))
        search_seeds: [1000, 1001]  # every trial runs on each; it is judged on the mean
        n_trials: 3           # COMPLETE trials per cell, in total over reruns and sweep processes
        objective: valid_loss # any summary metric of the run record (dotted path: lag_accuracy.8)
        direction: minimize

A cell is a grid point less its seed: choosing an lr per seed and then reporting the same runs would select on
noise. So each cell has ONE Optuna study, named `<study_prefix>:<cell folder>:<hash of the cell's config and
search>`, in `storage` (default: sqlite:///<sweep dir>/optuna.db; any SQLAlchemy URL such as postgresql://...;
or journal:<file>). The sweep process asks trials (ask-and-tell); a trial is one point of the search space run
once per search seed (fresh data streams: seeds seed the data too), handed to the configured Hydra launcher in
batches; when all of a trial's runs are back it tells Optuna the mean of their objectives. A trial with a
diverged run is told PRUNED and one with a failed run FAIL, never a value. Each trial run is a normal run
record in `<cell folder>,trial=<n>,seed=<s>`, whose config carries `study` and `trial` (selection runs: the
analysis never judges them). Rerunning the command continues every study until it holds `n_trials` COMPLETE
trials; several processes (on several machines, with a shared storage) can work on the same studies at once.

Then the test phase: in every cell the best trial's parameters (best mean objective) are run on the grid's own
seeds, which the selection never saw, as ordinary grid runs in the grid points' folders with
`optim.lr_protocol=tuned` (skipped on a rerun when complete): these are the records the report judges.

At the end the sweep writes `best_trials.json` (per cell: the best trial and its test runs), `lr_search.json`
(every trial and the chosen lr, in the lr search's format, for the report's lr table) and `sweep_summary.json`
in the sweep folder, and exits non-zero when a run failed or a cell ran out of tries.
"""

import contextlib
import hashlib
import json
import logging
import threading
import time
import warnings
from dataclasses import dataclass, field
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
    plan_points,
    summarize,
)

log = logging.getLogger(__name__)

BEST_FILE = "best_trials.json"
LR_SEARCH_FILE = "lr_search.json"  # the grid sweeper's lr search writes the same file: the report reads both
SAMPLERS = ("tpe", "random", "qmc", "gp")
TUNED = "tuned"  # optim.lr_protocol of the test runs


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _rel(folder: Path, sweep_dir: Path) -> str:
    return str(folder.relative_to(sweep_dir)) if folder.is_relative_to(sweep_dir) else str(folder)


@dataclass
class OptunaGridSweeperConf(TuneSettings):
    _target_: str = "hydra_plugins.rnn_sweep_optuna.optuna_sweeper.OptunaGridSweeper"
    params: Optional[dict[str, str]] = None  # noqa: UP045  the grid (scientific parameters)
    max_batch_size: Optional[int] = None  # noqa: UP045  most runs handed to the launcher at once


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna_grid", node=OptunaGridSweeperConf, provider="rnn-sweep"
)


@dataclass
class Cell:
    job: PlannedJob  # the grid point less its seed (its out_dir names the cell; no run is written there)
    study: optuna.Study
    name: str
    points: list[PlannedJob] = field(default_factory=list)  # the cell's grid points, one per grid seed
    open: bool = True
    exhausted: bool = False


@dataclass
class SeedRun:
    """One run of a trial: the trial's parameters on one search seed."""

    seed: int
    overrides: list[str]
    out_dir: Path
    signature: str
    launched: bool = False

    def attrs(self) -> dict[str, Any]:
        return {"seed": self.seed, "folder": self.out_dir.name, "run_dir": str(self.out_dir.resolve()),
                "signature": self.signature}  # fmt: skip


@dataclass
class TrialJob:
    cell: Cell
    number: int
    trial_id: int
    params: dict[str, Any]
    runs: list[SeedRun]
    settled: bool = False


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
        search_seeds: list[int] | None = None,
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
        self.search_seeds: list[Any] = list([1000, 1001] if search_seeds is None else search_seeds)
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
        seeds = self.search_seeds
        need(
            bool(seeds) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
            and len(set(seeds)) == len(seeds),
            "search_seeds",
            "must be a non-empty list of distinct integers, e.g. [1000, 1001]",
            seeds,
        )  # fmt: skip
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

    def _check_cells(self, points: list[PlannedJob], space: dict[str, Any]) -> None:
        """Search keys must not be grid keys, both ends of every range must make a valid config, and the test
        seeds (the grid's) must differ from the search seeds."""
        from sweep.config import ConfigError, validate

        for point in points:
            keys = {_key(o) for o in point.overrides}
            both = sorted(keys & set(space))
            if both:
                raise ConfigError(
                    f"invalid sweep: {', '.join(both)} is both swept/overridden on the command line or in "
                    "hydra.sweeper.params and searched in hydra.sweeper.search: keep it in one of them"
                )
        shared = sorted({int(p.config.seed) for p in points if p.config is not None} & set(self.search_seeds))
        if shared:
            raise ConfigError(
                f"invalid sweep: hydra.sweeper.search_seeds={list(self.search_seeds)} shares seed(s) {shared} with "
                "the grid's seeds: the runs the report judges must use seeds the lr selection never saw"
            )
        loader = self.hydra_context.config_loader
        for key, dist in space.items():
            for value in ss.extremes(dist):
                overrides = [*points[0].overrides, f"{key}={ss.format_value(value)}"]
                try:
                    validate(loader.load_sweep_config(master_config=self.config, sweep_overrides=overrides))
                except ConfigError as exc:
                    raise ConfigError(f"invalid search space: {key}={self.search[key]}: {exc}") from None
                except Exception as exc:
                    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    raise ConfigError(f"invalid search space: {key}={self.search[key]}: {first}") from None

    # ----------------------------------------------------------------------------------------------- cells
    def _group(self, points: list[PlannedJob]) -> list[tuple[PlannedJob, list[PlannedJob]]]:
        """Grid points that differ only in the seed make one cell: (the cell, its points), in grid order."""
        groups: dict[tuple[str, ...], tuple[list[str], list[PlannedJob]]] = {}
        for p in points:
            base = [o for o in p.overrides if _key(o) != "seed"]
            groups.setdefault(tuple(sorted(base)), (base, []))[1].append(p)
        loader = self.hydra_context.config_loader
        cells = []
        for base, members in groups.values():
            cfg = loader.load_sweep_config(master_config=self.config, sweep_overrides=list(base))
            out_dir = Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)
            cost = max(m.cost for m in members)
            cells.append((PlannedJob(list(base), out_dir, "", cost=cost, config=cfg), members))
        return cells

    # ----------------------------------------------------------------------------------------------- studies
    def _cell_hash(self, cell: PlannedJob, space: dict[str, Any]) -> str:
        from sweep.record import _NOT_IN_SIGNATURE, resolved_config

        job_cfg = cell.config
        if job_cfg is None:
            job_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(cell.overrides))
        conf = resolved_config(job_cfg)
        for key in (*_NOT_IN_SIGNATURE, "study", "trial", "seed"):  # a cell's trials run on the search seeds
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
            "search_seeds": sorted(self.search_seeds),
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

    def _open(
        self, storage: optuna.storages.BaseStorage, cell: PlannedJob, points: list[PlannedJob], space: dict[str, Any]
    ) -> Cell:
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
            "search_seeds": list(self.search_seeds),
            "config_hash": digest,
        }
        for key, value in attrs.items():
            if study.user_attrs.get(key) != value:
                study.set_user_attr(key, value)
        return Cell(job=cell, study=study, name=name, points=list(points))

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
            runs = []
            for seed in self.search_seeds:
                folder = f"{cell.job.out_dir.name},trial={trial.number},seed={seed}"
                overrides = [
                    *cell.job.overrides,
                    f"seed={seed}",
                    *(f"{k}={ss.format_value(v)}" for k, v in params.items()),
                    f"study={ss.quote(cell.name)}",
                    f"trial={trial.number}",
                    f"hydra.sweep.subdir={ss.quote(folder)}",
                ]
                job_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
                out_dir = Path(job_cfg.hydra.sweep.dir) / str(job_cfg.hydra.sweep.subdir)
                runs.append(SeedRun(int(seed), overrides, out_dir, signature(job_cfg)))
            storage = cell.study._storage
            storage.set_trial_user_attr(trial_id, "runs", [r.attrs() for r in runs])
            if fixed:
                storage.set_trial_user_attr(trial_id, "fixed_params", {k: fixed[k] for k in fixed})
        except BaseException:
            st.tell(cell.study, trial.number, TrialState.FAIL, None, "could not compose the trial's config")
            raise
        return TrialJob(cell, trial.number, trial_id, params, runs)

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

    def _find_record(self, run: dict[str, Any]) -> dict[str, Any] | None:
        from sweep.record import read_run

        sweep_dir = Path(self.config.hydra.sweep.dir)
        for folder in (run.get("run_dir"), run.get("folder")):
            if folder:
                rec = read_run(sweep_dir / folder)  # an absolute run_dir replaces sweep_dir
                if rec is not None:
                    return rec
        return None

    def _judge(
        self, runs: list[dict[str, Any]], recs: list[dict[str, Any] | None]
    ) -> tuple[TrialState, float | None, str, dict[str, float | None]]:
        """A trial's outcome from its runs' records (one per search seed), and each seed's objective value."""
        outcomes = [
            (int(r["seed"]), st.outcome(rec, r["signature"], self.objective)) for r, rec in zip(runs, recs, strict=True)
        ]
        state, value, reason = st.pooled_outcome(outcomes)
        return state, value, reason, {str(seed): o[1] for seed, o in outcomes}

    def _recover(self, cell: Cell, stale: list[FrozenTrial]) -> None:
        """Settle trials whose sweep process died: from their runs' records when every run got that far."""
        for t in stale:
            runs = t.user_attrs.get("runs") or []
            recs = [self._find_record(r) for r in runs]
            lost = not runs or any(rec is None for rec in recs)
            values: dict[str, Any] = {}
            if lost:
                state, value, reason = (
                    TrialState.FAIL,
                    None,
                    "stale: its sweep process died before its runs ended",
                )
            else:
                state, value, reason, values = self._judge(runs, recs)
            try:
                attrs = {"stale": True} if lost else {"values": values}
                settled = st.tell(cell.study, t.number, state, value, f"recovered: {reason}", attrs)
            except Exception as exc:  # finished by another process between the look and the tell
                log.debug("could not settle stale trial %d of %s: %s", t.number, cell.name, exc)
                continue
            if settled:
                log.info("%s: stale trial %d settled as %s (%s)", cell.name, t.number, state.name, reason)

    def _settle(self, tj: TrialJob) -> None:
        from sweep.record import read_run

        recs = [read_run(r.out_dir) for r in tj.runs]
        state, value, reason, values = self._judge([r.attrs() for r in tj.runs], recs)
        st.tell(tj.cell.study, tj.number, state, value, reason, {"values": values})
        tj.settled = True
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in tj.params.items())
        log.info(
            "%s trial %d (%s): %s%s",
            tj.cell.job.out_dir.name,
            tj.number,
            shown,
            state.name.lower(),
            f" mean {self.objective}={value:.5g} over seeds {list(self.search_seeds)}"
            if value is not None
            else f" ({reason})",
        )

    def _run(self, batch: list[TrialJob], heartbeat: _Heartbeat) -> None:
        """Launch every run of the batch's trials; a trial is told once all its runs are back."""
        runs = [(tj, run) for tj in batch for run in tj.runs]
        # longest first: the workers then run out of work together (a trial is told once all its runs are back)
        runs.sort(key=lambda pair: -pair[0].cell.job.cost)
        limit = batch_limit(self.config.hydra.launcher, self.max_batch_size) or len(runs)
        with heartbeat.lock:
            heartbeat.trial_ids.update(tj.trial_id for tj in batch)
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
                    self._settle(tj)
                    with heartbeat.lock:
                        heartbeat.trial_ids.discard(tj.trial_id)

    # ----------------------------------------------------------------------------------------------- sweep
    def sweep(self, arguments: list[str]) -> Any:
        space = self._check_settings()
        points = plan_jobs(self, arguments)
        self._check_cells(points, space)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        url = self.storage_url or st.default_storage_url(sweep_dir)
        storage = optuna.storages.get_storage(st.make_storage(url))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        open_cells = [self._open(storage, cell, members, space) for cell, members in self._group(points)]
        log.info(
            "%d grid cells x %d trials x %d search seeds (search: %s; objective: mean %s, %s); then %d test runs "
            "on the grid's seeds; storage %s",
            len(open_cells),
            self.n_trials,
            len(self.search_seeds),
            ", ".join(f"{k}={v}" for k, v in self.search.items()),
            self.objective,
            self.direction,
            len(points),
            st.public_url(url),
        )
        heartbeat = _Heartbeat(storage, self.heartbeat_s)
        heartbeat.start()
        try:
            self._loop(open_cells, space, heartbeat)
        finally:
            heartbeat.stopped.set()
            for tj in self.launched:  # interrupted: settle what ran from its records, fail the rest
                if not tj.settled:
                    try:
                        self._settle(tj)
                    except Exception as exc:
                        log.debug("could not settle trial %d: %s", tj.number, exc)
        tested = self._test_phase(open_cells, space)
        return self._finish(open_cells, tested, url, sweep_dir)

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

    # ----------------------------------------------------------------------------------------------- test phase
    def _best(self, cell: Cell) -> FrozenTrial | None:
        """The COMPLETE trial with the best mean objective over the search seeds; ties go to the lower number."""
        complete = [t for t in cell.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if not complete:
            return None
        sign = 1.0 if self.direction == "minimize" else -1.0
        return min(complete, key=lambda t: (sign * float(t.value), t.number))

    def _test_phase(self, cells: list[Cell], space: dict[str, Any]) -> dict[str, list[PlannedJob]]:
        """Run each cell's best parameters on the grid's own seeds, as ordinary grid runs in the grid points'
        folders (optim.lr_protocol=tuned): the records the report judges. Only cells whose study is complete
        are tested; complete test runs are not run again."""
        from sweep.record import is_done

        fixed = {k: v for k, v in space.items() if not isinstance(v, BaseDistribution)}
        plan: list[tuple[str, list[str]]] = []
        for cell in cells:
            trials = cell.study.get_trials(deepcopy=False)
            best = self._best(cell)
            if best is None or st.counts(trials)["complete"] < self.n_trials:
                continue
            params = {**best.params, **fixed}
            for p in cell.points:
                base = [o for o in p.overrides if _key(o) not in params and _key(o) != "optim.lr_protocol"]
                plan.append((cell.name, [
                    *base,
                    *(f"{k}={ss.format_value(v)}" for k, v in params.items()),
                    f"optim.lr_protocol={TUNED}",
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
        log.info(
            "test phase: %d runs at each cell's tuned parameters on the grid's seeds: %d already complete, %d to run",
            len(jobs),
            len(jobs) - len(todo),
            len(todo),
        )
        limit = batch_limit(self.config.hydra.launcher, self.max_batch_size) or len(todo) or 1
        for start in range(0, len(todo), limit):
            chunk = todo[start : start + limit]
            try:
                self.launcher.launch([j.overrides for j in chunk], initial_job_idx=self.job_idx)
            except Exception as exc:  # a lost worker (killed, out of memory): its runs show up as missing
                log.error("launcher error (%s: %s): see the summary for missing runs", type(exc).__name__, exc)
            self.job_idx += len(chunk)
        return by_cell

    # ----------------------------------------------------------------------------------------------- results
    def _finish(self, cells: list[Cell], tested: dict[str, list[PlannedJob]], url: str, sweep_dir: Path) -> list[Any]:
        from sweep.record import write_json

        entries = [self._best_entry(cell, tested.get(cell.name, []), sweep_dir) for cell in cells]
        best = {
            "version": 2,
            "objective": self.objective,
            "direction": self.direction,
            "n_trials": self.n_trials,
            "search": ss.describe(self.search),
            "search_seeds": list(self.search_seeds),
            "storage": st.public_url(url),
            "written_at": st.now_iso(),
            "cells": entries,
        }
        write_json(sweep_dir / BEST_FILE, best)
        write_json(sweep_dir / LR_SEARCH_FILE, self._lr_table(cells, entries))

        trial_jobs = [PlannedJob(r.overrides, r.out_dir, r.signature) for tj in self.launched for r in tj.runs]
        test_jobs = [j for js in tested.values() for j in js]
        summary = summarize(trial_jobs + test_jobs)
        summary["phases"] = {
            "search": summarize(trial_jobs)["counts"],
            "test": summarize(test_jobs)["counts"],
        }
        summary["studies"] = {
            e["study"]: {
                "counts": e["counts"],
                "complete": e["complete"],
                "best_trial": (e["best"] or {}).get("trial"),
            }
            for e in entries
        }
        write_json(sweep_dir / "sweep_summary.json", summary)
        n_done = sum(1 for e in entries if e["complete"])
        log.info(
            "tuning finished: %d of %d cells with %d complete trials; this process ran %d trial runs (%s); "
            "test runs: %s; best trials in %s",
            n_done,
            len(cells),
            self.n_trials,
            len(trial_jobs),
            ", ".join(f"{n} {s}" for s, n in sorted(summary["phases"]["search"].items())) or "none",
            ", ".join(f"{n} {s}" for s, n in sorted(summary["phases"]["test"].items())) or "none",
            sweep_dir / BEST_FILE,
        )
        bad_jobs = {d: v for d, v in summary["jobs"].items() if v["status"] not in ("complete", "diverged")}
        short = [e["cell_folder"] for e in entries if not e["complete"]]
        if bad_jobs or short:
            parts = []
            if bad_jobs:
                names = "; ".join(f"{Path(d).name} ({v['status']})" for d, v in list(bad_jobs.items())[:10])
                parts.append(f"{len(bad_jobs)} of {len(summary['jobs'])} runs not complete: {names}")
            if short:
                parts.append(
                    f"{len(short)} of {len(cells)} cells short of {self.n_trials} complete trials (not tested): "
                    + "; ".join(short[:10])
                )
            raise SweepFailed(
                f"tuning finished with {' and '.join(parts)} (details in {sweep_dir / 'sweep_summary.json'})"
            )
        return []

    def _effective_lr(self, runs: list[dict[str, Any]]) -> float | None:
        """The lr the runs used (summary.lr: after optim.lr_scaling), from the first record that has it."""
        for run in runs:
            lr = ((self._find_record(run) or {}).get("summary") or {}).get("lr")
            if lr is not None:
                return float(lr)
        return None

    def _best_entry(self, cell: Cell, tests: list[PlannedJob], sweep_dir: Path) -> dict[str, Any]:
        from sweep.record import read_run

        trials = cell.study.get_trials(deepcopy=False)
        hidden = set(self.config.hydra.job.config.override_dirname.exclude_keys)
        entry: dict[str, Any] = {
            "study": cell.name,
            "cell_folder": cell.job.out_dir.name,
            # the grid point less its seed: every override that names the runs' folders, as {key: value text}
            "cell": {k: v for k, v in (o.split("=", 1) for o in cell.job.overrides if "=" in o) if k not in hidden},
            "overrides": list(cell.job.overrides),
            "grid_seeds": [int(p.config.seed) for p in cell.points if p.config is not None],
            "counts": st.counts(trials),
            "complete": st.counts(trials)["complete"] >= self.n_trials,
            "trials": sorted(t.number for t in trials if t.state == TrialState.COMPLETE),
            "best": None,
            "test": None,
        }
        b = self._best(cell)
        if b is not None:
            runs = b.user_attrs.get("runs") or []
            entry["best"] = {
                "trial": b.number,
                "value": b.value,  # the mean objective over the search seeds
                "values": b.user_attrs.get("values"),  # per search seed
                "params": {**b.params, **b.user_attrs.get("fixed_params", {})},
                "lr": self._effective_lr(runs),  # effective lr, after optim.lr_scaling
                # selection runs: named here for reference, never judged (the test runs are)
                "search_runs": [r.get("folder") for r in runs],
            }
        if tests:
            entry["test"] = {
                "lr_protocol": TUNED,
                "seeds": [int(j.config.seed) for j in tests if j.config is not None],
                "folders": [_rel(j.out_dir, sweep_dir) for j in tests],
                "status": [(read_run(j.out_dir) or {}).get("status", "missing") for j in tests],
            }
        return entry

    def _lr_table(self, cells: list[Cell], entries: list[dict[str, Any]]) -> dict[str, Any]:
        """lr_search.json in the lr search's format: every trial (mean objective over the search seeds) and the
        chosen lr of each cell, so the report's lr table reads tuned sweeps as it reads searched ones."""
        hidden = set(self.config.hydra.job.config.override_dirname.exclude_keys)
        # the keys whose values differ between cells (or that some cells lack): what the chosen lr depends on
        values: dict[str, list[str]] = {}
        for cell in cells:
            for o in cell.job.overrides:
                values.setdefault(_key(o), []).append(o)
        by = sorted(k for k, v in values.items() if k not in hidden and (len(set(v)) > 1 or len(v) < len(cells)))
        mean_key = f"mean_{self.objective}"
        table, chosen = [], []
        for cell, entry in zip(cells, entries, strict=True):
            c = cell.job.config
            assert c is not None
            where = {"task": str(c.task.name), "cell": str(c.model.cell), "batch_size": int(c.batch_size),
                     "num_steps": int(c.num_steps), "budget": str(c.budget.kind), "study": cell.name}  # fmt: skip
            for t in cell.study.get_trials(deepcopy=False):
                if t.user_attrs.get("surplus"):
                    continue  # never ran
                runs = t.user_attrs.get("runs") or []
                lr = self._effective_lr(runs)
                table.append({
                    **where, "trial": t.number, "lr": lr if lr is not None else t.params.get("optim.lr"),
                    "params": dict(t.params), mean_key: t.value, "values": t.user_attrs.get("values"),
                    "state": t.state.name.lower(),
                })  # fmt: skip
            if entry["best"] is not None and entry["complete"]:
                best = entry["best"]
                lr = best["lr"] if best["lr"] is not None else best["params"].get("optim.lr")
                chosen.append({**where, "trial": best["trial"], "lr": lr, mean_key: best["value"],
                               "n": len(self.search_seeds)})  # fmt: skip
        return {
            "values": None,
            "by": by,
            "rule": f"Optuna {self.sampler_name}, {self.n_trials} trials per cell, mean {self.objective} over the "
            f"search seeds ({self.direction})",
            "objective": self.objective,
            "search": ss.describe(self.search),
            "seeds": list(self.search_seeds),
            "table": table,
            "chosen": chosen,
        }
