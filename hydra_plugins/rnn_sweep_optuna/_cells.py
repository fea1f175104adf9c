"""Grid cells and their studies.

A cell is a grid point less its seed: choosing an lr per seed and then reporting the same runs would select on
noise, so each cell has ONE Optuna study, named `<study_prefix>:<cell folder>:<hash>`. The hash covers the cell's
whole config (less what the record contract leaves out of a run's signature, and the seed), the search space, the
search seeds, objective and direction: change any and the cell gets a new study; keep them and every process,
rerun or machine finds the same one.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra.core.config_loader import ConfigLoader
from omegaconf import DictConfig

from hydra_plugins.rnn_sweep_optuna import _samplers
from hydra_plugins.rnn_sweep_optuna import _search_space as ss
from sweep.optuna_setup import make_pruner, plain_spec
from sweep.plan import PlannedJob, TuneSettings, override_key
from sweep.pruning import STUDY_OBJECTIVE_ATTR, STUDY_PRUNER_ATTR
from sweep.record import SIGNATURE_EXCLUDED, resolved_config


@dataclass
class Cell:
    job: PlannedJob  # the grid point less its seed (its out_dir names the cell; no run is written there)
    study: optuna.Study
    name: str
    points: list[PlannedJob] = field(default_factory=list)  # the cell's grid points, one per grid seed
    open: bool = True
    exhausted: bool = False


def group(
    points: list[PlannedJob], loader: ConfigLoader, master: DictConfig
) -> list[tuple[PlannedJob, list[PlannedJob]]]:
    """Grid points that differ only in the seed make one cell: (the cell, its points), in grid order."""
    groups: dict[tuple[str, ...], tuple[list[str], list[PlannedJob]]] = {}
    for p in points:
        base = [o for o in p.overrides if override_key(o) != "seed"]
        groups.setdefault(tuple(sorted(base)), (base, []))[1].append(p)
    cells = []
    for base, members in groups.values():
        cfg = loader.load_sweep_config(master_config=master, sweep_overrides=list(base))
        out_dir = Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)
        cost = max(m.cost for m in members)
        cells.append((PlannedJob(list(base), out_dir, "", cost=cost, config=cfg), members))
    return cells


def cell_hash(cell: PlannedJob, space: dict[str, Any], s: TuneSettings) -> str:
    assert cell.config is not None
    conf = resolved_config(cell.config)
    for key in (*SIGNATURE_EXCLUDED, "study", "trial", "study_storage", "seed"):  # trials run on the search seeds
        conf.pop(key, None)
    for key in space:  # the searched values differ from trial to trial, not from cell to cell
        *parents, leaf = key.split(".")
        holder: Any = conf
        for part in parents:
            holder = holder.get(part) if isinstance(holder, dict) else None
        if isinstance(holder, dict):
            holder.pop(leaf, None)
    blob = {
        "config": conf,
        "search": ss.describe(s.search),
        "search_seeds": sorted(s.search_seeds),
        "objective": s.objective,
        "direction": s.direction,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:8]


def open_cell(
    storage: optuna.storages.BaseStorage,
    cell: PlannedJob,
    points: list[PlannedJob],
    space: dict[str, Any],
    s: TuneSettings,
    prefix: str,
) -> Cell:
    """The cell's study, created or loaded, with this process's sampler and pruner, and the user attributes its
    trial runs read (objective, pruner) and the dashboard shows."""
    digest = cell_hash(cell, space, s)
    name = f"{prefix}:{cell.out_dir.name}:{digest}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(study_name=name, storage=storage, direction=s.direction, load_if_exists=True)
    study.sampler = _samplers.make_sampler(
        s.sampler, dict(s.sampler_kwargs or {}), s.sampler_seed, digest, len(study.get_trials(deepcopy=False))
    )
    # the sampler reads the pruner too (TPE samples within a Hyperband bracket); the trial runs build their own
    study.pruner = make_pruner(s.pruner)
    attrs = {
        "cell_overrides": list(cell.overrides),
        "cell_folder": cell.out_dir.name,
        STUDY_OBJECTIVE_ATTR: s.objective,
        STUDY_PRUNER_ATTR: plain_spec(s.pruner),
        "search": ss.describe(s.search),
        "search_seeds": list(s.search_seeds),
        "config_hash": digest,
    }
    for key, value in attrs.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)
    return Cell(job=cell, study=study, name=name, points=list(points))
