"""The shape of the code: dependencies one way (plugins -> sweep; analysis -> sweep.record only; no cycles), the
Hydra plugins as thin registered shims over `_`-prefixed implementations, private Hydra APIs in one adapter
module (sweep/_hydra_api.py) checked against the installed Hydra, and no import that patches Hydra."""

from __future__ import annotations

import ast
import inspect
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY

PLUGINS = ("hydra_plugins.rnn_sweep_sweeper", "hydra_plugins.rnn_sweep_optuna", "hydra_plugins.rnn_sweep_launcher")
CONTRACTS = REPO / ".importlinter"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function (lazy imports count: they still couple)."""
    here = _module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _project_files(root: Path) -> list[Path]:
    dirs = [root / "sweep", root / "analysis", *(root / p.replace(".", "/") for p in PLUGINS)]
    return sorted(f for d in dirs if d.is_dir() for f in d.rglob("*.py") if "__pycache__" not in f.parts)


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


# ----------------------------------------------------------------------------------------- one-way imports
def test_sweep_never_imports_a_plugin_and_no_plugin_imports_another():
    bad = []
    for f in _project_files(REPO):
        mod = _module_name(f, REPO)
        for name in _imports(f, REPO):
            if _within(mod, "sweep") and any(_within(name, p) for p in PLUGINS):
                bad.append(f"{mod} imports {name}")
            for mine, other in itertools.permutations(PLUGINS, 2):
                if _within(mod, mine) and _within(name, other):
                    bad.append(f"{mod} imports {name}")
    assert not bad, bad


def test_analysis_reads_sweep_only_through_the_record_module_which_imports_no_project_module():
    bad = []
    for f in _project_files(REPO):
        mod = _module_name(f, REPO)
        names = _imports(f, REPO)
        if _within(mod, "analysis"):
            bad += [
                f"{mod} imports {n}"
                for n in names
                if _within(n, "sweep") and n != "sweep" and not _within(n, "sweep.record")
            ]
            bad += [f"{mod} imports {n}" for n in names if any(_within(n, p) for p in PLUGINS)]
        if mod == "sweep.record":
            bad += [f"{mod} imports {n}" for n in names if n.split(".")[0] in ("sweep", "analysis", "hydra_plugins")]
    assert not bad, bad


def _lint(root: Path, *contracts: str) -> subprocess.CompletedProcess:
    code = (
        "import sys\nfrom importlinter.cli import lint_imports\n"
        f"sys.exit(lint_imports(config_filename='.importlinter', limit_to_contracts={contracts!r}, no_cache=True, "
        "no_logo=True))"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    """.importlinter: sweep below the plugins, the plugins independent, analysis through sweep.record, and no
    cycle between the modules of any package."""
    pytest.importorskip("importlinter", reason="import-linter is in the dev extra: pip install -e '.[dev]'")
    proc = _lint(REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


MUTATIONS = {
    # contract id -> (file, a line that breaks it)
    "sweep-below-plugins": ("sweep/plan.py", "def _m():\n    import hydra_plugins.rnn_sweep_sweeper.grid_sweeper\n"),
    "plugins-independent": (
        "hydra_plugins/rnn_sweep_sweeper/_impl.py",
        "def _m():\n    from hydra_plugins.rnn_sweep_optuna import optuna_sweeper\n",
    ),
    "analysis-reads-records": ("analysis/__init__.py", "def _m():\n    import sweep.train\n"),
    "no-cycles-sweep": ("sweep/record.py", "def _m():\n    import sweep.status\n"),
}


@pytest.mark.parametrize("contract", sorted(MUTATIONS))
def test_each_contract_fails_when_its_rule_is_broken(tmp_path, contract):
    """The check is not vacuous: one added (lazy) import in a copy of the code breaks the contract it names."""
    pytest.importorskip("importlinter", reason="import-linter is in the dev extra: pip install -e '.[dev]'")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in ("sweep", "analysis", *(p.replace(".", "/") for p in PLUGINS)):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=ignore)
    shutil.copy(CONTRACTS, tmp_path / ".importlinter")
    assert _lint(tmp_path, contract).returncode == 0  # kept before the mutation
    file, line = MUTATIONS[contract]
    with open(tmp_path / file, "a") as f:
        f.write("\n\n" + line)
    proc = _lint(tmp_path, contract)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "BROKEN" in proc.stdout


# ------------------------------------------------------------------------------------- plugins as thin shims
def _modules_after(args: list[str], cwd: Path) -> set[str]:
    """The modules a `python -m sweep ARGS` process had imported when it exited."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write('\\nMODULES ' + ' '.join(sorted(sys.modules)) + '\\n'))\n"
        "from sweep.cli import main\nsys.argv = ['rnn-sweep', *sys.argv[1:]]\nmain()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("MODULES "))
    return set(line.split()[1:])


def test_a_single_run_imports_neither_optuna_nor_a_plugin_implementation(tmp_path):
    """Hydra's plugin scan executes every public module under hydra_plugins on every start: those must be shims
    that leave optuna and the sweepers' implementations unimported until a sweep asks for them."""
    modules = _modules_after([*TINY, f"results_dir={tmp_path}"], tmp_path)
    assert "hydra_plugins.rnn_sweep_sweeper.grid_sweeper" in modules  # the scan did run
    assert "sweep.train" in modules  # and so did the run
    assert not {m for m in modules if _within(m, "optuna")}, "a single run imported optuna"
    impls = {m for m in modules if m.startswith(PLUGINS) and m.rsplit(".", 1)[-1].startswith("_")}
    assert not impls, f"a single run imported plugin implementations: {sorted(impls)}"


def test_a_grid_sweep_does_not_import_optuna(tmp_path):
    modules = _modules_after(["-m", *TINY, "model=rnn,gru", f"results_dir={tmp_path}", "hydra.sweeper.dry_run=true"],
                             tmp_path)  # fmt: skip
    assert "hydra_plugins.rnn_sweep_sweeper._impl" in modules  # the grid sweeper did plan the grid
    assert not {m for m in modules if _within(m, "optuna")}, "a grid sweep imported optuna"


def test_the_grid_sweeper_names_its_tuner_by_a_class_path_that_resolves():
    from hydra.plugins.sweeper import Sweeper
    from hydra.utils import get_class

    from hydra_plugins.rnn_sweep_sweeper import grid_sweeper

    assert grid_sweeper.GridSweeperConf.tuner == grid_sweeper.TUNER
    tuner = get_class(grid_sweeper.TUNER)
    assert issubclass(tuner, Sweeper) and tuner.__module__.startswith(PLUGINS[1])


def test_a_tuner_class_path_that_does_not_import_is_one_line_naming_the_field():
    from hydra_plugins.rnn_sweep_sweeper._impl import _tuner_class
    from sweep.config import ConfigError

    with pytest.raises(ConfigError, match=r"^invalid sweep: hydra.sweeper.tuner='no.such.Sweeper': cannot import"):
        _tuner_class("no.such.Sweeper")
    with pytest.raises(ConfigError, match="not a Hydra Sweeper class"):
        _tuner_class("pathlib.Path")


# ----------------------------------------------------------------------------------- private Hydra APIs, once
def test_private_hydra_apis_are_used_in_the_adapter_module_only():
    users = sorted(
        _module_name(f, REPO)
        for f in _project_files(REPO)
        if any(_within(n, "hydra._internal") for n in _imports(f, REPO)) or "hydra._internal" in f.read_text()
    )
    assert users == ["sweep._hydra_api"], users


def test_the_private_hydra_apis_the_adapter_uses_still_exist_with_the_same_signatures():
    """Fails on a Hydra upgrade that moves or changes them: fix sweep/_hydra_api.py, nothing else."""
    import importlib

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.plugins import Plugins

    from sweep import _hydra_api

    basic = importlib.import_module(_hydra_api.BASIC_SWEEPER_MODULE).BasicSweeper
    assert list(inspect.signature(basic.split_arguments).parameters) == ["overrides", "max_batch_size"]
    parsed = OverridesParser.create().parse_overrides(["a=1,2", "b=x"])
    assert _hydra_api.split_arguments(parsed, None) == [[["a=1", "b=x"], ["a=2", "b=x"]]]
    utils = importlib.import_module(_hydra_api.HYDRA_UTILS_MODULE)
    assert list(inspect.signature(utils.run_and_report).parameters) == ["func"]
    # Hydra's main must still report through run_and_report, or the one-line handler would be bypassed
    assert "run_and_report(" in inspect.getsource(utils._run_hydra)
    params = inspect.signature(Plugins.instantiate_launcher).parameters
    assert {"hydra_context", "task_function", "config"} <= set(params)


def test_the_error_handler_routes_hydra_reports_once_installed(monkeypatch, capsys):
    import importlib

    from sweep import _hydra_api, errors
    from sweep.config import ConfigError

    utils = importlib.import_module(_hydra_api.HYDRA_UTILS_MODULE)
    monkeypatch.setattr(utils, "run_and_report", utils.run_and_report)  # restored after the test
    errors.install()
    errors.install()  # idempotent: one wrapper

    def bad() -> None:
        raise ConfigError("invalid config: x: must be positive")

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exc:
        utils.run_and_report(bad)
    assert exc.value.code == errors.EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip() == "invalid config: x: must be positive"
    assert utils.run_and_report(lambda: 7) == 7


def test_importing_the_project_patches_nothing():
    code = (
        "import hydra._internal.utils as u\n"
        "before = u.run_and_report\n"
        "import sweep, sweep.cli, sweep.plan, sweep.status, sweep.errors, sweep._hydra_api\n"
        "import hydra_plugins.rnn_sweep_sweeper.grid_sweeper\n"
        "assert u.run_and_report is before, 'importing the project replaced hydra run_and_report'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
