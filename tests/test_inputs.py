"""Bad input the README's rule covers: corpora that are not text in their encoding, a results_dir that cannot be
written, a disk that fills during a write, a held-out file that is the training corpus. Each is refused in one
line naming the field, exit status 2, before anything is written (the disk-full case: the writer cleans up)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from sweep import record
from sweep.cli import check_results_dir
from sweep.config import ConfigError
from sweep.corpus import check_task, load_tokens
from sweep.tasks import make_task
from tests.conftest import TINY, run_cli

WORDS = "le café est très bon , la crème brûlée aussi .\n"
LATIN1_FIRST_BAD = WORDS.encode("latin-1").index("é".encode("latin-1"))


def _bad_input(proc, results: Path) -> str:
    """The one stderr line of a refused command, after checking exit 2 and that nothing was written."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert not results.exists() or not list(results.rglob("*")), list(results.rglob("*"))
    return lines[0]


@pytest.fixture
def corpora(tmp_path) -> dict[str, Path]:
    files = {
        "latin1": WORDS.encode("latin-1") * 300,
        "utf8": WORDS.encode("utf-8") * 300,
        "binary": bytes(range(256)) * 40,
        "nul_in_text": WORDS.encode("latin-1") * 300 + b"\x00\x01\x02" + WORDS.encode("latin-1") * 30,
        "utf16": (WORDS * 300).encode("utf-16"),
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / f"{name}.txt"
        out[name].write_bytes(data)
    return out


# ---- 1. corpus encoding ---------------------------------------------------------------------------------------


def test_a_latin1_corpus_read_as_utf8_is_refused_up_front_naming_the_byte_and_the_fix(tmp_path, corpora):
    results = tmp_path / "results"
    proc = run_cli(*TINY, "task=text", f"task.path={corpora['latin1']}", f"results_dir={results}")
    line = _bad_input(proc, results)
    assert line == (
        f"invalid config: task.path={str(corpora['latin1'])!r}: not utf-8 text at byte {LATIN1_FIRST_BAD} "
        "(set task.encoding, e.g. task.encoding=latin-1)"
    )


def test_a_grid_with_a_latin1_corpus_is_refused_before_the_first_job(tmp_path, corpora):
    results = tmp_path / "results"
    proc = run_cli("-m", *TINY, "task=text", f"task.path={corpora['latin1']}", "batch_size=1,8",
                   f"results_dir={results}")  # fmt: skip
    assert "not utf-8 text at byte" in _bad_input(proc, results)


def test_a_held_out_file_in_the_wrong_encoding_is_named_as_task_valid_path(tmp_path, corpora):
    results = tmp_path / "results"
    proc = run_cli(*TINY, "task=text", f"task.path={corpora['utf8']}", f"task.valid_path={corpora['latin1']}",
                   f"results_dir={results}")  # fmt: skip
    line = _bad_input(proc, results)
    assert line.startswith(f"invalid config: task.valid_path={str(corpora['latin1'])!r}: not utf-8 text at byte")


def test_a_latin1_corpus_trains_with_task_encoding_latin1(tmp_path, corpora, make_cfg):
    proc = run_cli(*TINY, "task=text", f"task.path={corpora['latin1']}", "task.encoding=latin-1",
                   f"results_dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(next(tmp_path.rglob("run.json")).read_text())
    assert rec["status"] == "complete" and rec["config"]["task"]["encoding"] == "latin-1"
    # the words are decoded as written, the same as the UTF-8 copy of the corpus read as UTF-8
    data = make_task(make_cfg(*TINY, "task=text", f"task.path={corpora['latin1']}", "task.encoding=latin-1"))
    assert data.itos is not None and {"café", "brûlée", "très"} <= set(data.itos)
    assert load_tokens(str(corpora["latin1"]), "word", "latin-1") == load_tokens(str(corpora["utf8"]), "word")
    # and a UTF-16 corpus (whose bytes are half NUL) is text under its own encoding
    assert load_tokens(str(corpora["utf16"]), "word", "utf-16") == load_tokens(str(corpora["utf8"]), "word")


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_a_binary_file_is_not_a_text_file_in_any_encoding(tmp_path, corpora, encoding):
    results = tmp_path / "results"
    proc = run_cli(*TINY, "task=text", f"task.path={corpora['binary']}", f"task.encoding={encoding}",
                   f"results_dir={results}")  # fmt: skip
    line = _bad_input(proc, results)
    assert line == f"invalid config: task.path={str(corpora['binary'])!r}: not a text file (NUL byte at byte 0)"


def test_a_nul_byte_inside_a_text_corpus_is_refused_with_its_offset(make_cfg, corpora):
    cfg = make_cfg(*TINY, "task=text", f"task.path={corpora['nul_in_text']}", "task.encoding=latin-1")
    with pytest.raises(ConfigError, match=rf"not a text file \(NUL byte at byte {len(WORDS) * 300}\)"):
        check_task(cfg)


@pytest.mark.parametrize("encoding", ["klingon", "base64", "rot13"])
def test_an_unknown_or_non_text_encoding_is_refused_naming_task_encoding(tmp_path, corpora, encoding):
    results = tmp_path / "results"
    proc = run_cli(*TINY, "task=text", f"task.path={corpora['utf8']}", f"task.encoding={encoding}",
                   f"results_dir={results}")  # fmt: skip
    line = _bad_input(proc, results)
    assert line.startswith(f"invalid config: task.encoding={encoding!r}: must be a text encoding Python knows")


# ---- 2. results_dir that cannot be created ----------------------------------------------------------------------


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "multirun"])
def test_a_results_dir_under_a_regular_file_is_one_line_naming_results_dir(tmp_path, multirun):
    (tmp_path / "file").write_text("not a folder\n")
    results = tmp_path / "file" / "sub"
    flags = ["-m", "batch_size=4,8"] if multirun else []
    proc = run_cli(*flags, *TINY, f"results_dir={results}")
    line = _bad_input(proc, results)
    assert line == (
        f"invalid config: results_dir={str(results)!r}: must be a folder that can be created and written "
        f"(Not a directory: {str(tmp_path / 'file')!r} is a file, not a folder)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_one_unwritable_value_of_a_swept_results_dir_stops_the_sweep_before_anything_is_written(tmp_path):
    (tmp_path / "file").write_text("not a folder\n")
    good, bad = tmp_path / "good", tmp_path / "file" / "sub"
    proc = run_cli("-m", *TINY, f"results_dir={good},{bad}")
    assert "results_dir=" in _bad_input(proc, bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe of `good` left nothing behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_results_dir_is_one_line_naming_results_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        proc = run_cli(*TINY, f"results_dir={ro / 'results'}")
        assert "results_dir=" in _bad_input(proc, ro / "results") and "Permission denied" in proc.stderr
        assert not list(ro.iterdir())
    finally:
        ro.chmod(0o755)


def test_a_permission_error_in_the_results_dir_check_names_results_dir_and_the_reason(tmp_path, monkeypatch):
    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    # Path.mkdir, not os.mkdir: pathlib on Python 3.10 holds its own reference to os.mkdir
    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(ConfigError, match=r"results_dir=.*: must be a folder that can be created and written "
                                          r"\(Permission denied"):  # fmt: skip
        check_results_dir(str(tmp_path / "a" / "b"))
    monkeypatch.undo()
    assert not list(tmp_path.iterdir())


def test_a_writable_results_dir_check_leaves_nothing_behind(tmp_path):
    check_results_dir(str(tmp_path / "new" / "deeper"))
    assert not list(tmp_path.iterdir())
    (tmp_path / "kept").mkdir()
    check_results_dir(str(tmp_path / "kept"))
    assert (tmp_path / "kept").is_dir() and not list((tmp_path / "kept").iterdir())


# ---- 3. disk full during a write --------------------------------------------------------------------------------


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_disk_full_during_write_json_keeps_the_old_record_and_removes_the_temp_file(tmp_path, monkeypatch, where):
    path = tmp_path / "run.json"
    record.write_json(path, {"status": "complete", "n": 1})
    before = path.read_text()
    if where == "write":

        def half_write(self, text, *args, **kwargs):
            with open(self, "w") as f:
                f.write(text[: len(text) // 2])
            _enospc()

        monkeypatch.setattr(Path, "write_text", half_write)
    else:
        monkeypatch.setattr(os, where, _enospc)
    with pytest.raises(OSError) as info:
        record.write_json(path, {"status": "failed", "n": 2, "pad": "x" * 10_000})
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert path.read_text() == before and json.loads(before)["n"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_disk_full_during_write_table_keeps_the_old_table_and_removes_the_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "steps.parquet"
    old = pd.DataFrame({"step": [0, 1], "loss": [1.0, 0.5]})
    record.write_table(path, old)

    def half_parquet(self, target, *args, **kwargs):
        Path(target).write_bytes(b"PAR1" + b"\0" * 100)  # a torn file, as a full disk leaves it
        _enospc()

    monkeypatch.setattr(pd.DataFrame, "to_parquet", half_parquet)
    with pytest.raises(OSError) as info:
        record.write_table(path, pd.DataFrame({"step": range(100), "loss": 0.1}))
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    pd.testing.assert_frame_equal(pd.read_parquet(path), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["steps.parquet"]


def test_an_unserialisable_record_fails_before_touching_the_disk(tmp_path):
    path = tmp_path / "run.json"
    with pytest.raises(TypeError):
        record.write_json(path, {"bad": object()})
    assert not list(tmp_path.iterdir())


# ---- 4. held-out text that is the training corpus ------------------------------------------------------------


def test_a_valid_path_that_is_the_training_corpus_is_refused(tmp_path, corpora):
    results = tmp_path / "results"
    alias = tmp_path / "alias.txt"
    alias.symlink_to(corpora["utf8"])
    proc = run_cli("-m", *TINY, "task=text", f"task.path={corpora['utf8']}", f"task.valid_path={alias}",
                   "batch_size=4,8", f"results_dir={results}")  # fmt: skip
    line = _bad_input(proc, results)
    assert line.startswith(f"invalid config: task.valid_path={str(alias)!r}: is the training corpus task.path")


def test_a_results_dir_that_fails_below_a_folder_the_check_made_leaves_nothing(tmp_path, monkeypatch):
    real_mkdir, calls = Path.mkdir, []

    def second_fails(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", second_fails)  # not os.mkdir: see above
    with pytest.raises(ConfigError, match=r"results_dir=.*\(No space left on device"):
        check_results_dir(str(tmp_path / "a" / "b"))
    monkeypatch.undo()
    assert len(calls) == 2 and not list(tmp_path.iterdir())  # `a`, which the check made, is gone again


# ---- 5. typos and missing plugins ------------------------------------------------------------------------------


TYPOS = [
    (["modle.hidden_size=8"], "invalid config: modle.hidden_size: no such key; did you mean model.hidden_size?"),
    (["model.hidden_sze=8"], "invalid config: model.hidden_sze: no such key; did you mean model.hidden_size?"),
    (["bach_size=3"], "invalid config: bach_size: no such key; did you mean batch_size?"),
    (["model=lstn"], "invalid config: model=lstn: must be one of gru, lstm, rnn; did you mean model=lstm?"),
    (["-m", "hydra/launcher=joblb"], "invalid config: hydra/launcher=joblb: must be one of "),
    (["-m", "hydra.sweeper.dry_rn=true"], "did you mean hydra.sweeper.dry_run?"),
]


@pytest.mark.parametrize(("args", "expected"), TYPOS, ids=[" ".join(a) for a, _ in TYPOS])
def test_a_mistyped_key_or_choice_is_one_line_with_the_nearest_valid_one(tmp_path, args, expected):
    results = tmp_path / "results"
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    line = _bad_input(run_cli(*flags, *TINY, *overrides, f"results_dir={results}"), results)
    assert line.startswith(expected) or expected in line, line
    if "joblb" in args[-1]:
        assert line.endswith("; did you mean hydra/launcher=joblib?")


def test_a_key_with_nothing_near_it_gets_no_guess(tmp_path):
    results = tmp_path / "results"
    line = _bad_input(run_cli(*TINY, "zzzzqqq=1", f"results_dir={results}"), results)
    assert line.startswith("invalid config: zzzzqqq: no such key") and "did you mean" not in line


def test_an_uninstalled_launcher_names_what_to_install(tmp_path):
    """hydra-rq-launcher is a Hydra launcher this project does not install: the line says how to get it."""
    results = tmp_path / "results"
    line = _bad_input(run_cli("-m", *TINY, "hydra/launcher=rq", f"results_dir={results}"), results)
    assert line == "invalid config: hydra/launcher=rq: that plugin (hydra-rq-launcher) is not installed: " + (
        "pip install hydra-rq-launcher"
    )


def test_a_launcher_from_an_extra_names_the_extra():
    """Where Ray's launcher is not installed, Hydra lists the launchers without it: the line names the project's
    extra that installs it (read from the installed metadata, i.e. pyproject's optional-dependencies)."""
    from hydra.errors import MissingConfigException

    from sweep.errors import install_hint, one_line

    text = (
        "In 'hydra/config': Could not find 'hydra/launcher/ray'\n\nAvailable options in 'hydra/launcher':\n"
        "\tbasic\n\tjoblib\n\tsubmitit_local\n\tsubmitit_slurm\nConfig search path:\n\tprovider=hydra, path=x"
    )
    line = one_line(MissingConfigException(text, missing_cfg_file="hydra/launcher/ray"))
    assert line == "invalid config: hydra/launcher=ray: that plugin (hydra-ray-launcher) is not installed: " + (
        install_hint("hydra-ray-launcher")
    )
    requirements = ['hydra-ray-launcher<1.3,>=1.2.2; extra == "ray"', "hydra-joblib-launcher<1.3,>=1.2"]
    assert install_hint("hydra-ray-launcher", requirements) == "pip install 'rnn-sweep[ray]'"
    assert install_hint("hydra_Ray.launcher", requirements) == "pip install 'rnn-sweep[ray]'"  # names normalized
    assert install_hint("hydra-joblib-launcher", requirements) == "pip install hydra-joblib-launcher"
    # the installed project: its ray extra installs the Ray launcher
    from importlib.metadata import PackageNotFoundError, requires

    try:
        installed = requires("rnn-sweep") or []
    except PackageNotFoundError:
        pytest.skip("rnn-sweep is not installed (pip install -e .)")
    if any(r.startswith("hydra-ray-launcher") and "extra ==" in r for r in installed):
        assert install_hint("hydra-ray-launcher") == "pip install 'rnn-sweep[ray]'"


ESCAPING_NAMES = ["../outside", "..", ".", "a/b", "/tmp/rnn-sweep-absolute", ""]


@pytest.mark.parametrize("name", ESCAPING_NAMES, ids=["dotdot-prefix", "dotdot", "dot", "separator", "absolute",
                                                      "empty"])  # fmt: skip
@pytest.mark.parametrize("multirun", [False, True], ids=["run", "multirun"])
def test_a_name_that_would_leave_results_dir_is_refused_before_anything_is_written(tmp_path, name, multirun):
    results = tmp_path / "box" / "results"
    grid = ["-m", "seed=0,1"] if multirun else []
    proc = run_cli(*grid, f"name={name}", f"results_dir={results}", *TINY, timeout=120)
    line = _bad_input(proc, results)
    assert line.startswith(f"invalid config: name={name!r}: must be one folder name inside results_dir"), line
    assert [p for p in (tmp_path / "box").rglob("*")] == []  # not beside results_dir either
    assert not Path("/tmp/rnn-sweep-absolute").exists()


def test_a_swept_name_with_one_escaping_value_stops_the_sweep_before_the_first_job(tmp_path):
    results = tmp_path / "results"
    proc = run_cli("-m", "name=fine,../escape", f"results_dir={results}", *TINY, timeout=120)
    assert "name='../escape'" in _bad_input(proc, results)
    assert not (tmp_path / "escape").exists()


def test_a_value_with_slashes_and_dots_stays_one_folder_inside_results_dir():
    # every other config value reaches the path through the overrides part, which escapes '/' (and '%')
    name = record.run_dirname("task.path=../../etc/passwd,seed=0")
    assert "/" not in name and name not in (".", "..") and Path(name).name == name
