"""One line per user error.

Hydra prints composition errors over several lines, with a search-path dump and a hint about HYDRA_FULL_ERROR.
A user who typed `model=foo` needs one line that names the field and what is allowed, and a non-zero exit, so
the CLI routes Hydra's error reporting through `report` (HYDRA_FULL_ERROR=1 still gives the full traceback).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import CompactHydraException, MissingConfigException

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class RunFailed(CompactHydraException):
    """A run or sweep finished with failed jobs (their records say why): exit 1, not a usage error."""


def one_line(ex: BaseException) -> str:
    text = str(ex)
    if isinstance(ex, MissingConfigException):
        missing = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
        options = [o.strip() for o in re.findall(r"^\t(\S+)$", text, flags=re.M) if not o.endswith("_schema")]
        if missing and options:
            group, name = missing.groups()
            return f"invalid config: {group}={name}: must be one of {', '.join(options)}"
    key = re.search(r"Key '([^']+)' not in '", text + str(ex.__cause__ or ""))
    if key:
        return f"invalid config: {key.group(1)}: no such key (allowed keys are those in conf/ and sweep/config.py)"
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
    import hydra._internal.utils as hydra_utils

    original = hydra_utils.run_and_report
    if getattr(original, "_one_line", False):
        return

    def run_and_report(func: Callable[[], Any]) -> Any:
        return report(func, original)

    run_and_report._one_line = True  # type: ignore[attr-defined]
    hydra_utils.run_and_report = run_and_report
