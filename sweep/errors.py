"""One line per user error.

Hydra prints composition errors over several lines, with a search-path dump and a hint about HYDRA_FULL_ERROR.
A user who typed `model=foo` needs one line that names the field and what is allowed (and the nearest valid name
when the input looks like a typo), and a non-zero exit, so the entry point (`sweep.cli.main`) routes Hydra's
error reporting through `report` (HYDRA_FULL_ERROR=1 still gives the full traceback). Importing this module
changes nothing in Hydra: `install` does, and only the entry point calls it.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

from hydra.errors import CompactHydraException, InstantiationException, MissingConfigException

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_LEASED = 75  # EX_TEMPFAIL (sysexits.h): a single run whose point another live process trains; try again later
PROJECT = "rnn-sweep"  # the distribution whose extras name the optional plugins

# Hydra plugins a config group option comes from, when that plugin is not installed: (group, option) -> its
# distribution on PyPI. The extra of this project that installs it is read from the installed metadata.
PLUGIN_DISTRIBUTIONS = {
    ("hydra/launcher", "joblib"): "hydra-joblib-launcher",
    ("hydra/launcher", "ray"): "hydra-ray-launcher",
    ("hydra/launcher", "ray_aws"): "hydra-ray-launcher",
    ("hydra/launcher", "submitit_local"): "hydra-submitit-launcher",
    ("hydra/launcher", "submitit_slurm"): "hydra-submitit-launcher",
    ("hydra/launcher", "rq"): "hydra-rq-launcher",
    ("hydra/sweeper", "optuna"): "hydra-optuna-sweeper",
    ("hydra/sweeper", "nevergrad"): "hydra-nevergrad-sweeper",
    ("hydra/sweeper", "ax"): "hydra-ax-sweeper",
}


class RunFailed(CompactHydraException):
    """A run or sweep finished with failed jobs (their records say why): exit 1, not a usage error."""


def nearest(name: str, options: Iterable[str]) -> str | None:
    """The option closest to a mistyped `name`, if any is close enough to be a plausible typo."""
    found = difflib.get_close_matches(name, [str(o) for o in options], n=1, cutoff=0.6)
    return found[0] if found else None


def _normal(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def install_hint(dist: str, requirements: list[str] | None = None) -> str:
    """How to install `dist`: this project's extra that lists it (`pip install 'rnn-sweep[ray]'`), else the
    distribution itself. `requirements`: the project's Requires-Dist lines (default: the installed metadata)."""
    if requirements is None:
        from importlib.metadata import PackageNotFoundError, requires

        try:
            requirements = requires(PROJECT) or []
        except PackageNotFoundError:
            requirements = []
    for line in requirements:
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        extra = re.search(r"extra\s*==\s*[\"']([^\"']+)[\"']", line)
        if name and extra and _normal(name.group(1)) == _normal(dist):
            return f"pip install '{PROJECT}[{extra.group(1)}]'"
    return f"pip install {dist}"


def _choice_line(group: str, name: str, options: list[str]) -> str:
    line = f"invalid config: {group}={name}: must be one of {', '.join(options)}"
    dist = PLUGIN_DISTRIBUTIONS.get((group, name))
    if dist is not None and name not in options:
        return f"invalid config: {group}={name}: that plugin ({dist}) is not installed: {install_hint(dist)}"
    guess = nearest(name, options)
    return f"{line}; did you mean {group}={guess}?" if guess else line


def _key_line(ex: BaseException, text: str) -> str | None:
    """A key that is not in the config: name it, and the nearest key at the same level when there is one."""
    cause = ex.__cause__
    key = getattr(cause, "key", None)
    parent = getattr(cause, "parent_node", None)
    given = re.search(r"Could not override '([^']+)'", text)
    if key is None:
        found = re.search(r"Key '([^']+)' not in '", text + str(cause or ""))
        if not found:
            return None
        key = found.group(1)
    full = given.group(1) if given else str(getattr(cause, "full_key", None) or key)
    line = f"invalid config: {full}: no such key"
    where = " (allowed keys are those in conf/ and sweep/config.py)"
    try:
        options = [str(k) for k in parent] if parent is not None else []
    except Exception:  # a parent node that cannot list its keys: no suggestion
        options = []
    guess = nearest(str(key), [o for o in options if o != key])
    if not guess:
        return line + where
    # the mistyped part replaced in what the user wrote: modle.hidden_size -> model.hidden_size
    parts = full.split(".")
    depth = len(str(getattr(cause, "full_key", None) or key).split(".")) - 1
    if 0 <= depth < len(parts) and parts[depth] == key:
        parts[depth] = guess
        guess = ".".join(parts)
    return f"{line}; did you mean {guess}?{where}"


def one_line(ex: BaseException) -> str:
    if isinstance(ex, InstantiationException) and isinstance(ex.__cause__, CompactHydraException):
        return one_line(ex.__cause__)  # a plugin's own error (a launcher's bad setting), not Hydra's wrapper line
    text = str(ex)
    if isinstance(ex, MissingConfigException):
        missing = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
        options = [o.strip() for o in re.findall(r"^\t(\S+)$", text, flags=re.M) if not o.endswith("_schema")]
        if missing and options:
            group, name = missing.groups()
            return _choice_line(group, name, options)
    key_line = _key_line(ex, text)
    if key_line:
        return key_line
    parts = [text, str(ex.__cause__ or "")]
    lines = [ln.strip() for part in parts for ln in part.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("object_type=", "Config search path", "provider="))]
    full_key = next((ln.split("=", 1)[1] for ln in lines if ln.startswith("full_key=")), None)
    lines = [ln for ln in lines if not ln.startswith("full_key=")]
    head = "; ".join(dict.fromkeys(lines[:2]))
    if full_key and full_key not in head:
        head = f"invalid config: {full_key}: {head}"
    return head


def report(func: Callable[[], Any], fallback: Callable[[Callable[[], Any]], Any]) -> Any:
    try:
        return func()
    except CompactHydraException as ex:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.stderr.write(one_line(ex) + os.linesep)
        sys.exit(EXIT_FAILED if isinstance(ex, RunFailed) else EXIT_BAD_INPUT)
    except Exception:
        return fallback(func)  # anything else is a bug: Hydra's own report, with its traceback


def install() -> None:
    """Route Hydra's error reporting through `report` (sweep/_hydra_api.py says how). Entry points only."""
    from sweep._hydra_api import install_error_handler

    install_error_handler(report)
