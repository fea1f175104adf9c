"""The report end to end: files written, every figure embedded, the verdict table first, the CLI contract."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import build_report, load_results
from analysis.__main__ import main
from analysis.figures import BUILDERS
from analysis.synthetic import cost_table, runs_table, write_cost_results, write_results
from analysis.tables import fastest_batch, lr_summary, noise_scale_table, show_ttt, speed_table, time_to_target

OLD_RECORDS = Path(__file__).parent / "fixtures" / "old_records"


def add_sweep_files(root: Path, table: pd.DataFrame, rounds: int = 5) -> None:
    """What a sweep of this version writes beside the runs: speed.parquet (each point's tokens/s as the
    synthetic truth, 2 % noise per round), lr_search.json, and the noise-scale columns of every evaluation."""
    gen = np.random.default_rng(0)
    rows = []
    points = table.drop_duplicates(["task", "cell", "batch_size", "num_steps"])
    for r in range(rounds):
        for i, p in enumerate(points.itertuples(index=False)):
            tps = 2000.0 * p.batch_size * float(np.exp(gen.normal(0, 0.02)))
            rows.append({"task": p.task, "cell": p.cell, "batch_size": p.batch_size, "num_steps": p.num_steps,
                         "round": r, "order": i, "updates": 200, "seconds": 200 * p.num_steps * p.batch_size / tps,
                         "tokens_per_s": tps, "us_per_update": 1e6 * p.num_steps * p.batch_size / tps,
                         "threads": 1, "device": "cpu", "cpu": "synthetic CPU", "torch": "2.13.0+cpu"})  # fmt: skip
    pd.DataFrame(rows).to_parquet(root / "speed.parquet", index=False)
    (root / "speed.json").write_text(json.dumps({"rounds": rounds, "min_seconds": 0.5, "min_updates": 100,
                                                 "warmup_updates": 20, "threads": 1, "device": "cpu"}))  # fmt: skip
    chosen = [
        {"task": t, "cell": c, "batch_size": int(b), "lr": 0.01 * math.sqrt(b), "mean_valid_loss": 1.0, "n": 2}
        for t, c, b in points[["task", "cell", "batch_size"]].drop_duplicates().itertuples(index=False)
    ]
    # every search run: the held-out loss is lowest at the chosen lr (a parabola in log lr), two search seeds
    table = [
        {"task": c["task"], "cell": c["cell"], "batch_size": c["batch_size"], "num_steps": 16, "lr": lr, "seed": s,
         "status": "complete", "objective": 1.0 + math.log(lr / c["lr"]) ** 2 + 0.01 * s}
        for c in chosen for lr in (0.003, 0.01, 0.03) for s in (100, 101)
    ]  # fmt: skip
    (root / "lr_search.json").write_text(
        json.dumps({"values": [0.003, 0.01, 0.03], "chosen": chosen, "table": table, "objective": "valid_loss"})
    )
    for evals in root.glob("*/evals.parquet"):
        ev = pd.read_parquet(evals)
        ev["noise_b_simple"], ev["noise_g2"], ev["noise_trace"] = 12.0, 0.5, 6.0
        ev.to_parquet(evals, index=False)


@pytest.fixture(scope="module")
def synthetic_results(tmp_path_factory):
    """Two tasks (so the report has a split), three seeds, one diverged run, and the sweep files."""
    root = tmp_path_factory.mktemp("results")
    echo = runs_table(cells=("lstm",), batch_sizes=(1, 4), num_steps=(4, 16), seeds=(0, 1, 2), task="echo")
    lags = runs_table(
        cells=("lstm",),
        batch_sizes=(1, 4),
        num_steps=(4, 16),
        seeds=(0, 1, 2),
        task="lags",
        span=lambda *a: 8.0,
        effective_context=lambda *a: 4.0,
        gradient_horizon=lambda *a: 8.0,
    )
    table = pd.concat([echo, lags], ignore_index=True)  # fmt: skip
    table.loc[3, "status"] = "diverged"
    write_results(root, table, updates=30)
    add_sweep_files(root, table)
    return root


@pytest.fixture(scope="module")
def report(synthetic_results):
    return build_report(synthetic_results)


def test_report_files_are_written(report, synthetic_results):
    out = synthetic_results / "report"
    assert report == out / "index.html" and report.is_file()
    for name in (
        "report.md",
        "runs.parquet",
        "runs.csv",
        "verdicts.csv",
        "verdict_splits.csv",
        "cell_means.csv",
    ):
        assert (out / name).is_file(), name
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == 24 and {"run_id", "folder", "status", "cfg.model.cell", "tokens_per_s"} <= set(runs)
    assert len(pd.read_csv(out / "runs.csv")) == 24


def test_index_embeds_every_figure_and_needs_no_other_file(report, synthetic_results):
    html = report.read_text()
    pngs = sorted((synthetic_results / "report" / "figures").glob("*.png"))
    # synthetic records (+ speed phase, lr search, noise) skip no figure but the cost curves, which need 4 batch
    # sizes in a setting (2 here) and say so instead of drawing an empty panel
    assert len(pngs) == len(BUILDERS) - 1
    assert not (synthetic_results / "report" / "figures" / "cost_to_result.png").exists()
    embedded = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]{1000,})"', html)
    assert len(embedded) == len(pngs)
    assert html.count("not drawn") == 1 and "failed to draw" not in html
    assert "against batch size: not drawn — no setting has 4 or more batch sizes with a time to target" in html
    assert not re.search(r'(src|href)="(?!data:)[^"#]', html)  # nothing loaded from disk or the network


def test_markdown_opens_with_the_answer_then_the_verdict_table(report, synthetic_results):
    md = (synthetic_results / "report" / "report.md").read_text()
    first_table = md.index("| Claim | Statement | Verdict | Statistic | Evidence |")
    answer = md.index("## The answer to the thread")
    assert answer < first_table < md.index("## Protocol") < md.index("## Speed") < md.index("## Figures")
    # the answer gives numbers: the speed phase's speed-up of batch 4 over 1 (the truth is 4x) and the budget
    speed = re.search(r"batch ×4 ran (\d+\.\d+)× the tokens/s", md)
    assert speed and float(speed.group(1)) == pytest.approx(4.0, rel=0.05)
    assert "**Equal tokens (65536 tokens per run, the thread's setting).**" in md
    rows = re.findall(r"^\| (C\d) \| [^|]+ \| (supported|refuted|mixed|inconclusive) \|", md, re.M)
    assert [claim for claim, _ in rows[:6]] == ["C1", "C2", "C3", "C4", "C5", "C6"]
    # a claim judged in two settings shows its split table (which verdicts: tests/test_analysis_verdicts.py)
    for split in (r"echo \(lag 8\)", r"lags \(1-32\)"):
        assert re.search(
            rf"^\| {split} · tokens 65536 · fixed lr \| (supported|refuted|mixed|inconclusive) \|", md, re.M
        )
    assert "Failed and diverged runs" in md and "diverged" in md
    assert md.count("![") == len(BUILDERS) - 1  # the cost curves need 4 batch sizes: a note instead
    assert md.index("## Speed") < md.index("## Cost to result") < md.index("## Critical batch size (gradient noise")
    assert "were timed under load, beside other jobs" not in md  # synthetic records ran one job at a time
    assert "Runs this verdict rests on" in md and "| split | folder | why |" in md


def test_absent_data_gives_a_note_not_an_empty_figure(tmp_path):
    table = runs_table(cells=("gru",), batch_sizes=(1, 4), num_steps=(4, 8), seeds=(0, 1), span=None,
                       effective_context=None, gradient_horizon=None)  # fmt: skip
    write_results(tmp_path, table, updates=20, profiles=False)
    index = build_report(tmp_path, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Context ablation" in md and "not drawn — no run wrote a 'context' profile" in md
    assert "recall accuracy per lag (final evaluation): not drawn" in md  # echo has one lag: no curve
    figures = list((tmp_path / "out" / "figures").glob("*.png"))
    assert index.read_text().count("<img ") == len(figures) < len(BUILDERS)


def test_cli_passes_its_arguments_and_fails_in_one_line_on_an_empty_folder(tmp_path, capsys, monkeypatch):
    seen = {}

    def fake_build(results_dir, out, thresholds):
        # the CLI may hand build_report a temporary folder it swaps in at --out when the report is whole
        seen.update(results_dir=results_dir, out=out, thresholds=thresholds)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "index.html").write_text("report")
        return Path(out) / "index.html"

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("analysis.__main__.build_report", fake_build)
    assert main(["res", "--out", "rep", "--thresholds", "t.yaml", "-q"]) == 0
    assert (seen["results_dir"], seen["thresholds"]) == ("res", "t.yaml")
    assert (tmp_path / "rep" / "index.html").read_text() == "report"  # what build_report wrote ends up at --out
    assert capsys.readouterr().out.strip().endswith("index.html")
    monkeypatch.undo()
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no run records") and "\n" not in err


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


# CI installs Chromium (.ci/run) and sets CI: there a missing browser fails the test instead of skipping it
@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"), reason="no chromium here (apt-get install -y chromium)"
)
def test_headless_chromium_renders_the_report(report, tmp_path):
    assert CHROMIUM, "no chromium on PATH: .ci/run installs it (apt-get install -y chromium)"
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1400,4000", report.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[0] >= 4000 and pixels.std() > 0.05  # a page with content, not a blank one


def test_the_report_reads_no_bench_file(report, synthetic_results):
    """Speed noise comes from the speed phase's rounds, never from whichever machine last ran the bench."""
    md = (synthetic_results / "report" / "report.md").read_text()
    assert "stability" not in md and "bench" not in md
    assert "5 rounds interleaved round-robin" in md and "1 torch thread(s), device cpu" in md


def test_report_lists_speed_time_to_target_noise_and_lr_tables(report, synthetic_results):
    out = synthetic_results / "report"
    speed = pd.read_csv(out / "speed_table.csv")
    assert len(speed) == 8 and not speed["superlinear"].any()  # 2 tasks x 2 batch sizes x 2 num_steps
    ttt = pd.read_csv(out / "time_to_target.csv")
    # echo: accuracy 0.95 from the first evaluation when num_steps (= span) >= 8, chance + 0.01 otherwise
    echo = ttt[ttt["split"].str.startswith("echo")]
    assert (echo.loc[echo["num_steps"] == 16, "all_reached"]).all()
    assert (echo.loc[echo["num_steps"] == 4, "reached"] == 0).all()
    noise = pd.read_csv(out / "noise_scale.csv")
    assert not noise.empty and np.allclose(noise["b_simple"], 12.0)
    lr = pd.read_csv(out / "lr_protocol.csv")
    assert lr["exponent"].to_numpy() == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------- cost to result
def test_report_of_plateau_runs_fits_the_cost_curve_and_lists_the_run_at_its_cap(tmp_path):
    """Plateau runs whose updates to 0.9 accuracy follow S(B) = 100 (1 + 12/B), 3 seeds at batch 1-32, and a
    fourth seed at batch 32 whose crossing lies beyond the cap: it stops there, not converged."""
    table = cost_table(batch_sizes=(1, 2, 4, 8, 16, 32), seeds=(0, 1, 2), cap=16384)
    stuck = table[table["batch_size"] == 32].iloc[[0]].assign(seed=3, updates_to_target=1e6)
    write_cost_results(tmp_path, pd.concat([table, stuck], ignore_index=True))
    out = tmp_path / "report"
    build_report(tmp_path)
    md = (out / "report.md").read_text()
    assert md.index("## Speed") < md.index("## Cost to result") < md.index("### Critical batch size from the cost")
    assert "![Cost to result: updates to target against batch size](figures/cost_to_result.png)" in md
    assert (out / "figures" / "cost_to_result.png").is_file()
    # the runs hit the target before the cap, the stuck one never: 3/3 at every batch size but 32 (3/4)
    cost = pd.read_csv(out / "cost_to_result.csv").set_index("batch_size")
    assert list(cost["reached"].astype(str) + "/" + cost["seeds"].astype(str)) == ["3/3"] * 5 + ["3/4"]
    assert set(cost["regime"]) == {"plateau"} and set(cost["target"]) == {"accuracy ≥ 0.9"}
    truth = 100 * (1 + 12 / cost.index.to_numpy())
    assert cost["updates"].iloc[:5].to_numpy() == pytest.approx(truth[:5], rel=0.1)
    fit = pd.read_csv(out / "b_crit.csv").iloc[0]
    assert fit["batch sizes fitted"] == "1, 2, 4, 8, 16" and str(fit["left out (not every seed reached)"]) == "32"
    assert fit["steps fit"] == "fitted" and fit["B_crit (steps)"] == pytest.approx(12, rel=0.2)
    assert fit["B_simple at target"] == pytest.approx(12.0)  # beside it: the noise scale the records hold
    assert "1 of 19 plateau runs hit their cap" in md
    assert re.search(
        r"^\| echo \(lag 8\) · plateau cap 16384 · fixed lr \| gru \| 32 \| 32 \| 1/4 \| 3 \| 16384 \|", md, re.M
    )
    assert "**Trained to a plateau (until the held-out loss stops improving, 16384 updates at most).**" in md


# ----------------------------------------------------------------------------------------------- speed table
def _speed_frame(per_round: dict[int, list[float]]) -> pd.DataFrame:
    rows = []
    for bs, values in per_round.items():
        for r, tps in enumerate(values):
            rows.append({"task": "echo", "cell": "lstm", "batch_size": bs, "num_steps": 8, "round": r,
                         "tokens_per_s": tps, "us_per_update": 1e6 * 8 * bs / tps})  # fmt: skip
    return pd.DataFrame(rows)


def test_speed_table_cv_paired_speedup_and_superlinear_flag():
    base = [1000.0, 1100.0, 900.0, 1000.0, 1050.0]
    # batch 4: 3x per round, whatever the round's drift (pairing removes it); batch 16: 20x, above the ratio 16
    wobble = [1.0, 1.01, 0.99, 1.0, 1.005]
    table = speed_table(_speed_frame({1: base, 4: [3 * b * w for b, w in zip(base, wobble, strict=True)],
                                      16: [20 * b * w for b, w in zip(base, wobble, strict=True)]}))  # fmt: skip
    t = table.set_index("batch_size")
    assert t.loc[1, "cv"] == pytest.approx(np.std(base, ddof=1) / np.mean(base))
    assert t.loc[1, "tokens_per_s"] == 1000.0 and t.loc[1, "rounds"] == 5
    assert t.loc[1, "us_per_update"] == pytest.approx(8000.0)
    assert t.loc[4, "speedup"] == pytest.approx(3.0, rel=0.01)
    assert t.loc[4, "speedup_ci_low"] < 3.0 < t.loc[4, "speedup_ci_high"] < 3.1  # paired: round drift cancels
    assert not t.loc[4, "superlinear"]
    assert t.loc[16, "batch_ratio"] == 16 and t.loc[16, "superlinear"]
    assert np.isnan(t.loc[1, "speedup_ci_low"]) and not t.loc[1, "superlinear"]


def test_speed_table_flags_nothing_when_the_interval_straddles_the_ratio():
    base = [1000.0, 1000.0, 1000.0]
    table = speed_table(_speed_frame({1: base, 4: [3000.0, 5000.0, 4200.0]})).set_index("batch_size")
    assert table.loc[4, "speedup_ci_low"] < 4 < table.loc[4, "speedup_ci_high"]
    assert not table.loc[4, "superlinear"]


def test_speed_table_names_a_missing_column():
    with pytest.raises(ValueError, match="tokens_per_s"):
        speed_table(pd.DataFrame({"task": ["echo"], "cell": ["rnn"], "batch_size": [1], "num_steps": [4],
                                  "round": [0]}))  # fmt: skip


# ------------------------------------------------------------------------------------------- time to target
def _ttt_case():
    runs, evals = [], []

    def add(run_id, task, bs, seed, accs, lag_cols=None):
        runs.append({"run_id": run_id, "split": f"{task} · tokens 3000 · fixed lr", "task": task, "cell": "gru",
                     "batch_size": bs, "num_steps": 16, "seed": seed, "chance_accuracy": 0.25,
                     "cfg.task.lag": 8, "cfg.measure.chance_margin": 0.1})  # fmt: skip
        for i, acc in enumerate(accs):
            row = {"run_id": run_id, "step": (i + 1) * 10, "tokens": (i + 1) * 1000, "loss": 1.0}
            row.update(acc if isinstance(acc, dict) else {"acc_lag_8": acc})
            evals.append(row)

    add("a0", "echo", 4, 0, [0.5, 0.92, 0.95])  # reaches 0.9 at the second evaluation
    add("a1", "echo", 4, 1, [0.5, 0.6, 0.89])  # never reaches 0.9
    add("b0", "echo", 16, 0, [0.91, 0.95, 0.99])
    add("b1", "echo", 16, 1, [0.95, 0.95, 0.99])
    add("b2", "echo", 16, 2, [0.5, 0.5, 0.93])
    # lags: span >= 8 needs lags 1, 2, 4, 8 at >= chance + margin = 0.35 (lag 16 does not matter)
    short = {"acc_lag_1": 0.9, "acc_lag_2": 0.9, "acc_lag_4": 0.9, "acc_lag_8": 0.3, "acc_lag_16": 0.9}
    full = {"acc_lag_1": 0.9, "acc_lag_2": 0.9, "acc_lag_4": 0.8, "acc_lag_8": 0.36, "acc_lag_16": 0.26}
    add("c0", "lags", 4, 0, [short, full, full])
    return pd.DataFrame(runs), pd.DataFrame(evals)


def test_time_to_target_first_row_reached_not_reached_and_wall_clock():
    runs, evals = _ttt_case()
    speed = _speed_frame({4: [2000.0] * 3, 16: [4000.0, 5000.0, 4000.0]}).assign(cell="gru", num_steps=16)
    speed = pd.concat([speed, speed.assign(task="lags")], ignore_index=True)
    ttt = time_to_target(runs, evals, speed).set_index(["split", "batch_size"])
    echo4 = ttt.loc[("echo · tokens 3000 · fixed lr", 4)]
    assert (echo4["seeds"], echo4["reached"]) == (2, 1) and not echo4["all_reached"]
    assert np.isnan(echo4["updates"])  # one of two seeds reached it: the censored median is "not reached"
    echo16 = ttt.loc[("echo · tokens 3000 · fixed lr", 16)]
    # b0, b1 met it at the first evaluation (read there: 10); b2 crossed 0.9 between updates 20 (0.5) and 30
    # (0.93), linear in log updates: 20 x 1.5^(0.4 / 0.43)
    b2 = 20 * 1.5 ** (0.4 / 0.43)
    assert echo16["all_reached"] and echo16["updates"] == pytest.approx((10 * 10 * b2) ** (1 / 3))
    assert echo16["updates_ci_low"] < echo16["updates"] < echo16["updates_ci_high"]
    assert echo16["interpolated"] == "1/3"
    # wall-clock = tokens to target x the speed phase's median seconds per token (4000 tokens/s)
    assert echo16["seconds"] == pytest.approx(echo16["tokens"] / 4000.0)
    lags = ttt.loc[("lags · tokens 3000 · fixed lr", 4)]
    # span >= 8 needs lags 1-8 at >= 0.35: the binding margin goes -0.05 (update 10) -> +0.01 (update 20)
    u = 10 * 2 ** (0.05 / 0.06)
    assert lags["updates"] == pytest.approx(u) and lags["tokens"] == pytest.approx(1000 + 1000 * (u - 10) / 10)
    assert lags["seconds"] == pytest.approx(lags["tokens"] / 2000.0)
    shown = show_ttt(ttt.reset_index()).set_index(["split", "batch_size"])
    assert shown.loc[("echo · tokens 3000 · fixed lr", 4), "updates"] == "not reached"
    assert shown.loc[("echo · tokens 3000 · fixed lr", 4), "reached"] == "1/2"
    assert shown.loc[("lags · tokens 3000 · fixed lr", 4), "updates"] == f"{u:.3g}"
    first = fastest_batch(ttt.reset_index()).set_index("split")
    assert first.loc["echo · tokens 3000 · fixed lr", "first in wall-clock"] == 16


def test_time_to_target_interval_covers_the_gap_since_the_previous_evaluation():
    # every seed meets the target at the same evaluation (update 30): a t-interval of identical values has no
    # width, but each run got there somewhere after update 20, the evaluation before
    runs, evals = _ttt_case()
    evals.loc[evals["run_id"].isin(["b0", "b1"]), "acc_lag_8"] = [0.5, 0.5, 0.95] * 2
    ttt = time_to_target(runs, evals, None).set_index(["split", "batch_size"])
    echo16 = ttt.loc[("echo · tokens 3000 · fixed lr", 16)]
    # each crossing interpolated between updates 20 (0.5) and 30 (0.95, and b2's 0.93)
    b01, b2 = 20 * 1.5 ** (0.4 / 0.45), 20 * 1.5 ** (0.4 / 0.43)
    assert echo16["updates"] == pytest.approx((b01 * b01 * b2) ** (1 / 3))
    assert echo16["updates_ci_low"] == pytest.approx(20) and echo16["updates_ci_high"] == pytest.approx(30)
    # a target met at the first evaluation was reached somewhere after update 0
    evals.loc[evals["run_id"] == "b2", "acc_lag_8"] = [0.95, 0.95, 0.95]
    evals.loc[evals["run_id"].isin(["b0", "b1"]), "acc_lag_8"] = [0.95, 0.95, 0.95] * 2
    first = (
        time_to_target(runs, evals, None).set_index(["split", "batch_size"]).loc[("echo · tokens 3000 · fixed lr", 16)]
    )
    assert first["updates"] == pytest.approx(10) and first["updates_ci_low"] == 0


def test_time_to_target_censored_median_when_most_seeds_reach_it():
    runs, evals = _ttt_case()
    evals.loc[(evals["run_id"] == "a1") & (evals["step"] == 30), "acc_lag_8"] = 0.9
    runs = pd.concat([runs, runs[runs["run_id"] == "a1"].assign(run_id="a2", seed=2)], ignore_index=True)
    evals = pd.concat([evals, evals[evals["run_id"] == "a0"].assign(run_id="a2", acc_lag_8=0.1)], ignore_index=True)
    ttt = time_to_target(runs, evals, None).set_index(["split", "batch_size"])
    echo4 = ttt.loc[("echo · tokens 3000 · fixed lr", 4)]
    # seeds cross at ~20 and at 30 (exactly 0.9 there), the third never: the median counts it as last -> 30
    assert echo4["reached"] == 2 and echo4["updates"] == pytest.approx(30) and np.isnan(echo4["updates_ci_low"])
    assert np.isnan(echo4["seconds"])  # no speed phase: no wall-clock
    assert show_ttt(ttt.reset_index()).set_index("batch_size").loc[4, "wall-clock s"].iloc[0] == "— (not timed)"


# ---------------------------------------------------------------------------------------------- noise scale
def test_noise_scale_table_geometric_mean_over_seeds_and_batch_sizes_above_it():
    runs = pd.DataFrame({"split": "s", "cell": "lstm", "num_steps": 8, "batch_size": [1, 4, 64] * 3,
                         "seed": [0] * 3 + [1] * 3 + [2] * 3})  # fmt: skip
    runs["run_id"] = [f"r{i}" for i in range(len(runs))]
    b = {0: 15.0, 1: 16.0, 2: 17.0}  # per seed: the median over its batch sizes
    evals = pd.DataFrame([
        {**r, "step": step, "noise_b_simple": b[r["seed"]] * (1 if r["batch_size"] != 64 else 3), "noise_g2": 1.0,
         "noise_trace": b[r["seed"]]}
        for r in runs.to_dict("records") for step in (50, 100)
    ])  # fmt: skip
    table = noise_scale_table(runs, evals)
    assert list(table["progress"]) == [0.5, 1.0]
    row = table.iloc[-1]
    assert row["b_simple"] == pytest.approx((15 * 16 * 17) ** (1 / 3)) and row["seeds"] == 3
    assert row["ci_low"] < 15 and 17 < row["ci_high"] < 64
    assert row["above B_simple"] == "64" and row["grid batch sizes"] == "1, 4, 64"
    assert noise_scale_table(runs, evals.drop(columns=["noise_b_simple"])).empty


def test_lr_summary_one_row_per_cell_with_the_log_log_exponent():
    chosen = [{"task": "echo", "cell": c, "batch_size": b, "lr": 0.002 * b**k, "n": 3}
              for c, k in (("rnn", 1.0), ("lstm", 0.0)) for b in (1, 4, 16, 64)]  # fmt: skip
    table = lr_summary({"chosen": chosen}).set_index("cell")
    assert len(table) == 2
    assert table.loc["rnn", "exponent"] == pytest.approx(1.0) and table.loc["lstm", "exponent"] == pytest.approx(0.0)
    assert table.loc["rnn", "lr by batch size"].startswith("1: 0.002, 4: 0.008")
    assert lr_summary(None).empty
    with pytest.raises(ValueError, match="field lr"):
        lr_summary({"chosen": [{"task": "echo", "cell": "rnn", "batch_size": 1}]})


# ---------------------------------------------------------------------------------------------- old records
def test_records_of_an_earlier_version_load_and_report_with_new_measures_missing(tmp_path):
    root = tmp_path / "old"
    shutil.copytree(OLD_RECORDS, root)
    res = load_results(root)
    runs = res.runs
    assert len(runs) == 4 and res.skipped.empty and res.missing.empty
    assert set(runs["protocol"]) == {"fixed lr"} and set(runs["budget"]) == {"updates 60"}
    assert res.speed is None and res.lr_search is None
    assert runs["span_source"].eq("measures").all()  # the record's own span, not re-derived
    for col in ("growth_slope", "loss_jitter", "gradient_flat", "probe_span_cell", "grad_norm_cv_late"):
        assert runs[col].isna().all(), col  # marked missing, never invented
    assert not runs["timed_under_load"].any()
    index = build_report(root)
    md = (root / "report" / "report.md").read_text()
    assert index.is_file() and md.startswith("# ") and "## The answer to the thread" in md
    assert "no speed phase" in md and "against batch size (each point timed alone): not drawn" in md
    missing = re.search(r"\| measures these records lack \(shown as missing\) \| ([^|]+) \|", md)
    assert missing and "growth_slope" in missing.group(1) and "loss_jitter" in missing.group(1)
    assert main([str(root), "--out", str(tmp_path / "cli"), "-q"]) == 0


def test_fastest_batch_names_a_tie_when_the_intervals_overlap():
    def point(bs, sec, lo, hi):
        return {"split": "s", "cell": "rnn", "batch_size": bs, "num_steps": 8, "target": "t", "seeds": 3,
                "reached": 3, "all_reached": True, "updates": 100.0 / bs, "updates_ci_low": 90.0 / bs,
                "updates_ci_high": 110.0 / bs, "tokens": 1.0, "tokens_ci_low": 1.0, "tokens_ci_high": 1.0,
                "seconds": sec, "seconds_ci_low": lo, "seconds_ci_high": hi}  # fmt: skip

    ttt = pd.DataFrame([point(1, 10.0, 9.0, 11.0), point(4, 5.0, 4.0, 6.5), point(16, 6.0, 5.5, 7.0)])
    row = fastest_batch(ttt).iloc[0]
    assert row["first in wall-clock"] == "4 = 16 (intervals overlap)" and row["seconds"] == 5.0
    assert row["first in updates"] == 16  # 6.9 at most, below batch 4's 22.5 at least


def test_lr_summary_of_a_tuned_sweep_keeps_num_steps_apart():
    # a tuned sweep picks an lr per (cell, batch_size, num_steps): one row must never list a batch size twice
    chosen = [{"task": "echo", "cell": "gru", "batch_size": b, "num_steps": n,
               "lr": 0.001 * b ** (0.5 if n == 8 else 1), "n": 2} for b in (1, 4, 16) for n in (8, 32)]  # fmt: skip
    table = lr_summary({"chosen": chosen}).set_index("num_steps")
    assert list(table.index) == [8, 32]
    assert table.loc[8, "exponent"] == pytest.approx(0.5) and table.loc[32, "exponent"] == pytest.approx(1.0)
    assert table.loc[8, "lr by batch size"].count("4:") == 1
