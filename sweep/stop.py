"""A clean stop on SIGTERM (and SIGINT in a single run): the signal handler only sets `requested`; the training
loop reads it at the next update boundary, saves a checkpoint and raises `Stopped`, so a rerun resumes there.

- `handling()` wraps one job (sweep/run.py): it installs the flag-setting handler for SIGTERM and SIGINT (SIGINT
  left alone where it is ignored, as a job started in the background has it) and, where a scheduler installed a
  handler of its own (submitit's for its preemption signal, SIGUSR2 by default, and its SIGTERM logger), for
  those too: that handler is called once the job has saved its checkpoint and released its lease, so submitit
  requeues a job whose state is on disk (docs/scale-out.md, "Preemption").
- The first signal decides; later ones are ignored (a terminal's Ctrl-C reaches a job and the sweep, which
  forwards it: a second stop must not cut the checkpoint short). If the loop has not stopped `GRACE_S` after
  the signal (the job was still loading its data, or measuring after the last update), `Stopped` is raised
  wherever the job is: it then resumes from its last periodic checkpoint.
- `raise_on` makes a signal raise `Stopped` at once, as Python makes SIGINT raise KeyboardInterrupt: for the
  processes that do not train (a sweep's parent, a job still composing its config), which have nothing to save.

`Stopped` derives from BaseException, as KeyboardInterrupt does: the code that records `except Exception` as a
failed run (sweep/run.py, Hydra's run_job) lets a stop through. Kept free of torch and Hydra: the loop reads a
module attribute (tens of ns per update), and the entry points import nothing heavy for it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

requested: bool = False  # set by a signal handler; read once per update by sweep/train.py
signal_number: int = 0  # which signal asked for the stop (its exit status is 128 + this)
GRACE_S = 5.0  # how long after the signal the loop has to reach an update boundary before Stopped is forced

Handler = Callable[[int, FrameType | None], Any] | int | None
_chained: dict[int, Callable[[int, FrameType | None], Any]] = {}


class Stopped(BaseException):
    """Training stopped at an update boundary because a stop was requested; a checkpoint holds its state.
    `update` is -1 when the stop was forced (GRACE_S passed) or came before training started."""

    def __init__(self, signum: int, update: int) -> None:
        super().__init__(f"stopped by signal {signum} at update {update}")
        self.signum, self.update = signum, update
        self.line = ""  # what the stopped job says of itself (sweep/run.py), for the entry point's one line


def exit_status(signum: int) -> int:
    """What a shell reports for a process ended by `signum`: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def reset() -> None:
    global requested, signal_number
    requested, signal_number = False, 0


def mark(handler: Callable[[int, FrameType | None], Any]) -> Callable[[int, FrameType | None], Any]:
    """Mark a handler as this project's (the launcher's job handlers), so `handling` replaces it, never chains it."""
    handler.rnn_sweep_handler = True  # type: ignore[attr-defined]
    return handler


def settle() -> None:
    """The stop is being handled (lease release, record of the stop): no forced Stopped may cut that short."""
    if threading.current_thread() is threading.main_thread():
        signal.setitimer(signal.ITIMER_REAL, 0)


def _foreign(handler: Handler) -> bool:
    """A Python handler someone else installed (a scheduler's), which a stop should end by calling."""
    return (
        callable(handler)
        and handler is not signal.default_int_handler
        and not getattr(handler, "rnn_sweep_handler", False)
    )


@mark
def _on_signal(signum: int, frame: FrameType | None) -> None:
    global requested, signal_number
    if requested:
        return
    requested, signal_number = True, signum
    signal.setitimer(signal.ITIMER_REAL, GRACE_S)  # SIGALRM: _on_grace_over


@mark
def _on_grace_over(signum: int, frame: FrameType | None) -> None:
    if requested:
        raise Stopped(signal_number, -1)


def _preempt_signal() -> int | None:
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")  # submitit's own variable and default
    return getattr(signal, name, None)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Around one job: signals request a stop (module docstring). On the way out the handlers before are back,
    and a stop that ends here with `Stopped` calls the scheduler's handler it replaced, if any."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    reset()
    before: dict[int, Handler] = {}
    wanted = [signal.SIGTERM, signal.SIGINT]
    preempt = _preempt_signal()
    if preempt is not None and preempt not in wanted and _foreign(signal.getsignal(preempt)):
        wanted.append(preempt)
    for sig in wanted:
        prev = signal.getsignal(sig)
        if prev == signal.SIG_IGN:
            continue
        before[sig] = prev
        if _foreign(prev):
            _chained[sig] = prev  # type: ignore[assignment]
        signal.signal(sig, _on_signal)
    before[signal.SIGALRM] = signal.signal(signal.SIGALRM, _on_grace_over)
    try:
        yield
    except Stopped as exc:
        _restore(before)
        chained = _chained.get(exc.signum)
        _chained.clear()
        if chained is not None:
            chained(exc.signum, None)  # submitit: requeue and exit (SystemExit replaces Stopped)
        raise
    finally:
        _restore(before)
        _chained.clear()


def _restore(before: dict[int, Handler]) -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)
    for sig, prev in before.items():
        signal.signal(sig, prev if prev is not None else signal.SIG_DFL)


def raise_on(*signals: int) -> None:
    """Make each signal raise Stopped at once in this process (main thread only); the first one counts."""

    @mark
    def _raise(signum: int, frame: FrameType | None) -> None:
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        raise Stopped(signum, -1)

    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            signal.signal(sig, _raise)
