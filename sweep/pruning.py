"""A trial run reports its held-out curve to its Optuna trial and stops early when the study's pruner says so.

A tuning sweep (hydra_plugins/rnn_sweep_optuna, docs/tuning.md) runs each trial once per search seed, in
launcher workers (joblib, submitit, ray: any process that reaches the study's storage). Optuna's pruners compare
trials step by step, so one curve per trial is reported: that of the trial's FIRST search seed, whose data stream
is the same in every trial of the study (a like-for-like comparison). It reports the objective at each held-out
evaluation (`trial.report(value, step=update)`) and asks `trial.should_prune()`; when the pruner says yes it marks
the trial `pruned_at` and stops. The trial's other seeds look for that mark at their own evaluations and stop
too. Stopped runs are recorded with status `pruned` (a finished status: a rerun does not train them again), and
the sweep process tells the trial PRUNED once all its runs are back.

What the runs need is in their config (`study`, `trial`, `study_storage`, set by the sweeper) and in the study
(its `objective` and `pruner` user attributes). A plain run (no `trial`) gets no reporter and never imports
Optuna. A storage that cannot be reached costs the pruning, never the run: training goes on without reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger(__name__)

# Names shared with the sweep process (hydra_plugins/rnn_sweep_optuna), in the storage.
STUDY_OBJECTIVE_ATTR = "objective"  # study user attribute: the summary metric trials are judged on
STUDY_PRUNER_ATTR = "pruner"  # study user attribute: the pruner setting (null, a name or {_target_: ...})
TRIAL_RUNS_ATTR = "runs"  # trial user attribute: one entry per search seed, the reporting seed first
PRUNED_AT_ATTR = "pruned_at"  # trial user attribute set by the reporting run when the pruner stops the trial

Reporter = Callable[[int, dict[str, Any]], bool]


def reporter_for(cfg: DictConfig) -> Reporter | None:
    """`on_eval(update, metrics) -> stop` for a trial run, None for any other run.

    `metrics` are those of one held-out evaluation, keyed as in the run summary (`valid_loss`,
    `valid_accuracy`, `lag_accuracy`: {lag: accuracy}); the study's objective is read from them by its dotted
    path. `stop` is True when the run should end now, recorded as pruned."""
    if cfg.get("trial") is None or not cfg.get("study") or not cfg.get("study_storage"):
        return None
    try:
        return _TrialReporter.connect(str(cfg.study_storage), str(cfg.study), int(cfg.trial), int(cfg.seed))
    except Exception as exc:  # unreachable storage, deleted study: the run still trains, unpruned
        log.warning("trial %s of %s: cannot reach its study (%s); training without pruning", cfg.trial, cfg.study,
                    _short(exc))  # fmt: skip
        return None


class _TrialReporter:
    def __init__(self, study: Any, number: int, seed: int, objective: str, reports: bool) -> None:
        self.study, self.number, self.seed, self.objective = study, number, seed, objective
        self.reports = reports  # the trial's first search seed: reports and asks the pruner; the others follow
        self.trial: Any = None
        self.warned = False

    @classmethod
    def connect(cls, url: str, study_name: str, number: int, seed: int) -> _TrialReporter:
        import optuna  # here, not at module level: only trial runs pay for it

        from sweep import _optuna_api as api
        from sweep.optuna_setup import make_pruner, open_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # the sampler is never asked here; a RandomSampler is the cheapest to build
        study = optuna.load_study(study_name=study_name, storage=open_storage(url),
                                  sampler=optuna.samplers.RandomSampler())  # fmt: skip
        attrs = study.user_attrs
        study.pruner = make_pruner(attrs.get(STUDY_PRUNER_ATTR))
        runs = api.fresh_trial(study, number).user_attrs.get(TRIAL_RUNS_ATTR) or []
        first = int(runs[0]["seed"]) if runs else seed
        reporter = cls(study, number, seed, str(attrs.get(STUDY_OBJECTIVE_ATTR, "valid_loss")), first == seed)
        if reporter.reports:
            reporter.trial = api.running_trial(study, number)
        return reporter

    def __call__(self, update: int, metrics: dict[str, Any]) -> bool:
        try:
            return self._report(update, metrics) if self.reports else self._pruned_elsewhere()
        except Exception as exc:  # a storage hiccup, or the trial settled by another process: keep training
            if not self.warned:
                self.warned = True
                log.warning("trial %d of %s: could not report to its study (%s); training on", self.number,
                            self.study.study_name, _short(exc))  # fmt: skip
            return False

    def _report(self, update: int, metrics: dict[str, Any]) -> bool:
        from sweep import _optuna_api as api
        from sweep.optuna_setup import objective_value

        value = objective_value(metrics, self.objective)
        if value is None:
            if not self.warned:
                self.warned = True
                log.warning("trial %d: the evaluation has no finite %r (has: %s); not reported", self.number,
                            self.objective, ", ".join(sorted(metrics)))  # fmt: skip
            return False
        self.trial.report(value, step=int(update))
        if not self.trial.should_prune():
            return False
        mark = {"update": int(update), "seed": self.seed, "value": value}
        api.set_trial_user_attrs(self.study, self.number, {PRUNED_AT_ATTR: mark})
        log.info("trial %d of %s pruned at update %d (%s=%.5g)", self.number, self.study.study_name, update,
                 self.objective, value)  # fmt: skip
        return True

    def _pruned_elsewhere(self) -> bool:
        from sweep import _optuna_api as api

        mark = api.fresh_trial(self.study, self.number).user_attrs.get(PRUNED_AT_ATTR)
        if mark:
            log.info("trial %d of %s was pruned by its seed-%s run at update %s: stopping", self.number,
                     self.study.study_name, mark.get("seed"), mark.get("update"))  # fmt: skip
        return bool(mark)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]
