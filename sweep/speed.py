"""The speed phase: every grid point's training throughput, timed alone (docs/protocol.md, "Speed phase").

`python -m sweep.speed PLAN_JSON` times the training update of each point of the plan, one point at a time in one
process, with a fixed number of torch threads, after a warm-up, in round-robin rounds whose start point rotates,
each timed segment long enough (>= min_seconds and >= min_updates). Every segment is timed on two clocks: the wall
clock and the training thread's CPU clock. After `rounds` rounds, whole rounds are added (up to `max_rounds`)
until every decision pair of `decide` is decided on the judged clock (`judged_clock`, `decide_pair`). It writes
`speed.parquet` (one row per point and round) and `speed.json` (the plan, its hash, the environment, the
calibrated segment lengths, the judged clock, the rounds done, per-point CVs and the decisions) next to the plan's
`out`. Speed claims are judged from this file only: runs trained side by side share the cores, and their tokens/s
say as much about their neighbours as about batch_size.

Plan: {"out": ".../speed.parquet", "rounds": 5, "max_rounds": 15, "decide": [[1, 4, 3.0, 5.0]], "min_seconds":
0.5, "min_updates": 100, "warmup_updates": 20, "threads": 1, "device": "auto", "points": [{"key": {"task", "cell",
"batch_size", "num_steps"}, "config": {<the resolved config of that grid point>}}, ...]}. `max_rounds` and
`decide` are optional: a plan without them runs exactly `rounds` rounds and hashes as it did before they existed.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf

from sweep import record
from sweep.config import DEVICES, ConfigError, validate
from sweep.model import State
from sweep.train import Setup, build_setup, resolve_device, sync

KEY_FIELDS = ("task", "cell", "batch_size", "num_steps")
# the key's fields and where the same value sits in the point's config: a key that disagrees is a bad plan
_KEY_IN_CONFIG = {"task": "task.name", "cell": "model.cell", "batch_size": "batch_size", "num_steps": "num_steps"}
HASHED = ("points", "rounds", "min_seconds", "min_updates", "warmup_updates", "threads", "device")
# hashed only when the plan has them: a plan written before they existed keeps its hash, so its timing file stays done
HASHED_IF_PRESENT = ("max_rounds", "decide")
COLUMNS = [*KEY_FIELDS, "round", "order", "updates", "seconds", "tokens_per_s", "cpu_seconds", "cpu_tokens_per_s",
           "us_per_update", "cpu_us_per_update", "threads", "device", "cpu", "torch", "finite"]  # fmt: skip
MARGIN = 1.2  # calibrated segments aim 20 % above min_seconds, so a slightly faster round still clears it
DECIDE_LEVEL = 0.95  # the level of the decision intervals: the one the report judges at (analysis/thresholds.yaml)
# the per-round value each clock is judged by, in speed.parquet
CLOCK_COLUMN = {"cpu": "cpu_tokens_per_s", "wall": "tokens_per_s"}


class PlanError(ValueError):
    """A plan that cannot be run; the message names the field."""


def round_robin_order(n_points: int, rounds: int) -> list[list[int]]:
    """Point indices in visiting order, one list per round: every point once per round, round r starting at
    point r mod n_points, so no point is always first (first after the warm-up, or after the slowest point)."""
    if n_points < 1 or rounds < 1:
        raise ValueError(f"need n_points >= 1 and rounds >= 1, got {n_points} and {rounds}")
    return [[(r + j) % n_points for j in range(n_points)] for r in range(rounds)]


def calibrate_updates(seconds_per_update: float, min_seconds: float, min_updates: int, margin: float = MARGIN) -> int:
    """Updates per timed segment: enough for min_seconds (times `margin`) at the measured rate, and never fewer
    than min_updates."""
    if not (seconds_per_update > 0 and math.isfinite(seconds_per_update)):
        raise ValueError(f"seconds_per_update must be a positive number, got {seconds_per_update}")
    return max(int(min_updates), math.ceil(min_seconds / seconds_per_update * margin))


def superlinear(speedup: float, batch_ratio: float, tolerance: float = 0.0) -> bool:
    """A speed-up in tokens/s above the ratio of batch sizes (beyond `tolerance`, relative) cannot come from
    parallel rows alone: a larger batch does batch_ratio times the work per update, so at best the same time
    per update. Such a figure points at a measurement problem (interference, warm-up, clock), not hardware."""
    return bool(speedup > batch_ratio * (1.0 + tolerance))


def judged_clock(device_type: str, threads: int) -> tuple[str, str]:
    """The clock the report judges speed from, and why: ("cpu" | "wall", reason).

    The training thread's CPU time (time.thread_time) leaves out the time other processes held the core, so on a
    shared CPU it does not flip with the machine's load; it measures the whole update only when that thread does
    all the work (one torch thread, a CPU device). A GPU's work, or the work of intra-op worker threads, is not in
    it: there the wall clock (with a device synchronisation before every reading on CUDA) is the one that counts."""
    if device_type != "cpu":
        return "wall", (
            f"{device_type} device: the device's work is not in the host thread's CPU time; wall clock, synchronised "
            "before every reading"
        )
    if threads != 1:
        return "wall", (
            f"{threads} torch threads: the training thread's CPU time leaves out the intra-op workers; wall clock"
        )
    return "cpu", (
        "cpu device, 1 torch thread: the thread that trains does all the work, and its CPU time (time.thread_time) "
        "leaves out the time other processes held the core"
    )


def band_state(low: float, high: float, lo: float, hi: float) -> str:
    """Where an interval [low, high] lies against the band [lo, hi]: "inside" (wholly within, ends included),
    "outside" (wholly beyond one end), "straddling", or "undetermined" (no interval: fewer than two rounds).
    The rule analysis/verdicts.py's c3_state judges a point by."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "undetermined"
    if lo <= low and high <= hi:
        return "inside"
    if high < lo or low > hi:
        return "outside"
    return "straddling"


def decide_pair(log_ratios: Sequence[float], lo: float, hi: float, level: float = DECIDE_LEVEL) -> dict[str, Any]:
    """The rule that stops the rounds. `log_ratios`: one log(tokens/s(b2) / tokens/s(b1)) per round, both batch
    sizes timed in the same round (paired). The ratio is their geometric mean with a Student-t interval at `level`
    on the log scale; the pair is decided when that interval lies wholly inside or wholly outside [lo, hi]: more
    rounds could then narrow the interval but not change which side it is on. A straddling interval is not decided."""
    from scipy.special import stdtrit  # not scipy.stats: its import costs about a second

    x = [float(v) for v in log_ratios if math.isfinite(float(v))]
    n = len(x)
    if n == 0:
        ratio, low, high = math.nan, math.nan, math.nan
    else:
        mean = sum(x) / n
        ratio, low, high = math.exp(mean), math.nan, math.nan
        if n >= 2:
            sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
            half = float(stdtrit(n - 1, 0.5 + level / 2)) * sd / math.sqrt(n)
            low, high = math.exp(mean - half), math.exp(mean + half)
    state = band_state(low, high, lo, hi)
    return {"ratio": ratio, "low": low, "high": high, "rounds": n, "state": state,
            "decided": state in ("inside", "outside")}  # fmt: skip


def decision_pairs(keys: Sequence[dict[str, Any]], decide: Sequence[Sequence[float]]) -> list[dict[str, Any]]:
    """Every (task, cell, num_steps) of the plan that has both batch sizes of a `decide` entry [b1, b2, lo, hi]:
    one decision each, in plan order."""
    have = {(k["task"], k["cell"], k["num_steps"], k["batch_size"]) for k in keys}
    groups = list(dict.fromkeys((k["task"], k["cell"], k["num_steps"]) for k in keys))
    pairs = []
    for b1, b2, lo, hi in decide:
        for task, cell, ns in groups:
            if (task, cell, ns, int(b1)) in have and (task, cell, ns, int(b2)) in have:
                pairs.append({"task": task, "cell": cell, "num_steps": ns, "b1": int(b1), "b2": int(b2),
                              "lo": float(lo), "hi": float(hi)})  # fmt: skip
    return pairs


def judge_decisions(
    rows: list[dict[str, Any]], pairs: list[dict[str, Any]], column: str, level: float = DECIDE_LEVEL
) -> list[dict[str, Any]]:
    """Each decision pair judged on the rows so far: the per-round log ratio of `column`, paired by round (a round
    counts for a pair when both its segments ran with finite losses)."""
    values: dict[tuple, dict[int, float]] = {}
    for r in rows:
        if r["finite"]:
            ident = (r["task"], r["cell"], r["num_steps"], r["batch_size"])
            values.setdefault(ident, {})[r["round"]] = float(r[column])
    out = []
    for p in pairs:
        one = values.get((p["task"], p["cell"], p["num_steps"], p["b1"]), {})
        two = values.get((p["task"], p["cell"], p["num_steps"], p["b2"]), {})
        logs = [math.log(two[r] / one[r]) for r in sorted(one.keys() & two.keys()) if one[r] > 0 and two[r] > 0]
        out.append({**p, "level": level, **decide_pair(logs, p["lo"], p["hi"], level)})
    return out


def point_cv(rows: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """Per point, the coefficient of variation (sample sd / mean) of `column` over its rounds; None with fewer
    than two rounds."""
    by: dict[tuple, list[float]] = {}
    for r in rows:
        by.setdefault(tuple(r[f] for f in KEY_FIELDS), []).append(float(r[column]))
    out = []
    for ident, v in by.items():
        cv = None
        if len(v) >= 2:
            mean = sum(v) / len(v)
            cv = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) / mean if mean > 0 else None
        out.append({"key": dict(zip(KEY_FIELDS, ident, strict=True)), "cv": cv, "rounds": len(v)})
    return out


def plan_hash(plan: dict[str, Any]) -> str:
    """sha256 of what the timings depend on; `out` is left out, so a moved folder still counts as done. The
    device enters as its class (record.device_class): `auto` on a GPU machine must not reuse a CPU timing file."""
    hashed = {k: plan[k] for k in HASHED}
    hashed.update({k: plan[k] for k in HASHED_IF_PRESENT if k in plan})
    hashed["device"] = record.device_class(str(plan["device"]))
    blob = json.dumps(hashed, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _need(ok: bool, field: str, allowed: str, value: Any) -> None:
    if not ok:
        raise PlanError(f"invalid speed plan: {field}={value!r}: {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


DECIDE_ALLOWED = "must be [b1, b2, lo, hi]: two different batch sizes >= 1 and a band 0 < lo < hi"


def decide_entry_ok(entry: Any) -> bool:
    """One `decide` entry: [b1, b2, lo, hi], batch sizes as whole numbers (2.0 counts: OmegaConf lists of floats)."""
    if not (isinstance(entry, list | tuple) and len(entry) == 4):
        return False
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in entry):
        return False
    b1, b2, lo, hi = entry
    return b1 >= 1 and b2 >= 1 and b1 == int(b1) and b2 == int(b2) and b1 != b2 and 0 < lo < hi


def check_plan(plan: Any) -> list[DictConfig]:
    """Every check before anything runs or is written; returns each point's config. Raises PlanError."""
    _need(isinstance(plan, dict), "plan", "must be a JSON object", type(plan).__name__)
    for key in ("out", *HASHED):
        _need(key in plan, key, "is missing", None)
    _need(isinstance(plan["out"], str) and plan["out"].endswith(".parquet"), "out", "must be a .parquet path",
          plan["out"])  # fmt: skip
    _need(_is_int(plan["rounds"]) and plan["rounds"] >= 1, "rounds", "must be an integer >= 1", plan["rounds"])
    ms = plan["min_seconds"]
    _need(isinstance(ms, int | float) and not isinstance(ms, bool) and 0 < ms < math.inf, "min_seconds",
          "must be a positive number", ms)  # fmt: skip
    _need(_is_int(plan["min_updates"]) and plan["min_updates"] >= 1, "min_updates", "must be an integer >= 1",
          plan["min_updates"])  # fmt: skip
    _need(_is_int(plan["warmup_updates"]) and plan["warmup_updates"] >= 0, "warmup_updates",
          "must be an integer >= 0", plan["warmup_updates"])  # fmt: skip
    _need(_is_int(plan["threads"]) and plan["threads"] >= 1, "threads", "must be an integer >= 1", plan["threads"])
    _need(plan["device"] in DEVICES, "device", f"must be one of {', '.join(DEVICES)}", plan["device"])
    if "max_rounds" in plan:
        mr = plan["max_rounds"]
        _need(_is_int(mr) and mr >= plan["rounds"], "max_rounds", f"must be an integer >= rounds ({plan['rounds']})",
              mr)  # fmt: skip
    if "decide" in plan:
        _need(isinstance(plan["decide"], list), "decide", "must be a list of [b1, b2, lo, hi]", plan["decide"])
        for i, entry in enumerate(plan["decide"]):
            _need(decide_entry_ok(entry), f"decide[{i}]", DECIDE_ALLOWED, entry)
    points = plan["points"]
    _need(isinstance(points, list) and len(points) > 0, "points", "must be a non-empty list", points)
    configs, seen = [], set()
    for i, point in enumerate(points):
        where = f"points[{i}]"
        _need(isinstance(point, dict) and "key" in point and "config" in point, where,
              "must be an object with 'key' and 'config'", point)  # fmt: skip
        key, conf = point["key"], point["config"]
        for f in KEY_FIELDS:
            _need(isinstance(key, dict) and f in key, f"{where}.key.{f}", "is missing", None)
        _need(isinstance(conf, dict), f"{where}.config", "must be a resolved config object", type(conf).__name__)
        cfg = OmegaConf.create(conf)
        try:
            validate(cfg)
        except (ConfigError, AttributeError, KeyError, TypeError) as exc:
            raise PlanError(f"invalid speed plan: {where}.config: {exc}") from None
        for f, path in _KEY_IN_CONFIG.items():
            _need(key[f] == OmegaConf.select(cfg, path), f"{where}.key.{f}", f"disagrees with config {path}", key[f])
        ident = tuple(key[f] for f in KEY_FIELDS)
        _need(ident not in seen, f"{where}.key", "appears twice in the plan", key)
        seen.add(ident)
        configs.append(cfg)
    return configs


def already_done(plan: dict[str, Any]) -> bool:
    out = Path(plan["out"])
    meta = out.with_name("speed.json")
    if not (out.is_file() and meta.is_file()):
        return False
    try:
        return json.loads(meta.read_text()).get("plan_sha256") == plan_hash(plan)
    except (OSError, ValueError):
        return False


@dataclass
class Point:
    key: dict[str, Any]
    setup: Setup
    state: State | None = None
    n_updates: int = 0
    calibration_s_per_update: float = math.nan

    @property
    def tokens_per_update(self) -> int:
        return int(self.key["batch_size"]) * int(self.key["num_steps"])


class Segment(NamedTuple):
    """One timed visit: wall seconds, the training thread's CPU seconds (NaN off a CPU device), last loss finite."""

    seconds: float
    cpu_seconds: float
    finite: bool


def timed_updates(point: Point, n: int, device: torch.device) -> Segment:
    """Run n updates of `point` continuing its state and stream position, timed on the wall clock and the thread's
    CPU clock.

    Only updates are timed: the state reset at a new pass and the forward-only windows without a target run with
    both clocks paused. On CUDA the device is synchronised before every clock reading."""
    stream, update, state = point.setup.stream, point.setup.update, point.state
    loss = None
    seconds = cpu = 0.0
    sync(device)
    start, cpu_start = time.perf_counter(), time.thread_time()
    for _ in range(n):
        if not stream.ready:
            sync(device)
            seconds += time.perf_counter() - start
            cpu += time.thread_time() - cpu_start
            state = stream.prepare(state)
            sync(device)
            start, cpu_start = time.perf_counter(), time.thread_time()
        x, y = stream.take()
        loss, _, state, _ = update(x, y, state, False)
    sync(device)
    seconds += time.perf_counter() - start
    cpu += time.thread_time() - cpu_start
    point.state = state
    # the host thread's CPU time says nothing about a GPU's work: not recorded there
    return Segment(seconds, cpu if device.type == "cpu" else math.nan, loss is None or bool(torch.isfinite(loss)))


@dataclass
class Outcome:
    """What the timed rounds found: the rows, the points, and how the rounds stopped."""

    rows: list[dict[str, Any]]
    points: list[Point]
    clock: str
    clock_reason: str
    rounds_done: int
    stopped: str  # "rounds" (no decision pair), "decided", or "cap" (max_rounds reached, some pair undecided)
    decisions: list[dict[str, Any]]


def _row(p: Point, r: int, position: int, seg: Segment, threads: int, device: torch.device, cpu: str) -> dict:
    tokens = p.n_updates * p.tokens_per_update
    return {
        **{f: p.key[f] for f in KEY_FIELDS},
        "round": r,
        "order": position,
        "updates": p.n_updates,
        "seconds": seg.seconds,
        "tokens_per_s": tokens / seg.seconds,
        "cpu_seconds": seg.cpu_seconds,
        "cpu_tokens_per_s": tokens / seg.cpu_seconds if seg.cpu_seconds > 0 else math.nan,
        "us_per_update": seg.seconds / p.n_updates * 1e6,
        "cpu_us_per_update": seg.cpu_seconds / p.n_updates * 1e6,
        "threads": threads,
        "device": str(device),
        "cpu": cpu,
        "torch": torch.__version__,
        "finite": seg.finite,
    }


def run_plan(plan: dict[str, Any], configs: list[DictConfig], log: Callable[[str], Any] = print) -> Outcome:
    """Warm-up and calibrate every point, then the timed rounds: `rounds`, then whole rounds more while some
    decision pair is undecided, up to `max_rounds`."""
    threads = int(plan["threads"])
    torch.set_num_threads(threads)
    device = resolve_device(plan["device"])
    env = record.environment(device, threads, parallel_jobs=1, launcher=None)
    clock, reason = judged_clock(device.type, threads)
    points = []
    for point, cfg in zip(plan["points"], configs, strict=True):
        setup = build_setup(cfg, device)  # seeds from the config: the same network and stream train() starts with
        p = Point(dict(point["key"]), setup)
        timed_updates(p, int(plan["warmup_updates"]), device)
        seconds = timed_updates(p, int(plan["min_updates"]), device).seconds
        p.calibration_s_per_update = seconds / int(plan["min_updates"])
        p.n_updates = calibrate_updates(
            p.calibration_s_per_update, float(plan["min_seconds"]), int(plan["min_updates"])
        )
        points.append(p)
    rounds = int(plan["rounds"])
    max_rounds = int(plan.get("max_rounds", rounds))
    pairs = decision_pairs([p.key for p in points], plan.get("decide") or [])
    rows: list[dict[str, Any]] = []
    order = round_robin_order(len(points), max_rounds)  # a prefix of it is run: round r still starts at r mod P
    per_round = sum(p.n_updates * p.calibration_s_per_update for p in points)
    extra = f", then up to {max_rounds} while a decision is open" if pairs and max_rounds > rounds else ""
    log(f"speed phase: {len(points)} points warmed up and calibrated; {rounds} rounds of about {per_round:.1f} s"
        f"{extra}; judged on the {clock} clock")  # fmt: skip
    started = time.perf_counter()
    decisions: list[dict[str, Any]] = []
    stopped = "rounds"
    for r, visits in enumerate(order):
        for position, index in enumerate(visits):
            p = points[index]
            rows.append(_row(p, r, position, timed_updates(p, p.n_updates, device), threads, device, env["cpu"]))
        done = r + 1
        decisions = judge_decisions(rows, pairs, CLOCK_COLUMN[clock])
        open_pairs = sum(not d["decided"] for d in decisions)
        elapsed = time.perf_counter() - started
        if done < rounds:
            eta = elapsed / done * (rounds - done)
            log(f"speed phase: round {done}/{rounds}  elapsed {elapsed:.1f} s  ETA {eta:.1f} s")
            continue
        log(f"speed phase: round {done}/{rounds if done <= rounds else max_rounds}  elapsed {elapsed:.1f} s  "
            f"{open_pairs} of {len(pairs)} decision pairs undecided")  # fmt: skip
        if not pairs:
            break
        if open_pairs == 0:
            stopped = "decided"
            break
        if done == max_rounds:
            stopped = "cap"
    return Outcome(rows, points, clock, reason, done, stopped, decisions)


def _finite_or_none(d: dict[str, Any]) -> dict[str, Any]:
    """NaN as null: speed.json stays strict JSON (an interval of fewer than two rounds has no bounds)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()}


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m sweep.speed PLAN_JSON", file=sys.stderr)
        return 2
    try:
        try:
            plan = json.loads(Path(args[0]).read_text())
        except (OSError, ValueError) as exc:
            raise PlanError(f"invalid speed plan: PLAN_JSON={args[0]!r}: cannot read it as JSON ({exc})") from None
        configs = check_plan(plan)
        resolve_device(plan["device"])  # a missing CUDA device is bad input too
    except (PlanError, ConfigError) as exc:
        print(str(exc).splitlines()[0], file=sys.stderr)
        return 2
    if already_done(plan):
        print("speed phase: already done")
        return 0
    out = Path(plan["out"])
    meta = out.with_name("speed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta.unlink(missing_ok=True)  # speed.json is written last: its presence means speed.parquet is whole
    started = time.perf_counter()
    outcome = run_plan(plan, configs, log=lambda line: print(line, flush=True))
    record.write_table(out, pd.DataFrame(outcome.rows, columns=COLUMNS))
    device = resolve_device(plan["device"])
    record.write_json(
        meta,
        {
            "plan": plan,
            "plan_sha256": plan_hash(plan),
            "environment": record.environment(device, int(plan["threads"]), parallel_jobs=1, launcher=None),
            "calibration": [
                {
                    "key": p.key,
                    "n_updates": p.n_updates,
                    "calibration_s_per_update": p.calibration_s_per_update,
                }
                for p in outcome.points
            ],
            "clock": outcome.clock,
            "clock_reason": outcome.clock_reason,
            "clock_column": CLOCK_COLUMN[outcome.clock],
            "rounds_done": outcome.rounds_done,
            "min_rounds": int(plan["rounds"]),
            "max_rounds": int(plan.get("max_rounds", plan["rounds"])),
            "stopped": outcome.stopped,
            "cap_hit": outcome.stopped == "cap",
            "cv": point_cv(outcome.rows, CLOCK_COLUMN[outcome.clock]),
            "decisions": [_finite_or_none(d) for d in outcome.decisions],
            "seconds": time.perf_counter() - started,
        },
    )
    print(f"speed phase: {len(outcome.rows)} segments -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
