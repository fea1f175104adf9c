"""What a fresh sweep worker does before its first job. Torch-free at import: the sweep's parent process names
`warm_worker` to the launcher without loading torch itself."""

from __future__ import annotations

import os

WARMED = False  # set in a worker that warm_worker ran in; run records carry it (env.warmed_worker)


def warm_worker() -> int:
    """Import what a job needs (torch, the runner, the record writer, the measures), so that a worker started
    while the sweep's parent still plans the grid has it ready (sweep/_hydra_api.py: prewarm_joblib_workers; the
    fork server of hydra/launcher=forkserver: sweep/forkserver_preload.py)."""
    import pyarrow.parquet  # noqa: F401

    import sweep.measures
    import sweep.noise_scale
    import sweep.run  # noqa: F401
    from sweep._torch_api import skip_dynamo_import

    skip_dynamo_import()
    global WARMED
    WARMED = True
    return os.getpid()
