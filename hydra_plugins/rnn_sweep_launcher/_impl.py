"""The forkserver launcher's implementation (forkserver_launcher.py says what it does and why), imported only
when a sweep instantiates `hydra/launcher=forkserver` (the leading underscore keeps Hydra's plugin scan from
executing it on every start)."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import cloudpickle
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from sweep import forkserver, stop
from sweep.config import ConfigError
from sweep.plan import launcher_parallelism

log = logging.getLogger(__name__)

START_METHODS = ("forkserver", "spawn")
# After Ctrl-C, how long a running job gets to write what it must (release its lease, keep its checkpoint)
# before it is killed.
INTERRUPT_GRACE_S = 30.0
# How long a job's process may take to exit once it has sent its result.
EXIT_WAIT_S = 30.0


class ForkserverLauncherImpl(Launcher):
    def __init__(self, n_jobs: int = -1, start_method: str = "forkserver") -> None:
        if not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or not (n_jobs == -1 or n_jobs >= 1):
            raise ConfigError(
                f"invalid config: hydra.launcher.n_jobs={n_jobs!r}: must be a positive number of jobs at once, "
                "or -1 for one per usable CPU"
            )
        if start_method not in START_METHODS:
            raise ConfigError(
                f"invalid config: hydra.launcher.start_method={start_method!r}: must be one of "
                f"{', '.join(START_METHODS)}"
            )
        self.n_jobs = n_jobs
        self.start_method = start_method
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self.context: BaseContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context
        # the entry point may have started the server already (sweep/forkserver.py); spawn: a fresh interpreter
        # per job, as on platforms without forkserver
        self.context = forkserver.claim() if self.start_method == "forkserver" else multiprocessing.get_context("spawn")

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.context is not None, "setup() first"
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        at_once = launcher_parallelism(self.config.hydra.launcher)  # the rule each job's thread count follows
        log.info(
            "launching %d jobs, %d at once (%s), sweep output dir: %s",
            len(job_overrides), at_once, self.context.get_start_method(), sweep_dir,
        )  # fmt: skip
        for idx, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + idx, " ".join(filter_overrides(overrides)))
        # pickled once per launch, not once per job: the config store in Hydra's singletons is the bulk of it
        # cloudpickle, as Hydra's joblib and submitit launchers: the task function under @hydra.main and the
        # OmegaConf resolvers in Hydra's singletons are not importable by name
        shared = cloudpickle.dumps((self.hydra_context, self.config, self.task_function, Singleton.get_state()))
        return run_all(self.context, shared, job_overrides, initial_job_idx, at_once)


def run_all(
    context: BaseContext, shared: bytes, job_overrides: Sequence[Sequence[str]], first_idx: int, at_once: int
) -> list[JobReturn]:
    """Run every job, at most `at_once` at a time, each in a process of its own; returns in the jobs' order."""
    returns: list[JobReturn | None] = [None] * len(job_overrides)
    todo = list(enumerate(job_overrides))[::-1]
    running: dict[Connection, tuple[int, BaseProcess]] = {}
    try:
        while todo or running:
            while todo and len(running) < at_once:
                i, overrides = todo.pop()
                reader, writer = context.Pipe(duplex=False)
                proc = context.Process(
                    target=job_main, args=(first_idx + i, list(overrides), shared, writer), name=f"job-{first_idx + i}"
                )
                proc.start()
                writer.close()  # the child holds the only write end: its death reads as end-of-file here
                running[reader] = (i, proc)
            for reader in wait(list(running)):
                i, proc = running.pop(reader)
                returns[i] = collect(reader, proc, job_overrides[i])
    except BaseException as exc:  # Ctrl-C, SIGTERM (or an error here): the running jobs stop cleanly, then the
        # sweeper reports; a job is sent the signal the sweep got, so a SIGTERM'd job checkpoints (sweep/stop.py)
        signum = exc.signum if isinstance(exc, stop.Stopped) else signal.SIGINT
        stop_jobs([proc for _, proc in running.values()], signum)
        raise
    return [r for r in returns if r is not None]


def collect(reader: Connection, proc: BaseProcess, overrides: Sequence[str]) -> JobReturn:
    """The job's JobReturn, or a failed one when its process died before sending it (killed, out of memory) or
    sent something that cannot be read back."""
    problem = None
    try:
        ret = reader.recv()
    except EOFError:
        ret = None
    except Exception as exc:  # a result that does not unpickle here
        ret, problem = None, f"its result could not be read: {exc!r}"
    finally:
        reader.close()
    proc.join(EXIT_WAIT_S)
    if proc.is_alive():  # sent its result but does not exit (a stray non-daemon thread): it has nothing left to do
        proc.kill()
        proc.join()
    if isinstance(ret, JobReturn):
        return ret
    how = problem or describe_exit(proc.exitcode)
    log.error("job %s (%s) ended without a result: %s", proc.name, " ".join(filter_overrides(overrides)), how)
    return JobReturn(overrides=list(overrides), status=JobStatus.FAILED,
                     _return_value=RuntimeError(f"the job's process ended without a result ({how})"))  # fmt: skip


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def stop_jobs(procs: list[BaseProcess], signum: int = signal.SIGINT) -> None:
    """Send each running job `signum` once (a terminal's Ctrl-C, a scheduler's SIGTERM to the process group reach
    them too: a job takes only the first), give them INTERRUPT_GRACE_S to save a checkpoint and release their
    leases, then kill what is left."""
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)
    deadline = time.monotonic() + INTERRUPT_GRACE_S
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()


@stop.mark
def _interrupt_once(signum: int, frame: Any) -> None:
    # A Ctrl-C in a terminal reaches the job and the sweep's parent, which then forwards it (stop_jobs): a second
    # KeyboardInterrupt inside the job's clean-up would leave its lease behind, so only the first one counts.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _stop_when_the_sweep_ends(writer: Connection, sent: threading.Event) -> None:
    """SIGTERM this job if the sweep that waits for its result ends first (killed with SIGKILL, out of memory):
    the job then saves a checkpoint, releases its lease and exits instead of training on unseen. The sweep holds
    the only read end of the result pipe, and poll() on the write end reports an error once no reader is left
    (the fork server cannot tell: it lives as long as any job it forked)."""
    import select

    if not hasattr(select, "poll"):
        return

    def watch() -> None:
        watcher = select.poll()
        watcher.register(writer.fileno(), 0)  # no events asked: only POLLERR / POLLHUP (the reader is gone)
        with contextlib.suppress(OSError):
            watcher.poll()
        if not sent.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="sweep-watch", daemon=True).start()


def job_main(idx: int, overrides: list[str], shared: bytes, writer: Connection) -> None:
    """In the job's process: compose its config, run it as Hydra's launchers do, send back the JobReturn. Stopped
    by a signal (sweep/stop.py: the running job saved a checkpoint and released its lease), it sends nothing and
    exits 128 + signal: the sweep that forwarded the signal reports the stop."""
    signal.signal(signal.SIGINT, _interrupt_once)
    stop.raise_on(signal.SIGTERM)  # before the job's own handling starts, or after it ended: nothing to save
    sent = threading.Event()
    try:
        _stop_when_the_sweep_ends(writer, sent)
        _run_and_send(idx, overrides, shared, writer, sent)
    except stop.Stopped as exc:
        sent.set()
        sys.exit(stop.exit_status(exc.signum))
    finally:
        sent.set()  # the process ends: its pipe closing is no news


def _run_and_send(idx: int, overrides: list[str], shared: bytes, writer: Connection, sent: threading.Event) -> None:
    try:
        hydra_context, config, task_function, singleton_state = pickle.loads(shared)
        setup_globals()
        Singleton.set_state(singleton_state)
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
            sweep_config.hydra.job.num = idx
        HydraConfig.instance().set_config(sweep_config)
        ret = run_job(
            hydra_context=hydra_context,
            config=sweep_config,
            task_function=task_function,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
    except KeyboardInterrupt:  # the parent knows (it forwarded the interrupt or got it too); nothing to send
        return
    except Exception as exc:  # e.g. a config that no longer composes: a failed job, not a dead worker
        ret = JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=exc)
    sent.set()  # from here on the pipe closes because the job is done, not because the sweep ended
    try:
        writer.send(ret)
    except Exception as exc:  # a return value that does not pickle: say so rather than die silently
        ret.return_value = RuntimeError(f"the job's result could not be sent back: {exc!r}")
        ret.status, ret.cfg, ret.hydra_cfg = JobStatus.FAILED, None, None
        writer.send(ret)
    finally:
        writer.close()
