"""The installed app: a wheel that carries conf/, the rnn-sweep console script run from outside the checkout, the
app's own --help, tab completion, log files named after the app, the LICENSE, and the sweep's pinned versions."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import CONF, REPO, TINY

# Keys a user sets most; each must be explained in `--help`'s key table (conf/hydra/help/rnn_sweep.yaml).
HELP_KEYS = ("batch_size=", "num_steps=", "seed=", "model=", "task=", "optim=", "budget=", "device=", "threads=",
             "experiment=", "results_dir=", "name=", "hydra.sweeper.params", "hydra.sweeper.speed",
             "hydra.sweeper.lr_search", "hydra/launcher=")  # fmt: skip


def _run(cmd: list[str], cwd: Path, extra_env: dict[str, str] | None = None, timeout: float = 120):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR", "COMP_LINE")}
    env.update(PYTHONUNBUFFERED="1", **(extra_env or {}))
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _check_help(out: str) -> None:
    assert out.startswith("rnn-sweep:"), out[:300]  # the app's header, not Hydra's "... is powered by Hydra"
    assert "powered by Hydra" not in out
    for key in HELP_KEYS:
        assert key in out, f"--help does not explain {key}"
    # $APP_CONFIG_GROUPS: every config group folder with its options, read from conf/ by Hydra
    for group in ("model", "task", "optim", "budget", "experiment"):
        options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        assert f"{group}: {', '.join(options)}" in out


def _completions(cmd: list[str], line: str, cwd: Path) -> set[str]:
    res = _run([*cmd, "-sc", "query=bash"], cwd, {"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert res.returncode == 0, res.stderr[-2000:]
    return set(res.stdout.split())


# ------------------------------------------------------------------------------------------ fast: the checkout
def test_help_is_the_apps_own_with_the_key_table_and_the_composed_config():
    res = _run([sys.executable, "-m", "sweep", "--help", "batch_size=7", "model=gru"], REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    _check_help(res.stdout)
    # $CONFIG is the config composed with the command line's overrides
    config = res.stdout.split("== Config (with the overrides given) ==", 1)[1]
    assert re.search(r"^batch_size: 7$", config, re.M) and re.search(r"^  cell: gru$", config, re.M)


def test_tab_completion_lists_the_real_keys_and_options():
    # Hydra strips the program name from COMP_LINE, so python -m sweep answers what rnn-sweep's completion asks
    cmd = [sys.executable, "-m", "sweep"]
    assert _completions(cmd, "rnn-sweep model.", REPO) >= {"model.cell=", "model.hidden_size=", "model.num_layers="}
    experiments = {f"experiment={p.stem}" for p in (CONF / "experiment").glob("*.yaml")}
    assert _completions(cmd, "rnn-sweep experiment=", REPO) == experiments
    assert {"batch_size=", "num_steps=", "seed=", "results_dir=", "model="} <= _completions(cmd, "rnn-sweep ", REPO)
    assert _completions(cmd, "rnn-sweep num", REPO) == {"num_steps="}
    assert {"hydra.sweeper.dry_run=", "hydra.sweeper.lr_search."} <= _completions(cmd, "rnn-sweep hydra.sweeper.", REPO)


def test_log_files_are_named_after_the_app():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke"], return_hydra_config=True)
    # Hydra's job log is <run folder>/<hydra.job.name>.log; without the name it is __main__.log or cli.log
    assert cfg.hydra.job.name == "rnn_sweep"
    logging = OmegaConf.to_container(cfg.hydra.job_logging, resolve=False)
    assert logging["handlers"]["file"]["filename"].endswith("${hydra.job.name}.log")


def test_license_file_matches_pyproject():
    pyproject = (REPO / "pyproject.toml").read_text()
    license_id = re.search(r'^license = "([^"]+)"$', pyproject, re.M).group(1)
    assert license_id == "MIT"
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 rnn-sweep developers" in text
    assert "Permission is hereby granted, free of charge" in text and 'THE SOFTWARE IS PROVIDED "AS IS"' in text
    # a license classifier next to an SPDX expression is refused by current setuptools and PyPI
    assert "License ::" not in pyproject


def test_sweep_pins_hold_after_the_dev_tools_are_installed():
    """The Makefile freezes the sweep's install to sweep-pins.txt before it adds the dev tools (as constraints):
    the interpreter running the tests must hold exactly those versions, or tests would check other code than
    a sweep runs."""
    pins = Path(sys.prefix) / "sweep-pins.txt"
    if not pins.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{pins} is missing: CI must install through the Makefile")
        pytest.skip(f"{pins} is missing: this venv was not made by the Makefile")
    changed = []
    for line in pins.read_text().splitlines():
        if "==" not in line or line.startswith(("#", "-")):
            continue
        name, version = line.split("==", 1)
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "(removed)"
        if installed != version:
            changed.append(f"{name} {version} -> {installed}")
    assert not changed, f"installing the dev tools changed the sweep's versions: {changed}"


@pytest.mark.parametrize(
    ("gpu", "torch", "cpu_index"),
    [(False, "auto", True), (True, "auto", False), (True, "cpu", True), (False, "cuda", False)],
)
def test_make_takes_torch_from_the_cpu_index_only_where_asked_or_no_nvidia_gpu(tmp_path, gpu, torch, cpu_index):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    if gpu:  # the Makefile takes a machine with nvidia-smi on PATH for a GPU machine
        (fake_bin / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
        (fake_bin / "nvidia-smi").chmod(0o755)
    # without the fake one, no nvidia-smi at all (this may run on a GPU machine)
    dirs = [d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "nvidia-smi").exists()]
    path = os.pathsep.join([str(fake_bin), *dirs])
    res = _run(["make", "-n", "-B", "install", f"TORCH={torch}"], REPO, {"PATH": path})
    assert res.returncode == 0, res.stderr
    (line,) = [x for x in res.stdout.splitlines() if "torch==" in x]
    assert ("https://download.pytorch.org/whl/cpu" in line) == cpu_index, line


def test_make_refuses_an_unknown_torch_build():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    res = _run(["make", "-n", "install", "TORCH=gpu"], REPO)
    assert res.returncode != 0 and "TORCH=gpu: must be auto, cpu or cuda" in res.stderr


# ------------------------------------------------------------------------------------- slow: an installed wheel
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # built from a copy of the files a wheel is made of: setuptools builds in the source tree, and a build/ folder
    # left there would ship modules deleted since
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    for name in ("sweep", "analysis", "hydra_plugins", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    res = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                str(src)], src, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    (whl,) = out.glob("rnn_sweep-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding the wheel (not editable, not the checkout); its dependencies are this venv's, read
    through a .pth file (so no download), whose own .pth files (the checkout's editable install) are not run."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    res = _run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], REPO)
    assert res.returncode == 0, res.stderr
    site = Path(_run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     REPO).stdout.strip())  # fmt: skip
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    res = _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                "--no-index", "-q", str(wheel)], REPO, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return venv


@pytest.mark.slow
def test_the_wheel_carries_conf_every_module_the_license_and_the_console_scripts(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = {f"sweep/conf/{p.relative_to(CONF).as_posix()}" for p in CONF.rglob("*.yaml")}
    assert "sweep/conf/config.yaml" in conf and any(n.startswith("sweep/conf/experiment/") for n in conf)
    assert conf <= names, sorted(conf - names)
    modules = {p.relative_to(REPO).as_posix() for d in ("sweep", "analysis", "hydra_plugins")
               for p in (REPO / d).rglob("*.py") if "__pycache__" not in p.parts}  # fmt: skip
    assert modules <= names, sorted(modules - names)
    assert not {n for n in names if n.startswith(("conf/", "tests/", "bench/"))}  # nothing at the top level
    dist = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert f"{dist}/licenses/LICENSE" in names
    meta = zipfile.ZipFile(wheel).read(f"{dist}/METADATA").decode()
    assert "License-Expression: MIT" in meta
    entry_points = zipfile.ZipFile(wheel).read(f"{dist}/entry_points.txt").decode()
    assert "rnn-sweep = sweep.cli:main" in entry_points and "rnn-sweep-status = sweep.status:main" in entry_points


@pytest.mark.slow
def test_the_installed_console_script_runs_a_preset_sweep_outside_the_checkout(installed, tmp_path):
    rnn_sweep = str(installed / "bin" / "rnn-sweep")
    where = _run([str(installed / "bin" / "python"), "-c",
                  "import sweep.cli as c, hydra_plugins.rnn_sweep_sweeper as p; print(c.CONF_DIR); print(p.__file__)"],
                 tmp_path)  # fmt: skip
    conf_dir, plugin = where.stdout.split()
    assert conf_dir.startswith(str(installed)) and plugin.startswith(str(installed)), where  # not the checkout's

    res = _run([rnn_sweep, "experiment=smoke", *TINY, "model=rnn", "batch_size=2", "results_dir=res"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (record,) = (tmp_path / "res" / "smoke").glob("*/run.json")  # the preset's name and grid, one point left
    rec = json.loads(record.read_text())
    assert rec["status"] == "complete"
    assert rec["config"]["model"]["cell"] == "rnn" and rec["config"]["num_steps"] == 4  # num_steps from the preset
    assert (record.parent / "rnn_sweep.log").is_file()

    res = _run([rnn_sweep, "--help"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    _check_help(res.stdout)

    install = _run([rnn_sweep, "-sc", "install=bash"], tmp_path).stdout
    assert install.rstrip().endswith("-F hydra_bash_completion rnn-sweep")  # bash asks rnn-sweep itself
    assert {"model.cell=", "model.hidden_size="} <= _completions([rnn_sweep], "rnn-sweep model.", tmp_path)

    if (REPO / "sweep" / "status.py").is_file():
        status = _run([str(installed / "bin" / "rnn-sweep-status"), str(tmp_path / "res" / "smoke")], tmp_path)
        assert status.returncode == 0, status.stderr[-2000:]
