"""Every private Hydra API the project uses, in one place.

Hydra 1.3 offers no public way to (a) expand a sweep's overrides into the cartesian product of grid points the
way `hydra/sweeper=basic` does, nor (b) change how a failed composition is reported (it prints several lines, a
search-path dump and a hint about HYDRA_FULL_ERROR; a user who typed `model=foo` needs one line). Both live in
`hydra._internal`, which may change in any release; keeping them here means one module to fix, and
tests/test_architecture.py checks the names and signatures below against the installed Hydra so that an upgrade
fails there first, loudly, instead of somewhere in a sweep.

The sweepers do not subclass Hydra's internal `BasicSweeper`: `SweeperBase` below does what they used from it
with public APIs only (Hydra's plugin scan re-executes `basic_sweeper.py` in place, so a subclass made before a
scan no longer matches the `super(BasicSweeper, self)` inside it).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any

from hydra.core.override_parser.types import Override
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from sweep import forkserver

BASIC_SWEEPER_MODULE = "hydra._internal.core_plugins.basic_sweeper"
HYDRA_UTILS_MODULE = "hydra._internal.utils"


def split_arguments(overrides: list[Override], max_batch_size: int | None) -> list[list[list[str]]]:
    """Hydra's basic sweeper's expansion of parsed overrides into batches of grid points (its private static
    `BasicSweeper.split_arguments`): the same order and the same error for sweep kinds it cannot expand.
    Looked up at call time, because Hydra's plugin scan re-executes that module and rebinds the class."""
    basic = importlib.import_module(BASIC_SWEEPER_MODULE).BasicSweeper
    return basic.split_arguments(overrides, max_batch_size)


def install_error_handler(report: Callable[[Callable[[], Any], Callable[[Callable[[], Any]], Any]], Any]) -> None:
    """Route Hydra's error reporting through `report(func, original)`. Hydra's `main` calls
    `hydra._internal.utils.run_and_report(func)` around composition and the run; replacing that function is the
    only hook. Idempotent; called by the entry point only (`sweep.cli.main`), never on import."""
    hydra_utils = importlib.import_module(HYDRA_UTILS_MODULE)
    original = hydra_utils.run_and_report
    if getattr(original, "_one_line", False):
        return

    def run_and_report(func: Callable[[], Any]) -> Any:
        return report(func, original)

    run_and_report._one_line = True  # type: ignore[attr-defined]
    hydra_utils.run_and_report = run_and_report


class SweeperBase(Sweeper):
    """What the project's sweepers used from Hydra's `BasicSweeper`, built on public APIs: the settings every
    sweeper config has (max_batch_size, params), and a launcher instantiated in `setup` as Hydra's own plugins
    do (hydra.core.plugins.Plugins)."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        super().__init__()
        self.max_batch_size = max_batch_size
        self.params: dict[str, str] = dict(params or {})
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        forkserver.stop_unclaimed()  # the entry point guessed hydra/launcher=forkserver, and another one runs

    def params_overrides(self) -> list[str]:
        """`params` as override lines (what BasicSweeper's private `_parse_config` returns)."""
        return [f"{k}={v}" for k, v in self.params.items()]


# -------------------------------------------------------------------------------- joblib launcher workers
# Hydra's joblib launcher starts its loky workers only when the first batch is launched, and each fresh worker
# then imports torch and the runner (2-3 s on these CPUs) while the parent waits; at exit the parent waits again
# for every worker's interpreter to shut down (~1 s with torch loaded). Starting the workers while the parent
# plans the grid, and killing them once every record is written, takes both out of a sweep's fixed cost
# (bench/README.md, "Sweep start"). The launcher builds its `Parallel` in `hydra_plugins.hydra_joblib_launcher.
# _core.launch` from `launcher.joblib` through `process_joblib_cfg`; loky reuses a pool only for the same
# arguments, so the warm-up builds them the same way.
JOBLIB_LAUNCHER_CORE = "hydra_plugins.hydra_joblib_launcher._core"
LOKY_REUSABLE_EXECUTOR = "joblib.externals.loky.reusable_executor"


def _joblib_parallel_kwargs(launcher: Launcher) -> dict[str, Any] | None:
    joblib_cfg = getattr(launcher, "joblib", None)
    if type(launcher).__name__ != "JoblibLauncher" or joblib_cfg is None:
        return None
    core = importlib.import_module(JOBLIB_LAUNCHER_CORE)
    kwargs = dict(joblib_cfg)
    kwargs["backend"] = "loky"  # as the launcher does
    core.process_joblib_cfg(kwargs)
    return kwargs


def prewarm_joblib_workers(launcher: Launcher | None, warm: Callable[[], Any]) -> Any:
    """Start the joblib launcher's workers now, each running `warm` (imports), in a background thread; returns
    the thread to join before anything is timed or launched, or None for any other launcher."""
    import threading

    kwargs = _joblib_parallel_kwargs(launcher) if launcher is not None else None
    if kwargs is None:
        return None
    from joblib import Parallel, delayed, effective_n_jobs

    n = effective_n_jobs(kwargs.get("n_jobs", -1))

    def start() -> None:
        with contextlib.suppress(Exception):  # a warm-up that fails costs the saving, never the sweep
            Parallel(**kwargs)(delayed(warm)() for _ in range(n))

    thread = threading.Thread(target=start, name="prewarm-joblib-workers", daemon=True)
    thread.start()
    return thread


def release_joblib_workers() -> bool:
    """Kill the loky workers of this process's reusable pool (all jobs are back and their records written), so
    that the interpreter does not wait for each of them to shut torch down. True if there was a pool."""
    import sys

    module = sys.modules.get(LOKY_REUSABLE_EXECUTOR)
    executor = getattr(module, "_executor", None) if module is not None else None
    if executor is None:
        return False
    executor.shutdown(wait=False, kill_workers=True)
    return True
