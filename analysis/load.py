"""Run records on disk -> tidy tables.

Every `run.json` under a results folder becomes one row of `runs` (flattened config + summary + status +
folder), failed and diverged runs included. A record that cannot be trusted (truncated JSON, a finished run
whose `steps.parquet` is missing or unreadable) is skipped with a warning that names it, and listed in
`skipped`.
Grid points a sweep planned (`sweep_summary.json`, else `sweep_plan.json`, else `multirun.yaml`) that left no
usable record are listed in `missing`. The per-update, per-evaluation and per-profile series are read on demand
by `load_series`.
Files a sweep writes beside its runs are read when present: `speed.parquet` (+ `speed.json`, the speed
phase: the only tokens/s that may decide a speed verdict) and `lr_search.json` (the learning-rate search).
Records written before a measure existed keep that column empty: a missing measure is marked, never derived
from something else.
A run's `budget` is its kind and amount ("tokens 65536"; budget=plateau: "plateau cap 8192", the cap in updates)
and `regime` says what it measures: "budget" (tokens, updates, seconds: learning speed at a budget) or "plateau"
(trained until the held-out loss levels off: what is learned once trained). Plateau records say how they ended
(`stop_reason`, `converged`, `stopped_at_update`, `best_valid_loss`, `best_valid_update`); older records leave
those empty.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from sweep import record  # the torch-free record contract: file names, statuses, summary keys, recall rules
from sweep.record import (
    BEST_TRIALS_FILE,
    JUDGED_STATUSES,
    LR_SEARCH_FILE,
    MULTIRUN_FILE,
    RUN_FILE,
    SERIES,
    SIGNATURE_EXCLUDED,
    SPEED_FILE,
    SPEED_PLAN_FILE,
    SUMMARY_KEYS,
    SWEEP_PLAN_FILE,
    SWEEP_SUMMARY_FILE,
    run_dirname,
)

log = logging.getLogger(__name__)

FINISHED = JUDGED_STATUSES  # statuses whose training series must be on disk, and the only ones judged
REPORT_DIR = "report"
# Config keys that change where or how a run is shown, never what it computes (sweep.record.SIGNATURE_EXCLUDED),
# plus the factors under test and the keys already named by the split columns: none of them defines a "variant".
_NOT_A_VARIANT = {
    *SIGNATURE_EXCLUDED,
    "batch_size",
    "num_steps",
    "seed",
    "model.cell",
    "task.name",
    "task.lag",
    "task.lags",
    "task.level",
    "task.path",
    "budget.kind",
    "budget.amount",
    "optim.lr_scaling",
    "optim.lr_protocol",
    # bookkeeping that changes neither training nor the measures
    "eval.points",
    "group_norm_every",
    "measure.checkpoints",
}
# How a run ended (budget=plateau, docs/protocol.md "Budgets"): records written before these keys existed leave
# them empty (NaN; `converged` None), never inferred from the run's length.
STOP_KEYS = ("stop_reason", "converged", "stopped_at_update", "best_valid_loss", "best_valid_update")
STOP_REASONS = ("plateau", "cap", "budget", "diverged", "pruned")
# Summary fields the analysis reads: present as columns (NaN) even when no record has them (only failed runs,
# or measures not written yet).
EXPECTED = tuple(dict.fromkeys((*SUMMARY_KEYS, *STOP_KEYS)))
# regime: a fixed budget (tokens, updates, seconds) measures learning speed at that budget; budget=plateau trains
# each run until its held-out loss stops improving (or to its cap), so it measures what is learned once trained
PLATEAU, BUDGET = "plateau", "budget"
# Keys of the evaluation schedule and the plateau rule: for a fixed budget they change nothing trained (evaluating
# does not touch the trajectory); for plateau runs they are part of the stop rule, so they count as settings there.
_PLATEAU_RULE_KEYS = {"eval.spacing", "eval.first", "eval.per_doubling", "budget.patience", "budget.min_delta"}
# optim.lr_protocol (set by the sweeper) -> the label a split carries
PROTOCOLS = ("fixed", "scaled", "searched", "tuned", "candidate")
SPEED_PLAN, LR_SEARCH = SPEED_PLAN_FILE, LR_SEARCH_FILE
# Nuisance parameters a tuning study searches over: they vary between trials by design.
_TUNED_KEYS = {"optim.lr", "optim.clip", "optim.momentum"}


@dataclass
class Results:
    root: Path
    runs: pd.DataFrame
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["folder", "reason"]))
    missing: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["sweep", "folder", "status"]))
    grid_points: int = 0  # planned points across the sweep files found (0: no sweep file)
    speed: pd.DataFrame | None = None  # speed.parquet rows (+ column `sweep`), None without a speed phase
    speed_plan: dict[str, Any] | None = None  # speed.json: the plan and the environment it ran in
    lr_search: dict[str, Any] | None = None  # lr_search.json (merged over sweeps, each row naming its sweep)


class NoRecords(RuntimeError):
    pass


# -----------------------------------------------------------------------------------------------------
# records
def load_results(root: str | Path) -> Results:
    """Read every record under `root` (recursively). Raises NoRecords when there is none to read."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise NoRecords(f"{root} is not a folder")
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    seen: set[Path] = set()
    for path in sorted(_walk(root, RUN_FILE)):
        folder = path.parent
        seen.add(folder)
        row, reason = _read_record(folder, root)
        if row is None:
            log.warning("skipped %s: %s", _rel(folder, root), reason)
            skipped.append({"folder": _rel(folder, root), "reason": reason})
        else:
            rows.append(row)
    # A killed job leaves its series but no run.json (written last): it is a partial record, not a silent gap.
    for path in sorted(_walk(root, "steps.parquet")):
        if path.parent not in seen:
            reason = "partial record: steps.parquet without run.json (the job was interrupted)"
            log.warning("skipped %s: %s", _rel(path.parent, root), reason)
            skipped.append({"folder": _rel(path.parent, root), "reason": reason})
    if not rows and not skipped:
        raise NoRecords(f"no run records ({RUN_FILE}) under {root}")
    runs = _finish_table(pd.DataFrame(rows), _best_trials(root)) if rows else pd.DataFrame()
    if runs.empty:
        raise NoRecords(f"no readable run records under {root} ({len(skipped)} skipped)")
    skipped_df = pd.DataFrame(skipped, columns=["folder", "reason"])
    missing, planned = _missing_points(root, set(runs["folder"]))
    speed, plan = load_speed(root)
    return Results(root, runs, skipped_df, missing, planned, speed, plan, load_lr_search(root))


def judged_clock(speed: pd.DataFrame, meta: dict[str, Any] | None) -> pd.DataFrame:
    """The speed rows as the verdicts, tables and figures read them: `tokens_per_s` / `us_per_update` on the
    clock speed.json names (`clock`: "cpu" = the training thread's CPU time, which leaves out the time other
    processes held the core; docs/protocol.md, "Speed phase"), with the wall-clock figures kept beside them as
    `wall_tokens_per_s` / `wall_us_per_update` and the clock in `clock`. Older phases timed the wall clock only."""
    clock = str((meta or {}).get("clock") or "wall")
    out = speed.assign(wall_tokens_per_s=speed["tokens_per_s"], clock="wall")
    if "us_per_update" in out:
        out["wall_us_per_update"] = out["us_per_update"]
    cpu = out.get("cpu_tokens_per_s")
    if clock == "cpu" and cpu is not None and pd.to_numeric(cpu, errors="coerce").notna().all():
        out["tokens_per_s"] = pd.to_numeric(cpu, errors="coerce")
        if "cpu_us_per_update" in out:
            out["us_per_update"] = pd.to_numeric(out["cpu_us_per_update"], errors="coerce")
        out["clock"] = "cpu"
    return out


def load_speed(root: str | Path) -> tuple[pd.DataFrame | None, dict[str, Any] | None]:
    """Every speed.parquet under root (one per sweep), with the speed.json beside the first that has one."""
    root = Path(root)
    frames, plan = [], None
    for path in sorted(_walk(root, SPEED_FILE)):
        try:
            df = pd.read_parquet(path)
        except Exception as exc:
            log.warning("cannot read %s: %s", path, exc)
            continue
        meta = path.parent / SPEED_PLAN
        this: dict[str, Any] | None = None
        if meta.is_file():
            try:
                this = json.loads(meta.read_text())
            except (OSError, ValueError) as exc:
                log.warning("cannot read %s: %s", meta, exc)
        plan = plan if plan is not None else this
        frames.append(judged_clock(df, this).assign(sweep=_rel(path.parent, root)))
    if not frames:
        return None, plan
    speed = pd.concat(frames, ignore_index=True)
    for col in ("batch_size", "num_steps", "round"):
        if col in speed:
            speed[col] = pd.to_numeric(speed[col], errors="coerce").astype("Int64")
    return speed, plan


def load_lr_search(root: str | Path) -> dict[str, Any] | None:
    """lr_search.json of each sweep under root; several are merged (their rows gain a `sweep` key)."""
    root = Path(root)
    found = []
    for path in sorted(_walk(root, LR_SEARCH)):
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s: %s", path, exc)
            continue
        if isinstance(obj, dict):
            found.append((_rel(path.parent, root), obj))
    if not found:
        return None
    merged = dict(found[0][1])
    for key in ("table", "chosen"):
        merged[key] = [{**r, "sweep": sweep} for sweep, obj in found for r in obj.get(key) or []]
    return merged


def _walk(root: Path, name: str):
    """Files called `name` under root, leaving out the report folders this package writes."""
    for path in root.rglob(name):
        if REPORT_DIR not in path.relative_to(root).parts[:-1]:
            yield path


def _rel(folder: Path, root: Path) -> str:
    rel = folder.relative_to(root).as_posix()
    return rel if rel != "." else "."


def _read_record(folder: Path, root: Path) -> tuple[dict[str, Any] | None, str]:
    try:
        rec = json.loads((folder / RUN_FILE).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"unreadable {RUN_FILE}: {exc}"
    except ValueError as exc:
        return None, f"corrupt {RUN_FILE} (truncated or invalid JSON: {exc})"
    if not isinstance(rec, dict) or not isinstance(rec.get("config"), dict) or "status" not in rec:
        return None, f"{RUN_FILE} is not a run record (no config or status)"
    status = rec["status"]
    series = {}
    for name in SERIES:
        file = folder / f"{name}.parquet"
        if not file.exists():
            series[name] = False
            continue
        try:
            pq.read_metadata(file)  # the footer is written last: a truncated file fails here
        except Exception as exc:
            return None, f"corrupt {file.name}: {exc}"
        series[name] = True
    if status in FINISHED and not series["steps"]:
        return None, f"partial record: status '{status}' but steps.parquet is missing"
    return _flatten(rec, folder, root, series), ""


def _flatten(rec: dict[str, Any], folder: Path, root: Path, series: dict[str, bool]) -> dict[str, Any]:
    cfg = rec["config"]
    summary = rec.get("summary") or {}
    env = rec.get("env") or {}
    task = cfg.get("task") or {}
    model = cfg.get("model") or {}
    optim = cfg.get("optim") or {}
    budget = cfg.get("budget") or {}
    # hydra/sweeper=optuna_grid marks each trial run's config with its study (one per grid cell) and number
    tuned = cfg.get("study") is not None or cfg.get("trial") is not None
    row: dict[str, Any] = {
        "run_id": _rel(folder, root),
        "folder": str(folder),
        "status": rec["status"],
        "error": rec.get("error"),
        "signature": rec.get("signature"),
        "task": task.get("name"),
        "task_label": _task_label(task),
        "cell": model.get("cell"),
        "batch_size": cfg.get("batch_size"),
        "num_steps": cfg.get("num_steps"),
        "seed": cfg.get("seed"),
        "budget_kind": budget.get("kind"),
        "budget_amount": budget.get("amount"),
        "budget": _budget_label(budget),
        "regime": PLATEAU if budget.get("kind") == PLATEAU else BUDGET,
        "optimizer": optim.get("name"),
        "lr_scaling": optim.get("lr_scaling"),
        "protocol": _protocol(optim, tuned),
        "lr_protocol": optim.get("lr_protocol"),
        "tuning_trial": tuned,
        "study": cfg.get("study"),
        "trial_number": cfg.get("trial"),
        "has_steps": series["steps"],
        "has_evals": series["evals"],
        "has_profiles": series["profiles"],
    }
    for key, value in summary.items():
        if key == "lag_accuracy" and isinstance(value, dict):
            counts = summary.get("lag_count") or {}
            for lag, acc in value.items():
                # a lag with no held-out target (stream rows shorter than the lag) has no accuracy, not 0
                row[f"acc_lag_{lag}"] = None if counts.get(lag, 1) == 0 else acc
                row[f"n_lag_{lag}"] = counts.get(lag)  # targets behind it: the span's Wilson interval needs it
        elif _is_scalar(value):
            row[key] = value
    for key in (
        "device",
        "gpu",
        "cpu",
        "cpu_count",
        "threads",
        "parallel_jobs",
        "launcher",
        "torch",
        "python",
        "git_commit",  # the code that wrote the record: a results table names it
    ):
        row[f"env.{key}"] = env.get(key)
    for key, value in (env.get("versions") or {}).items():
        row[f"env.{key}"] = value
    for key, value in flat_config(cfg).items():
        row[f"cfg.{key}"] = value
    return row


def _budget_label(budget: dict[str, Any]) -> str:
    """The budget as a split names it (tokens 65536, updates 300); a plateau run by its cap: plateau cap 8192."""
    kind, amount = budget.get("kind"), _num(budget.get("amount"))
    return f"plateau cap {amount}" if kind == PLATEAU else f"{kind} {amount}"


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def flat_config(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> dotted keys; lists as JSON text (a table column or a tracker param holds one scalar)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)  # lists (lags, contexts) as text: parquet columns stay one type
        else:
            out[name] = value
    return out


def _task_label(task: dict[str, Any]) -> str:
    name = task.get("name")
    if name == "echo":
        return f"echo (lag {task.get('lag')})"
    if name == "lags":
        lags = task.get("lags") or []
        return f"lags ({min(lags)}-{max(lags)})" if lags else "lags"
    if name == "text":
        source = (Path(task["path"]).parent.name or Path(task["path"]).name) if task.get("path") else "built-in"
        return f"text ({task.get('level', 'word')}, {source})"
    return str(name)


def _protocol(optim: dict[str, Any], tuned: bool) -> str:
    """How the learning rate was set across batch sizes: the record's optim.lr_protocol when it has one,
    else (older records) a tuning trial is "tuned lr" and lr_scaling tells fixed from scaled."""
    scaling = optim.get("lr_scaling", "none")
    declared = optim.get("lr_protocol")
    if declared in PROTOCOLS:
        if declared == "scaled":
            return f"scaled lr ({scaling})" if scaling not in (None, "none") else "scaled lr"
        if declared == "candidate":
            return "lr search candidate"
        return f"{declared} lr"
    if tuned:
        return "tuned lr"
    return "fixed lr" if scaling in (None, "none") else f"scaled lr ({scaling})"


# ------------------------------------------------------------------------------------------ table-wide
# columns
def _finish_table(runs: pd.DataFrame, best: set[str]) -> pd.DataFrame:
    runs = runs.copy()
    for col in EXPECTED:
        if col not in runs:
            runs[col] = np.nan
    if "regime" not in runs:
        runs["regime"] = BUDGET
    # True / False for plateau runs, None for fixed budgets and for records older than the key
    runs["converged"] = [v if isinstance(v, (bool, np.bool_)) else None for v in runs["converged"]]
    runs["converged"] = runs["converged"].astype(object)
    runs["stop_reason"] = [v if isinstance(v, str) else None for v in runs["stop_reason"]]
    for col in ("stopped_at_update", "best_valid_loss", "best_valid_update"):
        runs[col] = pd.to_numeric(runs[col], errors="coerce")
    for col in ("batch_size", "num_steps", "seed"):
        runs[col] = pd.to_numeric(runs[col], errors="coerce").astype("Int64")
    # Selection runs (an lr search's candidates, an Optuna study's trials) chose a nuisance parameter: kept and
    # listed, never judged, and never what makes the judged runs' settings differ.
    runs["selection"] = runs["tuning_trial"].astype(bool) | (runs["lr_protocol"] == "candidate")
    runs["variant"] = _variants(runs)
    runs["split"] = [
        " · ".join(p for p in parts if p)
        for parts in zip(runs["task_label"], runs["budget"], runs["protocol"], runs["variant"], strict=True)
    ]
    _mark_best(runs, best)
    # Tokens/s of a run trained beside other jobs measure the load as much as the batch size: labelled, and
    # never used for a speed verdict (the speed phase's speed.parquet is).
    jobs = pd.to_numeric(runs.get("env.parallel_jobs", pd.Series(np.nan, index=runs.index)), errors="coerce")
    runs["timed_under_load"] = (jobs > 1).astype(bool)
    # Tuning trials other than the best one per grid cell are records, not results: kept, never judged.
    runs["in_verdicts"] = runs["status"].isin(FINISHED) & (~runs["selection"] | runs["best_trial"])
    tps = pd.to_numeric(runs["tokens_per_s"], errors="coerce")
    runs["log_tokens_per_s"] = np.log(tps.where(tps > 0))
    gmax = pd.to_numeric(runs["grad_norm_max"], errors="coerce")
    log_g = np.log(gmax.where(gmax > 0))
    # A diverged run's norm went non-finite: for "do gradients explode" it is the largest norm there is.
    runs["log_grad_norm_max"] = log_g.where(runs["status"] != "diverged", np.inf)
    _recall_measures(runs)
    return runs


def _best_trials(root: Path) -> set[str]:
    """Folders of the best trial of each tuned grid cell, from every best_trials.json (optuna_grid)."""
    best = set()
    for path in _walk(root, BEST_TRIALS_FILE):
        try:
            cells = json.loads(path.read_text())["cells"]
            best |= {str(path.parent / c["best"]["folder"]) for c in cells if (c.get("best") or {}).get("folder")}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read %s: %s", path, exc)
    return best


def _mark_best(runs: pd.DataFrame, best: set[str]) -> None:
    """best_trial: a selection run named as its cell's best by a best_trials.json written before tuned sweeps
    had a test phase (version 1). Tuned sweeps now rerun each cell's best lr on fresh seeds (protocol "tuned
    lr"), and those runs are judged; selection runs never are, and no trial is ever picked here by its own
    held-out loss (that would select on the very noise the verdicts then read)."""
    runs["best_trial"] = runs["folder"].isin(best) & runs["tuning_trial"]
    runs["best_source"] = np.where(runs["best_trial"], "best_trials.json (version 1: selected on its own seed)", None)


def _variants(runs: pd.DataFrame) -> pd.Series:
    """Other config keys that differ between runs of one task · budget · lr protocol (e.g. hidden_size, the
    optimizer): each value is a setting. Read within that group, so a key that only tells two groups apart (the
    language model's measure settings, the exploding regime's optimizer) never lengthens every split's name."""
    out = pd.Series("", index=runs.index)
    if runs.empty:
        return out
    for _, group in runs.groupby(["task_label", "budget", "protocol"], dropna=False, sort=False):
        out.loc[group.index] = _variants_within(group)
    return out


def _variants_within(runs: pd.DataFrame) -> pd.Series:
    cfg_cols = [c for c in runs.columns if c.startswith("cfg.")]
    # a searched or tuned lr differs per grid point by design: a nuisance parameter, not a setting
    nuisance = runs["tuning_trial"].astype(bool) | runs["lr_protocol"].isin(["searched", "tuned"])
    judged = ~runs["selection"] | runs["tuning_trial"]  # an lr search's candidates run other settings on purpose
    plateau = runs["regime"] == PLATEAU if "regime" in runs else pd.Series(False, index=runs.index)
    keys = []
    for col in cfg_cols:
        key = col[4:]
        if key in _NOT_A_VARIANT or key.split(".", 1)[0] in _NOT_A_VARIANT:  # e.g. checkpoint.every_s
            continue
        values = runs.loc[~nuisance & judged, col] if key in _TUNED_KEYS else runs.loc[judged, col]
        if key in _PLATEAU_RULE_KEYS:
            values = runs.loc[judged & plateau, col]
        # a key absent from older records (the config schema grew) is not a setting that varies
        if values.dropna().astype(str).nunique() > 1:
            keys.append(key)

    def label(row: pd.Series) -> str:
        parts = []
        for key in keys:
            if key in _PLATEAU_RULE_KEYS and not plateau[row.name]:
                continue
            value = "tuned" if nuisance[row.name] and key in _TUNED_KEYS else row[f"cfg.{key}"]
            if not (isinstance(value, float) and np.isnan(value)):
                parts.append(f"{key}={value}")
        return ", ".join(parts)

    return runs.apply(label, axis=1) if keys else pd.Series("", index=runs.index)


def lag_columns(runs: pd.DataFrame) -> list[str]:
    cols = [c for c in runs.columns if c.startswith("acc_lag_")]
    return sorted(cols, key=lambda c: int(c.removeprefix("acc_lag_")))


def _recall_measures(runs: pd.DataFrame) -> None:
    """`span` and `memory_capacity` from the final held-out accuracy per lag, where the record has none.

    The rule is sweep.record.recall_summary, the one sweep/measures.py applies (docs/measures.md, section 1): a
    lag is reached when its accuracy is at least chance + `measure.chance_margin` AND the Wilson interval's lower
    end (level `measure.ci_level`) lies above chance; span = the longest lag reached with every shorter lag
    reached too; memory capacity = the sum of (acc - chance) / (1 - chance), not floored at 0, over the lags
    with held-out targets. A record without the target counts cannot give the interval: its span stays
    missing. `span_source` says which.
    """
    lags = lag_columns(runs)
    for col in ("span", "memory_capacity"):
        if col not in runs:
            runs[col] = np.nan
        runs[col] = pd.to_numeric(runs[col], errors="coerce")
    runs["span_source"] = np.where(runs["span"].notna(), "measures", None)
    if not lags:
        return
    nan = pd.Series(np.nan, index=runs.index)
    margin = pd.to_numeric(runs.get("cfg.measure.chance_margin", nan), errors="coerce").fillna(0.1)
    level = pd.to_numeric(runs.get("cfg.measure.ci_level", nan), errors="coerce").fillna(0.95)
    chance = pd.to_numeric(runs.get("chance_accuracy", nan), errors="coerce")
    for i in runs.index:
        if pd.notna(runs.at[i, "span"]) or pd.isna(chance.at[i]) or runs.at[i, "status"] not in FINISHED:
            continue
        ks = [int(col.removeprefix("acc_lag_")) for col in lags]
        accs = [pd.to_numeric(runs.at[i, col], errors="coerce") for col in lags]
        counts = [
            pd.to_numeric(runs.at[i, f"n_lag_{k}"], errors="coerce") if f"n_lag_{k}" in runs else np.nan for k in ks
        ]
        present = [(k, a, n) for k, a, n in zip(ks, accs, counts, strict=True) if pd.notna(a) or n == 0]
        # a head with an accuracy but no count cannot give the interval: no span rather than a guess
        if not present or any(pd.isna(n) for _, _, n in present) or float(chance.at[i]) >= 1:
            continue
        rec = record.recall_summary(
            [k for k, _, _ in present],
            [a if pd.notna(a) else np.nan for _, a, _ in present],
            [n for _, _, n in present],
            float(chance.at[i]),
            float(margin.at[i]),
            float(level.at[i]),
        )
        runs.at[i, "span"] = rec["span"]
        runs.at[i, "span_source"] = "final accuracy per lag (analysis)"
        if pd.isna(runs.at[i, "memory_capacity"]) and rec["memory_capacity"] is not None:
            runs.at[i, "memory_capacity"] = rec["memory_capacity"]


# ------------------------------------------------------------------------------------------------- series
def load_series(runs: pd.DataFrame, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    """steps / evals / profiles of the given runs, concatenated, with run_id and the factors to plot by.

    `columns` limits what is read (names a file lacks are left out). Files of different record versions may
    hold different columns: a column a file lacks is empty (NaN) in its rows.
    """
    if name not in SERIES:
        raise ValueError(f"series: {name!r} is not one of {', '.join(SERIES)}")
    keep = ["run_id", "split", "task", "cell", "batch_size", "num_steps", "seed", "status"]
    parts, owners = [], []
    # pyarrow tables concatenated once: ~600 runs read several times faster than a pandas frame per file
    for row in runs[runs[f"has_{name}"]].itertuples(index=False):
        file = Path(row.folder) / f"{name}.parquet"
        try:
            table = pq.read_table(file, columns=_present(file, columns))
        except Exception as exc:  # read_metadata passed, the body did not: say so, go on without it
            log.warning("skipped %s of %s: %s", file.name, row.run_id, exc)
            continue
        if table.num_rows:
            parts.append(table.replace_schema_metadata(None))
            owners.append(row)
    if not parts:
        return pd.DataFrame()
    df = pa.concat_tables(parts, promote_options="permissive").to_pandas()
    sizes = [t.num_rows for t in parts]
    for col in keep:
        df[col] = np.repeat(np.array([getattr(r, col) for r in owners], dtype=object), sizes)
        if col in ("batch_size", "num_steps", "seed"):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    return df


def _present(file: Path, columns: list[str] | None) -> list[str] | None:
    if columns is None:
        return None
    names = set(pq.read_schema(file).names)
    return [c for c in columns if c in names]


# --------------------------------------------------------------------------------------------- grid points
def _missing_points(root: Path, loaded: set[str]) -> tuple[pd.DataFrame, int]:
    """Planned grid points without a usable record, from each sweep's summary (or, failing that, its grid)."""
    rows = []
    planned = 0
    sweep_dirs = {p.parent for name in (SWEEP_SUMMARY_FILE, SWEEP_PLAN_FILE, MULTIRUN_FILE) for p in _walk(root, name)}
    for sweep_dir in sorted(sweep_dirs):
        points = _planned_points(sweep_dir)
        if points is None:
            continue
        planned += len(points)
        for name, status in points:
            folder = sweep_dir / name
            if str(folder) not in loaded:
                rows.append({"sweep": _rel(sweep_dir, root), "folder": name, "status": status})
    return pd.DataFrame(rows, columns=["sweep", "folder", "status"]), planned


def _planned_points(sweep_dir: Path) -> list[tuple[str, str]] | None:
    summary = sweep_dir / SWEEP_SUMMARY_FILE
    if summary.exists():
        try:
            jobs = json.loads(summary.read_text())["jobs"]
            return [(Path(d).name, str(v.get("status", "?"))) for d, v in jobs.items()]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("cannot read %s: %s; trying the plan", summary, exc)
    plan = sweep_dir / SWEEP_PLAN_FILE  # written before the first job: a killed sweep leaves it
    if plan.exists():
        try:
            return [(str(point["folder"]), "no record") for point in json.loads(plan.read_text())["points"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read %s: %s; trying %s", plan, exc, MULTIRUN_FILE)
    grid = sweep_dir / MULTIRUN_FILE
    if grid.exists():
        try:
            return [(name, "no record") for name in _grid_folders(yaml.safe_load(grid.read_text()))]
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
            log.warning("cannot expand the grid of %s: %s", grid, exc)
    return None


def _grid_folders(conf: dict[str, Any]) -> list[str]:
    """The job folder names the sweeper gives the grid in multirun.yaml: Hydra's override_dirname (sorted
    k=v items) passed through sweep.record.run_dirname, which escapes '/' and shortens long names."""
    hydra = conf["hydra"]
    params: dict[str, str] = {str(k): str(v) for k, v in (hydra.get("sweeper", {}).get("params") or {}).items()}
    for line in hydra.get("overrides", {}).get("task") or []:
        key, _, value = str(line).partition("=")
        params[key] = value
    dirname = hydra.get("job", {}).get("config", {}).get("override_dirname", {})
    exclude = set(dirname.get("exclude_keys") or [])
    kv_sep, item_sep = str(dirname.get("kv_sep", "=")), str(dirname.get("item_sep", ","))
    axes = []
    for key, value in params.items():
        if any(ch in value for ch in "[](){}"):  # range(), choice(), lists: not expanded here
            raise ValueError(f"cannot expand sweep value {key}={value}")
        axes.append([(key, v.strip()) for v in value.split(",")])
    names = []
    for combo in itertools.product(*axes):
        items = sorted(f"{k}{kv_sep}{v}" for k, v in combo if k not in exclude)
        names.append(run_dirname(item_sep.join(items)))
    return names
