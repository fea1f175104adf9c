"""Structured configs: the schema every composed config must match, and the range checks Hydra cannot do.

The dataclasses are registered in Hydra's ConfigStore as the base of each config group, so a mistyped key or a
wrong type fails when the config is composed. `validate` then checks ranges and cross-field rules and raises a
ConfigError whose message names the field and what is allowed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.errors import CompactHydraException
from omegaconf import MISSING, DictConfig, OmegaConf

CELLS = ("rnn", "gru", "lstm")
TASKS = ("echo", "lags", "text")
OPTIMIZERS = ("sgd", "adam")
LR_SCALINGS = ("none", "linear", "sqrt")
# How the run's lr was chosen (for the report): given as is, scaled by a rule from a base batch size, picked by
# the sweeper's lr search (pooled over seeds), or tuned per grid cell by Optuna; "candidate" marks a run *of*
# an lr search, a selection run that no verdict ever reads.
LR_PROTOCOLS = ("fixed", "scaled", "searched", "tuned", "candidate")
BUDGETS = ("tokens", "updates", "seconds", "plateau")
RECURRENT_INITS = ("default", "orthogonal")
LOSS_REDUCTIONS = ("mean", "sum")
EVAL_SPACINGS = ("linear", "geometric")
DEVICES = ("auto", "cpu", "cuda")
LEVELS = ("word", "char")


class ConfigError(CompactHydraException):
    """Bad user input. Hydra prints a CompactHydraException as its message alone: one line, no traceback."""


@dataclass
class TaskConfig:
    name: str = MISSING
    # echo / lags: iid uniform symbols; target at t is the input at t - lag
    vocab_size: int = 4
    lag: int = 8
    lags: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    train_tokens: int = 1 << 18  # length of the synthetic training stream (one pass)
    valid_tokens: int = 1 << 14  # length of the held-out stream
    # text: PTB/WikiText format (whitespace tokens, line end = <eos>); null path = built-in corpus
    path: Optional[str] = None  # noqa: UP045 (OmegaConf reads these annotations)
    valid_path: Optional[str] = None  # noqa: UP045
    level: str = "word"
    encoding: str = "utf-8"  # of task.path / task.valid_path (any codec Python knows, e.g. latin-1)
    valid_fraction: float = 0.1  # held-out tail of `path` when no valid_path is given
    max_vocab: int = 0  # 0 = keep every type; else the most frequent types, the rest -> <unk>


@dataclass
class ModelConfig:
    cell: str = MISSING
    hidden_size: int = 64
    num_layers: int = 1
    embedding_size: int = 32
    # recurrent weights at initialisation: PyTorch's default (uniform, spectral radius ~0.6 at hidden 64), or each
    # gate's block orthogonal x spectral_radius, so the regime where gradients can explode (radius > 1, Pascanu
    # et al. 2013) can be set on purpose (docs/protocol.md, "The exploding regime")
    recurrent_init: str = "default"
    spectral_radius: float = 1.0  # used with recurrent_init=orthogonal


@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float = 1e-2
    momentum: float = 0.0  # sgd only
    clip: float = 5.0  # max global grad norm; 0 = no clipping (the norm is still recorded)
    lr_scaling: str = "none"
    base_batch_size: int = 16  # the batch size at which `lr` is used as given
    lr_protocol: str = "fixed"  # fixed | scaled | searched | tuned | candidate: set by the sweeper
    # mean: cross-entropy per target token (the default: gradients compare across num_steps); sum: the TF PTB
    # tutorial's loss, summed over a window's time steps and averaged over rows, so it grows with num_steps
    loss_reduction: str = "mean"


@dataclass
class BudgetConfig:
    kind: str = MISSING
    amount: float = MISSING  # tokens | updates | seconds; plateau: the cap, in updates
    # plateau: stop at the first evaluation at which the best held-out loss of the last `patience` evaluations
    # is less than `min_delta` nats below the best before them (docs/protocol.md, "Budgets")
    patience: int = 4
    min_delta: float = 0.01
    # ... and not before this many updates: a task can sit at chance for its first hundreds of updates before it
    # learns (echo), and a rule asked there would stop it as "converged" at chance (docs/protocol.md, "Budgets")
    min_updates: int = 0


@dataclass
class EvalConfig:
    points: int = 4  # linear spacing: held-out evaluations at evenly spaced fractions of the budget (last at the end)
    # geometric spacing (budget updates or plateau): evaluations at first x 2^(k / per_doubling) updates, up to
    # the budget, so a run of 100 and a run of 10,000 updates are both seen at the same relative resolution
    spacing: str = "linear"
    first: int = 16
    per_doubling: int = 4
    rows: int = 32  # held-out stream is cut into this many parallel rows
    max_tokens: int = 0  # evaluate on the first this-many held-out tokens only; 0 = all of them
    # text: the held-out perplexity that counts as "reached" for time-to-target (null = no target)
    target_perplexity: Optional[float] = None  # noqa: UP045


@dataclass
class MeasureConfig:
    """Dependency-length measures (sweep/measures.py defines each precisely), at the end of training."""

    enabled: bool = True
    ci_level: float = 0.95  # two-sided confidence level of every interval in profiles.parquet
    # recall / probe: a lag is reached when acc >= chance + margin and the CI's lower end is above chance
    chance_margin: float = 0.1
    # context ablation: reach >= 4 x the largest num_steps of the sweep (claim grid: 32)
    contexts: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128])
    context_tolerance: float = 0.01  # effective context: loss within this fraction of full context ...
    context_abs_tolerance: float = 0.01  # ... or within this many nats, whichever is larger
    context_positions: int = 512  # held-out target positions, the same for every context length
    horizon_max_k: int = 128  # gradient horizon: k = 0 .. horizon_max_k
    horizon_fraction: float = 0.01  # horizon: the largest k whose gradient norm is >= this x the peak
    # smallest log-slope per step of the gradient profile that counts as growth or decay: a profile whose slope
    # interval lies inside +-flat_slope is "flat" and never read as a learned length (docs/measures.md)
    flat_slope: float = 0.01
    horizon_windows: int = 16  # held-out windows (of horizon_max_k + 1 tokens) averaged
    probe: bool = True  # linear-probe memory: decode the input at t - k from h_t
    probe_max_k: int = 64  # probe k = 0 .. probe_max_k
    probe_positions: int = 2048  # held-out positions to fit the probe on, and as many to test it on
    probe_max_classes: int = 32  # larger vocabularies: the most frequent types + one class for the rest
    probe_ridge: float = 1e-3  # ridge penalty, relative to the mean diagonal of the Gram matrix
    checkpoints: int = 0  # extra measurement points during training (0 = only at the end)
    # gradient noise scale B_simple (docs/measures.md) at evaluation points: gradients of the mean loss over
    # `noise_rows` held-out rows and over groups of `noise_small` rows, on `noise_windows` windows of num_steps
    noise_scale: bool = True
    noise_rows: int = 64
    noise_small: int = 8
    noise_windows: int = 4
    noise_points: int = 3  # at this many of the evaluation points, evenly spread, the last included; 0 = all
    # window-gradient growth at fixed parameters (claim C5): grad norm of a window's loss vs window length
    growth_lengths: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64, 128])
    growth_windows: int = 8
    # state-to-state Jacobian product ||dh_t/dh_{t-L}|| at fixed parameters against L = growth_lengths, estimated
    # with this many random probe vectors (claim C5: > 1 and growing with L is explosion); 0 = off
    jacobian_probes: int = 4
    # how erratic training is at its end (claim C7): this many further updates on a copy of the network, each
    # parameter state's loss on one fixed held-out batch, beside the loss of one parameter state on as many
    # different training minibatches (sampling noise alone); 0 = off
    jitter_updates: int = 16


@dataclass
class CheckpointConfig:
    """Mid-run checkpoints (docs/protocol.md): a killed run resumes where its last checkpoint left it."""

    every_s: float = 60.0  # seconds of wall-clock between checkpoints; 0 = off


@dataclass
class LeaseConfig:
    """Each grid point trained once across sweep processes: a lease file in the run folder (docs/scale-out.md)."""

    ttl_s: float = 120.0  # a lease not renewed for this long is taken over (its holder is presumed dead)


@dataclass
class Config:
    batch_size: int = 16
    num_steps: int = 16
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch threads per job; 0 = usable CPUs (sweep/cpus.py) // parallel jobs
    name: str = "default"  # results/<name>/<overrides>/
    results_dir: str = "results"
    # set by hydra/sweeper=optuna_grid on each trial run: its Optuna study (one per grid cell) and trial number
    study: Optional[str] = None  # noqa: UP045 (OmegaConf reads these annotations)
    trial: Optional[int] = None  # noqa: UP045
    # ... and the storage of that study, which the trial run reports its held-out curve to (sweep/pruning.py)
    study_storage: Optional[str] = None  # noqa: UP045
    warmup_updates: int = 10  # excluded from tokens_per_s
    group_norm_every: int = 10  # per-group gradient norms every this many updates
    progress_every_s: float = 15.0  # one progress line per job at most this often
    divergence_factor: float = 10.0  # diverged: a NaN/inf loss or grad norm, or loss > factor x ln(vocab)
    task: TaskConfig = MISSING
    model: ModelConfig = MISSING
    optim: OptimConfig = MISSING
    budget: BudgetConfig = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    lease: LeaseConfig = field(default_factory=LeaseConfig)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)


def _need(ok: bool, field_name: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"invalid config: {field_name}={value!r}: {allowed}")


def _positive_int(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    _need(isinstance(value, int) and value > 0, key, "must be a positive integer", value)


def _one_of(cfg: DictConfig, key: str, allowed: tuple[str, ...]) -> None:
    value = OmegaConf.select(cfg, key)
    _need(value in allowed, key, f"must be one of {', '.join(allowed)}", value)


def validate(cfg: DictConfig) -> None:
    """Range and cross-field checks; raises ConfigError naming the first bad field. Reads no files."""
    # `name` is one folder of the run's path (results_dir/name/overrides): refused where it would leave results_dir
    # or nest into another sweep's folder (the overrides part escapes '/' itself: sweep/record.py's run_dirname)
    name = cfg.name
    _need(
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(sep and sep in name for sep in ("/", os.sep, os.altsep, "\0"))
        and not os.path.isabs(name),
        "name",
        "must be one folder name inside results_dir (not empty, '.' or '..'; no '/'; not an absolute path)",
        name,
    )
    for key in ("batch_size", "num_steps", "model.hidden_size", "model.num_layers", "model.embedding_size"):
        _positive_int(cfg, key)
    _need(cfg.threads >= 0, "threads", "must be >= 0 (0 = usable CPUs // parallel jobs)", cfg.threads)
    _one_of(cfg, "device", DEVICES)
    _need(cfg.divergence_factor > 1, "divergence_factor", "must be > 1", cfg.divergence_factor)
    _one_of(cfg, "task.name", TASKS)
    _one_of(cfg, "model.cell", CELLS)
    _one_of(cfg, "optim.name", OPTIMIZERS)
    _one_of(cfg, "optim.lr_scaling", LR_SCALINGS)
    _one_of(cfg, "optim.lr_protocol", LR_PROTOCOLS)
    _one_of(cfg, "budget.kind", BUDGETS)
    _one_of(cfg, "model.recurrent_init", RECURRENT_INITS)
    radius = cfg.model.spectral_radius
    _need(radius > 0 and math.isfinite(radius), "model.spectral_radius", "must be a positive number", radius)
    _one_of(cfg, "optim.loss_reduction", LOSS_REDUCTIONS)
    _one_of(cfg, "eval.spacing", EVAL_SPACINGS)
    _positive_int(cfg, "eval.first")
    _positive_int(cfg, "eval.per_doubling")
    _need(
        cfg.eval.spacing == "linear" or cfg.budget.kind in ("updates", "plateau"),
        "eval.spacing",
        "geometric needs budget.kind updates or plateau (its evaluations are counted in updates)",
        cfg.eval.spacing,
    )
    if cfg.budget.kind == "plateau":
        _positive_int(cfg, "budget.patience")
        mu = cfg.budget.min_updates
        _need(isinstance(mu, int) and mu >= 0, "budget.min_updates", "must be an integer >= 0", mu)
        delta = cfg.budget.min_delta
        _need(delta >= 0 and math.isfinite(delta), "budget.min_delta", "must be a number >= 0 (nats)", delta)
        _need(
            float(cfg.budget.amount).is_integer(),
            "budget.amount",
            "must be a whole number of updates with budget.kind=plateau (the cap)",
            cfg.budget.amount,
        )
    lr = cfg.optim.lr
    _need(lr > 0 and math.isfinite(lr), "optim.lr", "must be a positive number", lr)
    _need(cfg.optim.clip >= 0, "optim.clip", "must be >= 0 (0 = no clipping)", cfg.optim.clip)
    _positive_int(cfg, "optim.base_batch_size")
    amount = cfg.budget.amount
    _need(amount > 0 and math.isfinite(amount), "budget.amount", "must be a positive number", amount)
    _positive_int(cfg, "eval.points")
    _positive_int(cfg, "eval.rows")
    _need(
        cfg.eval.max_tokens >= 0,
        "eval.max_tokens",
        "must be >= 0 (0 = all held-out tokens)",
        cfg.eval.max_tokens,
    )
    task = cfg.task
    if task.name in ("echo", "lags"):
        _need(task.vocab_size >= 2, "task.vocab_size", "must be an integer >= 2", task.vocab_size)
        _positive_int(cfg, "task.train_tokens")
        _positive_int(cfg, "task.valid_tokens")
    if task.name == "echo":
        _positive_int(cfg, "task.lag")
    if task.name == "lags":
        _need(len(task.lags) > 0, "task.lags", "must be a non-empty list of positive integers", list(task.lags))
        for lag in task.lags:
            _need(
                isinstance(lag, int) and lag > 0,
                "task.lags",
                "must be a non-empty list of positive integers",
                list(task.lags),
            )
    if task.name == "text":
        _one_of(cfg, "task.level", LEVELS)
        _need(0 < task.valid_fraction < 1, "task.valid_fraction", "must be in (0, 1)", task.valid_fraction)
        _need(task.max_vocab >= 0, "task.max_vocab", "must be >= 0 (0 = keep all)", task.max_vocab)
        for key in ("path", "valid_path"):
            path = task[key]
            if path is not None:
                _need(Path(path).is_file(), f"task.{key}", "must be an existing text file", path)
                _need(os.path.getsize(path) > 0, f"task.{key}", "must be a non-empty text file", path)
    m = cfg.measure
    _need(
        len(m.contexts) > 0 and all(c > 0 for c in m.contexts),
        "measure.contexts",
        "must be a non-empty list of positive integers",
        list(m.contexts),
    )
    _need(m.context_tolerance > 0, "measure.context_tolerance", "must be > 0", m.context_tolerance)
    abs_tol = m.context_abs_tolerance
    _need(abs_tol >= 0, "measure.context_abs_tolerance", "must be >= 0", abs_tol)
    _need(0 < m.horizon_fraction < 1, "measure.horizon_fraction", "must be in (0, 1)", m.horizon_fraction)
    _need(m.flat_slope > 0, "measure.flat_slope", "must be > 0", m.flat_slope)
    _need(m.horizon_max_k >= 0, "measure.horizon_max_k", "must be >= 0", m.horizon_max_k)
    _need(0 < m.ci_level < 1, "measure.ci_level", "must be in (0, 1)", m.ci_level)
    _need(0 <= m.chance_margin < 1, "measure.chance_margin", "must be in [0, 1)", m.chance_margin)
    for key in ("context_positions", "horizon_windows", "probe_positions"):
        _positive_int(cfg, f"measure.{key}")
    _need(m.probe_max_k >= 1, "measure.probe_max_k", "must be an integer >= 1", m.probe_max_k)
    classes = m.probe_max_classes
    _need(classes >= 2, "measure.probe_max_classes", "must be an integer >= 2", classes)
    _need(m.probe_ridge > 0, "measure.probe_ridge", "must be > 0", m.probe_ridge)
    _need(cfg.checkpoint.every_s >= 0, "checkpoint.every_s", "must be >= 0 (0 = off)", cfg.checkpoint.every_s)
    _need(cfg.lease.ttl_s > 0, "lease.ttl_s", "must be > 0", cfg.lease.ttl_s)
    _need(m.checkpoints >= 0, "measure.checkpoints", "must be >= 0 (0 = only at the end)", m.checkpoints)
    for key in ("jacobian_probes", "jitter_updates"):
        _need(isinstance(m[key], int) and m[key] >= 0, f"measure.{key}", "must be an integer >= 0 (0 = off)", m[key])
    for key in ("noise_rows", "noise_small", "noise_windows", "growth_windows"):
        _positive_int(cfg, f"measure.{key}")
    _need(
        m.noise_small < m.noise_rows and m.noise_rows % m.noise_small == 0,
        "measure.noise_small",
        f"must be smaller than measure.noise_rows ({m.noise_rows}) and divide it",
        m.noise_small,
    )
    _need(
        len(set(m.growth_lengths)) >= 2 and all(isinstance(v, int) and v > 0 for v in m.growth_lengths),
        "measure.growth_lengths",
        "must be a list of at least two distinct positive integers",
        list(m.growth_lengths),
    )
    _need(m.noise_points >= 0, "measure.noise_points", "must be >= 0 (0 = every evaluation point)", m.noise_points)
    tp = cfg.eval.target_perplexity
    _need(tp is None or tp > 1, "eval.target_perplexity", "must be null or a number > 1", tp)


def effective_lr(cfg: DictConfig) -> float:
    """The learning rate after the batch-size scaling rule (Goyal et al. linear; Krizhevsky/Hoffer sqrt)."""
    ratio = cfg.batch_size / cfg.optim.base_batch_size
    scale = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[cfg.optim.lr_scaling]
    return float(cfg.optim.lr * scale)
