"""The speed phase: every grid point's training throughput, timed alone (docs/protocol.md, "Speed phase").

`python -m sweep.speed PLAN_JSON` times the training update of each point of the plan, one point at a time in one
process, with a fixed number of torch threads, after a warm-up, in `rounds` round-robin rounds whose start point
rotates, each timed segment long enough (>= min_seconds and >= min_updates). It writes `speed.parquet` (one row
per point and round) and `speed.json` (the plan, its hash, the environment and the calibrated segment lengths)
next to the plan's `out`. Speed claims are judged from this file only: runs trained side by side share the
cores, and their tokens/s say as much about their neighbours as about batch_size.

Plan: {"out": ".../speed.parquet", "rounds": 5, "min_seconds": 0.5, "min_updates": 100, "warmup_updates": 20,
"threads": 1, "device": "auto", "points": [{"key": {"task", "cell", "batch_size", "num_steps"}, "config": {<the
resolved config of that grid point>}}, ...]}.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
COLUMNS = [*KEY_FIELDS, "round", "order", "updates", "seconds", "tokens_per_s", "us_per_update", "threads", "device",
           "cpu", "torch", "finite"]  # fmt: skip
MARGIN = 1.2  # calibrated segments aim 20 % above min_seconds, so a slightly faster round still clears it


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


def plan_hash(plan: dict[str, Any]) -> str:
    """sha256 of what the timings depend on; `out` is left out, so a moved folder still counts as done. The
    device enters as its class (record.device_class): `auto` on a GPU machine must not reuse a CPU timing file."""
    hashed = {k: plan[k] for k in HASHED}
    hashed["device"] = record.device_class(str(plan["device"]))
    blob = json.dumps(hashed, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _need(ok: bool, field: str, allowed: str, value: Any) -> None:
    if not ok:
        raise PlanError(f"invalid speed plan: {field}={value!r}: {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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


def timed_updates(point: Point, n: int, device: torch.device) -> tuple[float, bool]:
    """Run n updates of `point` continuing its state and stream position; (seconds, last loss finite).

    Only updates are timed: the state reset at a new pass and the forward-only windows without a target run with
    the clock paused. On CUDA the device is synchronised before every clock reading."""
    stream, update, state = point.setup.stream, point.setup.update, point.state
    loss = None
    seconds = 0.0
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        if not stream.ready:
            sync(device)
            seconds += time.perf_counter() - start
            state = stream.prepare(state)
            sync(device)
            start = time.perf_counter()
        x, y = stream.take()
        loss, _, state, _ = update(x, y, state, False)
    sync(device)
    seconds += time.perf_counter() - start
    point.state = state
    return seconds, loss is None or bool(torch.isfinite(loss))


def run_plan(plan: dict[str, Any], configs: list[DictConfig], log=print) -> tuple[list[dict[str, Any]], list[Point]]:
    """Warm-up and calibrate every point, then the timed rounds; returns the rows and the points."""
    threads = int(plan["threads"])
    torch.set_num_threads(threads)
    device = resolve_device(plan["device"])
    env = record.environment(device, threads, parallel_jobs=1, launcher=None)
    points = []
    for point, cfg in zip(plan["points"], configs, strict=True):
        setup = build_setup(cfg, device)  # seeds from the config: the same network and stream train() starts with
        p = Point(dict(point["key"]), setup)
        timed_updates(p, int(plan["warmup_updates"]), device)
        seconds, _ = timed_updates(p, int(plan["min_updates"]), device)
        p.calibration_s_per_update = seconds / int(plan["min_updates"])
        p.n_updates = calibrate_updates(
            p.calibration_s_per_update, float(plan["min_seconds"]), int(plan["min_updates"])
        )
        points.append(p)
    rows: list[dict[str, Any]] = []
    order = round_robin_order(len(points), int(plan["rounds"]))
    per_round = sum(p.n_updates * p.calibration_s_per_update for p in points)
    log(f"speed phase: {len(points)} points warmed up and calibrated; {len(order)} rounds of about {per_round:.1f} s")
    started = time.perf_counter()
    for r, visits in enumerate(order):
        for position, index in enumerate(visits):
            p = points[index]
            seconds, finite = timed_updates(p, p.n_updates, device)
            rows.append(
                {
                    **{f: p.key[f] for f in KEY_FIELDS},
                    "round": r,
                    "order": position,
                    "updates": p.n_updates,
                    "seconds": seconds,
                    "tokens_per_s": p.n_updates * p.tokens_per_update / seconds,
                    "us_per_update": seconds / p.n_updates * 1e6,
                    "threads": threads,
                    "device": str(device),
                    "cpu": env["cpu"],
                    "torch": torch.__version__,
                    "finite": finite,
                }
            )
        elapsed = time.perf_counter() - started
        eta = elapsed / (r + 1) * (len(order) - r - 1)
        log(f"speed phase: round {r + 1}/{len(order)}  elapsed {elapsed:.1f} s  ETA {eta:.1f} s")
    return rows, points


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
    rows, points = run_plan(plan, configs, log=lambda line: print(line, flush=True))
    record.write_table(out, pd.DataFrame(rows, columns=COLUMNS))
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
                for p in points
            ],
            "seconds": time.perf_counter() - started,
        },
    )
    print(f"speed phase: {len(rows)} segments -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
