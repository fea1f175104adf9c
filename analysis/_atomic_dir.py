"""A folder replaced as a whole: the report is written into a temporary folder beside its place and swapped in,
so DIR/report/ always holds one whole report, the previous one or the new one, never a mix or half of one."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

_NEW, _OLD = "new", "old"


def _temp_name(final: Path, kind: str) -> str:
    return f".{final.name}.{kind}-{os.getpid()}-"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2  # <fcntl.h>, <linux/fs.h>
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _swap_in(new: Path, final: Path) -> None:
    """Put `new` at `final`; whatever was at `final` is removed once `new` is in place."""
    if final.exists() and _exchange(new, final):
        shutil.rmtree(new, ignore_errors=True)  # it now holds the previous folder
        return
    old = None
    if final.exists():  # no atomic exchange here: rename the old one away, the new one in, then remove the old
        old = final.with_name(f"{_temp_name(final, _OLD)}{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    try:
        os.rename(new, final)
    except BaseException:
        if old is not None:
            os.rename(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(final: Path) -> None:
    """Remove temporary folders beside `final` left by writers that were killed (their process is gone)."""
    for kind in (_NEW, _OLD):
        for path in final.parent.glob(f".{final.name}.{kind}-*"):
            pid = path.name[len(f".{final.name}.{kind}-") :].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def replacing(final: str | Path) -> Iterator[Path]:
    """Yield a fresh folder beside `final` to write into; when the block ends normally it replaces `final`.
    When it raises (or is interrupted), the folder is removed and `final` is left exactly as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(final)
    new = Path(tempfile.mkdtemp(prefix=_temp_name(final, _NEW), dir=final.parent))
    try:
        yield new
        _swap_in(new, final)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
