"""The record contract (sweep/record.py): torch-free, one rule for the runner and the analysis, the device class in
the signature, the statuses a rerun skips and the verdicts read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.load import load_results
from analysis.synthetic import runs_table, write_results
from analysis.verdicts import prepare
from sweep import record
from sweep.run import run_job
from tests.conftest import TINY

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_the_record_module_imports_no_torch_numpy_or_pandas():
    code = (
        "import sys, sweep.record; bad = {'torch', 'numpy', 'pandas'} & set(sys.modules); "
        "assert not bad, bad; import analysis.load; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=FIXTURES.parent.parent)


# ---------------------------------------------------------------------------------------------- device class
@pytest.mark.parametrize(
    ("device", "cls"), [("cpu", "cpu"), ("cuda", "cuda"), ("cuda:1", "cuda"), ("mps", "mps"), ("CPU", "cpu")]
)
def test_an_explicit_device_names_its_class(device, cls):
    assert record.device_class(device) == cls


def test_auto_probes_the_gpu_without_torch(monkeypatch):
    monkeypatch.setattr(record, "_torch_built_with_cuda", lambda: True)
    monkeypatch.setattr(record, "_nvidia_driver_present", lambda: True)
    assert record.device_class("auto", environ={}) == "cuda"
    assert record.device_class("auto", environ={"CUDA_VISIBLE_DEVICES": "0"}) == "cuda"
    # no GPU visible to this process, however many the machine has
    assert record.device_class("auto", environ={"CUDA_VISIBLE_DEVICES": ""}) == "cpu"
    assert record.device_class("auto", environ={"CUDA_VISIBLE_DEVICES": "-1"}) == "cpu"
    monkeypatch.setattr(record, "_nvidia_driver_present", lambda: False)
    assert record.device_class("auto", environ={}) == "cpu"
    monkeypatch.setattr(record, "_nvidia_driver_present", lambda: True)
    monkeypatch.setattr(record, "_torch_built_with_cuda", lambda: False)  # a CPU build of torch: auto is cpu
    assert record.device_class("auto", environ={}) == "cpu"


def test_the_probe_agrees_with_torch_here():
    """On this machine the torch-free probe must give what sweep/train.py's resolve_device picks for auto."""
    import torch

    assert record._torch_built_with_cuda() == (torch.version.cuda is not None)
    assert record.device_class("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_an_unknown_device_is_refused():
    with pytest.raises(ValueError, match="device"):
        record.device_class("tpu")


def _legacy_signature(conf: dict) -> str:
    """The hash before the device class counted: the config less the excluded keys."""
    import hashlib

    conf = {k: v for k, v in conf.items() if k not in record.SIGNATURE_EXCLUDED}
    return hashlib.sha256(json.dumps(conf, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_cpu_signatures_are_unchanged_so_old_records_stay_done():
    """Every fixture record was written before the device class entered the signature, on a CPU: its stored
    signature is still the one a CPU rerun computes, so a rerun skips it."""
    paths = sorted((FIXTURES / "records").rglob("run.json")) + sorted((FIXTURES / "erratic").rglob("run.json"))
    assert len(paths) == 40
    for path in paths:
        rec = json.loads(path.read_text())
        assert record.signature(rec["config"]) == rec["signature"] == _legacy_signature(rec["config"])
        assert record.record_is_done(rec, record.signature({**rec["config"], "device": "cpu"}))
        # a GPU rerun of the same config is another point: it trains again
        assert not record.record_is_done(rec, record.signature({**rec["config"], "device": "cuda"}))


def test_device_class_not_device_string_enters_the_signature():
    conf = json.loads(next((FIXTURES / "records").rglob("run.json")).read_text())["config"]
    sig = {d: record.signature({**conf, "device": d}) for d in ("cpu", "cuda", "cuda:0", "cuda:1", "mps")}
    assert sig["cuda"] == sig["cuda:0"] == sig["cuda:1"]  # which card does not change the result class
    assert len({sig["cpu"], sig["cuda"], sig["mps"]}) == 3


def test_a_rerun_skips_a_cpu_point_on_cpu_and_redoes_it_on_a_gpu(make_cfg, tmp_path, monkeypatch):
    """The sweep's skip logic end to end: run_job with device=cpu, then again with device=auto on this CPU machine
    (skipped: the record is returned untouched), then is_done as a GPU machine would ask it (not done)."""
    out = tmp_path / "point"
    first = run_job(make_cfg(*TINY, "device=cpu", f"results_dir={tmp_path}"), out)
    assert first["status"] == "complete" and first["env"]["device"] == "cpu"  # the actual device, as before
    stamp = (out / record.RUN_FILE).stat().st_mtime_ns
    monkeypatch.setattr(record, "device_class", lambda device, environ=None: "cpu" if device != "cuda" else "cuda")
    auto = make_cfg(*TINY, "device=auto", f"results_dir={tmp_path}")
    assert run_job(auto, out)["signature"] == first["signature"]
    assert (out / record.RUN_FILE).stat().st_mtime_ns == stamp  # skipped, not retrained
    monkeypatch.setattr(record, "device_class", lambda device, environ=None: "cuda")  # auto on a GPU machine
    assert not record.is_done(out, record.signature(auto))


# --------------------------------------------------------------------------------------------------- statuses
def test_a_pruned_trial_is_done_for_a_rerun_but_never_judged(tmp_path):
    assert record.PRUNED in record.DONE_STATUSES and record.PRUNED not in record.JUDGED_STATUSES
    assert record.FAILED not in record.DONE_STATUSES
    rec = {"signature": "s", "status": record.PRUNED}
    assert record.record_is_done(rec, "s") and not record.record_is_done({**rec, "status": record.FAILED}, "s")
    table = runs_table(cells=("gru",), batch_sizes=(4,), num_steps=(8,), seeds=(0, 1), task="echo")
    _, b = write_results(tmp_path, table)
    data = json.loads((b / record.RUN_FILE).read_text())
    (b / record.RUN_FILE).write_text(json.dumps({**data, "status": record.PRUNED}))
    runs = load_results(tmp_path).runs.set_index("seed")
    assert runs.loc[1, "status"] == record.PRUNED and not runs.loc[1, "in_verdicts"]
    assert runs.loc[0, "in_verdicts"]
    assert list(prepare(runs.reset_index())["seed"]) == [0]


def test_the_private_exclusion_name_still_works():
    assert record._NOT_IN_SIGNATURE == record.SIGNATURE_EXCLUDED and "device" in record.SIGNATURE_EXCLUDED


# ------------------------------------------------------------------------------------------------ recall rules
def test_wilson_interval_matches_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    for k, n, level in [(0, 10, 0.95), (4, 10, 0.95), (10, 10, 0.9), (2049, 4096, 0.99)]:
        low, high = record.wilson_interval(k, n, level)
        ref = proportion_confint(k, n, alpha=1 - level, method="wilson")
        assert (low, high) == pytest.approx(ref, abs=1e-12)
    assert all(np.isnan(record.wilson_interval(0, 0, 0.95)))


def test_the_span_needs_the_interval_above_chance_not_just_the_margin():
    # 0.4 >= 0.25 + 0.1, but over 10 targets the interval reaches down to 0.17: not reached
    assert not record.lag_reached(0.4, record.wilson_interval(4, 10, 0.95)[0], 0.25, 0.1)
    assert record.lag_reached(0.4, record.wilson_interval(1638, 4096, 0.95)[0], 0.25, 0.1)
    assert not record.lag_reached(float("nan"), 0.9, 0.25, 0.1)
    assert record.span([1, 2, 4, 8], [True, True, False, True]) == 2  # a lucky long lag after a failure
    assert record.span([4, 1, 2], [True, True, True]) == 4  # lags in any order
    assert record.span([1, 2], [False, True]) == 0


def test_capacity_is_not_floored_and_leaves_missing_heads_out():
    # below-chance terms count negative, so noise around chance cancels; a head with no target is not a 0
    assert record.memory_capacity([0.25 + 0.075, 0.25 - 0.075, 0.1], [100, 100, 0], 0.25) == pytest.approx(0.0)
    assert record.memory_capacity([float("nan")], [0], 0.25) is None
    out = record.recall_summary([1, 2, 64], [1.0, 1.0, float("nan")], [500, 500, 0], 0.25, 0.1, 0.95)
    assert out == {"span": 2, "memory_capacity": pytest.approx(2.0)}


def test_measures_and_the_record_rule_agree():
    """sweep/measures.py's recall profile gives what sweep.record.recall_summary gives the analysis, on random
    counts with some heads at chance and some without targets."""
    from sweep.measures import recall_profile

    rng = np.random.default_rng(0)
    lags = [1, 2, 4, 8, 16, 32, 64]
    for _ in range(50):
        count = rng.choice([0, 8, 40, 400], size=len(lags)).astype(float)
        acc = rng.uniform(0.2, 1.0, size=len(lags))
        correct = np.round(acc * count)
        scalars, frame = recall_profile(lags, correct, count, 0.25, 0.1, 0.95)
        ref = record.recall_summary(lags, frame["value"], count, 0.25, 0.1, 0.95)
        assert scalars["span"] == ref["span"]
        if ref["memory_capacity"] is None:
            assert scalars["memory_capacity"] is None
        else:
            assert scalars["memory_capacity"] == pytest.approx(ref["memory_capacity"])


# ------------------------------------------------------------------------------------------------ folder names
def test_run_dirname_escapes_a_path_and_stays_one_folder():
    name = record.run_dirname("batch_size=4,task.path=data/corpus%1.txt")
    assert "/" not in name and name == "batch_size=4,task.path=data%2Fcorpus%251.txt"
    assert record.run_dirname("") == "base"
    long = record.run_dirname("x=" + "a" * 400)
    assert len(long) <= 200 and long != record.run_dirname("x=" + "a" * 399 + "b")


def test_the_config_resolver_is_the_record_function():
    from omegaconf import OmegaConf

    import sweep.cli  # noqa: F401  registers the resolvers conf/config.yaml uses

    conf = OmegaConf.create({"o": "task.path=a/b", "d": "${run_dirname:${o}}"})
    assert conf.d == record.run_dirname("task.path=a/b")


def test_the_report_reads_only_its_results_folder():
    """A report must not depend on whichever machine last ran the bench: no analysis module reads bench output
    (the speed noise comes from the speed phase's rounds)."""
    for path in sorted((FIXTURES.parent.parent / "analysis").glob("*.py")):
        text = path.read_text()
        assert "bench/out" not in text and "stability.json" not in text, path.name


def test_register_resolvers_is_idempotent_and_names_folders_like_run_dirname():
    from omegaconf import OmegaConf

    record.register_resolvers()
    record.register_resolvers()  # a second call (cli already registered it) is not an error
    conf = OmegaConf.create({"d": "${run_dirname:'a=x/y'}"})
    assert conf.d == record.run_dirname("a=x/y") == "a=x%2Fy"
