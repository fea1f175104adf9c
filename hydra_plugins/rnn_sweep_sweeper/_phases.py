"""The grid sweeper's phases before the grid trains: the speed phase and the lr search (docs/protocol.md).

Imported lazily by _impl.py (the leading underscore keeps Hydra's plugin scan from executing it on
every start), and free of torch: the speed phase runs in a child process (`python -m sweep.speed`), the lr
search through the sweep's own launcher, so the sweep's parent process never trains.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from sweep.plan import PlannedJob, SweepFailed, plan_points, with_values
from sweep.plan import override_key as _key

log = logging.getLogger(__name__)

SPEED_PLAN = "speed_plan.json"
SPEED_TABLE = "speed.parquet"
LR_SEARCH_FILE = "lr_search.json"
LR_SEARCH_DIR = "lr_search"
# Keys a speed point is named by; the rest of its config (model size, optimizer, ...) is taken from the first
# grid point with that key, and a grid whose points differ in more than these keys gets a warning.
SPEED_KEYS = ("task", "cell", "batch_size", "num_steps")
# Keys that change neither the speed of an update nor the shape of the work.
_SPEED_IRRELEVANT = ("seed", "budget", "eval", "measure", "name", "results_dir", "study", "trial", "progress_every_s")


# ------------------------------------------------------------------------------------------------ speed phase
def speed_points(jobs: list[PlannedJob], tasks: list[str] | None = None) -> list[dict[str, Any]]:
    """One point per distinct (task, cell, batch_size, num_steps) of the grid, in grid order."""
    from sweep.record import resolved_config

    points: dict[tuple, dict[str, Any]] = {}
    for job in jobs:
        c = job.config
        if tasks and c.task.name not in tasks:
            continue
        key = {"task": str(c.task.name), "cell": str(c.model.cell), "batch_size": int(c.batch_size),
               "num_steps": int(c.num_steps)}  # fmt: skip
        conf = resolved_config(c)
        shape = {k: v for k, v in conf.items() if k not in _SPEED_IRRELEVANT}
        # the lr changes neither the work of an update nor its time
        shape["optim"] = {k: v for k, v in shape.get("optim", {}).items() if k not in ("lr", "lr_protocol")}
        k = tuple(key.values())
        if k not in points:
            points[k] = {"key": key, "config": conf, "_shape": shape}
        elif points[k]["_shape"] != shape:
            log.warning("speed phase: grid points %s differ in more than %s; timing the first", key, SPEED_KEYS)
    return [{"key": p["key"], "config": p["config"]} for p in points.values()]


def run_speed_phase(jobs: list[PlannedJob], speed: Any, sweep_dir: Path) -> None:
    """Time the grid's points one at a time in a child process (nothing else trains meanwhile)."""
    from sweep.record import write_json

    points = speed_points(jobs, list(speed.get("tasks") or []))
    if not points:
        raise SweepFailed(f"speed phase: no grid point matches hydra.sweeper.speed.tasks={list(speed.tasks)}")
    plan = {
        "out": str(sweep_dir / SPEED_TABLE),
        "rounds": int(speed.rounds),
        "min_seconds": float(speed.min_seconds),
        "min_updates": int(speed.min_updates),
        "warmup_updates": int(speed.warmup_updates),
        "threads": int(speed.threads),
        "device": str(speed.device),
        "points": points,
    }
    plan_file = sweep_dir / SPEED_PLAN
    write_json(plan_file, plan)
    log.info("speed phase: %d points x %d rounds, one at a time, %d thread(s)", len(points), plan["rounds"],
             plan["threads"])  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "sweep.speed", str(plan_file)], check=False)
    if proc.returncode != 0:
        raise SweepFailed(f"speed phase failed (exit {proc.returncode}); its plan is {plan_file}")


# ---------------------------------------------------------------------------------------------------- lr search
def _groups(jobs: list[PlannedJob], search: Any) -> dict[tuple[str, ...], list[str]]:
    """Grid points that differ only in the seed, once `search.overrides` are applied, share one lr: group key
    (the sorted overrides that remain) -> those overrides."""
    return {gk: list(gk) for gk in dict.fromkeys(group_key(job, search) for job in jobs)}


def group_key(job: PlannedJob, search: Any) -> tuple[str, ...]:
    fixed = {_key(o) for o in search.get("overrides") or []}
    drop = {"seed", "optim.lr", "optim.lr_protocol", "name"} | fixed
    return tuple(sorted(o for o in job.overrides if _key(o) not in drop))


def search_overrides(base: list[str], search: Any, name: str) -> list[list[str]]:
    """The runs of one group's search: every lr in `values` x every search seed."""
    return [
        [
            *base,
            *search.overrides,
            f"seed={seed}",
            f"optim.lr={lr!r}",
            "optim.lr_protocol=candidate",
            f"name={name}/{LR_SEARCH_DIR}",
        ]
        for lr in search["values"]
        for seed in search["seeds"]
    ]


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The lr with the lowest mean objective over the search seeds. A failed or diverged seed makes that lr's
    mean infinite: an lr that diverges on some seeds is not a safe choice."""
    by_lr: dict[float, list[float]] = {}
    for r in rows:
        value = r["objective"] if r["status"] == "complete" and r["objective"] is not None else math.inf
        by_lr.setdefault(r["lr"], []).append(float(value))
    means = {lr: sum(v) / len(v) for lr, v in by_lr.items()}
    best = min(means, key=lambda lr: (means[lr], lr))
    return {"lr": best, "mean_objective": means[best], "n": len(by_lr[best]), "means": means}


def check_search(search: Any) -> None:
    """Bad search settings stop the sweep before anything runs, with one line naming the field."""
    from sweep.config import ConfigError

    for lr in search["values"]:
        if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ConfigError(f"invalid sweep: hydra.sweeper.lr_search.values: {lr!r} is not a positive number")
    if not search["seeds"]:
        raise ConfigError("invalid sweep: hydra.sweeper.lr_search.seeds: must name at least one search seed")


def _plan_search(sweeper: Any, jobs: list[PlannedJob], search: Any) -> dict[tuple, list[PlannedJob]]:
    """Group key -> the planned search runs of that group."""
    name = str(jobs[0].config.name) if jobs else "default"
    return {
        gk: plan_points(sweeper, search_overrides(base, search, name)) for gk, base in _groups(jobs, search).items()
    }


def plan_lr_search(sweeper: Any, jobs: list[PlannedJob], search: Any) -> tuple[list[PlannedJob], dict[str, Any] | None]:
    """The search runs, and what `with_chosen_lr` needs when every one of them already has a record (else None);
    reads records only (a dry run)."""
    from sweep.record import read_run

    planned = _plan_search(sweeper, jobs, search)
    every = [j for js in planned.values() for j in js]
    if any(read_run(j.out_dir) is None for j in every):
        return every, None
    try:
        sweep_dir = Path(sweeper.config.hydra.sweep.dir)
        return every, {**_search_result(planned, search, sweep_dir)[2], "runs": every}
    except SweepFailed:
        return every, None


def run_lr_search(sweeper: Any, jobs: list[PlannedJob], search: Any, sweep_dir: Path) -> dict[str, Any]:
    """Run (or reuse) the search runs, pick one lr per group, write lr_search.json. Returns what
    `with_chosen_lr` needs (the search settings and group key -> lr) and the search runs (`runs`)."""
    from sweep.plan import write_plan
    from sweep.record import write_json

    planned = _plan_search(sweeper, jobs, search)
    every = [j for js in planned.values() for j in js]
    log.info("lr search: %d groups x %d lrs x %d seeds = %d runs", len(planned), len(search["values"]),
             len(search["seeds"]), len(every))  # fmt: skip
    # the plan, before the first search run starts: the grid's folders follow from the lr the search chooses
    write_plan(sweep_dir, {LR_SEARCH_DIR: every}, pending={"grid": len(jobs)})
    sweeper.run_jobs(every, label="lr search: ")  # waits for runs another process holds: every lr needs its record
    table, chosen, result = _search_result(planned, search, sweep_dir)
    objective = str(search.get("objective") or "valid_loss")
    write_json(sweep_dir / LR_SEARCH_FILE, {
        "values": list(search["values"]), "seeds": list(search["seeds"]), "overrides": list(search.overrides),
        "objective": objective, "by": result["by"], "rule": "lowest mean held-out objective over the search seeds",
        "table": table, "chosen": chosen,
    })  # fmt: skip
    for c in chosen:
        log.info("lr search: %s -> lr %g", c["group"], c["lr"])
    return {"search": search, "lr": result["lr"], "runs": every}


def _search_result(
    planned: dict[tuple, list[PlannedJob]], search: Any, sweep_dir: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(table rows, chosen lr per group, {search, lr: group key -> lr, by}) from the search runs' records."""
    from sweep.record import read_run

    objective = str(search.get("objective") or "valid_loss")
    # the keys whose values differ between groups: what the chosen lr depends on
    values: dict[str, list[str]] = {}
    for gk in planned:
        for o in gk:
            values.setdefault(_key(o), []).append(o)
    varying = sorted(k for k, v in values.items() if len(set(v)) > 1 or len(v) < len(planned))
    table, chosen, result = [], [], {}
    for gk, js in planned.items():
        rows = []
        for j in js:
            rec = read_run(j.out_dir) or {}
            summary = rec.get("summary") or {}
            status = rec.get("status", "missing") if rec.get("signature") == j.signature else "missing"
            c = j.config
            folder = j.out_dir.relative_to(sweep_dir) if j.out_dir.is_relative_to(sweep_dir) else j.out_dir
            rows.append({
                "group": " ".join(o for o in gk if _key(o) in varying) or "all", "task": str(c.task.name),
                "cell": str(c.model.cell), "batch_size": int(c.batch_size), "num_steps": int(c.num_steps),
                "lr": float(c.optim.lr), "seed": int(c.seed), "status": status,
                "objective": summary.get(objective), "folder": str(folder),
            })  # fmt: skip
        best = choose(rows)
        if not math.isfinite(best["mean_objective"]):
            raise SweepFailed(
                f"lr search: every lr in {list(search['values'])} failed or diverged for {' '.join(gk) or 'defaults'}"
                f" (records under {sweep_dir / LR_SEARCH_DIR})"
            )
        table.extend(rows)
        first = rows[0]
        chosen.append({
            "group": first["group"], "task": first["task"], "cell": first["cell"], "batch_size": first["batch_size"],
            "lr": best["lr"], f"mean_{objective}": best["mean_objective"], "n": best["n"],
            "means": {repr(lr): m for lr, m in best["means"].items()},
        })  # fmt: skip
        result[gk] = best["lr"]
    return table, chosen, {"search": search, "lr": result, "by": varying}


def with_lr(job: PlannedJob, lr: float) -> PlannedJob:
    """The grid point `job` trained with the searched `lr`: its config, folder and signature updated in place of
    a fresh composition (the lr changes nothing else a composition would derive)."""
    from sweep.record import signature

    overrides = [o for o in job.overrides if _key(o) not in ("optim.lr", "optim.lr_protocol")]
    overrides += [f"optim.lr={lr!r}", "optim.lr_protocol=searched"]
    cfg = with_values(job.config, overrides, {"optim.lr": float(lr), "optim.lr_protocol": "searched"})
    out_dir = Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)  # subdir interpolates override_dirname
    return PlannedJob(overrides, out_dir, signature(cfg), job.cost, cfg)


def with_chosen_lr(jobs: list[PlannedJob], chosen: dict[str, Any]) -> list[PlannedJob]:
    """The grid's points, each with its group's searched lr."""
    return [with_lr(job, chosen["lr"][group_key(job, chosen["search"])]) for job in jobs]
