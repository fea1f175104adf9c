"""Trials: asked (ask-and-tell), composed into one run per search seed, and settled from their run records.

A trial is one point of the search space run once per search seed (fresh data streams: seeds seed the data
too), each run a normal run record in `<cell folder>,trial=<n>,seed=<s>` whose config carries `study`, `trial`
and `study_storage` (the runs report their held-out curve there: sweep/pruning.py). It is told once all its runs
are back (_outcomes). A trial left RUNNING by a dead process is settled by the next process from its records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_loader import ConfigLoader
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hydra_plugins.rnn_sweep_optuna import _outcomes as oc
from hydra_plugins.rnn_sweep_optuna import _owners
from hydra_plugins.rnn_sweep_optuna import _search_space as ss
from hydra_plugins.rnn_sweep_optuna._cells import Cell
from sweep import _optuna_api as api
from sweep.pruning import TRIAL_RUNS_ATTR
from sweep.record import read_run, signature

log = logging.getLogger(__name__)

FIXED_PARAMS_ATTR = "fixed_params"


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


def ask(
    cell: Cell,
    space: dict[str, Any],
    search_seeds: list[int],
    storage_url: str,
    loader: ConfigLoader,
    master: DictConfig,
) -> TrialJob:
    """Ask the cell's study for a trial, claim it, and compose its runs (the first search seed's run reports
    the trial's curve to the pruner: TRIAL_RUNS_ATTR keeps that order)."""
    dists = {k: d for k, d in space.items() if isinstance(d, BaseDistribution)}
    fixed = {k: d for k, d in space.items() if not isinstance(d, BaseDistribution)}
    trial = cell.study.ask(dists)
    _owners.claim(trial)
    try:
        params = {k: (trial.params[k] if k in dists else fixed[k]) for k in space}
        runs = []
        for seed in search_seeds:
            folder = f"{cell.job.out_dir.name},trial={trial.number},seed={seed}"
            overrides = [
                *cell.job.overrides,
                f"seed={seed}",
                *(f"{k}={ss.format_value(v)}" for k, v in params.items()),
                f"study={ss.quote(cell.name)}",
                f"trial={trial.number}",
                f"study_storage={ss.quote(storage_url)}",
                f"hydra.sweep.subdir={ss.quote(folder)}",
            ]
            job_cfg = loader.load_sweep_config(master, overrides)
            out_dir = Path(job_cfg.hydra.sweep.dir) / str(job_cfg.hydra.sweep.subdir)
            runs.append(SeedRun(int(seed), overrides, out_dir, signature(job_cfg)))
        trial.set_user_attr(TRIAL_RUNS_ATTR, [r.attrs() for r in runs])
        if fixed:
            trial.set_user_attr(FIXED_PARAMS_ATTR, dict(fixed))
    except BaseException:
        oc.tell(cell.study, trial.number, oc.Outcome(TrialState.FAIL, None, "could not compose the trial's config",
                                                     "failed"))  # fmt: skip
        raise
    return TrialJob(cell, trial.number, api.asked_trial_id(trial), params, runs)


def drop_surplus(cell: Cell, asked: list[TrialJob], n_trials: int) -> list[TrialJob]:
    """Two processes may ask at the same moment: a trial runs only if fewer than n_trials trials with a smaller
    number are finished (complete or stopped by the pruner) or RUNNING, so a study never ends with more than
    n_trials finished trials."""
    if not asked:
        return asked
    trials = cell.study.get_trials(deepcopy=False)
    keep = []
    for tj in sorted(asked, key=lambda t: t.number):
        ahead = sum(
            1
            for t in trials
            if t.number < tj.number
            and (t.state in (TrialState.COMPLETE, TrialState.RUNNING) or oc.stopped_by_pruner(t))
        )
        if ahead >= n_trials:
            reason = "surplus: n_trials already finished or running"
            oc.tell(
                cell.study, tj.number, oc.Outcome(TrialState.FAIL, None, reason, "surplus"), {oc.SURPLUS_ATTR: True}
            )
            log.info("%s: trial %d not needed (another process took the last slots)", cell.name, tj.number)
        else:
            keep.append(tj)
    return keep


def find_record(run: dict[str, Any], sweep_dir: Path) -> dict[str, Any] | None:
    for folder in (run.get("run_dir"), run.get("folder")):
        if folder:
            rec = read_run(sweep_dir / folder)  # an absolute run_dir replaces sweep_dir
            if rec is not None:
                return rec
    return None


def judge(
    runs: list[dict[str, Any]], recs: list[dict[str, Any] | None], objective: str
) -> tuple[oc.Outcome, dict[str, Any]]:
    """A trial's outcome from its runs' records (one per search seed), and the user attributes to set: each
    seed's objective (`values`) and what the dashboard shows (_outcomes.result_attrs)."""
    outcomes = [(int(r["seed"]), oc.outcome(rec, r["signature"], objective)) for r, rec in zip(runs, recs, strict=True)]
    pooled = oc.pooled_outcome(outcomes)
    attrs = {"values": {str(seed): o.value for seed, o in outcomes}, **oc.result_attrs(runs, recs, pooled)}
    return pooled, attrs


def settle(tj: TrialJob, objective: str, search_seeds: list[int]) -> None:
    recs = [read_run(r.out_dir) for r in tj.runs]
    result, attrs = judge([r.attrs() for r in tj.runs], recs, objective)
    oc.tell(tj.cell.study, tj.number, result, attrs)
    tj.settled = True
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in tj.params.items())
    log.info(
        "%s trial %d (%s): %s%s",
        tj.cell.job.out_dir.name,
        tj.number,
        shown,
        result.status,
        f" mean {objective}={result.value:.5g} over seeds {list(search_seeds)}"
        if result.value is not None
        else f" ({result.reason})",
    )


def recover(cell: Cell, stale: list[FrozenTrial], objective: str, sweep_dir: Path) -> None:
    """Settle trials whose sweep process died: from their runs' records when every run got that far."""
    for t in stale:
        runs = t.user_attrs.get(TRIAL_RUNS_ATTR) or []
        recs = [find_record(r, sweep_dir) for r in runs]
        lost = not runs or any(rec is None for rec in recs)
        if lost:
            result = oc.Outcome(TrialState.FAIL, None, "stale: its sweep process died before its runs ended", "failed")
            attrs: dict[str, Any] = {oc.STALE_ATTR: True}
        else:
            result, attrs = judge(runs, recs, objective)
        result = result._replace(reason=f"recovered: {result.reason}")
        try:
            settled = oc.tell(cell.study, t.number, result, attrs)
        except Exception as exc:  # finished by another process between the look and the tell
            log.debug("could not settle stale trial %d of %s: %s", t.number, cell.name, exc)
            continue
        if settled:
            log.info("%s: stale trial %d settled as %s (%s)", cell.name, t.number, result.state.name, result.reason)
