"""hydra/launcher=forkserver: every job a fork of one server that imported torch once; a job's process that dies
is a failed job and the sweep goes on; Ctrl-C sent to the sweep alone still stops every job cleanly; the server
never outlives the sweep. (The same records as the other launchers: tests/test_launchers.py.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from sweep import forkserver, lease
from sweep.argv import sweeps_on_forkserver
from tests.conftest import REPO, TINY, processes_with, run_cli, tagged_env

pytestmark = pytest.mark.skipif(not forkserver.available(), reason="this platform has no forkserver start method")
N_JOBS_RULE = "must be a positive number of jobs at once, or -1 for one per usable CPU"
TARGET = "hydra_plugins.rnn_sweep_launcher.forkserver_launcher.ForkserverLauncher"


def forkserver_impl():
    from hydra_plugins.rnn_sweep_launcher import _impl

    return _impl


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as in a terminal, also when CI runs pytest in the background


# ------------------------------------------------------------------------------------------------ fast
def test_the_private_multiprocessing_names_it_relies_on_exist():
    from multiprocessing import forkserver as mp_forkserver

    server = mp_forkserver._forkserver
    assert hasattr(server, "_forkserver_pid") and callable(server._stop)
    assert callable(mp_forkserver.ensure_running)


def test_which_command_lines_start_the_server_before_hydra_composes():
    assert sweeps_on_forkserver(["-m", "batch_size=1,4"])
    assert sweeps_on_forkserver(["experiment=smoke"])  # every preset is a sweep
    assert sweeps_on_forkserver(["--multirun", "hydra/launcher=forkserver", "seed=0,1"])
    assert not sweeps_on_forkserver(["batch_size=4"])  # a single run launches nothing
    assert not sweeps_on_forkserver(["-m", "hydra/launcher=joblib", "seed=0,1"])
    assert not sweeps_on_forkserver(["-m", "seed=0,1", "hydra.sweeper.dry_run=true"])
    assert not sweeps_on_forkserver(["experiment=smoke", "--help"])
    assert not sweeps_on_forkserver(["-m", "seed=0,1", "--cfg", "job"])


def test_an_unclaimed_server_is_stopped_and_a_claimed_one_kept():
    """The entry point guesses; a sweeper whose launcher is another one stops the guess at once."""
    code = """
import os, sys
from sweep import forkserver
assert forkserver.start()
pid = forkserver.server_pid()
forkserver.stop_unclaimed()
try:
    os.kill(pid, 0)
    print("alive")
except ProcessLookupError:
    print("stopped")
forkserver.start()
ctx = forkserver.claim()
pid = forkserver.server_pid()
forkserver.stop_unclaimed()
os.kill(pid, 0)
print("kept", ctx.get_start_method())
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["stopped", "kept", "forkserver"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hydra.launcher.n_jobs=0", "hydra.launcher.n_jobs=0: " + N_JOBS_RULE),
        ("hydra.launcher.n_jobs=-2", "hydra.launcher.n_jobs=-2: " + N_JOBS_RULE),
        ("hydra.launcher.start_method=fork", "hydra.launcher.start_method='fork': must be one of forkserver, spawn"),
    ],
)
def test_bad_launcher_settings_get_one_line_exit_2_and_no_folder(tmp_path, override, message):
    tag = uuid.uuid4().hex
    results = tmp_path / "results"
    # output to files, not pipes: the test sees the sweep's own exit, not the moment the last holder of its
    # output ends (a fork server left running would hold them)
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sweep", "-m", "seed=0,1", f"results_dir={results}", override, *TINY],
            cwd=REPO, env=tagged_env(tag), stdout=out, stderr=err,
        )  # fmt: skip
        assert proc.wait(timeout=120) == 2
    # the fork server the entry point started for this -m command ended with it: killed, not left to finish
    # importing torch (~1.5 s) while it holds the caller's stdout and stderr
    deadline = time.monotonic() + 0.5
    while processes_with(tag) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert processes_with(tag) == []
    lines = [ln for ln in (tmp_path / "err").read_text().splitlines() if ln.strip()]
    assert lines == [f"invalid config: {message}"]
    assert not results.exists()


# ------------------------------------------------------------------------------------------------ slow
@pytest.mark.slow
def test_jobs_are_forks_of_one_warm_server_and_it_ends_with_the_sweep(tmp_path):
    tag = uuid.uuid4().hex
    proc = subprocess.run(
        [sys.executable, "-m", "sweep", "-m", "model=rnn,gru,lstm", f"results_dir={tmp_path}", "name=f",
         "hydra.launcher.n_jobs=2", *TINY],
        cwd=REPO, env=tagged_env(tag), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "launching 3 jobs, 2 at once (forkserver)" in proc.stdout + proc.stderr
    assert processes_with(tag) == []  # server and jobs ended when the sweep did
    recs = [json.loads(p.read_text()) for p in (tmp_path / "f").glob("*/run.json")]
    assert len(recs) == 3 and {r["status"] for r in recs} == {"complete"}
    for rec in recs:
        env = rec["env"]
        assert env["launcher"] == TARGET and env["parallel_jobs"] == 2
        assert env["warmed_worker"] is True  # imported by the server, before the job was forked
        assert "model=rnn,gru,lstm" in env["argv"]  # the sweep's command line, not the server's
    owners = re.findall(r"\] train \S+ \(lease ([^)]+)\)", proc.stdout + proc.stderr)
    pids = {owner.split(":")[1] for owner in owners}
    assert len(owners) == 3 and len(pids) == 3  # a process of its own for every job


@pytest.mark.slow
def test_a_job_whose_process_is_killed_fails_alone_and_its_point_is_run_again(tmp_path):
    """A job killed from outside (out of memory, a user's kill -9) is reported and the sweep goes on; its lease
    ends with no record, so the sweep runs that point again and the grid ends complete."""
    results = tmp_path / "results"
    victim = "model=lstm"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep", "-m", "model=rnn,lstm", f"results_dir={results}", "name=k",
         "hydra.launcher.n_jobs=2", "lease.ttl_s=3", *TINY, "budget.amount=400"],
        cwd=REPO, env=tagged_env(uuid.uuid4().hex), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.time() + 240
    killed = None
    while killed is None and time.time() < deadline and proc.poll() is None:
        for folder in (results / "k").glob(f"*{victim}*"):
            held = lease.read(folder, 3.0)
            if held is not None and not (folder / "run.json").exists():
                killed = int(held["owner"].split(":")[1])
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.02)
    assert killed is not None, "the job to kill never started"
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert re.search(rf"job job-\d+ \({victim}[^)]*\) ended without a result: killed by SIGKILL", out), out[-3000:]
    assert "stopped without a record: running them here" in out
    recs = {p.parent.name: json.loads(p.read_text()) for p in (results / "k").glob("*/run.json")}
    assert len(recs) == 2 and {r["status"] for r in recs.values()} == {"complete"}
    assert not list((results / "k").rglob(lease.LEASE_FILE))


@pytest.mark.slow
def test_ctrl_c_sent_to_the_sweep_alone_stops_every_job_cleanly(tmp_path):
    """SIGINT to the sweep's own process only (a terminal's Ctrl-C reaches every process; `kill -INT <pid>` does
    not): the launcher forwards it once to each running job, which stops at once and releases its lease; exit 130,
    one line. The jobs would train for minutes: only the forwarded interrupt ends them in time."""
    tag = uuid.uuid4().hex
    results = tmp_path / "results"
    args = ["-m", "seed=0,1,2,3", f"results_dir={results}", "name=c", "hydra.launcher.n_jobs=2", *TINY,
            "budget.amount=10000000"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep", *args], cwd=REPO, env=tagged_env(tag), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default,
    )  # fmt: skip
    deadline = time.time() + 240
    while len(list(results.rglob(lease.LEASE_FILE))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert time.monotonic() - t0 < forkserver_impl().INTERRUPT_GRACE_S  # the jobs stopped; none had to be killed
    assert proc.returncode == 130, (out[-2000:], err[-2000:])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == ["interrupted: 0 of 4 points complete, 2 not started (rerun the same command to resume)"], err
    assert not list(results.rglob(lease.LEASE_FILE))  # each interrupted job released its lease
    assert not list(results.rglob("run.json"))
    assert processes_with(tag) == []


def test_spawn_start_method_runs_jobs_too(tmp_path):
    """start_method=spawn (what platforms without forkserver get): fresh interpreters, same records."""
    proc = run_cli("-m", "model=rnn", "seed=0,1", f"results_dir={tmp_path}", "name=s",
                   "hydra.launcher.start_method=spawn", "hydra.launcher.n_jobs=2", *TINY, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at once (spawn)" in proc.stdout + proc.stderr
    recs = [json.loads(p.read_text()) for p in (tmp_path / "s").glob("*/run.json")]
    assert len(recs) == 2 and {r["status"] for r in recs} == {"complete"}
