"""Where a sweep stands: its plan (`sweep_plan.json`) against the records in its folders.

- `python -m sweep.status DIR` (`rnn-sweep-status DIR`) prints every planned point as complete / diverged /
  pruned / failed / running (a live lease, sweep/lease.py) / missing, and the totals per phase. It only reads
  files, so it works on a sweep that is still running, was killed, or runs as SLURM or Ray jobs elsewhere.
- `Progress` is what the sweepers use while jobs run: one line as each job ends, "k/N done (complete c,
  diverged d, failed f), ETA hh:mm:ss". It watches the same files from a thread, so it sees each job end
  whatever the launcher (the basic launcher returns when its whole batch is done; joblib, submitit and Ray
  return a batch at once): a job's record appearing is the one signal every launcher gives.
- ETA: seconds per unit of expected cost (sweep/plan.py's `expected_cost`) measured on the jobs that ended,
  times the expected cost still to run (less the time the running jobs have already spent), over the jobs the
  launcher runs at once; never less than the longest single job left.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.lease import LEASE_FILE, live_holder
from sweep.record import COMPLETE, DIVERGED, DONE_STATUSES, FAILED, PRUNED, RUN_FILE, SWEEP_PLAN_FILE, read_run

if TYPE_CHECKING:
    from sweep.plan import PlannedJob

log = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2
RUNNING, MISSING = "running", "missing"
# The order statuses are shown in: finished first, then what is left.
SHOWN = (COMPLETE, DIVERGED, PRUNED, FAILED, RUNNING, MISSING)
DEFAULT_TTL_S = 120.0  # a lease's time to live when the plan does not say (sweep/config.py's lease.ttl_s)
POLL_S = 1.0  # how often Progress looks at the records of running jobs


class StatusError(Exception):
    """A folder that is not a sweep's, or a plan that cannot be read: one line, exit 2."""


# ---------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class PlannedPoint:
    folder: str  # relative to the sweep folder
    overrides: list[str]
    signature: str
    phase: str = "grid"  # grid | lr_search
    ttl_s: float = DEFAULT_TTL_S


def read_plan(sweep_dir: Path) -> list[PlannedPoint]:
    """The points of `sweep_dir`'s plan, in plan order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise StatusError(f"{sweep_dir}: no such folder (give the folder of one sweep, e.g. results/claim)")
    path = sweep_dir / SWEEP_PLAN_FILE
    if not path.is_file():
        inner = sorted(p.parent for p in sweep_dir.glob(f"*/{SWEEP_PLAN_FILE}"))
        hint = f"; sweeps inside it: {', '.join(str(p) for p in inner[:5])}" if inner else ""
        raise StatusError(f"{sweep_dir}: no {SWEEP_PLAN_FILE} (not the folder of a sweep started by -m){hint}")
    try:
        points = json.loads(path.read_text())["points"]
        return [
            PlannedPoint(
                folder=str(p["folder"]),
                overrides=[str(o) for o in p["overrides"]],
                signature=str(p["signature"]),
                phase=str(p.get("phase", "grid")),
                ttl_s=float(p.get("ttl_s", DEFAULT_TTL_S)),
            )
            for p in points
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StatusError(f"{path}: cannot read the plan ({type(exc).__name__}: {exc})") from None


def point_status(folder: Path, signature: str, ttl_s: float = DEFAULT_TTL_S) -> tuple[str, str | None]:
    """(status, lease holder) of one point. A finished record of this config wins; else a live lease means it is
    running (a failed point being retried, too); else its failed record; else missing (no record, or a record
    of another config, which a rerun replaces)."""
    rec = read_run(folder)
    ours = rec is not None and rec.get("signature") == signature
    if ours and rec.get("status") in DONE_STATUSES:
        return str(rec["status"]), None
    holder = live_holder(folder, ttl_s)
    if holder is not None:
        return RUNNING, holder
    if ours and rec.get("status") == FAILED:
        return FAILED, None
    return MISSING, None


def sweep_status(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every planned point with its status: {phase, folder, status, holder, overrides}."""
    rows = []
    for p in read_plan(sweep_dir):
        status, holder = point_status(Path(sweep_dir) / p.folder, p.signature, p.ttl_s)
        rows.append({"phase": p.phase, "folder": p.folder, "status": status, "holder": holder,
                     "overrides": p.overrides})  # fmt: skip
    return rows


def totals_line(counts: Counter, total: int) -> str:
    parts = [f"{counts.get(s, 0)} {s}" for s in SHOWN if counts.get(s, 0) or s in (COMPLETE, FAILED, MISSING)]
    return f"{total} point{'' if total == 1 else 's'}: {', '.join(parts)}"


def render(rows: list[dict[str, Any]], per_point: bool = True) -> str:
    lines = []
    phases = list(dict.fromkeys(r["phase"] for r in rows))
    for phase in phases:
        mine = [r for r in rows if r["phase"] == phase]
        if per_point:
            width = max(len(s) for s in SHOWN)
            for r in mine:
                held = f"  (lease: {r['holder']})" if r["holder"] else ""
                lines.append(f"{phase:<9} {r['status']:<{width}}  {r['folder']}{held}")
        lines.append(f"{phase}: {totals_line(Counter(r['status'] for r in mine), len(mine))}")
    if len(phases) > 1:
        lines.append(f"all: {totals_line(Counter(r['status'] for r in rows), len(rows))}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """`rnn-sweep-status DIR`: plan against records, per point and totals."""
    parser = argparse.ArgumentParser(
        prog="rnn-sweep-status",
        description="Where a sweep stands: every planned point (sweep_plan.json) against the records on disk "
        "(complete / diverged / pruned / failed / running / missing). Reads files only.",
    )
    parser.add_argument("dir", help="the folder of one sweep (results_dir/name), e.g. results/claim")
    parser.add_argument("--totals", action="store_true", help="print only the totals")
    args = parser.parse_args(argv)
    try:
        rows = sweep_status(Path(args.dir))
    except StatusError as exc:
        sys.stderr.write(f"rnn-sweep-status: {exc}\n")
        raise SystemExit(EXIT_BAD_INPUT) from None
    print(render(rows, per_point=not args.totals))


# ------------------------------------------------------------------------------------------- progress lines
def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--:--"
    s = max(0, round(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def eta_seconds(
    ended: Sequence[tuple[float, float]], left: Sequence[tuple[float, float]], parallel: int
) -> float | None:
    """Seconds until the jobs `left` end. `ended`: (seconds, expected cost) of jobs that ended; `left`: (expected
    cost, seconds already spent) of every job not ended yet (0 spent when not started); a job already past its
    expected time counts as about to end. None before any ended."""
    measured = [(s, c) for s, c in ended if c > 0]
    if not measured:
        return None
    per_cost = sum(s for s, _ in measured) / sum(c for _, c in measured)
    remaining = [max(0.0, c * per_cost - spent) for c, spent in left]
    if not remaining:
        return 0.0
    return max(sum(remaining) / max(1, parallel), max(remaining))


def progress_line(counts: Counter, total: int, eta: float | None, label: str = "") -> str:
    done = sum(counts.get(s, 0) for s in (COMPLETE, DIVERGED, FAILED, PRUNED))
    parts = [f"complete {counts.get(COMPLETE, 0)}", f"diverged {counts.get(DIVERGED, 0)}"]
    if counts.get(PRUNED):
        parts.append(f"pruned {counts[PRUNED]}")
    parts.append(f"failed {counts.get(FAILED, 0)}")
    return f"{label}{done}/{total} done ({', '.join(parts)}), ETA {format_eta(eta)}"


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class Progress:
    """One line as each job of `jobs` ends (see the module docstring). Use as a context manager around the
    launches; `poll()` may also be called when a batch returns, so its lines do not wait for the thread."""

    def __init__(
        self,
        jobs: Sequence[PlannedJob],
        parallel: int,
        label: str = "",
        emit: Callable[[str], None] | None = None,
        poll_s: float = POLL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jobs = list(jobs)
        self.parallel = max(1, int(parallel))
        self.label = label
        self.emit = emit or log.info
        self.poll_s = poll_s
        self.clock = clock
        self.counts: Counter = Counter()
        self.lines: list[str] = []
        self._open: dict[Path, PlannedJob] = {}
        self._before: dict[Path, tuple[int, int] | None] = {}
        self._started: dict[Path, float] = {}
        self._ended: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        for job in self.jobs:
            rec = read_run(job.out_dir)
            if rec is not None and rec.get("signature") == job.signature and rec.get("status") in DONE_STATUSES:
                self.counts[str(rec["status"])] += 1  # finished before this sweep: counted, not watched
            else:
                self._open[job.out_dir] = job
                self._before[job.out_dir] = _stamp(job.out_dir / RUN_FILE)
        if self._open:
            self._thread = threading.Thread(target=self._loop, name="sweep-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if exc[0] is None:
            self.poll()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception as e:  # a progress line is never worth stopping a sweep for
                log.debug("progress: %s", e)

    def poll(self) -> None:
        with self._lock:
            now = self.clock()
            for folder, job in list(self._open.items()):
                stamp = _stamp(folder / RUN_FILE)
                if stamp is None or stamp == self._before[folder]:
                    if folder not in self._started and (folder / LEASE_FILE).exists():
                        self._started[folder] = now  # the job took its lease: it started
                    continue
                rec = read_run(folder)
                if rec is None or rec.get("signature") != job.signature:
                    continue  # a record of another config, or one being replaced
                del self._open[folder]
                self.counts[str(rec.get("status", FAILED))] += 1
                start = self._started.get(folder)
                seconds = (
                    now - start if start is not None else float((rec.get("summary") or {}).get("train_seconds") or 0)
                )
                self._ended.append((seconds, job.cost))
                left = [(j.cost, now - self._started[f] if f in self._started else 0.0) for f, j in self._open.items()]
                line = progress_line(self.counts, len(self.jobs), eta_seconds(self._ended, left, self.parallel),
                                     self.label)  # fmt: skip
                self.lines.append(line)
                self.emit(line)


if __name__ == "__main__":
    main()
