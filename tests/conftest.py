"""Shared fixtures: compose the project's configs the way `python -m sweep` does, and run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import sweep.cli  # noqa: F401  registers the config schema and the run_dirname resolver

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
# Small enough to train in well under a second: used wherever the numbers themselves do not matter.
TINY = [
    "budget.amount=20",
    "task.train_tokens=4096",
    "task.valid_tokens=1024",
    "model.hidden_size=8",
    "model.embedding_size=4",
    "measure.enabled=false",
    "measure.noise_scale=false",
    "warmup_updates=2",
    "eval.points=2",
]


@pytest.fixture
def make_cfg() -> Iterator[Callable[..., DictConfig]]:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):

        def _make(*overrides: str) -> DictConfig:
            return compose("config", overrides=list(overrides))

        yield _make


def run_cli(*args: str, cwd: Path = REPO, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "sweep", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def tagged_env(tag: str) -> dict[str, str]:
    """The environment of a test's child process, marked with RNN_SWEEP_TEST_TAG=tag so that `processes_with`
    finds it and every process it starts (the fork server, the jobs) afterwards."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RNN_SWEEP_TEST_TAG": tag}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def processes_with(tag: str) -> list[int]:
    """Processes (the sweep, its fork server, its jobs) started with RNN_SWEEP_TEST_TAG=tag in their environment."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"RNN_SWEEP_TEST_TAG={tag}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
