"""Each grid point trained once across sweep processes: a lease file (`lease.json`) in the run folder.

- `acquire` creates `lease.json` exclusively (a hard link of a written temp file, which fails when the name
  exists; O_CREAT|O_EXCL where links are not allowed): of several processes, exactly one creates it. Its
  content: `owner` (hostname:pid:uuid, unique per lease) and `expires_at` (wall-clock seconds, now + ttl).
- The holder renews it every ttl/4 from a daemon thread (`Lease.start_renewing`) and removes it when the run's
  record is written or the run fails (`Lease.release`).
- A lease whose `expires_at` has passed is presumed dead (a killed holder) and is taken over. Two takers racing
  for one stale lease: each must first create `.lease-takeover-<stale owner's uuid>` exclusively, so exactly one
  wins; the winner checks that `lease.json` is still that stale lease, replaces it with its own and removes the
  marker. A marker left by a taker killed in that millisecond is cleared after ttl.
- Hosts sharing a results folder must agree on the time to well within ttl (`expires_at` is wall-clock).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LEASE_FILE = "lease.json"
_MARKER_PREFIX = ".lease-takeover-"


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _content(owner: str, ttl_s: float) -> bytes:
    return json.dumps({"owner": owner, "expires_at": time.time() + ttl_s, "ttl_s": ttl_s}).encode()


def read(folder: Path, ttl_s: float) -> dict[str, Any] | None:
    """The lease in `folder` ({owner, expires_at, key}), or None when there is none. A file that cannot be parsed
    (a holder killed between creating and writing it) counts as held until its mtime + ttl_s."""
    path = Path(folder) / LEASE_FILE
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        owner, expires_at = str(data["owner"]), float(data["expires_at"])
    except (ValueError, KeyError, TypeError):
        owner, expires_at = "unknown (unreadable lease)", st.st_mtime + ttl_s
        return {"owner": owner, "expires_at": expires_at, "key": f"ino{st.st_ino}-{st.st_mtime_ns}"}
    return {"owner": owner, "expires_at": expires_at, "key": owner.rsplit(":", 1)[-1]}


def live_holder(folder: Path, ttl_s: float) -> str | None:
    """The owner of an unexpired lease in `folder`, else None."""
    cur = read(folder, ttl_s)
    return cur["owner"] if cur is not None and cur["expires_at"] > time.time() else None


@dataclass
class Lease:
    folder: Path
    owner: str
    ttl_s: float
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        return self.folder / LEASE_FILE

    def renew(self) -> bool:
        """Push expires_at to now + ttl. False (and no write) when the file is no longer this lease's."""
        cur = read(self.folder, self.ttl_s)
        if cur is None or cur["owner"] != self.owner:
            return False
        _replace_with(self.path, _content(self.owner, self.ttl_s))
        return True

    def start_renewing(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.ttl_s / 4):
                try:
                    if not self.renew():
                        log.warning("lease on %s lost (taken over after it expired); training goes on", self.folder)
                        return
                except OSError as exc:  # a full disk, a network file system hiccup: try again next time
                    log.warning("could not renew the lease on %s: %s", self.folder, exc)

        self._thread = threading.Thread(target=loop, name=f"lease-{self.folder.name}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and remove the lease file if it is still this lease's."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        cur = read(self.folder, self.ttl_s)
        if cur is not None and cur["owner"] == self.owner:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _temp_with(path: Path, data: bytes) -> Path:
    """`data` in a fresh, fsynced temp file beside `path`. The name is unique per call (pid and a random part):
    threads of one process race for the same lease in the tests, and a shared name would mix their writes."""
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return tmp


def _replace_with(path: Path, data: bytes) -> None:
    tmp = _temp_with(path, data)
    try:
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _create(path: Path, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists; True when this call created it. The content is written to a
    temp file first and hard-linked into place (atomic and exclusive, on NFS too), so no reader ever sees it
    empty; where hard links are not allowed, O_CREAT|O_EXCL and then the write."""
    tmp = _temp_with(path, data)
    try:
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system
            pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def acquire(folder: Path, ttl_s: float, owner: str | None = None) -> Lease | str:
    """Take the lease on `folder` (which must exist): a Lease, or the owner string of the live lease held by
    someone else. An expired lease is taken over; of racing takers exactly one gets it."""
    folder = Path(folder)
    owner = owner or new_owner()
    path = folder / LEASE_FILE
    for _ in range(100):  # each pass ends in a decision unless the file changes under us
        if _create(path, _content(owner, ttl_s)):
            return Lease(folder, owner, ttl_s)
        cur = read(folder, ttl_s)
        if cur is None:
            continue  # released meanwhile: try to create it again
        if cur["expires_at"] > time.time():
            return cur["owner"]
        marker = folder / f"{_MARKER_PREFIX}{cur['key']}"
        if not _create(marker, owner.encode()):
            _clear_stale_marker(marker, ttl_s)
            return cur["owner"]  # another taker is taking this stale lease over
        try:
            again = read(folder, ttl_s)
            if again is None:
                continue  # the stale file went (its holder woke up and released): create it afresh
            if again["key"] != cur["key"] or again["expires_at"] > time.time():
                return again["owner"]  # renewed by its holder, or already taken over
            _replace_with(path, _content(owner, ttl_s))
            log.warning("took over %s: the lease of %s expired", folder, cur["owner"])
            return Lease(folder, owner, ttl_s)
        finally:
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()
    raise RuntimeError(f"could not settle the lease on {folder}")  # pragma: no cover


def _clear_stale_marker(marker: Path, ttl_s: float) -> None:
    """A takeover marker older than ttl belongs to a taker killed mid-takeover: remove it so a later pass can
    take the stale lease over (renamed first, so of several clearers only one removes it)."""
    try:
        if time.time() - marker.stat().st_mtime <= ttl_s:
            return
        gone = marker.with_name(f"{marker.name}.gone-{uuid.uuid4().hex[:8]}")
        os.rename(marker, gone)
        gone.unlink()
    except FileNotFoundError:
        pass
