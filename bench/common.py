"""Shared pieces of the benchmarks: composing the project's config, the bare TBPTT loop, small statistics."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = str(REPO / "conf")
OUT_DIR = REPO / "bench" / "out"


def compose(overrides: list[str]):
    """The project's config, composed as `python -m sweep` composes it (schema and resolvers registered)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import sweep.cli  # noqa: F401  registers the ConfigStore schema and the `or_base` resolver

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


_CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class BareModel(nn.Module):
    """embedding -> fused cell -> linear: nothing else."""

    def __init__(self, cell: str, vocab: int, emb: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        self.rnn = _CELLS[cell](emb, hidden, layers, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, x, state):
        out, state = self.rnn(self.embedding(x), state)
        return self.decoder(out), state


def bare_tbptt(
    *,
    cell: str,
    batch_size: int,
    num_steps: int,
    updates: int,
    warmup: int,
    vocab: int = 4,
    lag: int = 8,
    embedding_size: int = 32,
    hidden_size: int = 64,
    num_layers: int = 1,
    lr: float = 1e-2,
    optim: str = "adam",
    momentum: float = 0.0,
    plain_step: bool = False,
    clip: float = 5.0,
    train_tokens: int = 1 << 18,
    seed: int = 0,
    device: torch.device | None = None,
    clock=time.perf_counter,
) -> dict[str, Any]:
    """The barest truncated-BPTT loop on the echo stream: the runner's shapes, optimizer, clipping, layout.

    With `plain_step`, the gradients are set to None directly and the optimizer's step runs without PyTorch's
    hook/profiler wrappers, as the runner does: the difference to the runner is then its bookkeeping alone.
    Stream cut into `batch_size` batch-first rows; window i = columns [i*num_steps, (i+1)*num_steps); state
    carried and detached between windows, reset at the start of each pass. Timed like the runner: tokens/s
    over the updates after `warmup`, synchronised on a GPU. `clock` is the timer (wall-clock by default; the
    bench also uses the thread's CPU time, which other processes on shared cores do not inflate).
    """
    device = device or pick_device()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    stream = torch.randint(vocab, (train_tokens,), generator=gen)
    length = train_tokens // batch_size
    rows = stream[: length * batch_size].view(batch_size, length)
    targets = torch.roll(rows, lag, dims=1)  # input at t - lag (same cost as the runner's IGNORE-padded target)
    inputs, targets = rows.to(device), targets.to(device)
    windows = length // num_steps
    model = BareModel(cell, vocab, embedding_size, hidden_size, num_layers).to(device)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum) if optim == "sgd" else torch.optim.Adam(params, lr=lr)
    lossf = nn.functional.cross_entropy
    if plain_step:  # the runner's optimizer path (sweep/_torch_api.py): what is left is the harness's bookkeeping
        from sweep._torch_api import plain_step as make_plain_step

        step = make_plain_step(opt)

        def zero_grad(set_to_none: bool = True) -> None:
            for p in params:
                p.grad = None
    else:
        step, zero_grad = opt.step, opt.zero_grad

    def zero_state():
        h = torch.zeros(num_layers, batch_size, hidden_size, device=device)
        return (h, torch.zeros_like(h)) if cell == "lstm" else h

    done = 0
    t_warm = clock()
    sync(device)
    while done < updates:
        state = zero_state()
        for i in range(windows):
            x = inputs[:, i * num_steps : (i + 1) * num_steps]
            y = targets[:, i * num_steps : (i + 1) * num_steps]
            state = tuple(s.detach() for s in state) if cell == "lstm" else state.detach()
            logits, state = model(x, state)
            loss = lossf(logits.reshape(-1, vocab), y.reshape(-1))
            zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, clip)
            step()
            done += 1
            if done == warmup:
                sync(device)
                t_warm = clock()
            if done >= updates:
                break
    sync(device)
    seconds = clock() - t_warm
    return {"tokens_per_s": (updates - warmup) * batch_size * num_steps / seconds, "seconds": seconds}


def spread(xs: list[float]) -> dict[str, float]:
    xs = [float(x) for x in xs]
    mean = statistics.fmean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    med = statistics.median(xs)
    mad = statistics.median(abs(x - med) for x in xs)
    return {
        "n": len(xs),
        "min": min(xs),
        "median": statistics.median(xs),
        "max": max(xs),
        "mean": mean,
        "std": sd,
        "cv": sd / mean if mean > 0 else math.nan,
        "cv_robust": 1.4826 * mad / med if med > 0 else math.nan,  # MAD-based: one odd run does not dominate
    }


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


class _TimeShim:
    """Stands in for the `time` module in the runner's module: perf_counter replaced, the rest passed on."""

    def __init__(self, clock) -> None:
        self._clock = clock
        self.calls = 0

    def perf_counter(self) -> float:
        self.calls += 1
        return self._clock()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class runner_clock:
    """Time the runner's loop with `clock` instead of wall-clock: patches `<train module>.time` meanwhile.

    The runner computes its own tokens_per_s (after warm-up, evaluation excluded) from `time.perf_counter()`;
    with the shim it computes the same figure in the thread's CPU seconds. Raises if the runner never called
    the clock (its timing code changed shape and the patch no longer reaches it).
    """

    def __init__(self, train_module, clock_name: str) -> None:
        self.module, self.clock_name = train_module, clock_name

    def __enter__(self):
        if self.clock_name == "wall":
            self.shim = None
            return self
        self.saved = self.module.time
        self.shim = _TimeShim(CLOCKS[self.clock_name])
        self.module.time = self.shim
        return self

    def __exit__(self, *exc) -> None:
        if self.shim is None:
            return
        self.module.time = self.saved
        if exc[0] is None and self.shim.calls == 0:
            raise RuntimeError(f"{self.module.__name__} never called time.perf_counter: cannot apply the CPU clock")


def load_train_module(path: str | None):
    """sweep.train, or (to try a change before it lands) a copy of it at `path` with the same interface."""
    if path is None:
        import sweep.train

        return sweep.train
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("bench_train_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    import os
    import platform
    import sys

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }
