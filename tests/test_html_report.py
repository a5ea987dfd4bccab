"""The results report of the Table-1 runner (pgdet/protocol: forest_plot, html_report,
saved_table) drawn from a hand-written table1.json.

The oracle is the hand-made table: three control runs with AP 40, 41, 42, a PG γ=1 row whose
runs gain 0.5, 1.0 and 1.5 on them (mean 1.0, sample sd 0.5, paired-t 95 % interval
1 ± 4.303·0.5/√3 = [−0.242, 2.242]), a single baseline 0.3 above the controls' mean, and a PG γ=0
row that lacks seed 2 (not paired). The forest plot must draw exactly those numbers, and the page
must show the cells table1.md prints for them, computed here by hand.
"""
import base64
import json
import math
import re

import pytest
from PIL import Image

from pgdet.protocol import forest_plot, html_report, saved_table

CONTROL_APS = (40.0, 41.0, 42.0)
PG_APS = (40.5, 42.0, 43.5)
CI_HALF = 4.303 * 0.5 / math.sqrt(3)
PG_CI = [1.0 - CI_HALF, 1.0 + CI_HALF]


def _run(folder, ap, seed):
    metrics = {"AP": ap, "AP50": 60.0, "AP75": 45.0, "APs": 20.0, "APm": 40.0, "APl": 50.0}
    return {"seed": seed, "output_dir": folder, "metrics": metrics, "baseline": None}


def _row(method, runs, vs_control):
    return {"method": method, "nms": "greedy", "runs": runs, "mean": {}, "std": {},
            "paper": None, "vs_control": vs_control}


def hand_table():
    """A table1.json as the runner writes it, with hand-computed gains and intervals."""
    control = [f"out/finetune_standard/seed{s}" for s in range(3)]
    pg = [f"out/pg_gamma1/seed{s}" for s in range(3)]
    pg0 = [f"out/pg_gamma0/seed{s}" for s in range(2)]
    return {
        "baseline_config": "base.yaml", "finetune_config": "ft.yaml", "seeds": [0, 1, 2],
        "baseline_seeds": None, "opts": [], "baseline_opts": [], "finetune_opts": [],
        "test_dataset": "cells_test", "paper_column": None,
        "bootstrap": {"resamples": 1000, "seed": 0},
        "methods": {"standard fine-tune": {"folder": "finetune_standard",
                                           "opts": ["MODEL.PG.ENABLED", "False"]}},
        "rows": [
            _row("standard (baseline)", [_run("out/baseline", 41.3, None)], {
                "pairs": [{"baseline": None, "seed": None, "run": "out/baseline",
                           "control_runs": control, "gain": 0.3}],
                "unpaired": [], "mean_gain": 0.3, "t_quantile": None, "ci95": None,
                "no_gain": None, "bootstrap95": [-0.4, 0.9]}),
            _row("standard fine-tune", [_run(f, ap, s) for s, (f, ap) in
                                        enumerate(zip(control, CONTROL_APS))], None),
            _row("PG γ=1", [_run(f, ap, s) for s, (f, ap) in enumerate(zip(pg, PG_APS))], {
                "pairs": [{"baseline": None, "seed": s, "run": pg[s],
                           "control_runs": [control[s]], "gain": gain}
                          for s, gain in enumerate((0.5, 1.0, 1.5))],
                "unpaired": [], "mean_gain": 1.0, "t_quantile": 4.303, "ci95": PG_CI,
                "no_gain": True, "bootstrap95": [0.1, 1.9]}),
            _row("PG γ=0", [_run(f, 39.0 + s, s) for s, f in enumerate(pg0)], {
                "pairs": [{"baseline": None, "seed": s, "run": pg0[s],
                           "control_runs": [control[s]], "gain": -1.0} for s in range(2)],
                "unpaired": ["no PG γ=0 run for seed 2"], "mean_gain": -1.0,
                "t_quantile": None, "ci95": None, "no_gain": None, "bootstrap95": None}),
        ],
    }


# the cells table1.md prints for hand_table(), by hand: (method, ΔAP cell, per pair, bootstrap)
EXPECTED_GAIN_CELLS = [
    ("standard (baseline)", "+0.3 (1 pair, no CI)", "+0.3", "[−0.4, +0.9]"),
    ("standard fine-tune", "—", "—", "—"),
    ("PG γ=1", "+1.0 [−0.2, +2.2] no gain", "+0.5, +1.0, +1.5", "[+0.1, +1.9]"),
    ("PG γ=0", "not paired: no PG γ=0 run for seed 2", "−1.0, −1.0", "—"),
]


def test_forest_rows_hold_each_rows_gain_intervals_and_pairs():
    rows = forest_plot.forest_rows(hand_table())
    assert [r.label for r in rows] == ["standard (baseline), greedy", "PG γ=1, greedy",
                                       "PG γ=0, greedy"]  # the control is the line at 0
    baseline, pg, unpaired = rows
    assert (baseline.mean, baseline.ci95, baseline.bootstrap95, baseline.points) == (
        0.3, None, (-0.4, 0.9), (0.3,))
    assert pg.mean == 1.0 and pg.ci95 == pytest.approx((-0.24217, 2.24217), abs=1e-5)
    assert (pg.bootstrap95, pg.points, pg.unpaired) == ((0.1, 1.9), (0.5, 1.0, 1.5), ())
    assert unpaired.mean is None and unpaired.ci95 is None
    assert unpaired.unpaired == ("no PG γ=0 run for seed 2",)


def _drawn(fig):
    """{(kind, label): (x data, y data)} of the marks the forest plot drew, by their gid."""
    (ax,) = [a for a in fig.axes if a.get_yticklabels() and a.lines]
    marks = {tuple(line.get_gid().split("|")): (list(line.get_xdata()), list(line.get_ydata()))
             for line in ax.lines if line.get_gid()}
    return ax, marks


def test_forest_plot_draws_the_jsons_numbers_one_row_each():
    fig = forest_plot.forest_plot_figure(forest_plot.forest_rows(hand_table()), "title")
    ax, marks = _drawn(fig)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["standard (baseline)\ngreedy NMS", "PG γ=1\ngreedy NMS",
                      "PG γ=0\ngreedy NMS"]
    pg, baseline = "PG γ=1, greedy", "standard (baseline), greedy"
    assert marks["ci95", pg][0] == pytest.approx(PG_CI)
    assert marks["ci95", pg][1] == [1, 1]  # on the second row's line
    assert marks["bootstrap95", pg][0] == [0.1, 1.9]
    assert marks["mean", pg] == ([1.0], [1])
    assert marks["pairs", pg][0] == [0.5, 1.0, 1.5]
    assert marks["mean", baseline] == ([0.3], [0]) and marks["pairs", baseline][0] == [0.3]
    assert marks["bootstrap95", baseline][0] == [-0.4, 0.9]
    assert ("ci95", baseline) not in marks  # one pair: no interval
    assert not [k for k in marks if k[1] == "PG γ=0, greedy"]  # not paired: no gain drawn
    assert any(list(line.get_xdata()) == [0, 0] for line in ax.lines)  # the line at 0
    low, high = ax.get_xlim()
    assert low < -0.4 and high > 2.24217  # every interval inside the plot
    assert low > -1.0  # the unpaired row's gains (−1.0), which it does not draw, set no limit


def _write_png(path, colour):
    Image.new("RGB", (40, 30), colour).save(path)


def _table_cells(page):
    """{method: [cells]} of the page's table."""
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", page, re.S)
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in rows]
    return {c[0]: c for c in cells if c}


def test_report_is_self_contained_and_shows_every_row_as_table1_md(tmp_path):
    (tmp_path / "table1.json").write_text(json.dumps(hand_table(), ensure_ascii=False))
    figures = tmp_path / "figures"
    figures.mkdir()
    _write_png(figures / "training_curves.png", (255, 0, 0))
    _write_png(figures / "figure3_detections.png", (0, 0, 255))
    path = html_report.write_html_report(str(tmp_path))
    page = open(path, encoding="utf-8").read()
    assert path == str(tmp_path / "report.html")
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)  # nothing to fetch
    assert "http://" not in page and "https://" not in page
    sources = re.findall(r"<img[^>]*src=\"([^\"]*)\"", page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    embedded = [base64.b64decode(s.split(",", 1)[1]) for s in sources]
    assert embedded == [(figures / name).read_bytes() for name in (
        "forest_plot.png", "training_curves.png", "figure3_detections.png")]
    table = _table_cells(page)
    assert list(table) == [method for method, *_ in EXPECTED_GAIN_CELLS]
    for method, gain, per_pair, bootstrap in EXPECTED_GAIN_CELLS:
        assert table[method][-3:] == [gain, per_pair, bootstrap], method
    assert table["PG γ=1"][2:4] == ["3", "42.0 ± 1.5"]  # runs, AP mean ± sample std
    assert table["standard (baseline)"][2:4] == ["1", "41.3"]


def test_a_missing_figure_is_named_and_a_missing_table_is_one_line(tmp_path, capsys):
    (tmp_path / "table1.json").write_text(json.dumps(hand_table(), ensure_ascii=False))
    html_report.main([str(tmp_path)])
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "figures/training_curves.png was not drawn" in page
    assert page.count("<img") == 1  # the forest plot, drawn from table1.json alone
    assert "report written to" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        html_report.main([str(tmp_path / "nowhere")])
    message = str(stop.value.code)
    assert message.startswith("error: ") and "table1.json does not exist" in message
    assert "\n" not in message


def test_paper_column_of_an_older_table1_json_is_found_from_its_numbers():
    raw = hand_table()
    del raw["paper_column"]
    assert saved_table.saved_paper_column(raw) is None
    raw["rows"][0]["paper"] = dict(zip(("AP", "AP50", "AP75", "APs", "APm", "APl"),
                                       (37.7, 58.5, 40.8, 19.3, 41.7, 52.3)))
    assert saved_table.saved_paper_column(raw) == "fpn"
