"""The truncated-BPTT training loop, readable top to bottom: config -> task stream -> model -> updates -> result.

Semantics (../shared/DESIGN.md): the stream is cut into batch_size rows; each update takes the next num_steps
columns; the state is carried across windows and detached, and reset at the start of each pass; the loss is the
mean cross-entropy per target token; the recorded gradient norm is the global L2 norm before clipping.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from sweep.config import effective_lr
from sweep.data import IGNORE, get_batch, num_windows, repackage_hidden
from sweep.model import RecurrentModel, sequence_loss
from sweep.tasks import TaskData, make_task

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    status: str  # complete | diverged
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
    )


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    lr = effective_lr(cfg)
    if cfg.optim.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.optim.momentum)
    return torch.optim.Adam(model.parameters(), lr=lr)


def window_forward(model: RecurrentModel, x: torch.Tensor, state):
    """One training window: the carried state is detached first, so this window's loss cannot send gradient
    into earlier windows (truncated BPTT), while the forward pass still sees everything before it."""
    return model(x, repackage_hidden(state))


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


def _progress(kind: str, amount: float, tokens: int, updates: int, seconds: float) -> float:
    done = tokens if kind == "tokens" else updates if kind == "updates" else seconds
    return done / amount


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def train(cfg: DictConfig, measure_fn=None) -> TrainResult:
    """Train one grid point; `measure_fn(model, data, cfg, device) -> (scalars, profiles)` runs at the end."""
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    data = make_task(cfg)
    model = build_model(cfg, data).to(device)
    optimizer = build_optimizer(cfg, model)
    params = list(model.parameters())
    groups = model.param_groups()
    clip = cfg.optim.clip if cfg.optim.clip > 0 else math.inf
    # Cross-entropy starts near ln(V); a loss this many times larger (or NaN/inf) will not come back.
    max_loss = cfg.divergence_factor * math.log(data.out_vocab)
    batch_size, num_steps = cfg.batch_size, cfg.num_steps

    inputs, targets = (t.to(device) for t in data.rows("train", batch_size))
    valid_inputs, valid_targets = (t.to(device) for t in data.rows("valid", cfg.eval.rows))
    if cfg.eval.max_tokens:  # a long held-out text evaluated at every point would cost more than the training
        cols = max(1, cfg.eval.max_tokens // cfg.eval.rows)
        valid_inputs, valid_targets = valid_inputs[:, :cols], valid_targets[..., :cols]
    windows = num_windows(inputs, num_steps)
    # Windows whose targets are all undefined (the first `lag` columns of a pass) carry the state forward
    # but make no update: there is no loss to take a gradient of.
    column_has_target = (targets != IGNORE).any(dim=0).any(dim=0)[: windows * num_steps]
    has_target = column_has_target.view(windows, num_steps).any(dim=1).tolist()
    if not any(has_target):  # check_task rules this out; without it the pass loop below would never end
        raise RuntimeError("no training window of the stream has a target")
    eval_at = [k / cfg.eval.points for k in range(1, cfg.eval.points)]  # the last evaluation is at the end
    checkpoints = cfg.measure.checkpoints if measure_fn is not None else 0
    measure_at = [k / (checkpoints + 1) for k in range(1, checkpoints + 1)]
    checkpoint_scalars: list[dict[str, Any]] = []
    checkpoint_profiles: list[pd.DataFrame] = []

    losses: list[torch.Tensor] = []
    norms: list[torch.Tensor] = []
    times: list[float] = []
    group_rows: list[dict[str, float]] = []
    evals: list[dict[str, Any]] = []
    updates = tokens = passes = 0
    train_clock = 0.0  # training seconds so far, evaluation excluded
    warm_tokens, warm_time = 0, 0.0
    status, diverged_at = "complete", None
    last_log = time.perf_counter()
    # Plain Python copies of the config values read every update: each DictConfig lookup costs 10-20 us,
    # about 8 per update = 130-300 us/update, 5-15 % of a small update's time (bench/README.md).
    group_norm_every, warmup_updates = int(cfg.group_norm_every), int(cfg.warmup_updates)
    budget_kind, budget_amount = str(cfg.budget.kind), float(cfg.budget.amount)
    progress_every_s = float(cfg.progress_every_s)
    tokens_per_update = batch_size * num_steps

    def run_eval() -> None:
        result = evaluate(model, valid_inputs, valid_targets)
        evals.append({"step": updates, "tokens": tokens, "time_s": train_clock, **result})

    sync(device)
    segment_start = time.perf_counter()
    done = False
    while not done:
        passes += 1
        state = model.init_state(batch_size, device)  # reset at the start of each pass over the data
        for i in range(windows):
            x, y = get_batch(inputs, targets, i, num_steps)
            if not has_target[i]:
                with torch.no_grad():
                    _, state = model(x, state)
                continue
            logits, state = window_forward(model, x, state)
            loss = sequence_loss(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if updates % group_norm_every == 0:
                group_rows.append({"step": updates, **_group_norms(groups)})
            norm = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)  # returns the pre-clip norm
            optimizer.step()
            losses.append(loss.detach())
            norms.append(norm.detach())
            updates += 1
            tokens += tokens_per_update
            now = time.perf_counter()
            times.append(train_clock + now - segment_start)
            if updates == warmup_updates:
                sync(device)
                warm_tokens, warm_time = tokens, train_clock + time.perf_counter() - segment_start
            if updates % group_norm_every == 0 and _diverged(losses, norms, group_norm_every, max_loss):
                status = "diverged"
            frac = _progress(budget_kind, budget_amount, tokens, updates, times[-1])
            if status == "diverged" or frac >= 1.0:
                done = True
                break
            if (eval_at and frac >= eval_at[0]) or (measure_at and frac >= measure_at[0]):
                sync(device)
                train_clock += time.perf_counter() - segment_start  # evaluation and measures are not timed
                if eval_at and frac >= eval_at[0]:
                    eval_at.pop(0)
                    run_eval()
                if measure_at and frac >= measure_at[0]:
                    measure_at.pop(0)
                    scalars, prof = measure_fn(model, data, cfg, device)
                    checkpoint_scalars.append({"step": updates, "tokens": tokens, **scalars})
                    checkpoint_profiles.append(prof.assign(step=updates))
                segment_start = time.perf_counter()
            if now - last_log >= progress_every_s:
                last_log = now
                log.info(
                    "%s %5.1f%%  update %d  loss %.4f  %.0f tok/s",
                    cfg.model.cell,
                    100 * frac,
                    updates,
                    loss.item(),
                    tokens / max(times[-1], 1e-9),
                )
    sync(device)
    train_clock += time.perf_counter() - segment_start

    loss_arr = torch.stack(losses).float().cpu().numpy() if losses else np.zeros(0)
    norm_arr = torch.stack(norms).float().cpu().numpy() if norms else np.zeros(0)
    bad = ~(np.isfinite(loss_arr) & np.isfinite(norm_arr) & (loss_arr <= max_loss))
    if bad.any():
        status = "diverged"
        diverged_at = int(np.argmax(bad))
    steps = pd.DataFrame(
        {
            "step": np.arange(len(loss_arr)),
            "tokens": (np.arange(len(loss_arr)) + 1) * batch_size * num_steps,
            "time_s": np.asarray(times[: len(loss_arr)]),
            "loss": loss_arr,
            "grad_norm": norm_arr,
            "clipped": norm_arr > clip,
        }
    )
    if group_rows:
        steps = steps.merge(pd.DataFrame(group_rows), on="step", how="left")

    profiles = pd.DataFrame()
    measures: dict[str, Any] = {}
    if status == "complete":
        run_eval()
        if measure_fn is not None:
            measures, final_profiles = measure_fn(model, data, cfg, device)
            profiles = pd.concat([*checkpoint_profiles, final_profiles.assign(step=len(loss_arr))], ignore_index=True)
            if checkpoint_scalars:
                measures["measure_checkpoints"] = checkpoint_scalars

    summary = _summarize(cfg, data, steps, evals, train_clock, warm_tokens, warm_time, passes)
    summary.update(measures)
    summary["diverged_at_step"] = diverged_at
    return TrainResult(status, summary, steps, _evals_frame(evals, data), profiles, model, data)


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


def _evals_frame(evals: list[dict[str, Any]], data: TaskData) -> pd.DataFrame:
    rows = []
    for e in evals:
        row = {k: e[k] for k in ("step", "tokens", "time_s", "loss")}
        if data.lags:
            for lag, acc in zip(data.lags, e["accuracy"], strict=True):
                row[f"acc_lag_{lag}"] = acc
        else:
            row["accuracy"] = e["accuracy"][0]
        rows.append(row)
    return pd.DataFrame(rows)


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
