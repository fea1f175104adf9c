"""The thin Hydra entry point: compose the config, hand it to `run_job`."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sweep.config import register_configs
from sweep.run import run_job

register_configs()
# An empty override list (a run with the defaults) gets a folder name instead of the parent folder itself.
if not OmegaConf.has_resolver("or_base"):
    OmegaConf.register_new_resolver("or_base", lambda s: s or "base")

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


class RunFailed(CompactHydraException):
    pass


def parallel_jobs_of(hc) -> tuple[int, str | None]:
    launcher = hc.launcher.get("_target_", None)
    n_jobs = hc.launcher.get("n_jobs", 1) if hc.mode == RunMode.MULTIRUN else 1
    if n_jobs is None or n_jobs < 0:  # joblib: -1 = all cores
        import os

        n_jobs = os.cpu_count() or 1
    return int(n_jobs), launcher


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> str:
    hc = HydraConfig.get()
    n_jobs, launcher = parallel_jobs_of(hc)
    rec = run_job(cfg, Path(hc.runtime.output_dir), parallel_jobs=n_jobs, launcher=launcher)
    if rec["status"] == "failed" and hc.mode == RunMode.RUN:
        raise RunFailed(f"run failed: {rec['error']} (record in {hc.runtime.output_dir})")
    return rec["status"]
