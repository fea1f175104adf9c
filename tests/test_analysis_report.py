"""The report end to end: files written, every figure embedded, the verdict table first, the CLI contract."""

from __future__ import annotations

import re
import shutil
import subprocess

import pandas as pd
import pytest

from analysis import build_report
from analysis.__main__ import main
from analysis.figures import BUILDERS
from analysis.synthetic import runs_table, write_results


@pytest.fixture(scope="module")
def synthetic_results(tmp_path_factory):
    """Two tasks where C4 holds for echo and not for lags (so the report has a split), one diverged run."""
    root = tmp_path_factory.mktemp("results")
    echo = runs_table(cells=("lstm",), batch_sizes=(1, 4), num_steps=(4, 16), seeds=(0, 1), task="echo")
    lags = runs_table(
        cells=("lstm",),
        batch_sizes=(1, 4),
        num_steps=(4, 16),
        seeds=(0, 1),
        task="lags",
        span=lambda *a: 8.0,
        effective_context=lambda *a: 4.0,
        gradient_horizon=lambda *a: 8.0,
    )
    table = pd.concat([echo, lags], ignore_index=True)  # fmt: skip
    table.loc[3, "status"] = "diverged"
    write_results(root, table, updates=30)
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
    assert len(runs) == 16 and {"run_id", "folder", "status", "cfg.model.cell", "tokens_per_s"} <= set(runs)
    assert len(pd.read_csv(out / "runs.csv")) == 16


def test_index_embeds_every_figure_and_needs_no_other_file(report, synthetic_results):
    html = report.read_text()
    pngs = sorted((synthetic_results / "report" / "figures").glob("*.png"))
    svgs = sorted((synthetic_results / "report" / "figures").glob("*.svg"))
    assert len(pngs) == len(svgs) == len(BUILDERS)  # synthetic records carry every series: no figure skipped
    embedded = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]{1000,})"', html)
    assert len(embedded) == len(pngs)
    assert "not drawn" not in html and "failed to draw" not in html
    assert not re.search(r'(src|href)="(?!data:)[^"#]', html)  # nothing loaded from disk or the network


def test_markdown_starts_with_the_verdict_table(report, synthetic_results):
    md = (synthetic_results / "report" / "report.md").read_text()
    first_table = md.index("| Claim | Statement | Verdict | Statistic | Evidence |")
    assert first_table < md.index("## Protocol") < md.index("## Figures")
    rows = re.findall(r"^\| (C\d) \| [^|]+ \| (supported|refuted|mixed|inconclusive) \|", md, re.M)
    verdicts = dict(rows[:6])
    assert list(verdicts) == ["C1", "C2", "C3", "C4", "C5", "C6"]
    assert verdicts["C4"] == "mixed"  # echo supports it, lags does not
    assert "| echo (lag 8) · tokens 65536 · fixed lr | supported |" in md  # the split is shown
    assert "Failed and diverged runs" in md and "diverged" in md
    assert md.count("![") == len(BUILDERS)


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

    def fake_build(results_dir, out, thresholds, stability):
        seen.update(results_dir=results_dir, out=out, thresholds=thresholds, stability=stability)
        return tmp_path / "index.html"

    monkeypatch.setattr("analysis.__main__.build_report", fake_build)
    assert main(["res", "--out", "rep", "--thresholds", "t.yaml", "-q"]) == 0
    assert seen == {"results_dir": "res", "out": "rep", "thresholds": "t.yaml", "stability": None}
    monkeypatch.undo()
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no run records") and "\n" not in err


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (apt-get install -y chromium)")
def test_headless_chromium_renders_the_report(report, tmp_path):
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
         "--window-size=1400,4000", report.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[0] >= 4000 and pixels.std() > 0.05  # a page with content, not a blank one


def test_bench_timing_stability_file_is_read_when_present(tmp_path, monkeypatch):
    from analysis.report import read_stability

    monkeypatch.setattr("analysis.report.BENCH_STABILITY", tmp_path / "bench-out" / "stability.json")
    assert read_stability(tmp_path, None) == (0.0, "")
    (tmp_path / "bench-out").mkdir()
    (tmp_path / "bench-out" / "stability.json").write_text('{"cv": 0.2}')  # what `make bench` writes
    assert read_stability(tmp_path, None) == (pytest.approx(0.2), str(tmp_path / "bench-out" / "stability.json"))
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "timing_stability.json").write_text('{"cv": 0.07, "repeats": 5}')
    cv, source = read_stability(tmp_path, None)
    assert cv == pytest.approx(0.07) and source.endswith("bench/timing_stability.json")
    (tmp_path / "other.json").write_text('{"tokens_per_s_cv": 0.03}')
    assert read_stability(tmp_path, tmp_path / "other.json")[0] == pytest.approx(0.03)
