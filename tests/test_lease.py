"""Each grid point trained once across sweep processes (sweep/lease.py), and Ctrl-C during a sweep."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sweep import lease
from tests.conftest import REPO, TINY, run_cli


def _expire(folder: Path) -> None:
    path = folder / lease.LEASE_FILE
    data = json.loads(path.read_text())
    data["expires_at"] = time.time() - 1
    path.write_text(json.dumps(data))


def test_take_and_release(tmp_path):
    held = lease.acquire(tmp_path, ttl_s=60)
    assert isinstance(held, lease.Lease)
    data = json.loads((tmp_path / lease.LEASE_FILE).read_text())
    assert data["owner"] == held.owner and data["expires_at"] > time.time() + 50
    host, pid, _ = held.owner.split(":")
    assert int(pid) == os.getpid() and host
    held.release()
    assert not (tmp_path / lease.LEASE_FILE).exists()


def test_a_live_lease_is_not_taken(tmp_path):
    held = lease.acquire(tmp_path, ttl_s=60)
    other = lease.acquire(tmp_path, ttl_s=60)
    assert other == held.owner  # the holder's name, not a lease
    assert lease.live_holder(tmp_path, 60) == held.owner
    held.release()
    again = lease.acquire(tmp_path, ttl_s=60)
    assert isinstance(again, lease.Lease) and again.owner != held.owner


def test_renewal_keeps_a_lease_alive_past_its_ttl(tmp_path):
    held = lease.acquire(tmp_path, ttl_s=0.4)
    assert isinstance(held, lease.Lease)
    held.start_renewing()
    try:
        time.sleep(1.0)  # 2.5 ttl: only renewal (every ttl/4) keeps it live
        assert lease.acquire(tmp_path, ttl_s=0.4) == held.owner
    finally:
        held.release()
    assert not (tmp_path / lease.LEASE_FILE).exists()


def test_an_expired_lease_is_taken_over_and_its_old_holder_stops_renewing(tmp_path):
    old = lease.acquire(tmp_path, ttl_s=0.3)
    assert isinstance(old, lease.Lease)
    time.sleep(0.4)  # not renewed: expired
    assert lease.live_holder(tmp_path, 0.3) is None
    new = lease.acquire(tmp_path, ttl_s=60)
    assert isinstance(new, lease.Lease) and new.owner != old.owner
    assert old.renew() is False  # the old holder sees it lost the lease and writes nothing
    old.release()  # ... and its release leaves the new holder's lease alone
    assert lease.live_holder(tmp_path, 60) == new.owner
    assert not list(tmp_path.glob(".lease-takeover-*"))


def test_an_unreadable_lease_counts_as_held_until_its_mtime_plus_ttl(tmp_path):
    (tmp_path / lease.LEASE_FILE).write_text("")  # a holder killed between creating and writing it
    assert lease.acquire(tmp_path, ttl_s=60).startswith("unknown")
    old = time.time() - 120
    os.utime(tmp_path / lease.LEASE_FILE, (old, old))
    assert isinstance(lease.acquire(tmp_path, ttl_s=60), lease.Lease)


@pytest.mark.parametrize("stale", [False, True], ids=["free", "expired"])
def test_racing_takers_exactly_one_wins(tmp_path, stale):
    """Many threads race for one point, free or held by a dead holder, over many rounds: one winner each time."""
    for round_ in range(30):
        folder = tmp_path / str(round_)
        folder.mkdir()
        if stale:
            dead = lease.acquire(folder, ttl_s=60)
            assert isinstance(dead, lease.Lease)
            _expire(folder)
        barrier = threading.Barrier(8)
        results: list[object] = []

        def take(folder=folder, barrier=barrier, results=results) -> None:
            barrier.wait()
            results.append(lease.acquire(folder, ttl_s=60))

        threads = [threading.Thread(target=take) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [r for r in results if isinstance(r, lease.Lease)]
        assert len(winners) == 1, results
        assert lease.live_holder(folder, 60) == winners[0].owner
        # a loser names the winner, or (a takeover it saw under way) the dead holder
        allowed = {winners[0].owner, dead.owner} if stale else {winners[0].owner}
        assert all(r in allowed for r in results if not isinstance(r, lease.Lease)), results


_RACE = """
import sys, time
from sweep import lease
folder, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    pass
r = lease.acquire(folder, ttl_s=60)
print("WON" if isinstance(r, lease.Lease) else "LOST")
"""


def test_racing_processes_exactly_one_takes_over_an_expired_lease(tmp_path):
    for round_ in range(3):
        folder = tmp_path / str(round_)
        folder.mkdir()
        dead = lease.acquire(folder, ttl_s=60)
        assert isinstance(dead, lease.Lease)
        _expire(folder)
        start = time.time() + 3
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _RACE, str(folder), str(start)], cwd=REPO, stdout=subprocess.PIPE, text=True
            )
            for _ in range(4)
        ]
        outs = [p.communicate(timeout=60)[0].strip() for p in procs]
        assert sorted(outs) == ["LOST"] * 3 + ["WON"], outs


def test_run_job_skips_a_point_another_process_is_training(tmp_path, make_cfg):
    from sweep.run import run_job

    cfg = make_cfg(*TINY, f"results_dir={tmp_path}")
    out = tmp_path / "point"
    out.mkdir()
    other = lease.acquire(out, ttl_s=60, owner="otherhost:1:abc")
    assert isinstance(other, lease.Lease)
    rec = run_job(cfg, out)
    assert rec["status"] == "leased" and rec["owner"] == "otherhost:1:abc"
    assert not (out / "run.json").exists()
    _expire(out)  # its holder died: the point is taken over and trained
    rec = run_job(cfg, out)
    assert rec["status"] == "complete" and (out / "run.json").exists()
    assert not (out / lease.LEASE_FILE).exists()  # released once the record is written


def test_run_job_releases_its_lease_when_the_run_fails(tmp_path, make_cfg, monkeypatch):
    from sweep.run import run_job

    monkeypatch.setenv("RNN_SWEEP_FAIL_IF", "point")
    out = tmp_path / "point"
    rec = run_job(make_cfg(*TINY, f"results_dir={tmp_path}"), out)
    assert rec["status"] == "failed"
    assert not (out / lease.LEASE_FILE).exists()


def _sweep_args(results: Path, seeds: str) -> list[str]:
    return [
        "-m",
        *TINY,
        "budget=seconds",
        "budget.amount=1",
        "threads=1",
        "hydra/launcher=basic",
        f"seed={seeds}",
        f"results_dir={results}",
    ]


def _sigint_default() -> None:
    """A job started in the background by a non-interactive shell (nohup, `cmd &` in CI) inherits SIGINT
    ignored, and Python then never turns Ctrl-C into KeyboardInterrupt: give the sweep a terminal's default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _popen(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen(
        [sys.executable, "-m", "sweep", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_default,
    )


@pytest.mark.slow
def test_three_processes_on_one_grid_train_each_point_once(tmp_path):
    seeds = ",".join(str(s) for s in range(8))
    t0 = time.perf_counter()
    single = run_cli(*_sweep_args(tmp_path / "single", seeds), timeout=600)
    single_s = time.perf_counter() - t0
    assert single.returncode == 0, single.stderr

    t0 = time.perf_counter()
    procs = [_popen(_sweep_args(tmp_path / "shared", seeds)) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    shared_s = time.perf_counter() - t0
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]

    trained: dict[str, list[int]] = {}
    skipped = 0
    for i, (out, err) in enumerate(outs):
        text = out + err
        for folder in re.findall(r"\] train (\S+) \(lease ", text):
            trained.setdefault(Path(folder).name, []).append(i)
        skipped += len(re.findall(r"skip \S+: being trained by \S+:\d+:\w+", text))
    folders = sorted(p.parent.name for p in (tmp_path / "shared").rglob("run.json"))
    assert len(folders) == 8
    assert sorted(trained) == folders
    assert all(len(v) == 1 for v in trained.values()), trained  # each point trained by exactly one process
    assert len({i for v in trained.values() for i in v}) >= 2  # the work was shared
    assert skipped >= 1
    assert not list((tmp_path / "shared").rglob(lease.LEASE_FILE))
    assert shared_s < 2 * single_s, (shared_s, single_s)


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line_and_a_rerun_completes(tmp_path):
    results = tmp_path / "results"
    args = _sweep_args(results, "0,1,2,3")
    proc = _popen(args)
    deadline = time.time() + 300
    while not list(results.rglob("run.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    m = re.fullmatch(
        r"interrupted: (\d) of 4 points complete, (\d) not started \(rerun the same command to resume\)", lines[0]
    )
    assert m, lines[0]
    done, not_started = int(m.group(1)), int(m.group(2))
    assert 1 <= done < 4 and done + not_started <= 4
    assert not list(results.rglob(lease.LEASE_FILE))  # the interrupted job released its lease

    rerun = run_cli(*args, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert len(list(results.rglob("run.json"))) == 4
    assert rerun.stdout.count("] train ") == 4 - done  # only what was missing


# ------------------------------------------------------------------- holders on this host that are gone
_HOLD_AND_DIE = """
import os, sys
from sweep import lease
r = lease.acquire(sys.argv[1], ttl_s=600)
assert isinstance(r, lease.Lease)
print(r.owner, flush=True)
os._exit(0)  # as a SIGKILL would: no release
"""


def _dead_holder(folder: Path) -> str:
    proc = subprocess.run([sys.executable, "-c", _HOLD_AND_DIE, str(folder)], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)  # fmt: skip
    return proc.stdout.strip()


def _rewrite(folder: Path, **fields) -> None:
    path = folder / lease.LEASE_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def test_a_lease_records_host_pid_start_time_and_boot(tmp_path):
    held = lease.acquire(tmp_path, ttl_s=60)
    data = json.loads((tmp_path / lease.LEASE_FILE).read_text())
    assert data["host"] == held.owner.split(":")[0] and data["pid"] == os.getpid()
    if Path("/proc/self/stat").exists():
        assert isinstance(data["start"], int) and data["boot_id"]
    assert lease.holder_gone(lease.read(tmp_path, 60)) is False  # this process is alive
    held.release()


def test_the_lease_of_a_process_gone_from_this_host_is_taken_over_at_once(tmp_path):
    dead = _dead_holder(tmp_path)
    cur = lease.read(tmp_path, 600)
    assert cur["owner"] == dead and cur["expires_at"] > time.time() + 500  # far from expiring
    assert lease.live_holder(tmp_path, 600) is None
    new = lease.acquire(tmp_path, ttl_s=600)
    assert isinstance(new, lease.Lease) and new.owner != dead
    assert not list(tmp_path.glob(".lease-takeover-*"))


def test_a_reused_pid_is_not_taken_for_the_holder(tmp_path):
    """The pid lives (it is this test's), but its process started at another time than the lease's holder."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc: start times cannot be read")
    held = lease.acquire(tmp_path, ttl_s=600)
    assert lease.acquire(tmp_path, ttl_s=600) == held.owner
    _rewrite(tmp_path, start=json.loads((tmp_path / lease.LEASE_FILE).read_text())["start"] - 1)
    assert lease.live_holder(tmp_path, 600) is None
    assert isinstance(lease.acquire(tmp_path, ttl_s=600), lease.Lease)


def test_a_lease_from_before_a_reboot_is_taken_over(tmp_path):
    if not Path("/proc/sys/kernel/random/boot_id").exists():
        pytest.skip("no boot id here")
    held = lease.acquire(tmp_path, ttl_s=600)
    _rewrite(tmp_path, boot_id="another-boot")
    assert isinstance(lease.acquire(tmp_path, ttl_s=600), lease.Lease)
    assert held.renew() is False


def test_a_killed_holder_not_yet_reaped_is_gone(tmp_path):
    """A zombie still answers os.kill(pid, 0); its parent has not waited for it yet, but it trains no more."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc: process states cannot be read")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lease.acquire(tmp_path, ttl_s=600, owner=f"{socket.gethostname()}:{proc.pid}:abc")
        _rewrite(tmp_path, start=lease._proc_stat(proc.pid)[1])  # the lease the child would have written
        assert lease.live_holder(tmp_path, 600) is not None
        proc.kill()
        deadline = time.time() + 10
        while lease._proc_stat(proc.pid)[0] != "Z" and time.time() < deadline:
            time.sleep(0.01)
        assert lease.live_holder(tmp_path, 600) is None
    finally:
        proc.kill()
        proc.wait()


def test_a_dead_pid_on_another_host_keeps_the_ttl_rule(tmp_path):
    dead = _dead_holder(tmp_path)
    _rewrite(tmp_path, host="another-host", owner="another-host:" + dead.split(":", 1)[1])
    assert lease.acquire(tmp_path, ttl_s=600).startswith("another-host:")
    _expire(tmp_path)
    assert isinstance(lease.acquire(tmp_path, ttl_s=600), lease.Lease)


def test_a_takeover_marker_of_a_taker_gone_from_this_host_is_cleared_at_once(tmp_path):
    _dead_holder(tmp_path)
    key = lease.read(tmp_path, 600)["key"]
    (tmp_path / "elsewhere").mkdir()
    marker_owner = _dead_holder(tmp_path / "elsewhere")  # a marker holds its taker's lease content
    marker = tmp_path / f".lease-takeover-{key}"
    os.replace(tmp_path / "elsewhere" / lease.LEASE_FILE, marker)  # what a taker killed mid-takeover leaves
    assert json.loads(marker.read_text())["owner"] == marker_owner
    first = lease.acquire(tmp_path, ttl_s=600)  # sees the marker, clears it (its taker is gone)
    assert not marker.exists()
    won = first if isinstance(first, lease.Lease) else lease.acquire(tmp_path, ttl_s=600)
    assert isinstance(won, lease.Lease)


def _run_dir(results: Path, *overrides: str) -> Path:
    """A single run's folder, as conf/config.yaml names it (Hydra sorts the overrides; some keys are left out)."""
    kept = sorted(o for o in overrides if o.split("=", 1)[0] not in ("results_dir", "name", "threads"))
    return results / "default" / ",".join(kept)


def test_a_single_run_whose_point_a_live_process_holds_exits_75_in_one_line(tmp_path):
    results = tmp_path / "results"
    args = [*TINY, f"results_dir={results}"]
    folder = _run_dir(results, *args)
    folder.mkdir(parents=True)
    held = lease.acquire(folder, ttl_s=600)  # this test process: alive
    try:
        proc = run_cli(*args, timeout=120)
    finally:
        held.release()
    assert proc.returncode == 75, (proc.stdout[-2000:], proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [
        f"not run: {folder} is being trained by {held.owner} (its lease.json); rerun the same command once that "
        "process has ended"
    ]
    assert not (folder / "run.json").exists()
    rerun = run_cli(*args, timeout=120)  # the holder has ended: the run trains
    assert rerun.returncode == 0, rerun.stderr
    assert (folder / "run.json").exists()


def test_taking_a_lease_removes_what_killed_writers_and_takers_left(tmp_path):
    (tmp_path / "x").mkdir()
    dead_pid = int(_dead_holder(tmp_path / "x").split(":")[1])
    host = socket.gethostname()
    killed_write = tmp_path / f".{lease.LEASE_FILE}.new-{host}-{dead_pid}-deadbeef"
    live_write = tmp_path / f".{lease.LEASE_FILE}.new-{host}-{os.getpid()}-cafecafe"  # a write under way
    old_marker = tmp_path / ".lease-takeover-0123456789ab"
    for p in (killed_write, live_write, old_marker):
        p.write_text("{}")
    held = lease.acquire(tmp_path, ttl_s=600)
    assert isinstance(held, lease.Lease)
    assert not killed_write.exists() and not old_marker.exists() and live_write.exists()
