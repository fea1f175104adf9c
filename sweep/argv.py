"""What the entry point reads from the command line before Hydra parses it (standard library only: it runs
before Hydra or torch is imported)."""

from __future__ import annotations

# Flags after which Hydra does not run jobs (help, config dumps, completion) or composes another config.
NO_PRECHECK_FLAGS = ("-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info", "-sc",
                     "--shell-completion", "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir",
                     "--experimental-rerun", "-p", "--package")  # fmt: skip
MULTIRUN_FLAGS = ("-m", "--multirun")
CFG_FLAGS = ("-c", "--cfg")


def is_dry_run(argv: list[str]) -> bool:
    return any(a.lower() == "hydra.sweeper.dry_run=true" for a in argv)


def no_precheck(argv: list[str]) -> bool:
    """A command line that runs no job (help, a config dump, completion, a dry run) or composes another config."""
    return any(a.split("=", 1)[0] in NO_PRECHECK_FLAGS for a in argv) or is_dry_run(argv)


def sweeps_on_forkserver(argv: list[str]) -> bool:
    """Whether this command line looks like a sweep on the default launcher (hydra/launcher=forkserver): -m or a
    preset (every preset is a sweep), no other launcher named, not a dry run, help or config dump. A guess made
    before Hydra composes anything, so that the fork server's imports start at once (sweep/forkserver.py); a
    wrong guess costs a server that the sweeper stops as soon as it knows."""
    if no_precheck(argv):
        return False
    if any(a.startswith("hydra/launcher=") and a != "hydra/launcher=forkserver" for a in argv):
        return False
    return any(a in MULTIRUN_FLAGS or a.startswith("experiment=") for a in argv)
