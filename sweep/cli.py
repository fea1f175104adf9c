"""The thin Hydra entry point: check that results_dir is writable, compose the config, hand it to `run_job`."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sweep import errors, forkserver, stop
from sweep.argv import CFG_FLAGS, MULTIRUN_FLAGS, no_precheck
from sweep.config import ConfigError, register_configs
from sweep.record import run_dirname

# Importing this module registers the config schema and the resolver (tests and the bench compose configs with
# them) and patches nothing: the one-line error handler is installed by `main`, the entry point.
register_configs()
if not OmegaConf.has_resolver("run_dirname"):
    OmegaConf.register_new_resolver("run_dirname", run_dirname)

# An installed wheel ships the repository's conf/ as the package sweep.conf (setup.py); a checkout (python -m sweep,
# an editable install) reads conf/ at the top of the repository.
_HERE = Path(__file__).resolve().parent
CONF_DIR = str(_HERE / "conf" if (_HERE / "conf").is_dir() else _HERE.parent / "conf")


def parallel_jobs_of(hc) -> tuple[int, str | None]:
    """How many jobs run at once on this machine (each takes cores // n torch threads), and the launcher."""
    from sweep.plan import launcher_parallelism

    launcher = hc.launcher.get("_target_", None)
    if hc.mode != RunMode.MULTIRUN:
        return 1, launcher
    return launcher_parallelism(hc.launcher, hc.sweeper.get("max_batch_size", None)), launcher


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> str:
    from sweep.run import run_job  # here, not at the top: the sweep's parent process never trains

    hc = HydraConfig.get()
    n_jobs, launcher = parallel_jobs_of(hc)
    try:
        rec = run_job(cfg, Path(hc.runtime.output_dir), parallel_jobs=n_jobs, launcher=launcher)
    except ConfigError as exc:
        if hc.mode == RunMode.MULTIRUN:  # the sweeper validated the grid; the launcher reports this job failed
            raise
        # A single run exits here, so Hydra does not add its "Error executing job" line to the one-line error.
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(errors.EXIT_BAD_INPUT) from None
    except stop.Stopped as exc:
        if hc.mode == RunMode.MULTIRUN:  # the launcher and the sweeper report the stop of the whole sweep
            raise
        sys.stderr.write(f"{exc.line or f'stopped by {stop.signal_name(exc.signum)}'}\n")
        raise SystemExit(stop.exit_status(exc.signum)) from None
    if rec["status"] == "leased" and hc.mode == RunMode.RUN:  # never exit 0 with nothing trained
        sys.stderr.write(
            f"not run: {hc.runtime.output_dir} is being trained by {rec['owner']} (its lease.json); rerun the same "
            "command once that process has ended\n"
        )
        raise SystemExit(errors.EXIT_LEASED)
    if rec["status"] == "failed" and hc.mode == RunMode.RUN:
        raise errors.RunFailed(f"run failed: {rec['error']} (record in {hc.runtime.output_dir})")
    return rec["status"]


def check_results_dir(results_dir: str) -> None:
    """Raise ConfigError unless `results_dir` can be created and written: make it (and its missing parents), write
    and delete a probe file, then remove the folders this made, so a failed or successful check leaves nothing.
    A folder made or removed meanwhile by another sweep starting on the same results_dir is retried, not refused."""
    path = Path(results_dir).expanduser()
    for attempt in range(3):
        error, existing = _probe_folder(path)
        if error is None:
            return
        if not isinstance(error, (FileNotFoundError, FileExistsError)) or attempt == 2:
            break
    reason = error.strerror or type(error).__name__
    if not existing.is_dir():
        reason += f": {str(existing)!r} is a file, not a folder"
    elif error.filename and Path(error.filename) != path and Path(error.filename).parent != path:
        reason += f": {error.filename!r}"
    raise ConfigError(
        f"invalid config: results_dir={results_dir!r}: must be a folder that can be created and written ({reason})"
    )


def _probe_folder(path: Path) -> tuple[OSError | None, Path]:
    """Try to make `path` and write a file in it, then undo both: the error, if any, and the nearest existing
    folder above (or at) `path`."""
    missing: list[Path] = []
    made: list[Path] = []
    probe = path / f".rnn-sweep-write-probe-{os.getpid()}"
    existing = path
    try:
        for existing in [path, *path.parents]:
            if existing.exists() or existing.is_symlink():
                break
            missing.append(existing)
        for folder in reversed(missing):
            folder.mkdir()
            made.append(folder)
        with open(probe, "wb") as f:
            f.write(b"probe")
        probe.unlink()
        return None, existing
    except OSError as exc:
        return exc, existing
    finally:
        if probe.parent.is_dir():
            probe.unlink(missing_ok=True)
        for folder in reversed(made):  # innermost first; a folder something else wrote into meanwhile stays
            try:
                folder.rmdir()
            except OSError:
                break


def _results_dirs_from_argv(argv: list[str]) -> list[str]:
    """The results_dir values this command line will write to (the composed config's, or each swept value);
    empty when they cannot be known here, so Hydra reports any problem with the command line itself.

    A single run's config is validated here too (sweep/config.py's `validate`, which run_job repeats), because
    Hydra makes the run folder before the run starts: a bad value, a `name` that would leave results_dir above
    all, then writes nothing. A sweep's points are validated by its sweeper before anything is written."""
    if no_precheck(argv):  # nothing runs (a dry run writes nothing, not even a probe), or another config
        return []
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from sweep.config import validate

    overrides = [a for a in argv if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        swept = [o for o in parsed if o.is_sweep_override()]
        values = [v for o in swept if o.key_or_group == "results_dir" for v in o.sweep_string_iterator()]
        fixed = [a for a, o in zip(overrides, parsed, strict=True) if not o.is_sweep_override()]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=fixed)
        if not values:
            values = [str(OmegaConf.select(cfg, "results_dir", throw_on_resolution_failure=True))]
    except Exception:  # bad input of any other kind: Hydra's own composition reports it, in one line
        return []
    if not swept and not any(a in MULTIRUN_FLAGS for a in argv) and not any(a.startswith("experiment=") for a in argv):
        validate(cfg)  # a single run (every preset is a sweep): ConfigError, one line, before Hydra writes
    return values


def check_flags(argv: list[str]) -> None:
    """Flag combinations Hydra refuses with a traceback, as one line saying what to use instead."""
    flags = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
    if flags & set(MULTIRUN_FLAGS) and flags & set(CFG_FLAGS):
        raise ConfigError(
            "invalid command line: -m/--multirun cannot be combined with --cfg: to preview a grid, add "
            "hydra.sweeper.dry_run=true to the -m command; to see one point's config, drop -m"
        )


def main() -> None:
    """`python -m sweep` and `rnn-sweep`: one-line errors, refuse an unwritable results_dir in one line before Hydra
    makes any folder, then run. A sweep's fork server starts first, so that its imports overlap all of that."""
    forkserver.start_for(sys.argv[1:])  # no-op when sweep/__main__.py started it already
    errors.install()
    # SIGTERM outside a job (composing, planning, a sweep's parent waiting on its jobs) stops at once: nothing to
    # save there, and the launcher forwards it to the running jobs, which checkpoint first (sweep/stop.py)
    stop.raise_on(signal.SIGTERM)
    try:
        check_flags(sys.argv[1:])
        for results_dir in _results_dirs_from_argv(sys.argv[1:]):
            check_results_dir(results_dir)
    except ConfigError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(errors.EXIT_BAD_INPUT) from None
    try:
        hydra_main()
    except stop.Stopped as exc:  # a stop no sweeper reported (while composing, or under another sweeper)
        sys.stderr.write(f"stopped by {stop.signal_name(exc.signum)} (rerun the same command to resume)\n")
        raise SystemExit(stop.exit_status(exc.signum)) from None
