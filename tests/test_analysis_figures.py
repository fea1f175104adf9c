"""Figures users ask for (held-out curves, the accuracy heatmap, lr sensitivity) drawn from real run records with
the right numbers, and the README's results table generated from a report (analysis/readme.py)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import figures as figs
from analysis import readme
from analysis.load import load_results, load_series
from analysis.tables import means_table
from analysis.thresholds import load_thresholds

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO = FIXTURES.parent.parent


@pytest.fixture(scope="module")
def fixture_runs() -> pd.DataFrame:
    return load_results(FIXTURES / "records").runs


@pytest.fixture(scope="module")
def data(fixture_runs) -> figs.Data:
    judged = fixture_runs[fixture_runs["in_verdicts"]]
    return figs.Data(runs=judged, steps=pd.DataFrame(), evals=load_series(judged, "evals"), profiles=pd.DataFrame())


def _close(f: figs.Figure) -> None:
    f.close()


# ------------------------------------------------------------------------------------------- held-out curves
def test_held_out_curves_draw_each_grid_point_and_its_seed_mean(data, fixture_runs):
    f = figs.held_out_curves(data)
    try:
        assert f.fig is not None and not f.skipped
        drawn = f.data
        points = set(drawn[["split", "cell", "batch_size", "num_steps"]].itertuples(index=False, name=None))
        judged = fixture_runs[fixture_runs["in_verdicts"]]
        assert points == set(judged[["split", "cell", "batch_size", "num_steps"]].itertuples(index=False, name=None))
        # the last evaluation's loss of echo batch 16 x num_steps 16, read from the parquet files directly
        rows = judged[(judged["task"] == "echo") & (judged["batch_size"] == 16) & (judged["num_steps"] == 16)]
        finals = [pd.read_parquet(Path(d) / "evals.parquet").sort_values("tokens").iloc[-1] for d in rows["folder"]]
        tokens = finals[0]["tokens"]
        line = drawn[(drawn["split"] == rows["split"].iloc[0]) & (drawn["cell"] == "gru")
                     & (drawn["batch_size"] == 16) & (drawn["num_steps"] == 16) & (drawn["measure"] == "loss")
                     & (drawn["tokens"] == tokens)]  # fmt: skip
        assert len(line) == 1 and line["seeds"].iloc[0] == 5
        assert line["mean"].iloc[0] == pytest.approx(np.mean([r["loss"] for r in finals]))
        # one split per budget: a figure never mixes equal tokens with equal updates in one line
        assert drawn.groupby(["split", "cell", "batch_size", "num_steps", "measure", "tokens"]).size().max() == 1
    finally:
        _close(f)


# --------------------------------------------------------------------------------------------------- heatmap
def test_the_heatmap_writes_the_tables_seed_means(data, fixture_runs):
    f = figs.accuracy_heatmap(data)
    try:
        assert f.fig is not None
        values = f.data.set_index(["split", "cell", "batch_size", "num_steps"])
        assert set(values["outcome"]) == {"valid_accuracy"}
        means = means_table(fixture_runs, load_thresholds())
        acc = means[means["outcome"] == "valid_accuracy"].set_index(["split", "cell", "batch_size", "num_steps"])
        assert len(values) == len(acc) == 6
        for key, row in values.iterrows():
            assert row["mean"] == pytest.approx(acc.loc[key, "mean"])
        # the numbers written on the panels are those means (every panel, every cell)
        written = sorted(t.get_text() for ax in f.fig.axes for t in ax.texts)
        assert written == sorted(f"{m:.2f}" for m in values["mean"])
        # and facts a reader can check in tests/fixtures/README.md: echo batch 4 / 16 at num_steps 16
        echo = values.xs("gru", level="cell").reset_index()
        echo = echo[echo["split"].str.startswith("echo") & (echo["num_steps"] == 16)].set_index("batch_size")
        assert echo.loc[4, "mean"] == pytest.approx(np.mean([0.998, 0.992, 0.988, 0.990, 0.683]), abs=2e-3)
        assert echo.loc[16, "mean"] == pytest.approx(np.mean([0.897, 0.950, 0.970, 0.962, 0.949]), abs=2e-3)
    finally:
        _close(f)


def test_the_heatmap_shows_loss_for_text(data):
    runs = data.runs.copy()
    echo = runs["task"] == "echo"
    runs.loc[echo, "task"] = "text"  # a text split: accuracy says little there, the loss is shown
    f = figs.accuracy_heatmap(figs.Data(runs, pd.DataFrame(), pd.DataFrame(), pd.DataFrame()))
    try:
        v = f.data
        text = v[v["split"].isin(runs.loc[echo, "split"])]
        assert set(text["outcome"]) == {"valid_loss"} and set(v.loc[~v.index.isin(text.index), "outcome"]) == {
            "valid_accuracy"
        }
        point = runs[echo & (runs["batch_size"] == 4) & (runs["num_steps"] == 4)]
        row = text[(text["batch_size"] == 4) & (text["num_steps"] == 4)]
        assert row["mean"].iloc[0] == pytest.approx(point["valid_loss"].mean())
        assert 1.3 < row["mean"].iloc[0] < 1.4  # ln 4 = 1.386 at chance: a loss, not an accuracy
    finally:
        _close(f)


# ---------------------------------------------------------------------------------------------- lr sensitivity
def _search_table(best: dict[int, float]) -> dict:
    rows = [
        {"task": "echo", "cell": "gru", "batch_size": b, "num_steps": 32, "lr": lr, "seed": s, "status": "complete",
         "objective": 1.0 + abs(math.log10(lr / best[b])) + 0.1 * (s - 100)}
        for b in best for lr in (0.001, 0.003, 0.01, 0.03) for s in (100, 101)
    ]  # fmt: skip
    rows.append({**rows[0], "status": "failed", "objective": None})
    chosen = [{"task": "echo", "cell": "gru", "batch_size": b, "lr": lr} for b, lr in best.items()]
    return {"table": rows, "chosen": chosen, "objective": "valid_loss"}


def test_lr_sensitivity_from_the_search_table():
    best = {1: 0.001, 16: 0.01}
    empty = pd.DataFrame()
    f = figs.lr_sensitivity(figs.Data(empty, empty, empty, empty, lr_search=_search_table(best)))
    try:
        assert f.fig is not None
        v = f.data.set_index(["batch_size", "lr"])
        assert len(v) == 8 and (v["seeds"] == 2).all()  # the failed run is not a point
        assert v.loc[(16, 0.01), "mean"] == pytest.approx(1.05)  # seeds 100, 101: 1.0 and 1.1
        assert v.loc[(1, 0.03), "mean"] == pytest.approx(1.0 + math.log10(30) + 0.05)
        picked = f.data[f.data["chosen"]]
        assert dict(zip(picked["batch_size"], picked["lr"], strict=True)) == best
    finally:
        _close(f)


def test_lr_sensitivity_from_tuning_records_and_skipped_without_any(data):
    trials = data.runs[data.runs["task"] == "echo"].copy()
    lrs = {4: 0.003, 16: 0.03}
    trials["cfg.optim.lr"] = trials["batch_size"].map(lrs).astype(float)
    trials.loc[trials["seed"] >= 3, "cfg.optim.lr"] *= 10  # two lrs per batch size
    empty = pd.DataFrame()
    f = figs.lr_sensitivity(figs.Data(empty, empty, empty, empty, selection=trials))
    try:
        v = f.data
        assert f.fig is not None and set(v["source"]) == {"selection records"}
        g = trials[(trials["batch_size"] == 4) & (trials["num_steps"] == 16) & (trials["cfg.optim.lr"] == 0.003)]
        row = v[(v["batch_size"] == 4) & (v["num_steps"] == 16) & (v["lr"] == 0.003)]
        assert row["mean"].iloc[0] == pytest.approx(g["valid_loss"].mean()) and row["seeds"].iloc[0] == 3
        # without a chosen list, the lowest mean of its group is marked
        for _, grp in v.groupby(["batch_size", "num_steps"]):
            assert grp.loc[grp["chosen"], "mean"].tolist() == [grp["mean"].min()]
    finally:
        _close(f)
    skipped = figs.lr_sensitivity(figs.Data(empty, empty, empty, empty))
    assert skipped.fig is None and "lr" in skipped.skipped


# ---------------------------------------------------------------------------------------- README results table
def test_the_results_table_holds_the_heatmap_means_and_the_commit(fixture_runs):
    text = readme.results_table(fixture_runs, source="records")
    assert "commit `0d1f00b`" in text
    heat = figs.heatmap_values(fixture_runs[fixture_runs["in_verdicts"]])
    rows = [line for line in text.splitlines() if line.startswith("| echo")]
    assert len(rows) == 1  # one cell (gru) in the echo setting
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[2] == "4 / 16"  # num_steps in the order of the values
    echo = heat[heat["split"].str.startswith("echo")].set_index(["batch_size", "num_steps"])["mean"]
    assert cells[3] == f"{echo[(4, 4)]:.2f} / {echo[(4, 16)]:.2f}"
    assert cells[4] == f"{echo[(16, 4)]:.2f} / {echo[(16, 16)]:.2f}"
    # a searched lr is shown with its batch size; the fixed lr of these records is not
    assert "(lr" not in rows[0]
    searched = fixture_runs.assign(lr_protocol="searched")
    assert "(lr .01)" in readme.results_table(searched)


README = """# project

intro

<!-- results:begin -->
| old | table |
|---|---|
<!-- results:end -->

## after
text after
"""


def test_the_readme_block_is_replaced_and_nothing_else(tmp_path, fixture_runs):
    report = tmp_path / "results" / "report"
    report.mkdir(parents=True)
    table = readme.results_table(fixture_runs, source="records")
    (report / readme.TABLE_FILE).write_text(table)
    path = tmp_path / "README.md"
    path.write_text(README)
    assert readme.update(tmp_path / "results", path)
    new = path.read_text()
    before, _, rest = new.partition(readme.BEGIN + "\n")
    body, _, after = rest.partition(readme.END)
    assert before == "# project\n\nintro\n\n" and after == "\n\n## after\ntext after\n"
    assert body == table and "| old |" not in new
    assert not readme.update(report, path) and path.read_text() == new  # idempotent, from the report folder too


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("# no markers\n", "exactly one line"),
        (f"{readme.END}\nx\n{readme.BEGIN}\n", "comes before"),
        (f"{readme.BEGIN}\n{readme.END}\n{readme.BEGIN}\n{readme.END}\n", "exactly one line"),
    ],
)
def test_a_readme_without_its_markers_fails_clearly_and_is_left_alone(tmp_path, text, why):
    (tmp_path / readme.TABLE_FILE).write_text("| t |\n")
    path = tmp_path / "README.md"
    path.write_text(text)
    out = subprocess.run([sys.executable, "-m", "analysis.readme", str(tmp_path), str(path)], cwd=REPO,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2 and why in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert path.read_text() == text


def test_without_a_report_the_command_says_what_to_run(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(README)
    with pytest.raises(readme.ReadmeError, match="python -m analysis"):
        readme.update(tmp_path, path)
    assert path.read_text() == README


def test_the_repository_readme_has_one_results_block():
    text = (REPO / "README.md").read_text()
    assert text.count(readme.BEGIN) == 1 and text.count(readme.END) == 1
    assert text.index(readme.BEGIN) < text.index(readme.END)


def test_the_report_writes_the_results_table(tmp_path):
    """python -m analysis writes report/results_table.md, the file the README command reads."""
    import shutil

    from analysis.report import build_report

    shutil.copytree(FIXTURES / "records" / "echo", tmp_path / "echo")
    build_report(tmp_path)
    table = (tmp_path / "report" / readme.TABLE_FILE).read_text()
    assert "commit `0d1f00b`" in table and table.count("| echo") == 1


# ------------------------------------------------------------------------------------------- cost to result
def _cost_runs(tmp_path, batch_sizes):
    from analysis.cost import crossings
    from analysis.synthetic import cost_table, write_cost_results

    write_cost_results(tmp_path, cost_table(batch_sizes=batch_sizes, seeds=(0, 1, 2), cap=16384))
    runs = load_results(tmp_path).runs
    return crossings(runs, load_series(runs, "evals"), None)


def test_cost_to_result_draws_the_fit_perfect_scaling_b_crit_and_b_simple(tmp_path):
    from analysis.cost import b_crit_table, cost_to_result

    per_run = _cost_runs(tmp_path, (1, 2, 4, 8, 16, 32, 64))
    ct, bc = cost_to_result(per_run), b_crit_table(per_run, n_boot=200)
    f = figs.cost_to_result_fig(figs.Data(runs=pd.DataFrame(), steps=pd.DataFrame(), evals=pd.DataFrame(),
                                          profiles=pd.DataFrame(), cost=ct, b_crit=bc))  # fmt: skip
    try:
        assert f.fig is not None and len(f.fig.axes) == 1  # one cell, one setting: one panel, none empty
        v = f.data.set_index("batch_size")
        fit = bc.iloc[0]
        assert fit["B_crit (steps)"] == pytest.approx(12, rel=0.15)  # the records' truth: S(B) = 100 (1 + 12/B)
        assert v["fit"].to_numpy() == pytest.approx(fit["S_min"] * (1 + fit["B_crit (steps)"] / v.index.to_numpy()))
        # perfect scaling through the smallest batch: its updates, halved at every doubling
        assert v["perfect"].to_numpy() == pytest.approx(v.loc[1, "updates"] / v.index.to_numpy())
        assert v["updates"].to_numpy() == pytest.approx(ct.set_index("batch_size")["updates"].to_numpy())
        assert v["b_simple"].to_numpy() == pytest.approx(12.0)  # synthetic noise scale: 12 at every evaluation
        ax = f.fig.axes[0]
        assert ax.get_yscale() == "log" and ax.get_xscale() == "log"
        assert any(np.allclose(line.get_xdata(), fit["B_crit (steps)"]) for line in ax.lines)  # the B_crit line
    finally:
        f.close()


def test_cost_to_result_says_why_when_no_setting_has_four_batch_sizes(tmp_path):
    from analysis.cost import b_crit_table, cost_to_result

    per_run = _cost_runs(tmp_path, (1, 4, 16))
    f = figs.cost_to_result_fig(figs.Data(runs=pd.DataFrame(), steps=pd.DataFrame(), evals=pd.DataFrame(),
                                          profiles=pd.DataFrame(), cost=cost_to_result(per_run),
                                          b_crit=b_crit_table(per_run, n_boot=50)))  # fmt: skip
    assert f.fig is None and f.skipped == "no setting has 4 or more batch sizes with a time to target"
