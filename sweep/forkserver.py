"""The fork server that `hydra/launcher=forkserver` starts its jobs from (hydra_plugins/rnn_sweep_launcher).

One server process per sweep imports torch, the runner and the measures once (sweep/forkserver_preload.py);
each job is a fork of it, so no job pays that import (docs/scale-out.md, "Launchers"). The server is Python's
own (`multiprocessing`'s forkserver start method). What this module adds:

- `start` may be called early, by the entry point, before Hydra has composed the config (sweep/cli.py: a
  command that sweeps), so the server's imports overlap Hydra's start-up and the grid's planning; the launcher
  then `claim`s it. A sweeper whose launcher is another one calls `stop_unclaimed` as soon as it knows, so an
  unused server does not take a core from that launcher's workers.
- `stop`, registered at exit: the server is killed rather than left to notice the sweep ended, finish its
  imports and unload torch, because it holds the sweep's stdout and stderr and anything reading them (a pipe,
  `tee`, a test) would wait for it. It holds no results: every job has returned by then.

Python keeps the server's process id and its stop function private (`multiprocessing.forkserver._forkserver`);
they are used here only, and tests/test_forkserver_launcher.py checks that they exist so an upgrade fails there.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
from multiprocessing.context import BaseContext

PRELOAD = ["sweep.forkserver_preload"]

_state = {"started": False, "claimed": False}


def available() -> bool:
    return "forkserver" in multiprocessing.get_all_start_methods()


def start() -> bool:
    """Start the server in the background (it returns at once; the server imports PRELOAD before it takes its
    first job). False where the platform has no forkserver."""
    if not available():
        return False
    from multiprocessing import forkserver

    if not _state["started"]:
        multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
        atexit.register(stop)
        _state["started"] = True
    forkserver.ensure_running()  # starts it, or again if it died
    return True


def start_for(argv: list[str]) -> None:
    """Start the server if this command line looks like a sweep on hydra/launcher=forkserver (sweep/argv.py)."""
    from sweep.argv import sweeps_on_forkserver

    if sweeps_on_forkserver(argv):
        start()


def claim() -> BaseContext:
    """The context a launcher starts its jobs in: the fork server's (started now if no one did), else spawn."""
    if start():
        _state["claimed"] = True
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


def server_pid() -> int | None:
    from multiprocessing import forkserver

    return forkserver._forkserver._forkserver_pid  # private (see the module docstring)


def stop() -> None:
    """Kill the server (if this process started one) and clean up after it."""
    if not _state["started"] or not available():
        return
    from multiprocessing import forkserver

    pid = server_pid()
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError, ChildProcessError):
            forkserver._forkserver._stop()  # private: closes its pipe, reaps it, removes its socket
    _state["claimed"] = False


def stop_unclaimed() -> None:
    """Stop a server started early that no launcher claimed (the sweep uses another launcher)."""
    if _state["started"] and not _state["claimed"]:
        stop()
