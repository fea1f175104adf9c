"""The fork server's preload module (sweep/forkserver.py): the server imports it once, so every job forked from
it starts with what it needs already imported: torch, the runner and the measures (warm_worker), and what
unpickling the job's Hydra state refers to (the config classes of every Hydra plugin, found by Hydra's plugin
scan, and the entry point's module), which would otherwise cost each job ~0.06 s."""

from hydra.core.plugins import Plugins

import sweep.cli  # noqa: F401  (the task function's module)
from sweep.worker import warm_worker

warm_worker()
Plugins.instance()
