"""Exports read back with each tracker's own reader: TensorBoard's EventAccumulator and MLflow's MlflowClient.

The records are real: four of the echo fixture (tests/fixtures/README.md) and a tiny sweep run here (one complete
and one diverged run, as the current runner writes them). Every check compares with the record's own files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import load_evals, load_results, load_steps
from analysis.export import flat_config, main
from tests.conftest import REPO, TINY, run_cli

ECHO = REPO / "tests" / "fixtures" / "records" / "echo"
PICK = [
    f"batch_size={b},model=gru,num_steps={n},seed={s},task=echo" for b, n, s in ((4, 16, 4), (16, 4, 0), (16, 16, 1))
]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """Three fixture records (different batch sizes, num_steps and seeds) copied: exports write beside them."""
    root = tmp_path / "echo"
    for name in PICK:
        shutil.copytree(ECHO / name, root / name)
    return root


@pytest.fixture(scope="module")
def sweep_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny sweep: lr 0.01 completes, lr 1e5 without clipping diverges."""
    root = tmp_path_factory.mktemp("sweep")
    proc = run_cli("-m", *TINY, "batch_size=4", "optim.clip=0", "optim.lr=0.01,100000", f"results_dir={root}")
    assert proc.returncode == 0, proc.stderr
    statuses = sorted(json.loads(p.read_text())["status"] for p in root.rglob("run.json"))
    assert statuses == ["complete", "diverged"]
    return root


def _records(root: Path) -> dict[str, Path]:
    """run folder relative to root -> folder"""
    return {p.parent.relative_to(root).as_posix(): p.parent for p in root.rglob("run.json")}


def _parquet(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(folder / f"{name}.parquet")


def _exported_columns(df: pd.DataFrame, skip: set[str]) -> list[str]:
    return [
        c
        for c in df.columns
        if c not in skip and (pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]))
    ]


def _export(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "analysis.export", *args],
        cwd=cwd or REPO,
        env={**env, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)},
        capture_output=True,
        text=True,
        timeout=300,
    )


# ------------------------------------------------------------------------------------------------- loaders
def test_loaders_are_importable_from_the_package_and_return_the_records_rows(results):
    res = load_results(results)
    assert sorted(res.runs["run_id"]) == sorted(PICK)
    evals = load_evals(results)  # a folder
    assert len(evals) == sum(len(_parquet(results / n, "evals")) for n in PICK)
    one = results / PICK[0]
    mine = evals[evals["run_id"] == PICK[0]].sort_values("step")
    np.testing.assert_allclose(mine["loss"], _parquet(one, "evals")["loss"])
    assert set(mine["num_steps"]) == {16} and set(mine["seed"]) == {4}
    steps = load_steps(res, columns=["step", "loss"])  # a Results, only two columns read
    assert {"step", "loss", "run_id", "batch_size"} <= set(steps.columns) and "grad_norm" not in steps
    assert len(steps) == sum(len(_parquet(results / n, "steps")) for n in PICK)
    only = load_steps(res.runs[res.runs["batch_size"] == 4])  # rows of the run table
    assert set(only["run_id"]) == {PICK[0]}


def test_importing_the_package_and_the_exporter_loads_neither_tracker():
    code = (
        "import sys, analysis, analysis.export; "
        "print(sorted(m for m in ('tensorboard', 'mlflow', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------- tensorboard
def _accumulator(logdir: Path):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(logdir), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})  # 0: keep every event
    acc.Reload()
    return acc


def _hparams(acc) -> tuple[dict, int]:
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.SESSION_START_INFO_TAG])
    end = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.SESSION_END_INFO_TAG])
    values = {}
    for key, value in start.session_start_info.hparams.items():
        values[key] = getattr(value, value.WhichOneof("kind"))
    return values, end.session_end_info.status


def test_tensorboard_scalars_and_hparams_equal_the_records(results, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    assert main(["--to", "tensorboard", str(results), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(PICK)  # one run per record, named by its folder
    for name in PICK:
        folder, acc = results / name, _accumulator(out / name)
        rec = json.loads((folder / "run.json").read_text())
        tags = set(acc.Tags()["scalars"])
        steps, evals = _parquet(folder, "steps"), _parquet(folder, "evals")
        step_cols = _exported_columns(steps, {"step"})
        eval_cols = _exported_columns(evals, {"step", "tokens", "time_s"})
        assert {"train/loss", "train/grad_norm", "valid/loss", "valid/acc_lag_8"} <= tags
        assert {f"train/{c}" for c in step_cols} | {f"valid/{c}" for c in eval_cols} <= tags
        for prefix, df, cols in (("train", steps, step_cols), ("valid", evals, eval_cols)):
            for col in cols:
                events = acc.Scalars(f"{prefix}/{col}")
                keep = np.isfinite(df[col].astype(float).to_numpy())  # NaN (norms not taken that update) left out
                assert [e.step for e in events] == df["step"][keep].tolist(), col
                # simple_value is float32
                expected = df[col][keep].astype(float).astype(np.float32)
                np.testing.assert_array_equal(np.float32([e.value for e in events]), expected, err_msg=col)
        # the summary at the last update, as the report reads it
        (final,) = acc.Scalars("summary/valid_loss")
        assert final.step == max(steps["step"].max(), evals["step"].max())
        assert final.value == pytest.approx(rec["summary"]["valid_loss"], rel=1e-6)
        (acc8,) = acc.Scalars("summary/acc_lag_8")
        assert acc8.value == pytest.approx(rec["summary"]["lag_accuracy"]["8"], rel=1e-6)
        # hparams: the flattened config, plus status and signature
        hp, _ = _hparams(acc)
        cfg = flat_config(rec["config"])
        assert hp["batch_size"] == rec["config"]["batch_size"] and hp["num_steps"] == rec["config"]["num_steps"]
        assert hp["seed"] == rec["config"]["seed"] and hp["optim.lr"] == pytest.approx(0.01)
        assert hp["model.cell"] == "gru" and hp["measure.contexts"] == cfg["measure.contexts"] == "[1, 2, 4, 8, 16]"
        assert hp["status"] == "complete" and hp["signature"] == rec["signature"]
        assert {k for k, v in cfg.items() if v is not None} <= set(hp)


def test_tensorboard_rerun_replaces_the_events_and_the_default_folder_is_inside_results(results):
    pytest.importorskip("tensorboard")
    assert main(["--to", "tensorboard", str(results)]) == 0
    assert main(["--to", "tensorboard", str(results)]) == 0
    out = results / "tensorboard"
    for name in PICK:
        assert len(list((out / name).glob("events.out.tfevents.*"))) == 1
        events = _accumulator(out / name).Scalars("train/loss")
        assert len(events) == len(_parquet(results / name, "steps"))  # not doubled
    # the event folder is no record: the report and a second export still see three runs
    assert len(load_results(results).runs) == 3


def test_tensorboard_session_status_and_nested_run_folders_of_a_real_sweep(sweep_results, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    assert main(["--to", "tensorboard", str(sweep_results), "--out", str(out), "--max-points", "5"]) == 0
    from tensorboard.plugins.hparams import api_pb2

    for run_id, folder in _records(sweep_results).items():
        assert run_id.startswith("default/")  # the sweep's own folder kept: the run is named by its path
        rec = json.loads((folder / "run.json").read_text())
        acc = _accumulator(out / run_id)
        hp, status = _hparams(acc)
        assert hp["status"] == rec["status"]
        expected = api_pb2.STATUS_SUCCESS if rec["status"] == "complete" else api_pb2.STATUS_FAILURE
        assert status == expected
        steps = _parquet(folder, "steps")
        got = [e.step for e in acc.Scalars("train/loss")]
        assert len(got) == min(5, len(steps)) and got[0] == steps["step"].iloc[0] and got[-1] == steps["step"].iloc[-1]


# -------------------------------------------------------------------------------------------------- mlflow
def _client(uri: str):
    tracking = pytest.importorskip("mlflow.tracking")
    return tracking.MlflowClient(tracking_uri=uri)


def _runs(client, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_mlflow_runs_read_back_with_params_metric_histories_and_tags(results, tmp_path):
    pytest.importorskip("mlflow")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = _export("--to", "mlflow", str(results), cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    uri = f"sqlite:///{results / 'mlflow.db'}"  # the default store: inside the results folder
    assert "3 runs logged" in proc.stdout and uri in proc.stdout and "'echo'" in proc.stdout
    assert not list(cwd.iterdir())  # no ./mlruns or mlflow.db where the command ran
    client = _client(uri)
    runs = _runs(client, "echo")
    assert sorted(r.info.run_name for r in runs) == sorted(PICK)
    for run in runs:
        folder = results / run.info.run_name
        rec = json.loads((folder / "run.json").read_text())
        tags, params = run.data.tags, run.data.params
        assert tags["status"] == "complete" and tags["signature"] == rec["signature"]
        assert tags["run_folder"] == run.info.run_name and run.info.status == "FINISHED"
        cfg = flat_config(rec["config"])
        assert params == {k: str(v) for k, v in cfg.items()}
        assert params["batch_size"] == str(rec["config"]["batch_size"]) and params["optim.lr"] == "0.01"
        steps, evals = _parquet(folder, "steps"), _parquet(folder, "evals")
        for key, df, col in (("train/loss", steps, "loss"), ("train/grad_norm_recurrent", steps, "grad_norm_recurrent"),
                             ("valid/acc_lag_8", evals, "acc_lag_8"), ("valid/loss", evals, "loss")):  # fmt: skip
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            keep = df[col].notna()
            assert [m.step for m in history] == df["step"][keep].tolist(), key
            np.testing.assert_allclose([m.value for m in history], df[col][keep].astype(float), rtol=1e-12)
        assert run.data.metrics["summary/valid_loss"] == pytest.approx(rec["summary"]["valid_loss"], rel=1e-12)


def test_mlflow_rerun_keeps_unchanged_runs_and_replaces_changed_ones(results, tmp_path):
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    base = ["--to", "mlflow", str(results), "--tracking-uri", uri, "--experiment", "exp"]
    assert main(base) == 0
    client = _client(uri)
    first = {r.info.run_name: r.info.run_id for r in _runs(client, "exp")}
    assert main(base) == 0
    again = {r.info.run_name: r.info.run_id for r in _runs(client, "exp")}
    assert again == first  # the same MLflow runs: nothing logged twice
    # other export options change what is logged: the runs are replaced, still one per record
    assert main([*base, "--max-points", "4"]) == 0
    thinned = {r.info.run_name: r.info.run_id for r in _runs(client, "exp")}
    assert sorted(thinned) == sorted(PICK) and not set(thinned.values()) & set(first.values())
    for name, run_id in thinned.items():
        steps = _parquet(results / name, "steps")["step"]
        history = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
        assert len(history) == 4 and history[0] == steps.iloc[0] and history[-1] == steps.iloc[-1]


def test_mlflow_status_of_a_diverged_run_from_a_real_sweep(sweep_results, tmp_path):
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    assert main(["--to", "mlflow", str(sweep_results), "--tracking-uri", uri, "--experiment", "tiny"]) == 0
    client = _client(uri)
    runs = {r.data.tags["run_folder"]: r for r in _runs(client, "tiny")}
    records = _records(sweep_results)
    assert sorted(runs) == sorted(records)
    for run_id, folder in records.items():
        rec = json.loads((folder / "run.json").read_text())
        run = runs[run_id]
        assert run.data.tags["status"] == rec["status"] and run.data.tags["signature"] == rec["signature"]
        assert run.info.status == ("FINISHED" if rec["status"] == "complete" else "FAILED")
        assert run.data.params["optim.lr"] == str(rec["config"]["optim"]["lr"])
        steps = _parquet(folder, "steps")
        history = client.get_metric_history(run.info.run_id, "train/loss")
        finite = steps["loss"][np.isfinite(steps["loss"])]
        assert len(history) == len(finite)  # a diverged run's non-finite losses are left out, the rest kept


# --------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--to", "tensorboard", "{tmp}/nope"], "is not a folder"),
        (["--to", "mlflow", "{tmp}/empty"], "no run records"),
        (["--to", "wandb", "{results}"], "invalid choice: 'wandb'"),
        (["--to", "tensorboard", "{results}", "--max-points", "1"], "--max-points: 1 is not allowed"),
        (["--to", "mlflow", "{results}", "--out", "{tmp}/o"], "--out: only for --to tensorboard"),
        (["--to", "tensorboard", "{results}", "--tracking-uri", "sqlite:///x.db"], "only for --to mlflow"),
    ],
    ids=["missing-dir", "no-records", "unknown-target", "max-points", "out-for-mlflow", "uri-for-tensorboard"],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(results, tmp_path, capsys, args, expected):
    (tmp_path / "empty").mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = [a.format(tmp=tmp_path, results=results) for a in args]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    assert rc == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and expected in err[0], err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_an_unusable_tracking_uri_is_one_line_through_the_command(results):
    pytest.importorskip("mlflow")
    proc = _export("--to", "mlflow", str(results), "--tracking-uri", "nosuchscheme://host/x")
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --tracking-uri nosuchscheme://host/x"), proc.stderr


@pytest.mark.parametrize("target", ["tensorboard", "mlflow"])
def test_without_the_extra_the_command_names_it_and_exits_2(results, target):
    # the tracker made unimportable, as in an install without the extra
    code = (
        f"import sys, runpy; sys.modules[{target!r}] = None; sys.argv = ['x', '--to', {target!r}, {str(results)!r}]; "
        "runpy.run_module('analysis.export', run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: --to {target} needs the {target} extra: pip install 'rnn-sweep[{target}]'"]
    assert sorted(p.name for p in results.iterdir()) == sorted(PICK)  # nothing written


def test_mlflow_tracking_uri_from_the_environment_when_none_is_given(results, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["--to", "mlflow", str(results)]) == 0
    assert not (results / "mlflow.db").exists()  # the environment's store, not the default one
    assert sorted(r.info.run_name for r in _runs(_client(uri), "echo")) == sorted(PICK)
