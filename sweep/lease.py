"""Each grid point trained once across sweep processes: a lease file (`lease.json`) in the run folder.

- `acquire` creates `lease.json` exclusively (a hard link of a written temp file, which fails when the name
  exists; O_CREAT|O_EXCL where links are not allowed): of several processes, exactly one creates it. Its
  content: `owner` (hostname:pid:uuid, unique per lease), `expires_at` (wall-clock seconds, now + ttl), and the
  holder's `host`, `pid`, `start` (its start time in clock ticks after boot, /proc/<pid>/stat field 22) and
  `boot_id` (/proc/sys/kernel/random/boot_id), the last two where /proc has them.
- The holder renews it every ttl/4 from a daemon thread (`Lease.start_renewing`) and removes it when the run's
  record is written, the run fails or is stopped (`Lease.release`).
- A lease is stale, and taken over, when its `expires_at` has passed (a holder killed on another host), or at once
  when its holder ran on this host and is gone: no process has its pid (`os.kill(pid, 0)`), or that pid is a
  zombie, or it now belongs to a process started at another time (pid reuse), or the machine rebooted since (another
  boot_id). A lease of another host, or one without these fields (an older version), keeps the ttl rule. Two
  takers racing for one stale lease: each must first create `.lease-takeover-<stale owner's uuid>` exclusively,
  so exactly one wins; the winner checks that `lease.json` is still that stale lease, replaces it with its own and
  removes the marker. A marker left by a taker killed in that millisecond is cleared at once when that taker ran
  on this host and is gone, else after ttl.
- Hosts sharing a results folder must agree on the time to well within ttl (`expires_at` is wall-clock) and have
  distinct host names (two containers with one host name and separate pid namespaces would each read the
  other's live holder as gone: give them distinct `--hostname`s).
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


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks after boot) of `pid` from /proc, or None where /proc cannot tell."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may itself hold spaces or ')': split after the last ')'
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _holder_fields(owner: str) -> dict[str, Any]:
    """Who holds a lease, for the same-host liveness check: host and pid (from the owner string, which holds the
    pid that made it), the process's start time and the boot it runs in."""
    parts = owner.split(":")
    if len(parts) != 3 or not parts[1].isdigit():
        return {}  # an owner named by hand (tests, tools): the ttl rule alone
    host, pid = parts[0], int(parts[1])
    stat = _proc_stat(pid)
    return {"host": host, "pid": pid, "start": stat[1] if stat else None, "boot_id": _boot_id()}


def _content(owner: str, ttl_s: float) -> bytes:
    body = {"owner": owner, "expires_at": time.time() + ttl_s, "ttl_s": ttl_s, **_holder_fields(owner)}
    return json.dumps(body).encode()


def holder_gone(lease: dict[str, Any]) -> bool:
    """Whether the holder named in a lease (or takeover marker) ran on this host and no longer runs. False when
    it cannot be told (another host, an older lease without pid): such a lease keeps the ttl rule."""
    pid = lease.get("pid")
    if lease.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    boot = _boot_id()
    if lease.get("boot_id") and boot and lease["boot_id"] != boot:
        return True  # rebooted since: every pid of that boot is gone, whatever now runs under the same number
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # a process of another user has that pid: compare start times below
    stat = _proc_stat(pid)
    if stat is None:
        return False  # no /proc (macOS): os.kill said it exists
    state, start = stat
    if state == "Z":
        return True  # killed, not yet reaped by its parent: it trains no more
    return lease.get("start") is not None and start != lease["start"]


def _stale(lease: dict[str, Any]) -> bool:
    return lease["expires_at"] <= time.time() or holder_gone(lease)


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
    holder = {k: data.get(k) for k in ("host", "pid", "start", "boot_id")}
    return {"owner": owner, "expires_at": expires_at, "key": owner.rsplit(":", 1)[-1], **holder}


def live_holder(folder: Path, ttl_s: float) -> str | None:
    """The owner of a lease in `folder` that is not stale (unexpired, its holder not known to be gone), else None."""
    cur = read(folder, ttl_s)
    return cur["owner"] if cur is not None and not _stale(cur) else None


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
    threads of one process race for the same lease in the tests, and a shared name would mix their writes; the
    host is in the name so that `_tidy` can tell a killed writer's file from a live one's."""
    tmp = path.with_name(f".{path.name}.new-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
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
    someone else. A stale lease (expired, or its holder on this host gone) is taken over; of racing takers exactly
    one gets it."""
    folder = Path(folder)
    owner = owner or new_owner()
    path = folder / LEASE_FILE
    for _ in range(100):  # each pass ends in a decision unless the file changes under us
        if _create(path, _content(owner, ttl_s)):
            _tidy(folder, ttl_s)
            return Lease(folder, owner, ttl_s)
        cur = read(folder, ttl_s)
        if cur is None:
            continue  # released meanwhile: try to create it again
        if not _stale(cur):
            return cur["owner"]
        marker = folder / f"{_MARKER_PREFIX}{cur['key']}"
        if not _create(marker, _content(owner, ttl_s)):
            _clear_stale_marker(marker, ttl_s)
            return cur["owner"]  # another taker is taking this stale lease over
        try:
            again = read(folder, ttl_s)
            if again is None:
                continue  # the stale file went (its holder woke up and released): create it afresh
            if again["key"] != cur["key"] or not _stale(again):
                return again["owner"]  # renewed by its holder, or already taken over
            _replace_with(path, _content(owner, ttl_s))
            _tidy(folder, ttl_s, keep=marker)
            why = "is no longer running" if holder_gone(again) else "let its lease expire"
            log.warning("took over %s: its holder %s %s", folder, cur["owner"], why)
            return Lease(folder, owner, ttl_s)
        finally:
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()
    raise RuntimeError(f"could not settle the lease on {folder}")  # pragma: no cover


def _tidy(folder: Path, ttl_s: float, keep: Path | None = None) -> None:
    """Just after taking the lease: remove what killed holders and takers left. A takeover marker names a lease
    that is no longer there (this one is new), so none is needed any more; a temp file of a lease write is a
    killed writer's when that writer ran on this host and is gone, or when it is older than ttl (a write takes
    milliseconds)."""
    host = socket.gethostname()
    for marker in folder.glob(f"{_MARKER_PREFIX}*"):
        if marker != keep:
            with contextlib.suppress(OSError):
                marker.unlink()
    for tmp in folder.glob(f".{LEASE_FILE}.new-*"):
        writer_host, _, pid = tmp.name[len(f".{LEASE_FILE}.new-") :].rpartition("-")[0].rpartition("-")
        try:
            gone = writer_host == host and pid.isdigit() and holder_gone({"host": host, "pid": int(pid)})
            if gone or time.time() - tmp.stat().st_mtime > ttl_s:
                tmp.unlink()
        except OSError:
            pass


def _marker_holder_gone(marker: Path) -> bool:
    try:
        return holder_gone(json.loads(marker.read_bytes()))
    except (OSError, ValueError, TypeError, AttributeError):  # gone meanwhile, or written by an older version
        return False


def _clear_stale_marker(marker: Path, ttl_s: float) -> None:
    """A takeover marker older than ttl, or whose taker on this host is gone, belongs to a taker killed
    mid-takeover: remove it so a later pass can take the stale lease over (renamed first, so of several clearers
    only one removes it)."""
    try:
        if time.time() - marker.stat().st_mtime <= ttl_s and not _marker_holder_gone(marker):
            return
        gone = marker.with_name(f"{marker.name}.gone-{uuid.uuid4().hex[:8]}")
        os.rename(marker, gone)
        gone.unlink()
    except FileNotFoundError:
        pass
