"""`hydra/launcher=forkserver`: up to `n_jobs` jobs at once on this machine, each in a process of its own, forked
from one server process that imported torch and the runner once.

Why a launcher of our own (docs/scale-out.md, "Launchers"): with Hydra's joblib launcher every worker is a fresh
interpreter that imports torch, the runner and the measures (1.5 s alone, 2 s or more while the parent plans the
grid on the same cores) before its first job; that import is most of a small sweep's fixed cost. Here one
server (Python's `multiprocessing` forkserver) does the import once, started as soon as Hydra sets the launcher
up, so it overlaps the grid's planning; every job is then a fork of it (milliseconds), starts from the same
clean state (no state carried from the job before, as a reused worker would), and exits without tearing torch
down. A job whose process dies (killed, out of memory) is reported failed; the other jobs go on. Ctrl-C reaches
every running job, which releases its lease and keeps its checkpoint (sweep/run.py).

This module is what Hydra's plugin scan executes on every start: the config schema and a shim whose
implementation (`_impl.py`) is imported only when a sweep instantiates it, as Hydra's own plugins do.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class ForkserverLauncherConf:
    _target_: str = "hydra_plugins.rnn_sweep_launcher.forkserver_launcher.ForkserverLauncher"
    n_jobs: int = -1  # jobs at once; -1 = one per usable CPU (sweep/cpus.py: affinity, cgroup quota, SLURM)
    start_method: str = "forkserver"  # or spawn: a fresh interpreter per job (what forkserver saves), for comparison


ConfigStore.instance().store(group="hydra/launcher", name="forkserver", node=ForkserverLauncherConf,
                             provider="rnn-sweep")  # fmt: skip


class ForkserverLauncher(Launcher):
    """The registered launcher: builds the implementation (hydra_plugins/rnn_sweep_launcher/_impl.py) lazily."""

    def __init__(self, n_jobs: int = -1, start_method: str = "forkserver") -> None:
        from hydra_plugins.rnn_sweep_launcher._impl import ForkserverLauncherImpl

        self.launcher = ForkserverLauncherImpl(n_jobs=n_jobs, start_method=start_method)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self.launcher.launch(job_overrides, initial_job_idx)
