"""The grid sweeper's phases before the grid trains: the speed phase and the lr search (docs/protocol.md).

Imported lazily by _impl.py (the leading underscore keeps Hydra's plugin scan from executing it on
every start), and free of torch: the speed phase runs in a child process (`python -m sweep.speed`), the lr
search through the sweep's own launcher, so the sweep's parent process never trains.
"""

from __future__ import annotations

import logging
import math
import re
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
def speed_points(
    jobs: list[PlannedJob], tasks: list[str] | None = None, exclude: list[str] | None = None
) -> list[dict[str, Any]]:
    """One point per distinct (task, cell, batch_size, num_steps) of the grid, in grid order. Points with any of
    the overrides in `exclude` are not timed (the claim preset's exploding-regime runs: no speed claim reads them,
    and they share their keys with the points that are timed)."""
    from sweep.record import resolved_config

    skip = set(exclude or [])
    points: dict[tuple, dict[str, Any]] = {}
    for job in jobs:
        c = job.config
        if tasks and c.task.name not in tasks:
            continue
        if skip.intersection(job.overrides):
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


def _decide_ok(entry: Any) -> bool:
    """[b1, b2, lo, hi]: two different whole batch sizes >= 1 and a band 0 < lo < hi (sweep/speed.py's
    decide_entry_ok, which imports torch with its module: this process never does)."""
    if isinstance(entry, (str, bytes)) or not hasattr(entry, "__len__") or len(entry) != 4:
        return False
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in entry):
        return False
    b1, b2, lo, hi = entry
    return b1 >= 1 and b2 >= 1 and b1 == int(b1) and b2 == int(b2) and b1 != b2 and 0 < lo < hi


def check_speed(speed: Any) -> None:
    """Bad speed-phase settings stop the sweep before anything runs, with one line naming the field (the speed
    command checks its plan again: sweep/speed.py's check_plan)."""
    from sweep.config import ConfigError

    rounds, max_rounds = speed.get("rounds"), speed.get("max_rounds", speed.get("rounds"))
    if isinstance(rounds, bool) or not (isinstance(rounds, int) and rounds >= 1):
        raise ConfigError(f"invalid sweep: hydra.sweeper.speed.rounds={rounds!r}: must be an integer >= 1")
    if isinstance(max_rounds, bool) or not (isinstance(max_rounds, int) and max_rounds >= rounds):
        raise ConfigError(
            f"invalid sweep: hydra.sweeper.speed.max_rounds={max_rounds!r}: must be an integer >= rounds ({rounds})"
        )
    for i, entry in enumerate(speed.get("decide") or []):
        plain = list(entry) if hasattr(entry, "__len__") and not isinstance(entry, str) else entry
        if not _decide_ok(plain):
            raise ConfigError(
                f"invalid sweep: hydra.sweeper.speed.decide[{i}]={plain!r}: must be [b1, b2, lo, hi], two different "
                "batch sizes >= 1 and a band 0 < lo < hi"
            )


def run_speed_phase(jobs: list[PlannedJob], speed: Any, sweep_dir: Path) -> None:
    """Time the grid's points one at a time in a child process (nothing else trains meanwhile)."""
    from sweep.record import write_json

    points = speed_points(jobs, list(speed.get("tasks") or []), list(speed.get("exclude") or []))
    if not points:
        raise SweepFailed(f"speed phase: no grid point matches hydra.sweeper.speed.tasks={list(speed.tasks)}")
    plan = {
        "out": str(sweep_dir / SPEED_TABLE),
        "rounds": int(speed.rounds),
        "max_rounds": int(speed.get("max_rounds", speed.rounds)),
        "decide": [[int(b1), int(b2), float(lo), float(hi)] for b1, b2, lo, hi in speed.get("decide") or []],
        "min_seconds": float(speed.min_seconds),
        "min_updates": int(speed.min_updates),
        "warmup_updates": int(speed.warmup_updates),
        "threads": int(speed.threads),
        "device": str(speed.device),
        "points": points,
    }
    plan_file = sweep_dir / SPEED_PLAN
    write_json(plan_file, plan)
    log.info("speed phase: %d points x %d rounds (up to %d while a decision pair is open), one at a time, %d "
             "thread(s)", len(points), plan["rounds"], plan["max_rounds"], plan["threads"])  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "sweep.speed", str(plan_file)], check=False)
    if proc.returncode != 0:
        raise SweepFailed(f"speed phase failed (exit {proc.returncode}); its plan is {plan_file}")


# ---------------------------------------------------------------------------------------------------- lr search
# Override keys the search sets on each of its runs itself: a search setting that names one of them is refused.
_SEARCH_SETS = ("seed", "optim.lr", "optim.lr_protocol")
STOP_INSIDE = "inside"
STOP_LIMIT = "edge: limit reached"


def fixed_lr(job: PlannedJob) -> bool:
    """A grid point whose own overrides set optim.lr (a sub-grid that keeps a fixed lr on purpose) is not searched
    and keeps its lr. The command line cannot set it while a search is on (_impl.py refuses that)."""
    return any(_key(o) == "optim.lr" for o in job.overrides)


def search_settings(task: str, search: Any) -> list[str]:
    """The search runs' own settings for a group of grid points of `task`: `overrides_by_task[task]` when
    given, else `overrides`."""
    by_task = search.get("overrides_by_task") or {}
    return list(by_task[task]) if task in by_task else list(search.get("overrides") or [])


def group_key(job: PlannedJob, search: Any) -> tuple[str, tuple[str, ...]]:
    """(the grid point's task, its overrides the search keeps): grid points with the same key share one lr.
    The task is part of the key whatever the search settings are, so points of different tasks never share an
    lr, even where the search settings fix `task=` for both."""
    task = str(job.config.task.name)
    drop = {*_SEARCH_SETS, *(_key(o) for o in search_settings(task, search))}
    return task, tuple(sorted(o for o in job.overrides if _key(o) not in drop))


def _groups(jobs: list[PlannedJob], search: Any) -> list[tuple[str, tuple[str, ...]]]:
    return list(dict.fromkeys(group_key(job, search) for job in jobs if not fixed_lr(job)))


def search_overrides(group: tuple[str, tuple[str, ...]], search: Any, lrs: list[float]) -> list[list[str]]:
    """The runs of one group's search at `lrs`: every lr x every search seed. Their folders are set afterwards
    (`_in_search_dir`); `optim.lr_protocol=candidate` tells their records from the grid's."""
    task, rest = group
    own = [*rest, *search_settings(task, search)]
    return [
        [*own, f"seed={seed}", f"optim.lr={lr!r}", "optim.lr_protocol=candidate"]
        for lr in lrs
        for seed in search["seeds"]
    ]


_SIMPLE = re.compile(r"^[A-Za-z0-9_./+\-]+$")


def _quote(text: str) -> str:
    """A string as one Hydra override value that the parser keeps as it is (`=` and `,` included). In a quoted
    value Hydra unescapes only backslashes before a quote (and before the closing one): those are doubled."""
    if _SIMPLE.match(text):
        return text
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return f"'{body}'"


def _in_search_dir(job: PlannedJob, sweep_dir: Path) -> PlannedJob:
    """`job` with its folder at `<sweep dir>/lr_search/<its run folder name>`, set by literal hydra.sweep.dir and
    hydra.sweep.subdir overrides: the same folder whether the sweep folder came from the default
    `${results_dir}/${name}`, from `hydra.sweep.dir=D` or from `name=...`, and the one the launched job composes
    (hydra.* overrides are not part of override_dirname, so the run folder's name does not change)."""
    import copy

    from omegaconf import OmegaConf, open_dict

    assert job.config is not None
    folder, subdir = sweep_dir / LR_SEARCH_DIR, str(job.config.hydra.sweep.subdir)
    overrides = [*job.overrides, f"hydra.sweep.dir={_quote(str(folder))}", f"hydra.sweep.subdir={_quote(subdir)}"]
    cfg = copy.deepcopy(job.config)
    with open_dict(cfg):
        OmegaConf.update(cfg, "hydra.sweep.dir", str(folder), merge=False)
        OmegaConf.update(cfg, "hydra.sweep.subdir", subdir, merge=False)
    return PlannedJob(overrides, folder / subdir, job.signature, job.cost, cfg)


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


def beyond(lr: float, factor: float, side: str) -> float:
    """The next lr past an edge: lr / factor below, lr x factor above, to 3 significant digits (folder names stay
    short: 0.001 / 3 -> 0.000333), unless rounding would give the edge itself back."""
    raw = lr / factor if side == "low" else lr * factor
    rounded = float(f"{raw:.3g}")
    return rounded if rounded != lr else raw


def widen(tried: list[float], best: float, initial: list[float], factor: float, max_widen: int) -> dict[str, Any]:
    """The widening decision for one group: {"next": the lrs to train next (empty: stop), "stopped": None |
    "inside" | "edge: limit reached", "edge": None | "low" | "high" | "both"}.

    A best lr strictly inside the values tried is bracketed: stop ("inside"). A best at the smallest (largest)
    value tried says the optimum may lie beyond it: try the next value past it, until `max_widen` values past
    the initial range have been tried on that side ("edge: limit reached"). A single value is both edges."""
    low, high = min(tried), max(tried)
    sides = [s for s, edge in (("low", low), ("high", high)) if best == edge]
    if not sides:
        return {"next": [], "stopped": STOP_INSIDE, "edge": None}
    past = {"low": sum(v < min(initial) for v in tried), "high": sum(v > max(initial) for v in tried)}
    nxt = [beyond(low if s == "low" else high, factor, s) for s in sides if past[s] < max_widen]
    edge = sides[0] if len(sides) == 1 else "both"
    return {"next": nxt, "stopped": None if nxt else STOP_LIMIT, "edge": edge}


def check_search(search: Any) -> None:
    """Bad search settings stop the sweep before anything runs, with one line naming the field."""
    from sweep.config import ConfigError

    def bad(field: str, what: str) -> ConfigError:
        return ConfigError(f"invalid sweep: hydra.sweeper.lr_search.{field}: {what}")

    for lr in search["values"]:
        if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise bad("values", f"{lr!r} is not a positive number")
    seeds = list(search.get("seeds") or [])
    if not seeds:
        raise bad("seeds", "must name at least one search seed")
    if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise bad("seeds", f"{seeds}: must be distinct integers")
    factor = search.get("widen_factor", 3.0)
    if isinstance(factor, bool) or not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 1):
        raise bad("widen_factor", f"{factor!r}: must be a number > 1")
    max_widen = search.get("max_widen", 2)
    if isinstance(max_widen, bool) or not (isinstance(max_widen, int) and max_widen >= 0):
        raise bad("max_widen", f"{max_widen!r}: must be an integer >= 0")
    by_task = search.get("overrides_by_task") or {}
    for field, lines in [("overrides", search.get("overrides") or []),
                         *((f"overrides_by_task.{t}", v or []) for t, v in by_task.items())]:  # fmt: skip
        for line in lines:
            if not isinstance(line, str) or "=" not in line:
                raise bad(field, f"{line!r} is not an override (key=value)")
            if _key(line) in _SEARCH_SETS or _key(line).startswith("hydra."):
                raise bad(field, f"{line!r}: the search sets {_key(line)} itself")


def check_search_grid(jobs: list[PlannedJob], search: Any) -> None:
    """Search settings that only the planned grid can refute: a search seed the grid also trains (the lr would
    be chosen on outcomes the report then judges), and an `overrides_by_task` key that is no task of the grid."""
    from sweep.config import ConfigError

    seeds = {int(j.config.seed) for j in jobs}
    clash = sorted(seeds & {int(s) for s in search["seeds"]})
    if clash:
        raise ConfigError(
            f"invalid sweep: hydra.sweeper.lr_search.seeds: {clash} also seed the grid (seeds {sorted(seeds)}); "
            "search seeds must be seeds the grid never uses"
        )
    tasks = {str(j.config.task.name) for j in jobs}
    unknown = sorted(set(search.get("overrides_by_task") or {}) - tasks)
    if unknown:
        raise ConfigError(
            f"invalid sweep: hydra.sweeper.lr_search.overrides_by_task: {unknown} is no task of the grid "
            f"(its tasks: {', '.join(sorted(tasks))})"
        )


class _Search:
    """One lr search: the groups, the lrs each has tried, and its runs (shared between groups whose search runs
    are the same runs), planned a widening step at a time."""

    def __init__(self, sweeper: Any, jobs: list[PlannedJob], search: Any) -> None:
        self.sweeper, self.search = sweeper, search
        self.sweep_dir = Path(sweeper.config.hydra.sweep.dir)
        self.initial = sorted({float(v) for v in search["values"]})
        self.factor = float(search.get("widen_factor", 3.0))
        self.max_widen = int(search.get("max_widen", 2))
        # with `batch_sizes` set, only groups at those batch sizes are searched; the others take their lr from the
        # searched neighbours (`interpolated_lr`)
        every = _groups(jobs, search)
        only = {int(b) for b in search.get("batch_sizes") or []}
        self.groups = [g for g in every if not only or _batch_of(g) is None or _batch_of(g) in only]
        self.between = [g for g in every if g not in self.groups]
        self.tried = {g: list(self.initial) for g in self.groups}
        self.runs: dict[tuple, dict[float, list[PlannedJob]]] = {g: {} for g in self.groups}
        self.stops: dict[tuple, dict[str, Any]] = {}
        self._planned: dict[tuple[str, ...], PlannedJob] = {}
        self._warned: set[str] = set()

    def every(self) -> list[PlannedJob]:
        return list(self._planned.values())

    def plan(self) -> list[PlannedJob]:
        """Plan the runs of every lr tried and not yet planned; returns the new runs."""
        wanted = [(g, lr, o) for g in self.groups for lr in self.tried[g] if lr not in self.runs[g]
                  for o in search_overrides(g, self.search, [lr])]  # fmt: skip
        new = list(dict.fromkeys(tuple(o) for _, _, o in wanted if tuple(o) not in self._planned))
        for overrides, job in zip(new, plan_points(self.sweeper, [list(o) for o in new]), strict=True):
            self._planned[overrides] = _in_search_dir(job, self.sweep_dir)
        for g, lr, o in wanted:
            self.runs[g].setdefault(lr, []).append(self._planned[tuple(o)])
        elsewhere: dict[str, set[str]] = {}
        for g in self.groups:
            runs_task = {str(j.config.task.name) for js in self.runs[g].values() for j in js}
            if runs_task != {g[0]}:
                elsewhere.setdefault(g[0], set()).update(runs_task)
        for task, on in elsewhere.items():
            if task not in self._warned:  # once per task: an lr found on another task is a guess for this one
                self._warned.add(task)
                log.warning(
                    "lr search: grid points of task %s are searched on task %s (set "
                    "hydra.sweeper.lr_search.overrides_by_task.%s)", task, ", ".join(sorted(on)), task
                )  # fmt: skip
        return [self._planned[o] for o in new]

    def rows(self, g: tuple) -> list[dict[str, Any]]:
        from sweep.record import read_run

        objective = str(self.search.get("objective") or "valid_loss")
        rows = []
        for js in self.runs[g].values():
            for j in js:
                rec = read_run(j.out_dir) or {}
                status = rec.get("status", "missing") if rec.get("signature") == j.signature else "missing"
                c = j.config
                rows.append({
                    "task": str(c.task.name), "cell": str(c.model.cell), "batch_size": int(c.batch_size),
                    "num_steps": int(c.num_steps), "lr": float(c.optim.lr), "seed": int(c.seed), "status": status,
                    "objective": (rec.get("summary") or {}).get(objective) if status != "missing" else None,
                    "folder": str(_rel(j.out_dir, self.sweep_dir)),
                })  # fmt: skip
        return rows

    def step(self) -> bool:
        """Judge every open group on its records; True when some group widens (its next lrs are added)."""
        more = False
        for g in self.groups:
            if g in self.stops:
                continue
            best = choose(self.rows(g))
            if not math.isfinite(best["mean_objective"]):
                raise SweepFailed(
                    f"lr search: every lr in {sorted(self.tried[g])} failed or diverged for task {g[0]} "
                    f"{' '.join(g[1]) or 'defaults'} (records under {self.sweep_dir / LR_SEARCH_DIR})"
                )
            decision = widen(self.tried[g], best["lr"], self.initial, self.factor, self.max_widen)
            if decision["next"]:
                self.tried[g] = sorted({*self.tried[g], *decision["next"]})
                more = True
            else:
                self.stops[g] = decision
        return more

    def result(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        """(table rows, chosen lr per group, {search, lr: group key -> lr, by}) from the search runs' records."""
        objective = str(self.search.get("objective") or "valid_loss")
        labels = {g: _label(g) for g in self.groups}
        # the keys whose values differ between groups: what the chosen lr depends on
        values: dict[str, list[str]] = {}
        for parts in labels.values():
            for o in parts:
                values.setdefault(_key(o), []).append(o)
        varying = sorted(k for k, v in values.items() if len(set(v)) > 1 or len(v) < len(self.groups))
        table, chosen, lr = [], [], {}
        for g in self.groups:
            label = " ".join(o for o in labels[g] if _key(o) in varying) or "all"
            rows = [{"group": label, **r} for r in self.rows(g)]
            best = choose(rows)
            table.extend(rows)
            first, stop = rows[0], self.stops[g]
            chosen.append({
                "group": label, "task": g[0], "search_task": first["task"], "cell": first["cell"],
                "batch_size": first["batch_size"], "num_steps": first["num_steps"], "lr": best["lr"],
                f"mean_{objective}": best["mean_objective"], "n": best["n"],
                "means": {repr(k): m for k, m in best["means"].items()}, "tried": sorted(self.tried[g]),
                "widened": sorted(v for v in self.tried[g] if v not in self.initial), "stopped": stop["stopped"],
                "edge": stop["edge"],
            })  # fmt: skip
            lr[g] = best["lr"]
        for g in self.between:
            b = _batch_of(g)
            kin = [h for h in self.groups if _siblings(h) == _siblings(g)]
            side = {_batch_of(h): lr[h] for h in kin}
            first = " ".join(o for o in _label(kin[0]) if _key(o) in varying) or "all" if kin else None
            like = next((c for c in chosen if c["group"] == first), {})
            value, source = interpolated_lr(b, side)  # type: ignore[arg-type]
            lr[g] = value
            label = " ".join(o for o in _label(g) if _key(o) in varying) or "all"
            chosen.append({"group": label, "task": g[0], "search_task": like.get("search_task"),
                           "cell": like.get("cell"), "num_steps": like.get("num_steps"), "batch_size": b,
                           "lr": value, "interpolated": source, "stopped": "interpolated", "edge": None})  # fmt: skip
        return table, chosen, {"search": self.search, "lr": lr, "by": varying}


def _batch_of(g: tuple[str, tuple[str, ...]]) -> int | None:
    """The batch size a group's grid points set on their overrides (None when they leave it to the config)."""
    sizes = [o.split("=", 1)[1] for o in g[1] if _key(o) == "batch_size"]
    return int(sizes[0]) if sizes else None


def _siblings(g: tuple[str, tuple[str, ...]]) -> tuple[str, tuple[str, ...]]:
    """A group's key less its batch size: the groups an unsearched batch size takes its lr from."""
    return g[0], tuple(o for o in g[1] if _key(o) != "batch_size")


def interpolated_lr(batch_size: int, searched: dict[int, float]) -> tuple[float, str]:
    """The lr of an unsearched batch size from the searched ones of its siblings: geometric interpolation in log
    batch size between the nearest searched sizes below and above (the searched lr rises smoothly with batch
    size, as a power law: docs/protocol.md), the nearest one's lr beyond their range. Returns (lr, how)."""
    if not searched:
        raise SweepFailed(f"lr search: batch_size={batch_size} has no searched batch size to take its lr from")
    below = [b for b in searched if b <= batch_size]
    above = [b for b in searched if b >= batch_size]
    if not below or not above:
        b = max(below) if below else min(above)
        return searched[b], f"batch {b}'s (nearest searched)"
    lo, hi = max(below), min(above)
    if lo == hi:
        return searched[lo], f"batch {lo}'s"
    w = (math.log(batch_size) - math.log(lo)) / (math.log(hi) - math.log(lo))
    value = math.exp((1 - w) * math.log(searched[lo]) + w * math.log(searched[hi]))
    return float(f"{value:.3g}"), f"between batch {lo} ({searched[lo]:g}) and {hi} ({searched[hi]:g}), log-log"


def _label(g: tuple[str, tuple[str, ...]]) -> list[str]:
    task, rest = g
    return rest if any(_key(o) == "task" for o in rest) else [f"task={task}", *rest]


def _rel(folder: Path, sweep_dir: Path) -> Path:
    return folder.relative_to(sweep_dir) if folder.is_relative_to(sweep_dir) else folder


def plan_lr_search(sweeper: Any, jobs: list[PlannedJob], search: Any) -> tuple[list[PlannedJob], dict[str, Any] | None]:
    """The search runs known so far, and what `with_chosen_lr` needs when the records settle every group (else
    None); reads records only (a dry run): widening steps whose runs all have records are followed."""
    from sweep.record import read_run

    check_search_grid(jobs, search)
    s = _Search(sweeper, jobs, search)
    try:
        while True:
            new = s.plan()
            if any(read_run(j.out_dir) is None for j in new):
                return s.every(), None
            if not s.step():
                return s.every(), {**s.result()[2], "runs": s.every()}
    except SweepFailed:
        return s.every(), None


def run_lr_search(sweeper: Any, jobs: list[PlannedJob], search: Any, sweep_dir: Path) -> dict[str, Any]:
    """Run (or reuse) the search runs, widening each group's range while its best lr sits at an edge, pick one lr
    per group, write lr_search.json. Returns what `with_chosen_lr` needs (the search settings and group key ->
    lr) and the search runs (`runs`)."""
    from sweep.plan import write_plan
    from sweep.record import write_json

    check_search_grid(jobs, search)
    s = _Search(sweeper, jobs, search)
    log.info("lr search: %d groups x %d lrs x %d seeds = %d runs, then up to %d more lrs per side while a group's "
             "best is at an edge", len(s.groups), len(s.initial), len(search["seeds"]),
             len(s.groups) * len(s.initial) * len(search["seeds"]), s.max_widen)  # fmt: skip
    while True:
        new = s.plan()
        # the plan, before the step's first run starts: the grid's folders follow from the lr the search chooses
        write_plan(sweep_dir, {LR_SEARCH_DIR: s.every()}, pending={"grid": len(jobs)})
        sweeper.run_jobs(new, label="lr search: ")  # waits for runs another process holds: every lr needs its record
        if not s.step():
            break
        widened = [s.tried[g] for g in s.groups if g not in s.stops]
        log.info("lr search: best lr at an edge in %d of %d groups: widening (lrs now %s%s)", len(widened),
                 len(s.groups), widened[0], " ..." if len(widened) > 1 else "")  # fmt: skip
    table, chosen, result = s.result()
    objective = str(search.get("objective") or "valid_loss")
    by_task = {str(t): list(v or []) for t, v in (search.get("overrides_by_task") or {}).items()}
    write_json(sweep_dir / LR_SEARCH_FILE, {
        "values": list(search["values"]), "seeds": list(search["seeds"]),
        "overrides": list(search.get("overrides") or []), "overrides_by_task": by_task,
        "widen_factor": s.factor, "max_widen": s.max_widen, "objective": objective, "by": result["by"],
        "rule": "lowest mean held-out objective over the search seeds; the range widened past an edge while the "
                "best lr sat there, up to max_widen values per side",
        "table": table, "chosen": chosen,
    })  # fmt: skip
    for c in chosen:
        how = f"tried {c['tried']}" if "tried" in c else c["interpolated"]
        log.info("lr search: %s -> lr %g (%s; %s)", c["group"], c["lr"], c["stopped"], how)
    return {"search": search, "lr": result["lr"], "runs": s.every()}


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
    """The grid's points, each with its group's searched lr; a point whose own overrides fix optim.lr keeps it."""
    return [job if fixed_lr(job) else with_lr(job, chosen["lr"][group_key(job, chosen["search"])]) for job in jobs]
