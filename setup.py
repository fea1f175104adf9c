"""What pyproject.toml cannot say: the repository's top-level conf/ ships inside the wheel as the package
`sweep.conf` (one package per config-group folder), where sweep/cli.py finds it in an installed copy.
Everything else is in pyproject.toml."""

from pathlib import Path

from setuptools import find_namespace_packages, find_packages, setup

CONF = Path(__file__).resolve().parent / "conf"
CONF_PACKAGES = {
    ".".join(("sweep", "conf", *folder.relative_to(CONF).parts)): folder.relative_to(CONF.parent).as_posix()
    for folder in [CONF, *sorted(p for p in CONF.rglob("*") if p.is_dir() and p.name != "__pycache__")]
}

setup(
    packages=[
        *find_packages(include=["sweep", "sweep.*", "analysis", "analysis.*"]),
        # a namespace package without __init__.py, as Hydra's plugin discovery requires
        *find_namespace_packages(include=["hydra_plugins.*"], exclude=["*.__pycache__"]),
        *CONF_PACKAGES,
    ],
    package_dir=CONF_PACKAGES,
)
