"""The project's training loop (sweep.train.train, all its bookkeeping) against the barest PyTorch TBPTT loop.

For each cell x batch_size x num_steps: both sides train the same model shape (embedding -> fused cell ->
linear), on the same stream layout, with the same optimizer (Adam or SGD with momentum), clipping, threads and
warm-up, for the same number of updates. They are interleaved in one process, alternating which goes first
(ABBA...), several repetitions. Each side reports tokens/s after the warm-up updates, evaluation excluded: the
runner's own `summary["tokens_per_s"]` and, for the bare loop, the same updates timed the same way.

Two clocks: `wall` (what the sweep records) and `cpu` (the thread's CPU time, same code path: the runner's
`time.perf_counter` is swapped for `time.thread_time`). With one torch thread all the work of an update runs
on the calling thread, so the CPU clock measures the same work but is not inflated when other processes share
the cores; it separates a real runner gap from contention noise. On a GPU only the wall clock is meaningful.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from bench.common import CLOCKS, bare_tbptt, compose, runner_clock, spread, sync

HARNESS_US = 15.0  # the most the runner may add to an update, in µs (bench/README.md)


def target(batch_size: int) -> float:
    """runner/bare that a grid point must reach: 0.98 from batch 4, 0.95 at batch 1-3, where an update is
    so small (~0.5 ms) that a fixed cost weighs most."""
    return 0.98 if batch_size >= 4 else 0.95


def _updates_for(cell: str, bs: int, ns: int, target_s: float, warmup: int, device, common: dict) -> int:
    """Updates that make one timed run last about `target_s` (calibrated on a short bare run)."""
    probe = bare_tbptt(
        cell=cell, batch_size=bs, num_steps=ns, updates=warmup + 20, warmup=warmup, device=device, **common
    )
    per_update = bs * ns / probe["tokens_per_s"]
    return int(min(20000, max(60, round(target_s / per_update)))) + warmup


def measure_point(
    train_module,
    cell: str,
    bs: int,
    ns: int,
    *,
    reps: int,
    target_s: float,
    clocks: list[str],
    device: torch.device,
    train_tokens: int,
    optim: str = "adam",
) -> dict[str, Any]:
    overrides = [
        f"optim={optim}",
        f"model={cell}",
        f"batch_size={bs}",
        f"num_steps={ns}",
        "budget.kind=updates",
        "measure.enabled=false",
        "measure.noise_scale=false",  # untimed, but it would lengthen the bench for nothing
        f"device={device.type}",
        f"task.train_tokens={train_tokens}",
        "progress_every_s=1e9",
    ]
    cfg0 = compose([*overrides, "budget.amount=1"])
    warmup = int(cfg0.warmup_updates)
    common = {
        "vocab": int(cfg0.task.vocab_size),
        "lag": int(cfg0.task.lag),
        "embedding_size": int(cfg0.model.embedding_size),
        "hidden_size": int(cfg0.model.hidden_size),
        "num_layers": int(cfg0.model.num_layers),
        "lr": float(cfg0.optim.lr),
        "clip": float(cfg0.optim.clip) if cfg0.optim.clip > 0 else float("inf"),
        "train_tokens": train_tokens,
    }
    if cfg0.optim.name not in ("adam", "sgd") or cfg0.optim.lr_scaling != "none" or cfg0.task.name != "echo":
        raise RuntimeError("the bare loop mirrors the default config (echo task, adam or sgd, no lr scaling)")
    common["optim"] = str(cfg0.optim.name)
    common["momentum"] = float(cfg0.optim.get("momentum") or 0.0)
    updates = _updates_for(cell, bs, ns, target_s, warmup, device, common)
    cfg = compose([*overrides, f"budget.amount={updates}"])
    out: dict[str, Any] = {
        "optim": optim,
        "cell": cell,
        "batch_size": bs,
        "num_steps": ns,
        "updates": updates,
        "warmup": warmup,
    }
    for clock in clocks:
        runner, bare, plain = [], [], []
        for rep in range(reps):
            order = ("runner", "bare", "plain") if rep % 2 == 0 else ("plain", "bare", "runner")
            for side in order:
                sync(device)
                if side == "runner":
                    with runner_clock(train_module, clock):
                        res = train_module.train(cfg, measure_fn=None)
                    runner.append(float(res.summary["tokens_per_s"]))
                else:
                    b = bare_tbptt(
                        cell=cell,
                        batch_size=bs,
                        num_steps=ns,
                        updates=updates,
                        warmup=warmup,
                        device=device,
                        clock=CLOCKS[clock],
                        seed=int(cfg.seed),
                        plain_step=side == "plain",
                        **common,
                    )
                    (plain if side == "plain" else bare).append(b["tokens_per_s"])
        mr, mb, mp = statistics.median(runner), statistics.median(bare), statistics.median(plain)
        br, bb = max(runner), max(bare)
        pairs = [r / b for r, b in zip(runner, bare, strict=True)]
        tpu = bs * ns
        out[clock] = {
            "runner_tokens_per_s": runner,
            "bare_tokens_per_s": bare,
            "plain_tokens_per_s": plain,
            "runner_median": mr,
            "bare_median": mb,
            "plain_median": mp,
            "ratio": mr / mb,  # ratio of the medians: runner against the bare PyTorch loop
            "best_ratio": br / bb,  # ratio of the best runs: interference only ever slows a run down
            "pair_ratio": spread(pairs),
            "overhead_us_per_update": 1e6 * (tpu / br - tpu / bb),  # from the best runs
            # the runner's bookkeeping: runner against the bare loop with the runner's optimizer path, medians
            "harness_us_per_update": 1e6 * (tpu / mr - tpu / mp),
            "bare_us_per_update": 1e6 * tpu / bb,
        }
    return out


def primary_clock(point: dict[str, Any]) -> str:
    """The clock a verdict rests on: CPU time where measured (same work, less inflated by other processes on
    shared cores; on an idle machine it equals the wall-clock of a one-thread run), else wall-clock (GPU)."""
    return "cpu" if "cpu" in point else "wall"


def passes(point: dict[str, Any]) -> bool:
    """Ratio of the medians of interleaved repetitions on the primary clock, against the point's target."""
    return point[primary_clock(point)]["ratio"] >= target(point["batch_size"])


def verdict(point: dict[str, Any]) -> str:
    c = point[primary_clock(point)]
    if passes(point):
        return "ok"
    return f"**gap** {c['harness_us_per_update']:+.0f} µs/update (target {target(point['batch_size'])})"


def run(
    train_module,
    *,
    cells: list[str],
    batch_sizes: list[int],
    num_steps: list[int],
    reps: int,
    target_s: float,
    clocks: list[str],
    device: torch.device,
    train_tokens: int,
    optims: tuple[str, ...] = ("adam", "sgd"),
    log=print,
) -> list[dict[str, Any]]:
    points = []
    for optim in optims:
        for cell in cells:
            for bs in batch_sizes:
                for ns in num_steps:
                    t0 = time.perf_counter()
                    p = measure_point(
                        train_module,
                        cell,
                        bs,
                        ns,
                        reps=reps,
                        target_s=target_s,
                        clocks=clocks,
                        device=device,
                        train_tokens=train_tokens,
                        optim=optim,
                    )
                    p["verdict"] = verdict(p)
                    p["seconds"] = time.perf_counter() - t0
                    points.append(p)
                    ratios = "  ".join(f"{c} {p[c]['ratio']:.3f}" for c in clocks)
                    head = f"  {optim:4s} {cell:4s} bs={bs:<3d} ns={ns:<3d} updates={p['updates']:<5d}"
                    log(f"{head} {ratios}  ({p['seconds']:.1f}s)")
    return points


def pooled(points: list[dict[str, Any]]) -> dict[str, float]:
    """The harness cost per update, pooled over grid points (it is Python bookkeeping, so about the same at
    every shape): median and quartiles over points of (runner - bare loop with the runner's optimizer path) µs
    per update from the medians of the repetitions, primary clock; and the runner/bare that this median
    implies for an update of 1 ms of work."""
    xs = sorted(p[primary_clock(p)]["harness_us_per_update"] for p in points)
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    med = statistics.median(xs)
    return {"median_us": med, "q1_us": q[0], "q3_us": q[2], "n": len(xs), "ratio_at_1ms": 1000 / (1000 + med)}


def table(points: list[dict[str, Any]], clocks: list[str]) -> str:
    pc = "cpu" if "cpu" in clocks else "wall"
    head = ["optim", "cell", "batch", "steps", "updates", "runner tok/s (wall, median)", "bare tok/s (wall, median)"]
    head += [f"runner/bare ({c}, medians)" for c in clocks]
    head += [
        f"runner/bare ({pc}, best of N)",
        f"pair ratios ({pc}) min–max",
        f"runner − plain-step loop µs/update ({pc}, medians) / bare µs",
    ]
    head += ["target", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        w, c = p["wall"], p[pc]
        row = [p.get("optim", "adam"), p["cell"], str(p["batch_size"]), str(p["num_steps"]), str(p["updates"])]
        row += [f"{w['runner_median']:,.0f}", f"{w['bare_median']:,.0f}"]
        row += [f"**{p[k]['ratio']:.3f}**" if k == pc else f"{p[k]['ratio']:.3f}" for k in clocks]
        row += [f"{c['best_ratio']:.3f}", f"{c['pair_ratio']['min']:.2f}–{c['pair_ratio']['max']:.2f}"]
        row += [f"{c['harness_us_per_update']:+.0f} / {c['bare_us_per_update']:.0f}", str(target(p["batch_size"]))]
        row += [p["verdict"]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def harness_only(train_module, cell: str, updates: int = 5000, reps: int = 5) -> dict[str, Any]:
    """The runner's bookkeeping alone, in µs per update: `train()` with its update replaced by one that does no
    arithmetic (it returns the loss and norm tensors of one real update, and computes the per-group norms
    from that update's real gradients when asked), so all that is timed is the loop around it: the stream,
    the recorder, the clock, the divergence checks, the evaluation schedule. CPU time, best of `reps`."""
    cfg = compose(
        [f"model={cell}", "batch_size=4", "num_steps=4", "budget.kind=updates", f"budget.amount={updates}",
         "measure.enabled=false", "measure.noise_scale=false", "device=cpu", "progress_every_s=1e9"]
    )  # fmt: skip
    real_setup = train_module.build_setup

    def setup(cfg, device):
        s = real_setup(cfg, device)
        x, y, state = s.stream.next_window(None)
        loss, norm, _, _ = s.update(x, y, state, False)  # real gradients for the per-group norms

        def update(x, y, state, group_norms=False):
            return loss, norm, state, train_module._group_norms(s.groups) if group_norms else None

        s.update = update
        return s

    times = []
    for _ in range(reps):
        train_module.build_setup = setup
        try:
            with runner_clock(train_module, "cpu"):
                res = train_module.train(cfg, measure_fn=None)
        finally:
            train_module.build_setup = real_setup
        times.append(1e6 * 16 / float(res.summary["tokens_per_s"]))
    return {"cell": cell, "updates": updates, "us_per_update": min(times), "runs": times}
