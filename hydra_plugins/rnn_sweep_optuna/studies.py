"""Optuna bookkeeping: storages, who owns a running trial, and settling trials from run records.

Nothing here trains: the sweep process asks trials, the launcher's workers write run records, and the sweep
process tells Optuna what each record says. A trial left RUNNING by a process that died is found stale (same
machine: its process is gone; another machine: its heartbeat stopped) and settled from its record when the run
finished, failed otherwise, so a rerun neither counts it nor loses a result that is on disk.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import socket
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

OWNER_ATTR = "owner"
HEARTBEAT_ATTR = "heartbeat"


# --------------------------------------------------------------------------------------------------- storages
def default_storage_url(sweep_dir: Path) -> str:
    return f"sqlite:///{Path(sweep_dir).resolve() / 'optuna.db'}"


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """`journal:<path>` (or a path ending in .log / .journal): an Optuna journal file, which works on a shared
    disk without a server; anything else: an SQLAlchemy URL (sqlite:///..., postgresql://...)."""
    if url.startswith("journal:") or (url.endswith((".log", ".journal")) and "://" not in url):
        path = url.removeprefix("journal:")
        if path.startswith("//"):
            path = path[2:]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(path))
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}  # several processes may write at once
        db = url.split(":///", 1)[-1]
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(url, skip_table_creation=False, **kwargs)


def public_url(url: str) -> str:
    """The storage URL with any password hidden, for files and logs."""
    if url.startswith("journal:") or "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


# --------------------------------------------------------------------------------------------------- owners
@lru_cache(maxsize=1)
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str | None:
    """The process's start time since boot (clock ticks), which tells a live process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def me() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": pid, "start": _start_ticks(pid)}


def _alive(owner: dict[str, Any]) -> bool:
    pid = int(owner.get("pid", -1))
    if pid <= 0:
        return False
    if Path("/proc").is_dir():
        start = _start_ticks(pid)
        return start is not None and (owner.get("start") is None or start == owner["start"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(trial: FrozenTrial, stale_after_s: float, now: float | None = None) -> bool:
    """A RUNNING trial whose sweep process is gone: on this machine its pid is dead (or reused); elsewhere its
    heartbeat (refreshed by the owner while the trial runs) is older than `stale_after_s`."""
    if trial.state != TrialState.RUNNING:
        return False
    now = time.time() if now is None else now
    owner = trial.user_attrs.get(OWNER_ATTR)
    if not isinstance(owner, dict):  # asked, but its process died before it was handed out
        started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
        return now - started > stale_after_s
    local = me()
    if owner.get("host") == local["host"] and owner.get("boot") == local["boot"]:
        return not _alive(owner)
    beat = trial.user_attrs.get(HEARTBEAT_ATTR)
    if beat is None:
        beat = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
    return now - float(beat) > stale_after_s


def claim(study: optuna.Study, trial_id: int) -> None:
    study._storage.set_trial_user_attr(trial_id, OWNER_ATTR, me())
    beat(study._storage, trial_id)


def beat(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, time.time())


# --------------------------------------------------------------------------------------------------- outcomes
def lookup(summary: dict[str, Any], path: str) -> Any:
    """A summary metric by dotted path: `valid_loss`, `lag_accuracy.8`."""
    node: Any = summary
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def outcome(rec: dict[str, Any] | None, sig: str, objective: str) -> tuple[TrialState, float | None, str]:
    """What a run record tells Optuna: (state, objective value, reason). Diverged runs are PRUNED and failed
    or missing ones FAIL: neither gives the sampler an objective value."""
    if rec is None:
        return TrialState.FAIL, None, "no run record"
    if rec.get("signature") != sig:
        return TrialState.FAIL, None, "the run record in its folder belongs to another config"
    status = rec.get("status")
    if status == "diverged":
        return TrialState.PRUNED, None, "diverged"
    if status != "complete":
        return TrialState.FAIL, None, f"run {status}: {rec.get('error', '')}".strip()
    value = lookup(rec.get("summary") or {}, objective)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return TrialState.FAIL, None, f"objective {objective!r} is {value!r} in the run summary"
    return TrialState.COMPLETE, float(value), "complete"


def pooled_outcome(
    outcomes: list[tuple[int, tuple[TrialState, float | None, str]]],
) -> tuple[TrialState, float | None, str]:
    """What a trial's runs, one per search seed, tell Optuna: the MEAN of their objective values when every run
    is complete. An lr that diverged on any seed is PRUNED (it is unsafe, whatever the other seeds did); else a
    failed or missing run makes the trial FAIL: a mean over fewer seeds would not compare with the others."""
    if not outcomes:
        return TrialState.FAIL, None, "no runs"
    if all(state == TrialState.COMPLETE for _, (state, _v, _r) in outcomes):
        values = [float(v) for _, (_s, v, _r) in outcomes if v is not None]
        return TrialState.COMPLETE, math.fsum(values) / len(values), "complete"
    for wanted in (TrialState.PRUNED, TrialState.FAIL):
        bad = [f"seed {seed}: {reason}" for seed, (state, _v, reason) in outcomes if state == wanted]
        if bad:
            return wanted, None, "; ".join(bad)
    raise AssertionError("unreachable: a state other than COMPLETE, PRUNED or FAIL")


def tell(
    study: optuna.Study,
    number: int,
    state: TrialState,
    value: float | None,
    reason: str,
    attrs: dict[str, Any] | None = None,
) -> bool:
    """Finish a RUNNING trial, after setting its user attributes `attrs`; False when another process finished
    it first."""
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    try:
        for key, attr in (attrs or {}).items():
            study._storage.set_trial_user_attr(trial_id, key, attr)
        study._storage.set_trial_user_attr(trial_id, "outcome", reason[:500])
        if state == TrialState.COMPLETE:
            study.tell(number, value)
        else:
            study.tell(number, state=state)
    except (RuntimeError, ValueError):  # UpdateFinishedTrialError is a RuntimeError
        if study._storage.get_trial(trial_id).state.is_finished():
            return False  # another process settled it first
        raise
    return True


def counts(trials: list[FrozenTrial]) -> dict[str, int]:
    out = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    for t in trials:
        key = t.state.name.lower()
        out[key] = out.get(key, 0) + 1
    # diverged or failed runs, which count against max_failed_trials: not the trials that another process had
    # made unnecessary (surplus), nor those whose sweep process died before their run ended (stale)
    out["bad"] = sum(
        1
        for t in trials
        if t.state in (TrialState.FAIL, TrialState.PRUNED)
        and not t.user_attrs.get("surplus")
        and not t.user_attrs.get("stale")
    )
    out["surplus"] = sum(1 for t in trials if t.user_attrs.get("surplus"))
    out["stale"] = sum(1 for t in trials if t.user_attrs.get("stale"))
    return out


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
