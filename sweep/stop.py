"""A clean stop on SIGTERM (and SIGINT in a single run): the signal handler only sets `requested`; the training
loop reads it at the next update boundary, saves a checkpoint and raises `Stopped`, so a rerun resumes there.

Kept free of torch and Hydra: the loop reads a module attribute (tens of ns per update), and the entry points
that install the handlers import nothing heavy for it.
"""

from __future__ import annotations

requested: bool = False  # set by a signal handler; read once per update by sweep/train.py
signal_number: int = 0  # which signal asked for the stop (its exit status is 128 + this)


class Stopped(Exception):
    """Training stopped at an update boundary because a stop was requested; a checkpoint holds its state."""

    def __init__(self, signum: int, update: int) -> None:
        super().__init__(f"stopped by signal {signum} at update {update}")
        self.signum, self.update = signum, update
