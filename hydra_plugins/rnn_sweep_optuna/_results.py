"""What a tuning sweep writes at the end: `best_trials.json` (per cell: its best trial and test runs),
`lr_search.json` (every trial and each cell's chosen lr, in the lr search's format, for the report's lr table),
`sweep_summary.json`, and one line saying whether every cell was tuned and tested (docs/tuning.md)."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hydra_plugins.rnn_sweep_optuna import _outcomes as oc
from hydra_plugins.rnn_sweep_optuna import _search_space as ss
from hydra_plugins.rnn_sweep_optuna._cells import Cell
from hydra_plugins.rnn_sweep_optuna._trials import find_record
from sweep.optuna_setup import plain_spec, public_url
from sweep.plan import PlannedJob, SweepFailed, TuneSettings, override_key, summarize
from sweep.pruning import TRIAL_RUNS_ATTR
from sweep.record import (
    BEST_TRIALS_FILE,
    DONE_STATUSES,
    JUDGED_STATUSES,
    LR_SEARCH_FILE,
    SWEEP_SUMMARY_FILE,
    read_run,
    write_json,
)

log = logging.getLogger(__name__)

TUNED = "tuned"  # optim.lr_protocol of the test runs
BEST_VERSION = 2


def best_trial(cell: Cell, direction: str) -> FrozenTrial | None:
    """The COMPLETE trial with the best mean objective over the search seeds; ties go to the lower number."""
    complete = [t for t in cell.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return None
    sign = 1.0 if direction == "minimize" else -1.0
    return min(complete, key=lambda t: (sign * float(t.value), t.number))


def tuned(cell: Cell, s: TuneSettings) -> bool:
    """A cell whose study holds n_trials finished trials, at least one of them complete: it can be tested."""
    return oc.counts(cell.study.get_trials(deepcopy=False))["finished"] >= s.n_trials and (
        best_trial(cell, s.direction) is not None
    )


def _rel(folder: Path, sweep_dir: Path) -> str:
    return str(folder.relative_to(sweep_dir)) if folder.is_relative_to(sweep_dir) else str(folder)


def effective_lr(runs: list[dict[str, Any]], sweep_dir: Path) -> float | None:
    """The lr the runs used (summary.lr: after optim.lr_scaling), from the first record that has it."""
    for run in runs:
        lr = ((find_record(run, sweep_dir) or {}).get("summary") or {}).get("lr")
        if lr is not None:
            return float(lr)
    return None


def best_entry(
    cell: Cell, tests: list[PlannedJob], s: TuneSettings, hidden: set[str], sweep_dir: Path
) -> dict[str, Any]:
    trials = cell.study.get_trials(deepcopy=False)
    counts = oc.counts(trials)
    entry: dict[str, Any] = {
        "study": cell.name,
        "cell_folder": cell.job.out_dir.name,
        # the grid point less its seed: every override that names the runs' folders, as {key: value text}
        "cell": {k: v for k, v in (o.split("=", 1) for o in cell.job.overrides if "=" in o) if k not in hidden},
        "overrides": list(cell.job.overrides),
        "grid_seeds": [int(p.config.seed) for p in cell.points if p.config is not None],
        "counts": counts,
        "complete": tuned(cell, s),
        "trials": sorted(t.number for t in trials if t.state == TrialState.COMPLETE),
        "best": None,
        "test": None,
    }
    b = best_trial(cell, s.direction)
    if b is not None:
        runs = b.user_attrs.get(TRIAL_RUNS_ATTR) or []
        entry["best"] = {
            "trial": b.number,
            "value": b.value,  # the mean objective over the search seeds
            "values": b.user_attrs.get("values"),  # per search seed
            "params": {**b.params, **b.user_attrs.get("fixed_params", {})},
            "lr": effective_lr(runs, sweep_dir),  # effective lr, after optim.lr_scaling
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


def lr_table(cells: list[Cell], entries: list[dict[str, Any]], s: TuneSettings, rule_sampler: str, hidden: set[str],
             sweep_dir: Path) -> dict[str, Any]:  # fmt: skip
    """lr_search.json in the lr search's format: every trial that ran (its mean objective over the search seeds
    when complete) and the chosen lr of each tested cell, so the report's lr table reads tuned sweeps as it
    reads searched ones."""
    # the keys whose values differ between cells (or that some cells lack): what the chosen lr depends on
    values: dict[str, list[str]] = {}
    for cell in cells:
        for o in cell.job.overrides:
            values.setdefault(override_key(o), []).append(o)
    by = sorted(k for k, v in values.items() if k not in hidden and (len(set(v)) > 1 or len(v) < len(cells)))
    mean_key = f"mean_{s.objective}"
    table, chosen = [], []
    for cell, entry in zip(cells, entries, strict=True):
        c = cell.job.config
        assert c is not None
        where = {"task": str(c.task.name), "cell": str(c.model.cell), "batch_size": int(c.batch_size),
                 "num_steps": int(c.num_steps), "budget": str(c.budget.kind), "study": cell.name}  # fmt: skip
        for t in cell.study.get_trials(deepcopy=False):
            if t.user_attrs.get(oc.SURPLUS_ATTR):
                continue  # never ran
            lr = effective_lr(t.user_attrs.get(TRIAL_RUNS_ATTR) or [], sweep_dir)
            table.append({
                **where, "trial": t.number, "lr": lr if lr is not None else t.params.get("optim.lr"),
                "params": dict(t.params),
                # a pruned trial's value is Optuna's last intermediate value (one seed, part way): not a mean
                mean_key: t.value if t.state == TrialState.COMPLETE else None,
                "values": t.user_attrs.get("values"), "state": t.state.name.lower(),
                "status": t.user_attrs.get(oc.STATUS_ATTR),
            })  # fmt: skip
        if entry["best"] is not None and entry["complete"]:
            best = entry["best"]
            lr = best["lr"] if best["lr"] is not None else best["params"].get("optim.lr")
            chosen.append({**where, "trial": best["trial"], "lr": lr, mean_key: best["value"],
                           "n": len(s.search_seeds)})  # fmt: skip
    return {
        "values": None,
        "by": by,
        "rule": f"Optuna {rule_sampler}, {s.n_trials} trials per cell, mean {s.objective} over the search seeds "
        f"({s.direction})",
        "objective": s.objective,
        "search": ss.describe(s.search),
        "seeds": list(s.search_seeds),
        "table": table,
        "chosen": chosen,
    }


def finish(
    cells: list[Cell],
    tested: dict[str, list[PlannedJob]],
    trial_jobs: list[PlannedJob],
    s: TuneSettings,
    url: str,
    sampler_name: str,
    hidden: set[str],
    sweep_dir: Path,
) -> None:
    """Write the three files; raise SweepFailed (one line, exit 1) when a run failed or a cell was not tested."""
    entries = [best_entry(cell, tested.get(cell.name, []), s, hidden, sweep_dir) for cell in cells]
    write_json(sweep_dir / BEST_TRIALS_FILE, {
        "version": BEST_VERSION,
        "objective": s.objective,
        "direction": s.direction,
        "n_trials": s.n_trials,
        "search": ss.describe(s.search),
        "search_seeds": list(s.search_seeds),
        "sampler": sampler_name,
        "pruner": plain_spec(s.pruner),
        "storage": public_url(url),
        "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cells": entries,
    })  # fmt: skip
    write_json(sweep_dir / LR_SEARCH_FILE, lr_table(cells, entries, s, sampler_name, hidden, sweep_dir))

    test_jobs = [j for js in tested.values() for j in js]
    summary = summarize(trial_jobs + test_jobs)
    summary["phases"] = {"search": summarize(trial_jobs)["counts"], "test": summarize(test_jobs)["counts"]}
    summary["studies"] = {
        e["study"]: {"counts": e["counts"], "complete": e["complete"], "best_trial": (e["best"] or {}).get("trial")}
        for e in entries
    }
    write_json(sweep_dir / SWEEP_SUMMARY_FILE, summary)
    log.info(
        "tuning finished: %d of %d cells with %d finished trials; this process ran %d trial runs (%s); "
        "test runs: %s; best trials in %s",
        sum(1 for e in entries if e["complete"]),
        len(cells),
        s.n_trials,
        len(trial_jobs),
        ", ".join(f"{n} {st}" for st, n in sorted(summary["phases"]["search"].items())) or "none",
        ", ".join(f"{n} {st}" for st, n in sorted(summary["phases"]["test"].items())) or "none",
        sweep_dir / BEST_TRIALS_FILE,
    )
    # pruned trial runs are finished as planned; test runs are never pruned
    ok = set(DONE_STATUSES) | set(JUDGED_STATUSES)
    bad_jobs = {d: v for d, v in summary["jobs"].items() if v["status"] not in ok}
    short = [e["cell_folder"] for e in entries if not e["complete"]]
    if bad_jobs or short:
        parts = []
        if bad_jobs:
            names = "; ".join(f"{Path(d).name} ({v['status']})" for d, v in list(bad_jobs.items())[:10])
            parts.append(f"{len(bad_jobs)} of {len(summary['jobs'])} runs not complete: {names}")
        if short:
            parts.append(
                f"{len(short)} of {len(cells)} cells short of {s.n_trials} finished trials or without a complete "
                "one (not tested): " + "; ".join(short[:10])
            )
        raise SweepFailed(f"tuning finished with {' and '.join(parts)} (details in {sweep_dir / SWEEP_SUMMARY_FILE})")
