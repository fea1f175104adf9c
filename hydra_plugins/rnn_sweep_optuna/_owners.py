"""Who owns a RUNNING trial, and when it is stale.

The sweep process that asks a trial marks it with its owner (host, boot, pid and the pid's start time) and keeps
a heartbeat in the trial's user attributes while the trial's runs are out. A trial left RUNNING by a process that
died is stale: on the same machine its process is gone (or its pid reused); on another machine its heartbeat
stopped. Another process then settles it from its run records (_trials.recover).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep import _optuna_api as api

OWNER_ATTR = "owner"
HEARTBEAT_ATTR = "heartbeat"


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


def claim(trial: optuna.Trial) -> None:
    """Mark a trial this process just asked as its own, with a first heartbeat."""
    trial.set_user_attr(OWNER_ATTR, me())
    trial.set_user_attr(HEARTBEAT_ATTR, time.time())


class Heartbeat(threading.Thread):
    """Refreshes the heartbeat of this process's unsettled trials (how other machines see it is alive)."""

    def __init__(self, storage: optuna.storages.BaseStorage, interval_s: float) -> None:
        super().__init__(name="optuna-heartbeat", daemon=True)
        self.storage, self.interval_s = storage, max(1.0, interval_s)
        self.trial_ids: set[int] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def add(self, ids: list[int]) -> None:
        with self.lock:
            self.trial_ids.update(ids)

    def discard(self, tid: int) -> None:
        with self.lock:
            self.trial_ids.discard(tid)

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            with self.lock:
                ids = list(self.trial_ids)
            for tid in ids:
                # finished meanwhile, or a transient storage error: the next beat retries
                with contextlib.suppress(Exception):
                    api.set_user_attrs_by_id(self.storage, tid, {HEARTBEAT_ATTR: time.time()})
