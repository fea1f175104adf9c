"""Optuna pieces built from config, shared by the sweep process that asks trials (hydra_plugins/rnn_sweep_optuna)
and the trial runs that report to them (sweep/pruning.py): the storage both open, the samplers and pruners
named in `hydra.sweeper`, and an objective read from a run's metrics.

Imported only where Optuna is used (a tuning sweep, a trial run): a plain run never imports it, nor Optuna.
"""

from __future__ import annotations

import inspect
import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from sweep.config import ConfigError


# ---------------------------------------------------------------------------------------------------- storages
def default_storage_url(sweep_dir: Path) -> str:
    return f"sqlite:///{Path(sweep_dir).resolve() / 'optuna.db'}"


def absolute_url(url: str) -> str:
    """The URL with a relative SQLite or journal path made absolute: the trial runs open it too, from launcher
    workers whose working directory may differ from the sweep process's."""
    if url.startswith("journal:") or (url.endswith((".log", ".journal")) and "://" not in url):
        path = url.removeprefix("journal:")
        return f"journal:{Path(path).resolve()}" if not path.startswith("/") else url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        return f"sqlite:///{Path(url.removeprefix('sqlite:///')).resolve()}"
    return url


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """`journal:<path>` (or a path ending in .log / .journal): an Optuna journal file, which works on a shared
    disk without a server; anything else: an SQLAlchemy URL (sqlite:///..., postgresql://...). Several processes
    can open each of them at once: the sweep process, and every trial run reporting its curve."""
    if url.startswith("journal:") or (url.endswith((".log", ".journal")) and "://" not in url):
        path = url.removeprefix("journal:")
        if path.startswith("//"):
            path = path[2:]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(path))
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}  # several processes may write at once
        db = url.split(":///", 1)[-1]
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(url, skip_table_creation=False, **kwargs)


def public_url(url: str) -> str:
    """The storage URL with any password hidden, for files and logs."""
    if url.startswith("journal:") or "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


# ---------------------------------------------------------------------------------------- samplers and pruners
NO_PRUNER = ("none", "nop")  # and null


def plain_spec(spec: Any) -> Any:
    """A sampler or pruner setting as plain Python (a DictConfig from the sweeper's config becomes a dict)."""
    return OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else spec


def resolve_class(spec: Any, module: Any, suffix: str, field: str) -> tuple[type, dict[str, Any]]:
    """(class, kwargs) from a setting that names an Optuna sampler or pruner:
    - a short name: the class of `module` called <Name><suffix>, case and `_` ignored (tpe -> TPESampler,
      cmaes -> CmaEsSampler, median -> MedianPruner, successive_halving -> SuccessiveHalvingPruner);
    - a class path (optuna.samplers.CmaEsSampler, or a class of another package);
    - {_target_: <class path>, <keyword>: <value>, ...}, as Hydra's instantiate reads it.
    Raises ConfigError naming `field` and what is allowed."""
    spec = plain_spec(spec)
    kwargs: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        kwargs = {str(k): v for k, v in spec.items() if k != "_target_"}
        spec = spec.get("_target_")
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"invalid sweep: {field}={spec!r}: {_allowed(module, suffix)}")
    if "." in spec:
        from hydra.utils import get_class

        try:
            cls = get_class(spec)
        except Exception:
            raise ConfigError(f"invalid sweep: {field}: cannot import {spec!r}: {_allowed(module, suffix)}") from None
        return cls, kwargs
    wanted = spec.replace("_", "").lower() + suffix.lower()
    for name in dir(module):
        if name.lower() == wanted and inspect.isclass(getattr(module, name)):
            return getattr(module, name), kwargs
    raise ConfigError(f"invalid sweep: {field}={spec!r}: {_allowed(module, suffix)}")


def _allowed(module: Any, suffix: str) -> str:
    names = sorted(
        re.sub(r"(?<=[a-z])(?=[A-Z])", "_", n.removesuffix(suffix)).lower()
        for n in getattr(module, "__all__", dir(module))
        if n.endswith(suffix) and not n.startswith("Base")
    )
    return (
        f"must name an Optuna {suffix.lower()} ({', '.join(names)}), or be {{_target_: <class path>, <keyword>: ...}}"
    )


def build(cls: type, kwargs: dict[str, Any], base: type, field: str) -> Any:
    """cls(**kwargs), nested {_target_: ...} values instantiated too (PatientPruner(wrapped_pruner=...))."""
    from hydra.utils import instantiate

    try:
        with warnings.catch_warnings():  # chosen on purpose: no "experimental" warning in every sweep's log
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            obj = instantiate({"_target_": f"{cls.__module__}.{cls.__qualname__}", **kwargs}, _convert_="all")
    except Exception as exc:
        cause = exc.__cause__ or exc
        first = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise ConfigError(f"invalid sweep: {field}: {cls.__name__}({_kw(kwargs)}): {first}") from None
    if not isinstance(obj, base):
        raise ConfigError(f"invalid sweep: {field}: {cls.__name__} is not an {base.__module__}.{base.__name__}")
    return obj


def _kw(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def make_pruner(spec: Any, field: str = "hydra.sweeper.pruner") -> optuna.pruners.BasePruner:
    """The pruner a setting names: null / none (never prune), median, hyperband, ... or {_target_: ...}."""
    spec = plain_spec(spec)
    if spec is None or (isinstance(spec, str) and spec.lower() in NO_PRUNER):
        return optuna.pruners.NopPruner()
    cls, kwargs = resolve_class(spec, optuna.pruners, "Pruner", field)
    return build(cls, kwargs, optuna.pruners.BasePruner, field)


def prunes(spec: Any) -> bool:
    """Whether a pruner setting can stop a run early (anything but null / none)."""
    spec = plain_spec(spec)
    return not (spec is None or (isinstance(spec, str) and spec.lower() in NO_PRUNER))


# ---------------------------------------------------------------------------------------------------- objective
def objective_value(metrics: Mapping[str, Any], path: str) -> float | None:
    """The objective in a run's summary or an evaluation's metrics, by dotted path (`valid_loss`,
    `lag_accuracy.8`: a flat key `lag_accuracy.8` is found too); None when missing or not a finite number."""
    node: Any = metrics
    if path in metrics:
        node = metrics[path]
    else:
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
    if isinstance(node, bool):
        return None
    if not isinstance(node, (int, float)):
        try:
            node = float(node)  # numpy and torch scalars
        except (TypeError, ValueError):
            return None
    value = float(node)
    return value if math.isfinite(value) else None
