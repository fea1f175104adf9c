"""Timing stability: the spread of the runner's tokens/s (wall-clock, what run records hold) across repeated
runs of one grid point, so the report can tell a real speed difference from noise.

Two conditions:
- serial: n runs one after another in this process (one torch thread);
- parallel: n runs spread over `workers` processes at once, as `python -m sweep` runs `n_jobs` jobs at once
  (jobs share the cores, each with cores // workers threads).
The JSON that the analysis reads (bench/out/stability.json) gives `cv` = the larger of the two (the
conservative figure: a speed difference smaller than about 2-3 x cv between two single runs is not evidence).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from bench.common import compose, spread


def _overrides(point: dict[str, Any], device: torch.device) -> list[str]:
    return [
        f"model={point['cell']}",
        f"batch_size={point['batch_size']}",
        f"num_steps={point['num_steps']}",
        "budget.kind=updates",
        f"budget.amount={point['updates']}",
        "measure.enabled=false",
        "measure.noise_scale=false",  # untimed, but it would lengthen the bench for nothing
        f"device={device.type}",
        "progress_every_s=1e9",
    ]


def _one_run(overrides: list[str], threads: int) -> float:
    """One runner training in a (possibly fresh) worker; returns its own tokens_per_s."""
    torch.set_num_threads(threads)
    from sweep.train import train

    return float(train(compose(overrides), measure_fn=None).summary["tokens_per_s"])


def run(
    point: dict[str, Any], *, n: int, threads: int, device: torch.device, parallel_workers: int, log=print
) -> dict[str, Any]:
    overrides = _overrides(point, device)
    out: dict[str, Any] = {"grid_point": dict(point), "clock": "wall", "device": str(device)}
    _one_run(overrides, threads)  # warm this process (first-call costs are not part of the spread)
    t0 = time.perf_counter()
    serial = [_one_run(overrides, threads) for _ in range(n)]
    out["serial"] = {"threads": threads, "tokens_per_s": serial, **spread(serial)}
    log(f"  serial   n={n}: cv {out['serial']['cv']:.3f}  ({time.perf_counter() - t0:.1f}s)")
    if parallel_workers > 1 and device.type == "cpu":
        from joblib import Parallel, delayed

        pthreads = max(1, (os.cpu_count() or 1) // parallel_workers)
        t0 = time.perf_counter()
        with Parallel(n_jobs=parallel_workers, backend="loky") as par:
            par(delayed(_one_run)(overrides, pthreads) for _ in range(parallel_workers))  # warm the workers
            parallel = par(delayed(_one_run)(overrides, pthreads) for _ in range(n))
        out["parallel"] = {
            "workers": parallel_workers,
            "threads": pthreads,
            "tokens_per_s": parallel,
            **spread(parallel),
        }
        took = time.perf_counter() - t0
        log(f"  parallel n={n} on {parallel_workers} workers: cv {out['parallel']['cv']:.3f}  ({took:.1f}s)")
    worst = max((k for k in ("serial", "parallel") if k in out), key=lambda k: out[k]["cv"])
    out.update(cv=out[worst]["cv"], cv_source=worst, n=n)
    return out


def stability_json(result: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    """The small file the analysis reads: {"cv", "grid_point", "n", ...}."""
    doc = {
        "cv": result["cv"],
        "grid_point": result["grid_point"],
        "n": result["n"],
        "cv_source": result["cv_source"],
        "clock": "wall",
        "metric": "summary.tokens_per_s",
        "device": result["device"],
        "cpu": env.get("cpu"),
        "gpu": env.get("gpu"),
        "torch": env.get("torch"),
    }
    for k in ("serial", "parallel"):
        if k in result:
            keys = ("n", "cv", "cv_robust", "min", "median", "max", "mean", "std", "threads")
            doc[k] = {key: result[k][key] for key in keys}
            if k == "parallel":
                doc[k]["workers"] = result[k]["workers"]
    return doc


def table(result: dict[str, Any]) -> str:
    g = result["grid_point"]
    lines = [
        f"grid point: {g['cell']} batch_size={g['batch_size']} num_steps={g['num_steps']} "
        f"updates={g['updates']} (budget=updates), wall-clock tokens/s from the runner's summary",
        "",
        "| condition | n | threads | min | median | max | CV | robust CV (MAD) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in ("serial", "parallel"):
        if k in result:
            d = result[k]
            cond = k if k == "serial" else f"parallel ({d['workers']} loky workers)"
            cells = [
                cond,
                d["n"],
                d["threads"],
                f"{d['min']:,.0f}",
                f"{d['median']:,.0f}",
                f"{d['max']:,.0f}",
            ]
            lines.append("| " + " | ".join(map(str, cells)) + f" | **{d['cv']:.3f}** | {d['cv_robust']:.3f} |")
    return "\n".join(lines)
