"""The truncated-BPTT training loop, readable top to bottom: config -> task stream -> model -> updates -> result.

Semantics (docs/protocol.md, "Training semantics"): the stream is cut into batch_size rows; each update takes
the next num_steps columns; the state is carried across windows and detached, and reset at the start of each pass;
the loss is the mean cross-entropy per target token (optim.loss_reduction=sum back-propagates the TF tutorial's
sum over time steps instead, recording the mean all the same); the recorded gradient norm is the global L2 norm
before clipping. budget=plateau trains until the held-out loss stops improving (`plateaued`), or to its cap.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from sweep import checkpoint, record, stop
from sweep._torch_api import plain_step, skip_dynamo_import
from sweep.config import effective_lr
from sweep.data import IGNORE, num_windows, repackage_hidden
from sweep.model import RecurrentModel, State, token_loss
from sweep.tasks import TaskData, make_task

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    status: str  # complete | diverged | pruned
    summary: dict[str, Any]
    steps: pd.DataFrame
    evals: pd.DataFrame
    profiles: pd.DataFrame = field(default_factory=pd.DataFrame)
    model: RecurrentModel | None = None
    data: TaskData | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        from sweep.config import ConfigError

        raise ConfigError("invalid config: device='cuda': no CUDA device is available here (use auto or cpu)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(cfg: DictConfig, data: TaskData) -> RecurrentModel:
    return RecurrentModel(
        cell=cfg.model.cell,
        vocab_size=data.vocab_size,
        out_vocab=data.out_vocab,
        num_heads=data.num_heads,
        embedding_size=cfg.model.embedding_size,
        hidden_size=cfg.model.hidden_size,
        num_layers=cfg.model.num_layers,
        recurrent_init=str(OmegaConf.select(cfg, "model.recurrent_init", default="default")),
        spectral_radius=float(OmegaConf.select(cfg, "model.spectral_radius", default=1.0)),
    )


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    skip_dynamo_import()  # 1-2 s of every fresh worker otherwise (sweep/_torch_api.py)
    lr = effective_lr(cfg)
    if cfg.optim.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.optim.momentum)
    return torch.optim.Adam(model.parameters(), lr=lr)


def window_forward(model: RecurrentModel, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
    """One training window: the carried state is detached first, so this window's loss cannot send gradient
    into earlier windows (truncated BPTT), while the forward pass still sees everything before it."""
    return model(x, repackage_hidden(state))


Update = Callable[[torch.Tensor, torch.Tensor, State, bool], tuple[torch.Tensor, torch.Tensor, State, Any]]


def make_update(
    model: RecurrentModel,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    clip: float,
    groups: dict[str, list[torch.nn.Parameter]] | None = None,
    loss_reduction: str = "mean",
) -> Update:
    """The one training update, shared by train() and the speed phase (sweep/speed.py) so that both time the
    same work: `update(x, y, state, group_norms) -> (loss, pre-clip grad norm, new state, group norms | None)`.

    `y` is the window's targets batch-first, [B, T, heads] (WindowStream lays them out so once, instead of
    permuting a copy every update). loss and norm stay device tensors (no host sync per update); the per-group
    norms, when asked for, are taken after backward and before clipping, like the global norm.

    `loss` is always the mean cross-entropy per defined target token. With `loss_reduction="sum"` the loss that
    is back-propagated is the TF PTB tutorial's instead, summed over the window's time steps and averaged over
    rows (and heads): `loss x defined targets / (batch_size x heads)`, num_steps x the mean on a window without
    IGNORE. "mean" back-propagates `loss` itself: its update is the one it always was.
    """

    step = plain_step(optimizer)  # optimizer.step() less its profiler/hook wrappers: ~25 us (sweep/_torch_api.py)
    if loss_reduction not in ("mean", "sum"):
        raise ValueError(f"loss_reduction={loss_reduction!r}: must be mean or sum")
    summed = loss_reduction == "sum"

    def update(x: torch.Tensor, y: torch.Tensor, state: State, group_norms: bool = False):
        logits, state = model.window_logits(x, repackage_hidden(state))  # = window_forward, flat logits
        loss = token_loss(logits, y)
        for p in params:  # = optimizer.zero_grad(set_to_none=True), without its profiler range
            p.grad = None
        (loss * targets_per_row(y) if summed else loss).backward()
        by_group = _group_norms(groups) if group_norms and groups is not None else None
        norm = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)  # returns the pre-clip norm
        step()
        return loss, norm, state, by_group

    return update


def targets_per_row(y: torch.Tensor) -> torch.Tensor:
    """Defined targets of a batch-first window [B, T, heads] per row and head (a device scalar, no host sync):
    the factor that turns the mean loss per target token into the TF tutorial's sum over time steps."""
    return (y != IGNORE).sum() / (y.shape[0] * y.shape[2])


class WindowStream:
    """The training stream in update order: passes over the rows, windows of num_steps columns in each.

    `next_window(state)` returns the next window that has a target together with the state to feed it: the
    state is reset to zeros at the start of every pass, and windows without any defined target (the first
    `lag` columns of a pass on echo/lags) are run forward without gradient, carrying the state, with no update.
    The speed phase uses `ready`/`prepare`/`take` to leave those forward-only steps out of its timed segments.
    Windows come as (inputs [B, T], targets [B, T, heads]): the targets are laid out batch-first once here.
    """

    def __init__(self, model: RecurrentModel, inputs: torch.Tensor, targets: torch.Tensor, num_steps: int) -> None:
        self.model, self.inputs, self.num_steps = model, inputs, num_steps
        self.targets = targets.permute(1, 2, 0).contiguous()  # [heads, B, L] -> [B, L, heads]
        self.batch_size, self.device = inputs.shape[0], inputs.device
        self.windows = num_windows(inputs, num_steps)
        column_has_target = (targets != IGNORE).any(dim=0).any(dim=0)[: self.windows * num_steps]
        self.has_target = column_has_target.view(self.windows, num_steps).any(dim=1).tolist()
        if not any(self.has_target):  # check_task rules this out; without it a pass would never yield a window
            raise RuntimeError("no training window of the stream has a target")
        self.passes = 0
        self.index = self.windows  # the first call starts pass 1

    @property
    def ready(self) -> bool:
        """The current window has a target and lies in the current pass: `take` may be called without `prepare`."""
        return self.index < self.windows and self.has_target[self.index]

    def prepare(self, state: State | None) -> State:
        """Move to the next window with a target: start a new pass (state reset) if this one is used up, and
        run the target-less windows forward, carrying the state. Returns the state to feed that window."""
        while True:
            if self.index >= self.windows:
                self.passes += 1
                self.index = 0
                state = self.model.init_state(self.batch_size, self.device)  # reset at the start of each pass
            if self.has_target[self.index]:
                return state
            x, _ = self.window(self.index)
            with torch.no_grad():
                _, state = self.model(x, state)
            self.index += 1

    def window(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Window i of a pass: columns [i*num_steps, (i+1)*num_steps) of the inputs and the batch-first targets."""
        start = i * self.num_steps
        end = start + self.num_steps
        return self.inputs[:, start:end], self.targets[:, start:end]

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.index += 1
        return self.window(self.index - 1)

    def next_window(self, state: State | None) -> tuple[torch.Tensor, torch.Tensor, State]:
        # `ready` and `window` inlined: this runs once per update of train(), where every Python call shows
        i = self.index
        if i >= self.windows or not self.has_target[i]:
            state = self.prepare(state)
            i = self.index
        self.index = i + 1
        start = i * self.num_steps
        end = start + self.num_steps
        return self.inputs[:, start:end], self.targets[:, start:end], state


class TrainClock:
    """Training seconds, with evaluation and measures left out: `pause()` before them, `resume()` after.

    On CUDA the device is synchronised before the clock is read at a pause, so queued kernels are counted."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.done, self.start, self.running = device, 0.0, 0.0, False

    def resume(self) -> None:
        sync(self.device)
        self.start = time.perf_counter()
        self.running = True

    def pause(self) -> float:
        """Stop the clock (a second pause adds nothing: a run that ends at an evaluation point is paused there)."""
        if self.running:
            sync(self.device)
            self.done += time.perf_counter() - self.start
            self.running = False
        return self.done

    def at(self, now: float) -> float:
        """Seconds so far at perf_counter reading `now`, without a sync (kernels may still be queued)."""
        return self.done + now - self.start

    def read(self) -> float:
        """Seconds so far, after a sync: everything launched until now counted."""
        sync(self.device)
        return self.done + time.perf_counter() - self.start


class Schedule:
    """Points (fractions of the budget) at which training stops for untimed work; at most one fires a check."""

    def __init__(self, fractions: list[float]) -> None:
        self.left = list(fractions)

    @property
    def next(self) -> float:
        return self.left[0] if self.left else math.inf

    def due(self, frac: float) -> bool:
        if self.left and frac >= self.left[0]:
            self.left.pop(0)
            return True
        return False


@torch.no_grad()
def evaluate(model: RecurrentModel, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """Held-out loss (mean per target token) and accuracy per head, with the state carried across the stream."""
    # chunks of columns small enough that the logits stay around 16 MB whatever the vocabulary
    chunk = max(8, min(256, 4_000_000 // (inputs.shape[0] * model.num_heads * model.out_vocab)))
    was_training = model.training
    model.eval()
    state = None
    heads = targets.shape[0]
    loss_sum = torch.zeros((), dtype=torch.float64, device=inputs.device)  # float32 sums round visibly
    correct = torch.zeros(heads, device=inputs.device)
    counted = torch.zeros(heads, device=inputs.device)
    for start in range(0, inputs.shape[1], chunk):
        x, y = inputs[:, start : start + chunk], targets[:, :, start : start + chunk]
        logits, state = model(x, state)
        y = y.permute(1, 2, 0)  # [B, T, H]
        mask = y != IGNORE
        loss_sum += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE, reduction="sum"
        )
        correct += ((logits.argmax(-1) == y) & mask).sum(dim=(0, 1))
        counted += mask.sum(dim=(0, 1))
    model.train(was_training)
    n = counted.sum().item()
    return {
        "loss": loss_sum.item() / max(n, 1),
        # a head with no held-out target (a lag longer than a held-out row) has no accuracy, not 0
        "accuracy": [
            a if c else None for a, c in zip((correct / counted.clamp(min=1)).tolist(), counted.tolist(), strict=True)
        ],
        "count": counted.tolist(),
    }


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


@dataclass
class Setup:
    """What an update needs, built from the config in the same order (and so from the same RNG draws) by
    train() and by the speed phase: data, network, optimizer, the update function and the training stream."""

    data: TaskData
    model: RecurrentModel
    optimizer: torch.optim.Optimizer
    update: Update
    stream: WindowStream
    clip: float
    groups: dict[str, list[torch.nn.Parameter]]


def build_setup(cfg: DictConfig, device: torch.device) -> Setup:
    """Seed, then task data, model (its initial weights are the first RNG draws), optimizer, update, stream."""
    seed_everything(cfg.seed)
    data = make_task(cfg)
    model = build_model(cfg, data).to(device)
    optimizer = build_optimizer(cfg, model)
    groups = model.param_groups()
    clip = cfg.optim.clip if cfg.optim.clip > 0 else math.inf
    reduction = str(OmegaConf.select(cfg, "optim.loss_reduction", default="mean"))
    update = make_update(model, optimizer, list(model.parameters()), clip, groups, reduction)
    inputs, targets = (t.to(device) for t in data.rows("train", cfg.batch_size))
    return Setup(data, model, optimizer, update, WindowStream(model, inputs, targets, cfg.num_steps), clip, groups)


def _untimed(device: torch.device):
    """Work at an evaluation point must leave the training trajectory alone: RNG streams restored after it."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def _noise_scale(cfg: DictConfig):
    """sweep.noise_scale.noise_scale_at when the config asks for it at evaluation points, else None."""
    if not OmegaConf.select(cfg, "measure.noise_scale", default=False):
        return None
    from sweep.noise_scale import noise_scale_at  # imported lazily: only runs that measure it pay for it

    return noise_scale_at


class Recorder:
    """What train() keeps: per update the loss, the pre-clip norm and the training clock, every
    `group_norm_every` updates the per-group norms, and the rows of the evaluation points and measure
    checkpoints; `steps()` turns the per-update history into the steps table.

    On a CPU the loss and the norm are read as Python floats at once: `.item()` costs ~0.2 us there (no device
    to wait for), and floats are cheaper to keep and to check for divergence than one tensor per update. On a
    GPU they stay device tensors, since reading them would synchronise the device every update."""

    def __init__(self, device: torch.device) -> None:
        self.on_host = device.type == "cpu"
        self.losses: list[Any] = []
        self.norms: list[Any] = []
        self.times: list[float] = []
        self.group_rows: list[dict[str, float]] = []
        self.evals: list[dict[str, Any]] = []
        self.measure_rows: list[dict[str, Any]] = []
        self.measure_profiles: list[pd.DataFrame] = []
        self.warm: tuple[int, float] = (0, 0.0)  # (tokens, training seconds) at the end of the warm-up
        self.add = self._add_float if self.on_host else self._add_tensor

    def _add_float(self, loss: torch.Tensor, norm: torch.Tensor, seconds: float) -> None:
        self.losses.append(loss.item())
        self.norms.append(norm.item())
        self.times.append(seconds)

    def _add_tensor(self, loss: torch.Tensor, norm: torch.Tensor, seconds: float) -> None:
        self.losses.append(loss.detach())
        self.norms.append(norm.detach())
        self.times.append(seconds)

    def diverged(self, last: int, max_loss: float) -> bool:
        """Any of the last `last` updates with a non-finite loss or norm, or a loss above `max_loss`."""
        if not self.on_host:
            return _diverged(self.losses, self.norms, last, max_loss)
        ok = all(math.isfinite(x) and x <= max_loss for x in self.losses[-last:])
        return not (ok and all(math.isfinite(x) for x in self.norms[-last:]))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Loss and norm per update as float32 arrays (the values the update computed, unrounded)."""
        if not self.losses:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)
        if self.on_host:
            return np.asarray(self.losses, dtype=np.float32), np.asarray(self.norms, dtype=np.float32)
        return torch.stack(self.losses).float().cpu().numpy(), torch.stack(self.norms).float().cpu().numpy()

    def state_dict(self) -> dict[str, Any]:
        losses, norms = self.arrays()
        return {
            "losses": torch.from_numpy(losses),
            "norms": torch.from_numpy(norms),
            "times": self.times,
            "group_rows": self.group_rows,
            "evals": self.evals,
            "checkpoint_scalars": self.measure_rows,
            "checkpoint_profiles": self.measure_profiles,
            "warm": self.warm,
        }

    def load_state_dict(self, saved: dict[str, Any], device: torch.device) -> None:
        if self.on_host:
            self.losses, self.norms = saved["losses"].tolist(), saved["norms"].tolist()
        else:
            self.losses = list(saved["losses"].to(device).unbind(0))
            self.norms = list(saved["norms"].to(device).unbind(0))
        self.times, self.group_rows, self.evals = list(saved["times"]), list(saved["group_rows"]), list(saved["evals"])
        self.measure_rows = list(saved["checkpoint_scalars"])
        self.measure_profiles = list(saved["checkpoint_profiles"])
        self.warm = tuple(saved["warm"])  # type: ignore[assignment]

    def steps(self, batch_size: int, num_steps: int, clip: float, max_loss: float) -> tuple[pd.DataFrame, int | None]:
        """The steps table and the first update whose loss or norm is not finite or too large (None if none)."""
        loss, norm = self.arrays()
        bad = ~(np.isfinite(loss) & np.isfinite(norm) & (loss <= max_loss))
        n = np.arange(len(loss))
        steps = pd.DataFrame(
            {
                "step": n,
                "tokens": (n + 1) * batch_size * num_steps,
                "time_s": np.asarray(self.times[: len(loss)]),
                "loss": loss,
                "grad_norm": norm,
                "clipped": norm > clip,
            }
        )
        if self.group_rows:
            steps = steps.merge(pd.DataFrame(self.group_rows), on="step", how="left")
        return steps, (int(np.argmax(bad)) if bad.any() else None)


def geometric_points(first: int, per_doubling: int, cap: int) -> list[int]:
    """Evaluation points of eval.spacing=geometric, in updates: round(first x 2^(k / per_doubling)) for k = 0, 1,
    ..., deduplicated and increasing, those below `cap`, then `cap` itself (always the last)."""
    points: list[int] = []
    k = 0
    while (p := round(first * 2 ** (k / per_doubling))) < cap:
        if not points or p > points[-1]:
            points.append(p)
        k += 1
    return [*points, cap]


def eval_fractions(cfg: DictConfig) -> list[float]:
    """Every evaluation point as a fraction of the budget (budget=plateau: of its cap), the last one 1.0.

    linear: eval.points evenly spaced fractions. geometric (budgets counted in updates): geometric_points over
    the updates the budget allows (ceil(amount); the loop stops at the first update count >= amount)."""
    if OmegaConf.select(cfg, "eval.spacing", default="linear") != "geometric":
        n = int(cfg.eval.points)
        return [k / n for k in range(1, n + 1)]
    amount = float(cfg.budget.amount)
    points = geometric_points(int(cfg.eval.first), int(cfg.eval.per_doubling), math.ceil(amount))
    return [*(p / amount for p in points[:-1]), 1.0]


def plateaued(losses: list[float], patience: int, min_delta: float) -> bool:
    """The plateau rule of budget=plateau, after the evaluations `losses` (held-out loss, in order): stop when the
    best of the last `patience` is not at least `min_delta` below the best of all before them, i.e. at the first
    evaluation i >= patience (0-based) with min(losses[-patience:]) > min(losses[:-patience]) - min_delta.

    A non-finite loss counts as no improvement (never the best); a run whose loss blows up stops here as soon as
    `patience` evaluations in a row fail to beat what came before (the divergence rule, on the training loss,
    may end it as diverged first)."""
    if len(losses) <= patience:
        return False
    finite = [x if math.isfinite(x) else math.inf for x in losses]  # NaN too
    recent, before = min(finite[-patience:]), min(finite[:-patience])
    return not (recent < math.inf and recent <= before - min_delta)


class Stops:
    """Where training pauses for untimed work, as fractions of the budget: the evaluation points (the last one
    is at the end, after the loop) and the measure checkpoints. `next` is one float for the loop to compare."""

    def __init__(self, eval_fractions: list[float], measure_checkpoints: int) -> None:
        """`eval_fractions`: the evaluations during training, the one at the end of the budget left out."""
        self.evals = Schedule(eval_fractions)
        self.measures = Schedule([k / (measure_checkpoints + 1) for k in range(1, measure_checkpoints + 1)])
        self.next = min(self.evals.next, self.measures.next)

    def due(self, frac: float) -> tuple[bool, bool]:
        """(evaluate now, measure now); moves `next` on."""
        due = self.evals.due(frac), self.measures.due(frac)
        self.next = min(self.evals.next, self.measures.next)
        return due

    def state_dict(self) -> dict[str, list[float]]:
        return {"eval_left": self.evals.left, "measure_left": self.measures.left}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.evals.left, self.measures.left = list(saved["eval_left"]), list(saved["measure_left"])
        self.next = min(self.evals.next, self.measures.next)


def _held_out(cfg: DictConfig, data: TaskData, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = (t.to(device) for t in data.rows("valid", cfg.eval.rows))
    if cfg.eval.max_tokens:  # a long held-out text evaluated at every point would cost more than the training
        cols = max(1, cfg.eval.max_tokens // cfg.eval.rows)
        inputs, targets = inputs[:, :cols], targets[..., :cols]
    return inputs, targets


OnEval = Callable[[int, dict[str, Any]], bool]


def _eval_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """What an `on_eval` hook sees of an evaluation point: held-out loss and mean accuracy over measured heads."""
    measured = [a for a in row["accuracy"] if a is not None]
    return {"valid_loss": row["loss"], "valid_accuracy": float(np.mean(measured)) if measured else None}


def train(
    cfg: DictConfig,
    measure_fn=None,
    checkpoint_dir: Path | None = None,
    on_eval: OnEval | None = None,
) -> TrainResult:
    """Train one grid point (semantics: docs/protocol.md).

    `measure_fn(model, data, cfg, device, initial=<the network as initialised>) -> (scalars, profiles)` runs at
    the end and at `measure.checkpoints` points during training (fractions of the budget; of the cap with
    budget=plateau); evaluation, the gradient noise scale, the end-of-run jitter (`erratic_end`) and the measures
    run outside the training clock and restore the RNG state, so they cannot change the trajectory.

    budget=plateau: at each evaluation point the plateau rule (`plateaued`) may end the run, that evaluation then
    being its final one; else it ends at the cap (`budget.amount` updates). The summary says why a run ended
    (`stop_reason`) and whether it converged.

    With `checkpoint_dir` and `checkpoint.every_s` > 0, the whole training state is saved there (sweep/checkpoint.py)
    at most every `every_s` seconds of wall-clock, between updates and outside the training clock; a call that
    finds a checkpoint of the same config there resumes from it and ends as the uninterrupted run would have.
    When `sweep.stop.requested` is set (a signal handler, sweep/stop.py), the loop saves a checkpoint after the
    update in progress (whatever the timer says; none when checkpointing is off) and raises `stop.Stopped`.

    `on_eval(update, {"valid_loss", "valid_accuracy"})` is called at each evaluation point during training (an
    Optuna trial reports there, sweep/pruning.py); when it returns True the run stops with status "pruned".
    """
    device = resolve_device(cfg.device)
    run = build_setup(cfg, device)
    data, model, update, stream = run.data, run.model, run.update, run.stream
    initial_model = copy.deepcopy(model) if measure_fn is not None else None  # before any update; no RNG used
    noise_fn = _noise_scale(cfg)
    # Cross-entropy starts near ln(V); a loss this many times larger (or NaN/inf) will not come back.
    max_loss = cfg.divergence_factor * math.log(data.out_vocab)
    valid_inputs, valid_targets = _held_out(cfg, data, device)
    evals_at = eval_fractions(cfg)
    n_evals = len(evals_at)  # with budget=plateau, as many as the cap allows
    stops = Stops(evals_at[:-1], cfg.measure.checkpoints if measure_fn is not None else 0)
    plateau = str(cfg.budget.kind) == "plateau"
    patience = int(OmegaConf.select(cfg, "budget.patience", default=4))
    min_delta = float(OmegaConf.select(cfg, "budget.min_delta", default=0.01))
    min_updates = int(OmegaConf.select(cfg, "budget.min_updates", default=0))
    rec = Recorder(device)
    clock = TrainClock(device)  # training seconds, evaluation and measures excluded
    noise_points = int(OmegaConf.select(cfg, "measure.noise_points", default=0) or 0)
    every_s = float(OmegaConf.select(cfg, "checkpoint.every_s", default=0.0) or 0.0)
    saving = checkpoint_dir is not None and every_s > 0
    sig = record.signature(cfg) if checkpoint_dir is not None else ""
    label = checkpoint_dir.name if checkpoint_dir is not None else str(cfg.model.cell)  # names progress lines
    updates = tokens = 0
    state = None

    def noise_due(i: int) -> bool:
        """Evaluation i of n_evals (1-based) carries the noise scale: `noise_points` of them, evenly spread, the
        last one included (0 = every evaluation). It costs a few backward passes, more than the evaluation."""
        return noise_points <= 0 or (i * noise_points) // n_evals > ((i - 1) * noise_points) // n_evals

    def run_eval(final: bool) -> tuple[dict[str, Any], bool]:
        """Evaluate now: (the row, whether the plateau rule ends the run here). The noise scale goes with the
        evaluations noise_due picks and with the last one, the end of the budget's or a plateau's."""
        row = {"step": updates, "tokens": tokens, "time_s": clock.done, **evaluate(model, valid_inputs, valid_targets)}
        rec.evals.append(row)
        here = (plateau and not final and updates >= min_updates
                and plateaued([e["loss"] for e in rec.evals], patience, min_delta))  # fmt: skip
        if noise_fn is not None and (final or here or noise_due(len(rec.evals))):
            with _untimed(device):
                row.update(noise_fn(model, data, cfg, device))
        return row, here

    def run_measures() -> tuple[dict[str, Any], pd.DataFrame]:
        with _untimed(device):
            return measure_fn(model, data, cfg, device, initial=initial_model)

    def save_checkpoint() -> None:
        """Save the training state; a full disk costs the checkpoint, not the run."""
        training = {"updates": updates, "tokens": tokens, "state": checkpoint.to_device(state, "cpu")}
        training.update(model=model.state_dict(), optimizer=run.optimizer.state_dict())
        training.update(rng=checkpoint.rng_states(device), stream={"index": stream.index, "passes": stream.passes})
        training.update(rec.state_dict(), **stops.state_dict(), clock_done=clock.done)
        try:
            checkpoint.save(checkpoint_dir, sig, training)  # type: ignore[arg-type]
        except OSError as exc:
            log.warning("could not save a checkpoint in %s: %s", checkpoint_dir, exc)

    saved = checkpoint.load(checkpoint_dir, sig) if checkpoint_dir is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        run.optimizer.load_state_dict(saved["optimizer"])
        updates, tokens = int(saved["updates"]), int(saved["tokens"])
        state = checkpoint.to_device(saved["state"], device)
        stream.index, stream.passes = int(saved["stream"]["index"]), int(saved["stream"]["passes"])
        rec.load_state_dict(saved, device)
        stops.load_state_dict(saved)
        clock.done = float(saved["clock_done"])
        checkpoint.set_rng_states(saved["rng"], device)  # last: nothing after it may draw before the loop
        log.info("resuming %s at update %d", label, updates)
        del saved

    # The update loop. Config values read every update are plain Python locals: a DictConfig lookup costs
    # 10-20 us, several per update would be 5-15 % of a small update (bench/README.md).
    group_every, warmup_updates = int(cfg.group_norm_every), int(cfg.warmup_updates)
    budget_kind, budget_amount = str(cfg.budget.kind), float(cfg.budget.amount)
    by_updates, by_tokens = budget_kind in ("updates", "plateau"), budget_kind == "tokens"
    tokens_per_update, progress_every_s = cfg.batch_size * cfg.num_steps, float(cfg.progress_every_s)
    status, stop_reason = "complete", None
    next_save = time.perf_counter() + every_s if saving else math.inf
    last_log = time.perf_counter()
    clock.resume()
    while True:
        x, y, state = stream.next_window(state)
        loss, norm, state, by_group = update(x, y, state, updates % group_every == 0)
        if by_group is not None:
            rec.group_rows.append({"step": updates, **by_group})
        updates += 1
        tokens += tokens_per_update
        now = time.perf_counter()
        seconds = clock.at(now)
        rec.add(loss, norm, seconds)
        if updates == warmup_updates:
            rec.warm = (tokens, clock.read())
        if updates % group_every == 0 and rec.diverged(group_every, max_loss):
            status = "diverged"
            break
        frac = (updates if by_updates else tokens if by_tokens else seconds) / budget_amount
        if frac >= 1.0:
            break
        if frac >= stops.next:
            clock.pause()  # evaluation and measures are not timed
            evaluate_now, measure_now = stops.due(frac)
            if evaluate_now:
                row, converged_here = run_eval(final=False)
                if on_eval is not None and on_eval(updates, _eval_metrics(row)):
                    status = "pruned"
                    break
                if converged_here:  # budget=plateau: this evaluation is the run's final one
                    stop_reason = "plateau"
                    break
            if measure_now:
                scalars, profile = run_measures()
                rec.measure_rows.append({"step": updates, "tokens": tokens, **scalars})
                rec.measure_profiles.append(profile.assign(step=updates))
            clock.resume()
        if now >= next_save or stop.requested:  # between two updates, outside the training clock
            clock.pause()
            if saving:
                save_checkpoint()
            if stop.requested:  # a signal asked for a clean stop (sweep/stop.py): a rerun resumes from here
                raise stop.Stopped(stop.signal_number, updates)
            next_save = time.perf_counter() + every_s
            clock.resume()
        if now - last_log >= progress_every_s:
            last_log = now
            log.info("%s %5.1f%%  update %d  loss %.4f  %.0f tok/s", label, 100 * frac, updates, float(loss.detach()),
                     tokens / max(seconds, 1e-9))  # fmt: skip
    train_clock = clock.pause()

    steps, diverged_at = rec.steps(cfg.batch_size, cfg.num_steps, run.clip, max_loss)
    if diverged_at is not None:
        status = "diverged"
    profiles = pd.DataFrame()
    measures: dict[str, Any] = {}
    jitter: dict[str, Any] = dict.fromkeys(JITTER_KEYS)
    if status == "complete":
        if stop_reason != "plateau":  # a plateau stop evaluated where it stopped: that is the final evaluation
            run_eval(final=True)
        jitter_updates = int(OmegaConf.select(cfg, "measure.jitter_updates", default=0) or 0)
        if jitter_updates > 0:
            with _untimed(device):
                jitter = erratic_end(cfg, run, state, jitter_updates, device)
        if measure_fn is not None:
            measures, final_profiles = run_measures()
            profiles = pd.concat([*rec.measure_profiles, final_profiles.assign(step=len(steps))], ignore_index=True)
            if rec.measure_rows:
                measures["measure_checkpoints"] = rec.measure_rows

    summary = _summarize(cfg, data, steps, rec.evals, train_clock, *rec.warm, stream.passes)
    summary.update(jitter)
    summary.update(measures)
    summary["diverged_at_step"] = diverged_at
    summary.update(_stopping(status, stop_reason, plateau, len(steps), rec.evals))
    return TrainResult(status, summary, steps, _evals_frame(rec.evals, data), profiles, model, data)


def _stopping(
    status: str, stop_reason: str | None, plateau: bool, updates: int, evals: list[dict[str, Any]]
) -> dict[str, Any]:
    """Why and where the run ended, and the best held-out loss it saw (any budget).

    stop_reason: diverged | pruned (the status), else plateau | cap (budget=plateau) or budget (the others);
    converged: True when the plateau rule ended it, False when it reached the cap, None where the question does
    not apply (fixed budgets; diverged and pruned runs)."""
    if status != "complete":
        stop_reason = status
    elif stop_reason is None:
        stop_reason = "cap" if plateau else "budget"
    finite = [(e["loss"], e["step"]) for e in evals if math.isfinite(e["loss"])]
    best = min(finite) if finite else (None, None)  # the earliest of equal losses
    return {
        "stop_reason": stop_reason,
        "converged": {"plateau": True, "cap": False}.get(stop_reason),
        "stopped_at_update": updates,
        "best_valid_loss": float(best[0]) if best[0] is not None else None,
        "best_valid_update": int(best[1]) if best[1] is not None else None,
    }


JITTER_KEYS = ("param_jitter", "sampling_jitter", "jitter_ratio")


def _fixed_batch_loss(held: WindowStream) -> float:
    """The loss (mean per target token) of the current parameters of `held.model` on the fixed held-out batch:
    the first window of the held-out stream (in batch_size rows) that has a target, from a zero state at the
    stream's start, carried (forward only) through the target-less windows before it (echo/lags with lag >=
    num_steps); that prefix runs with the same parameters, so the loss is a function of them alone."""
    held.index = held.windows  # a fresh pass: zero state, then the first window with a target
    held.model.eval()  # an evaluation, as evaluate() runs it
    with torch.no_grad():
        x, y, state = held.next_window(None)
        logits, _ = held.model.window_logits(x, state)
    held.model.train()
    return float(token_loss(logits, y))


def _median_abs_diff(values: list[float]) -> float | None:
    a = np.asarray(values, dtype=np.float64)
    if len(a) < 2 or not np.isfinite(a).all():
        return None
    return float(np.median(np.abs(np.diff(a))))


def erratic_end(
    cfg: DictConfig, run: Setup, state: State, jitter_updates: int, device: torch.device
) -> dict[str, float | None]:
    """How erratic training is at its end (claim C7), split into its two sources, on copies (the run's network,
    optimizer, stream position and carried state are left as they are; the caller forks the RNG):

    - `param_jitter`: `jitter_updates` further updates continuing the training stream on a copy of the network
      and optimizer; the loss of each parameter state, before the first update and after each, on ONE fixed
      held-out batch (`_fixed_batch_loss`); the median |l_fixed(theta_{t+1}) - l_fixed(theta_t)| in nats. The
      data held fixed, this is how much one update moves the loss.
    - `sampling_jitter`: at the parameters before the first extra update, the loss on each of the next
      `jitter_updates` + 1 training windows (the ones those updates train on, the state carried as in
      training); the median |l(theta, B_i) - l(theta, B_{i+1})|: the noise of minibatch sampling alone.
    - `jitter_ratio` = param_jitter / sampling_jitter.

    All None when a held-out row holds no window with a target, or a loss is not finite."""
    none = dict.fromkeys(JITTER_KEYS)
    model = copy.deepcopy(run.model)
    optimizer = build_optimizer(cfg, model)
    optimizer.load_state_dict(copy.deepcopy(run.optimizer.state_dict()))  # no tensor shared with the run's
    reduction = str(OmegaConf.select(cfg, "optim.loss_reduction", default="mean"))
    update = make_update(model, optimizer, list(model.parameters()), run.clip, None, reduction)
    valid_inputs, valid_targets = (t.to(device) for t in run.data.rows("valid", cfg.batch_size))
    try:
        held = WindowStream(model, valid_inputs, valid_targets, cfg.num_steps)
    except RuntimeError:  # no held-out window with a target (rows shorter than num_steps, or than the lag)
        log.warning("jitter: no held-out window of %d columns has a target in %d rows", cfg.num_steps, cfg.batch_size)
        return none
    fixed = [_fixed_batch_loss(held)]
    stream = copy.copy(run.stream)  # the position and pass, for the copy of the network
    stream.model = model

    sampled, s_stream, s_state = [], copy.copy(stream), repackage_hidden(state)
    model.eval()
    with torch.no_grad():
        for _ in range(jitter_updates + 1):
            x, y, s_state = s_stream.next_window(s_state)
            logits, s_state = model.window_logits(x, s_state)
            sampled.append(token_loss(logits, y))
    model.train()
    sampling = _median_abs_diff(torch.stack(sampled).tolist())

    u_state = repackage_hidden(state)
    for _ in range(jitter_updates):
        x, y, u_state = stream.next_window(u_state)
        _, _, u_state, _ = update(x, y, u_state, False)
        fixed.append(_fixed_batch_loss(held))
    param = _median_abs_diff(fixed)
    if param is None or sampling is None:
        return none
    return {"param_jitter": param, "sampling_jitter": sampling, "jitter_ratio": param / sampling if sampling else None}


def _group_norms(groups: dict[str, list[torch.nn.Parameter]]) -> dict[str, float]:
    norms = []
    for ps in groups.values():
        grads = [p.grad for p in ps if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads
                     else torch.zeros((), device=ps[0].device))  # fmt: skip
    values = torch.stack(norms).tolist()  # one host-device transfer for all groups
    return {f"grad_norm_{name}": v for name, v in zip(groups, values, strict=True)}


def _diverged(losses: list[torch.Tensor], norms: list[torch.Tensor], last: int, max_loss: float) -> bool:
    recent_loss, recent_norm = torch.stack(losses[-last:]), torch.stack(norms[-last:])
    finite = torch.isfinite(recent_loss).all() & torch.isfinite(recent_norm).all()
    return not bool(finite & (recent_loss <= max_loss).all())


_EVAL_OWN = ("step", "tokens", "time_s", "loss", "accuracy", "count")


def _evals_frame(evals: list[dict[str, Any]], data: TaskData) -> pd.DataFrame:
    rows = []
    for e in evals:
        row = {k: e[k] for k in ("step", "tokens", "time_s", "loss")}
        if data.lags:
            for lag, acc in zip(data.lags, e["accuracy"], strict=True):
                row[f"acc_lag_{lag}"] = acc
        else:
            row["accuracy"] = e["accuracy"][0]
        # anything measured at the evaluation point (the gradient noise scale) gets its own columns
        row.update({k: v for k, v in e.items() if k not in _EVAL_OWN})
        rows.append(row)
    return pd.DataFrame(rows)


def late_jitter(loss: np.ndarray, grad_norm: np.ndarray) -> dict[str, float | None]:
    """How erratic the second half of training is (claim C7): the median update-to-update change of the loss
    (nats), that change relative to the median loss, and the coefficient of variation of the pre-clip norm.

    The second half leaves out the fast early descent, whose large steps would read as jitter. Medians, so a
    few spikes do not decide it; the norm's CV uses the sample standard deviation. None when fewer than 4
    updates, or when the values are not finite (a diverged run).
    """
    none = {"loss_jitter": None, "loss_jitter_rel": None, "grad_norm_cv_late": None}
    n = len(loss)
    if n < 4:
        return none
    late_loss, late_norm = loss[n // 2 :].astype(np.float64), grad_norm[n // 2 :].astype(np.float64)
    if not (np.isfinite(late_loss).all() and np.isfinite(late_norm).all()):
        return none
    jitter = float(np.median(np.abs(np.diff(late_loss))))
    level, mean_norm = float(np.median(late_loss)), float(np.mean(late_norm))
    return {
        "loss_jitter": jitter,
        "loss_jitter_rel": jitter / level if level > 0 else None,
        "grad_norm_cv_late": float(np.std(late_norm, ddof=1)) / mean_norm if mean_norm > 0 else None,
    }


def _summarize(
    cfg: DictConfig,
    data: TaskData,
    steps: pd.DataFrame,
    evals: list[dict[str, Any]],
    train_seconds: float,
    warm_tokens: int,
    warm_time: float,
    passes: int,
) -> dict[str, Any]:
    n = len(steps)
    tokens = int(n * cfg.batch_size * cfg.num_steps)
    timed_tokens, timed_seconds = tokens - warm_tokens, train_seconds - warm_time
    if timed_tokens <= 0 or timed_seconds <= 0:  # too short to leave the warm-up out
        timed_tokens, timed_seconds = tokens, train_seconds
    tail = steps["loss"].iloc[-max(1, n // 10) :] if n else pd.Series(dtype=float)
    norms = steps["grad_norm"].to_numpy() if n else np.zeros(1)
    final = evals[-1] if evals else None
    summary: dict[str, Any] = {
        "tokens_per_s": timed_tokens / timed_seconds if timed_seconds > 0 else None,
        "train_loss": _finite_or_none(float(tail.mean())) if n else None,
        "valid_loss": _finite_or_none(final["loss"]) if final else None,
        "updates": n,
        "tokens": tokens,
        "passes": passes,
        "train_seconds": train_seconds,
        "warmup_updates": min(cfg.warmup_updates, n),
        "grad_norm_max": _finite_or_none(float(np.max(norms))),
        "grad_norm_p99": _finite_or_none(float(np.percentile(norms, 99))),
        "grad_norm_median": _finite_or_none(float(np.median(norms))),
        "clip_fraction": float(steps["clipped"].mean()) if n else 0.0,
        **late_jitter(steps["loss"].to_numpy(), steps["grad_norm"].to_numpy()),
        "lr": effective_lr(cfg),
        "chance_accuracy": data.chance,
        "task_info": data.info,
    }
    if final is not None:
        if data.lags:
            summary["lag_accuracy"] = {str(lag): acc for lag, acc in zip(data.lags, final["accuracy"], strict=True)}
            measured = [a for a in final["accuracy"] if a is not None]
            summary["valid_accuracy"] = float(np.mean(measured)) if measured else None
            summary["lag_count"] = {str(lag): c for lag, c in zip(data.lags, final["count"], strict=True)}
        else:
            summary["valid_accuracy"] = final["accuracy"][0]
        summary["valid_perplexity"] = math.exp(min(final["loss"], 50.0))
    return summary
