"""The thin Hydra entry point: compose the config, hand it to `run_job`."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sweep import errors
from sweep.config import ConfigError, register_configs
from sweep.record import run_dirname

register_configs()
errors.install()
if not OmegaConf.has_resolver("run_dirname"):
    OmegaConf.register_new_resolver("run_dirname", run_dirname)

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def parallel_jobs_of(hc) -> tuple[int, str | None]:
    """How many jobs run at once on this machine (each takes cores // n torch threads), and the launcher."""
    from hydra_plugins.rnn_sweep_sweeper.grid_sweeper import launcher_parallelism

    launcher = hc.launcher.get("_target_", None)
    if hc.mode != RunMode.MULTIRUN:
        return 1, launcher
    return launcher_parallelism(hc.launcher, hc.sweeper.get("max_batch_size", None)), launcher


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> str:
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
    if rec["status"] == "failed" and hc.mode == RunMode.RUN:
        raise errors.RunFailed(f"run failed: {rec['error']} (record in {hc.runtime.output_dir})")
    return rec["status"]
