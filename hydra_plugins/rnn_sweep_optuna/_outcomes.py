"""What a trial's run records tell Optuna, and telling it.

A trial is run once per search seed; once all its runs are back the sweep process reads their `run.json` and
tells the trial COMPLETE with the MEAN objective over the seeds when every run is complete. Otherwise it gets no
value: an lr that diverged on any seed is PRUNED (unsafe, whatever the other seeds did); one whose runs the pruner
stopped is PRUNED too (sweep/pruning.py), but counts with the complete ones towards `n_trials`, not as a failure;
a failed or missing run makes the trial FAIL (a mean over fewer seeds would not compare with the others).
The trial's user attributes then hold what the dashboard shows of its runs (RESULT_KEYS, statuses, folders).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep import _optuna_api as api
from sweep.optuna_setup import objective_value
from sweep.pruning import TRIAL_RUNS_ATTR
from sweep.record import COMPLETE, DIVERGED, FAILED, PRUNED

# Summary metrics of the runs copied into the trial's user attributes (the mean over its seeds; per run in `runs`).
RESULT_KEYS = ("train_loss", "valid_loss", "valid_accuracy", "span", "memory_capacity", "updates")
STATUS_ATTR = "status"  # complete | pruned (stopped by the pruner) | diverged | failed
SURPLUS_ATTR, STALE_ATTR = "surplus", "stale"


class Outcome(NamedTuple):
    state: TrialState
    value: float | None  # the objective; None unless COMPLETE
    reason: str
    status: str  # complete | pruned | diverged | failed: PRUNED trials stopped by the pruner vs diverged ones


def outcome(rec: dict[str, Any] | None, sig: str, objective: str) -> Outcome:
    """What one run record tells Optuna."""
    if rec is None:
        return Outcome(TrialState.FAIL, None, "no run record", FAILED)
    if rec.get("signature") != sig:
        return Outcome(TrialState.FAIL, None, "the run record in its folder belongs to another config", FAILED)
    status = rec.get("status")
    if status == DIVERGED:
        return Outcome(TrialState.PRUNED, None, "diverged", DIVERGED)
    if status == PRUNED:
        updates = (rec.get("summary") or {}).get("updates")
        return Outcome(TrialState.PRUNED, None, f"pruned after {updates} updates", PRUNED)
    if status != COMPLETE:
        return Outcome(TrialState.FAIL, None, f"run {status}: {rec.get('error', '')}".strip(), FAILED)
    value = objective_value(rec.get("summary") or {}, objective)
    if value is None:
        shown = (rec.get("summary") or {}).get(objective)
        return Outcome(TrialState.FAIL, None, f"objective {objective!r} is {shown!r} in the run summary", FAILED)
    return Outcome(TrialState.COMPLETE, value, COMPLETE, COMPLETE)


def pooled_outcome(outcomes: list[tuple[int, Outcome]]) -> Outcome:
    """What a trial's runs, one per search seed, tell Optuna (module docstring); a diverged seed outranks a
    pruned one, which outranks a failed one."""
    if not outcomes:
        return Outcome(TrialState.FAIL, None, "no runs", FAILED)
    if all(o.state == TrialState.COMPLETE for _, o in outcomes):
        values = [float(o.value) for _, o in outcomes if o.value is not None]
        return Outcome(TrialState.COMPLETE, math.fsum(values) / len(values), COMPLETE, COMPLETE)
    for wanted in (DIVERGED, PRUNED, FAILED):
        bad = [f"seed {seed}: {o.reason}" for seed, o in outcomes if o.status == wanted]
        if bad:
            state = TrialState.FAIL if wanted == FAILED else TrialState.PRUNED
            return Outcome(state, None, "; ".join(bad), wanted)
    raise AssertionError("unreachable: a run status other than complete, diverged, pruned or failed")


def result_attrs(runs: list[dict[str, Any]], recs: list[dict[str, Any] | None], pooled: Outcome) -> dict[str, Any]:
    """The trial's user attributes that show its outcome in optuna-dashboard: `status`, each run's status and
    summary metrics (`runs`, keeping the folder, run_dir and signature the sweeper gave it) and the mean of each
    RESULT_KEYS metric over the runs that have it."""
    rows = []
    for run, rec in zip(runs, recs, strict=True):
        summary = (rec or {}).get("summary") or {}
        rows.append({**run, "status": (rec or {}).get("status", "missing"),
                     **{k: objective_value(summary, k) for k in RESULT_KEYS}})  # fmt: skip
    attrs: dict[str, Any] = {STATUS_ATTR: pooled.status, TRIAL_RUNS_ATTR: rows}
    for key in RESULT_KEYS:
        found = [r[key] for r in rows if r[key] is not None]
        attrs[key] = math.fsum(found) / len(found) if found else None
    return attrs


def tell(study: optuna.Study, number: int, result: Outcome, attrs: dict[str, Any] | None = None) -> bool:
    """Finish a RUNNING trial, after setting its user attributes `attrs`, its `status` and `outcome`; False when
    another process finished it first."""
    try:
        api.set_trial_user_attrs(
            study, number, {STATUS_ATTR: result.status, **(attrs or {}), "outcome": result.reason[:500]}
        )
        if result.state == TrialState.COMPLETE:
            study.tell(number, result.value)
        else:
            study.tell(number, state=result.state)
    except (RuntimeError, ValueError):  # UpdateFinishedTrialError is a RuntimeError
        if api.trial_state(study, number).is_finished():
            return False  # another process settled it first
        raise
    return True


def stopped_by_pruner(t: FrozenTrial) -> bool:
    return t.state == TrialState.PRUNED and t.user_attrs.get(STATUS_ATTR) == PRUNED


def counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """Trials by state, plus: `stopped` (PRUNED by the pruner), `finished` (complete + stopped: what n_trials
    counts), `bad` (diverged or failed runs, which count against max_failed_trials: not the trials another
    process had made unnecessary, `surplus`, nor those whose sweep process died before their runs ended,
    `stale`)."""
    out = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    for t in trials:
        key = t.state.name.lower()
        out[key] = out.get(key, 0) + 1
    out["stopped"] = sum(1 for t in trials if stopped_by_pruner(t))
    out["finished"] = out["complete"] + out["stopped"]
    out["bad"] = sum(
        1
        for t in trials
        if t.state in (TrialState.FAIL, TrialState.PRUNED)
        and not stopped_by_pruner(t)
        and not t.user_attrs.get(SURPLUS_ATTR)
        and not t.user_attrs.get(STALE_ATTR)
    )
    out["surplus"] = sum(1 for t in trials if t.user_attrs.get(SURPLUS_ATTR))
    out["stale"] = sum(1 for t in trials if t.user_attrs.get(STALE_ATTR))
    return out
