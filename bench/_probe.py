"""`python -m bench._probe <overrides>`: what one fresh loky worker pays for a smoke job (sweep_efficiency).

Prints one JSON line. Run in a new interpreter, so the first-use costs are those of a new worker.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def main(overrides: list[str]) -> dict:
    out: dict = {}
    t0 = time.perf_counter()
    # what a loky worker imports when it unpickles Hydra's task function, then to run a job
    import sweep.cli

    out["import_sweep_cli_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    import torch

    import sweep.run

    out["import_sweep_run_s"] = time.perf_counter() - t0

    from bench.common import compose

    workers = int(os.environ.get("BENCH_PROBE_WORKERS", "1"))  # the sweep's parallel jobs: same threads per job
    t0 = time.perf_counter()
    cfg = compose(overrides)
    out["compose_first_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    compose(overrides)
    out["compose_again_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # the first optimizer imports torch._dynamo
    out["first_optimizer_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    import pyarrow.parquet  # noqa: F401  first record write

    import sweep.measures  # noqa: F401

    out["import_pyarrow_measures_s"] = time.perf_counter() - t0
    from sweep.measures import measure_all
    from sweep.run import run_job
    from sweep.train import evaluate, train

    for k in ("first", "again"):
        with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
            t0 = time.perf_counter()
            rec = run_job(cfg, tmp, parallel_jobs=workers)
            out[f"run_job_{k}_s"] = time.perf_counter() - t0
        out[f"train_seconds_{k}"] = rec["summary"]["train_seconds"]
    t0 = time.perf_counter()
    res = train(cfg, measure_fn=None)
    out["train_call_s"] = time.perf_counter() - t0
    out["train_seconds"] = res.summary["train_seconds"]
    valid = res.data.rows("valid", cfg.eval.rows)
    t0 = time.perf_counter()
    evaluate(res.model, *valid)
    out["one_eval_s"] = time.perf_counter() - t0
    out["evals_per_job"] = int(cfg.eval.points)
    t0 = time.perf_counter()
    if cfg.measure.enabled:
        measure_all(res.model, res.data, cfg, torch.device("cpu"))
    out["measures_s"] = time.perf_counter() - t0
    out["end_time"] = time.time()  # the parent subtracts this from when the process is gone: interpreter exit
    return out


if __name__ == "__main__":
    print("PROBE" + json.dumps(main(sys.argv[1:])), flush=True)
