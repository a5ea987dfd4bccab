"""The Table-1 runner (pgdet/protocol, benchmarks/table1.py) end to end on a tiny dataset, and
its table maths.

The end-to-end test runs the real runner (baseline 8 iterations, each fine-tune 2, one seed) on a
Pascal-VOC folder of a few images written here, so that each evaluation takes a second: first
with two stages at a time from another folder, then again (reusing every stage) as the script
of the repository. The oracles are the files the stages themselves wrote: each run's
``eval_metrics.json`` (what the table must show; for a model without any detection, 0 where
pycocotools measures the test set) and ``config.yaml`` (what each method must have trained
with). The paired statistics are checked on hand-computed numbers, the test-image bootstrap
against pycocotools run directly, the layout of several baselines and the scheduling of --jobs
with the training stages faked.
"""
import html
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from pgdet.data.demo import CLASS_NAMES
from pgdet.engine import ConfigError, build_cfg
from pgdet.protocol import (
    bootstrap, cli, methods, no_detections, report, runs, stages, stats,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "table1.py")
DEMO = os.path.join(REPO, "pgdet", "configs", "demo")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# (row label, folder of its greedy-NMS run relative to the output) as documented by the runner
RUNS = {
    "standard (baseline)": "baseline",
    "standard fine-tune": "finetune_standard/seed0",
    "OHEM": "ohem/seed0",
    "PG γ=0": "pg_gamma0/seed0",
    "PG γ=1": "pg_gamma1/seed0",
    "RS loss": "rs_loss/seed0",
}
GAIN = "ΔAP vs standard fine-tune (paired, 95 % CI)"
PAPER_AP = {("standard (baseline)", "greedy"): "36.3", ("standard (baseline)", "soft-NMS"): "36.9",
            ("OHEM", "greedy"): "36.9", ("PG γ=0", "greedy"): "37.6", ("PG γ=1", "greedy"): "38.3",
            ("PG γ=1", "soft-NMS"): "38.5"}


def _draw_shape(draw, class_index, x0, y0, side, colour):
    """A filled disc / square / triangle / cross (the demo's classes) in the box (x0, y0, side)."""
    x1, y1 = x0 + side, y0 + side
    if class_index == 0:
        draw.ellipse([x0, y0, x1, y1], fill=colour)
    elif class_index == 1:
        draw.rectangle([x0, y0, x1, y1], fill=colour)
    elif class_index == 2:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=colour)
    else:
        third = side / 3
        draw.rectangle([x0 + third, y0, x1 - third, y1], fill=colour)
        draw.rectangle([x0, y0 + third, x1, y1 - third], fill=colour)


def write_tiny_voc(root, num_train=8, num_val=4, size=128):
    """A Pascal-VOC folder of images with two large shapes each (all four classes occur).

    Large objects make even a model trained for a few iterations score a non-zero, run-dependent
    AP, so that the table's numbers can tell the runs apart.
    """
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for split, count, code in (("train", num_train, 0), ("val", num_val, 1)):
        ids = [f"{split}{i:02d}" for i in range(count)]
        for i, file_id in enumerate(ids):
            rng = np.random.default_rng([code, i])
            image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 80, 3)))
            objects = ""
            for k, class_index in enumerate(((i + code) % 4, (i + code + 1) % 4)):
                side = int(rng.integers(40, 60))
                x0 = 4 + 64 * k + int(rng.integers(0, 61 - side))
                y0 = int(rng.integers(4, size - side - 4))
                colour = tuple(int(v) for v in rng.integers(150, 256, 3))
                _draw_shape(ImageDraw.Draw(image), class_index, x0, y0, side, colour)
                objects += (f"<object><name>{CLASS_NAMES[class_index]}</name><bndbox>"
                            f"<xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
                            f"<xmax>{x0 + side + 1}</xmax><ymax>{y0 + side + 1}</ymax>"
                            "</bndbox></object>")
            image.save(os.path.join(root, "JPEGImages", file_id + ".jpg"))
            with open(os.path.join(root, "Annotations", file_id + ".xml"), "w") as f:
                f.write(f"<annotation><size><width>{size}</width><height>{size}</height></size>"
                        f"{objects}</annotation>")
        with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("\n".join(ids) + "\n")


def parse_markdown_table(text):
    """{(method, NMS): {column: cell}} of the first markdown table in `text`."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        rows[cells["method"], cells["NMS"]] = cells
    return rows


def parse_html_table(page):
    """{(method, NMS): {column: cell}} of the table in report.html, cells unescaped."""
    rows = [[html.unescape(c) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", row)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page, re.S)]
    return {(cells["method"], cells["NMS"]): cells
            for cells in (dict(zip(rows[0], row)) for row in rows[1:])}


def file_mtimes(root):
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(root) for f in files
            if f.endswith((".pth", ".txt", ".json")) and "figures" not in d
            and not f.startswith("table1")}


def checkout_env():
    """The environment of a test's subprocess: one thread per process (on a shared 2-core
    machine OpenMP spinning makes runs ~5x slower) and the pgdet of this checkout, not whichever
    one is installed (e.g. in another worktree)."""
    python_path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=python_path)


def table1_command(out, options, data_opts):
    """The runner on the demo detector with a tiny schedule (baseline 8 iterations, each
    fine-tune 2, seed 0, 2 images per batch, few RoIs): `options` are the runner's own,
    `data_opts` the overrides naming the datasets."""
    return [
        sys.executable, SCRIPT,
        "--baseline-config", os.path.join(DEMO, "frcnn_MobileNetV2_FPN_demo.yaml"),
        "--finetune-config", os.path.join(DEMO, "ft_MobileNetV2_FPN_demo.yaml"),
        "--seeds", "0", "--output", str(out), *options,
        "--baseline-opts", "SOLVER.MAX_ITER", "8",
        "--finetune-opts", "SOLVER.MAX_ITER", "2", "SOLVER.BASE_LR", "0.02", "--", *data_opts,
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.OHEM.BATCH_SIZE_PER_IMAGE", "32",
    ]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("table1")
    voc = str(root / "voc")
    write_tiny_voc(voc)
    out = root / "out"
    cmd = table1_command(out, ["--paper-column", "--figure-images", "2"], [
        "DATASETS.VOC_DIRS", f"['tiny_train:{voc}:train','tiny_val:{voc}:val']",
        "DATASETS.TRAIN", "('tiny_train',)", "DATASETS.TEST", "('tiny_val',)"])
    env = checkout_env()
    # first two stages at a time, from a folder outside the repository
    first = subprocess.run(cmd[:2] + ["--jobs", "2"] + cmd[2:], cwd=root, env=env,
                           capture_output=True, text=True, timeout=3600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    before = file_mtimes(out)
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return {"out": out, "first": first.stdout, "second": second.stdout, "before": before,
            "after": file_mtimes(out)}


def _eval_metrics(run_dir):
    with open(os.path.join(run_dir, "eval_metrics.json")) as f:
        return json.load(f)


def _tiny_val_file(run_dir, name):
    with open(os.path.join(run_dir, "inference", "tiny_val", name)) as f:
        return json.load(f)


def _shown_metrics(run_dir):
    """What the table must show for a run: the metrics its evaluation reported, except for a
    model without any detection (COCOEvaluator: NaN everywhere, saved predictions []), which
    has 0 on each metric pycocotools measures on the test set: those where a detection matching
    nothing scores 0, not -1."""
    metrics = _eval_metrics(run_dir)
    if _tiny_val_file(run_dir, "coco_instances_results.json"):
        return metrics
    assert all(math.isnan(v) for v in metrics.values()), run_dir
    ground_truth = _tiny_val_file(run_dir, "tiny_val_coco_format.json")
    nothing = _box(ground_truth["images"][0]["id"], ground_truth["categories"][0]["id"],
                   (0, 0, 1, 1), score=1.0)
    oracle = _pycocotools_stats(ground_truth, [nothing])
    return {key: 0.0 if oracle[i] == 0 else float("nan") for i, key in enumerate(METRICS)}


def _expected_runs(out):
    """{(method, NMS): folder} from the documented layout: soft-NMS in <run>/soft_nms."""
    return {(label, nms): os.path.join(out, rel, *(["soft_nms"] if nms == "soft-NMS" else []))
            for label, rel in RUNS.items() for nms in ("greedy", "soft-NMS")}


def _fmt(value, sign=""):
    return "nan" if math.isnan(value) else f"{value:{sign}.1f}"


def test_table_rows_equal_each_runs_eval_metrics(experiment):
    """The table shows each run's metrics; those of a model without detections as 0 where the
    test set can be measured, as the runner's log says."""
    out = experiment["out"]
    table = parse_markdown_table((out / "table1.md").read_text())
    expected = _expected_runs(out)
    assert set(table) == set(expected)
    # the check below can only catch swapped runs if the runs differ
    assert len({cells["AP50"] for cells in table.values()}) >= 3
    control = {nms: _shown_metrics(expected["standard fine-tune", nms])["AP"]
               for nms in ("greedy", "soft-NMS")}
    for (label, nms), run_dir in expected.items():
        metrics = _shown_metrics(run_dir)
        cells = table[label, nms]
        assert cells["runs"] == "1"
        for key in METRICS:
            assert cells[key] == _fmt(metrics[key]), (label, nms, key)
        if label == "standard fine-tune":
            assert cells[GAIN] == cells["ΔAP per pair"] == "—"
        else:  # one seed: one pair, whose gain is the difference of the two runs' AP
            gain = _unicode_minus(_fmt(metrics["AP"] - control[nms], "+"))
            assert cells[GAIN] == f"{gain} (1 pair, no CI)"
            assert cells["ΔAP per pair"] == gain
        assert cells["paper AP (frcnn)"] == PAPER_AP.get((label, nms), "—")


def test_raw_json_holds_the_exact_numbers(experiment):
    out = experiment["out"]
    raw = json.loads((out / "table1.json").read_text())
    expected = _expected_runs(out)
    assert len(raw["rows"]) == len(expected)
    for row in raw["rows"]:
        (run,) = row["runs"]
        assert run["output_dir"] == expected[row["method"], row["nms"]]
        metrics = _shown_metrics(run["output_dir"])
        assert run["metrics"] == pytest.approx(metrics, nan_ok=True)
        assert run["seed"] == (None if row["method"] == "standard (baseline)" else 0)
        assert run["baseline"] is None
        if row["method"] != "standard fine-tune":
            (pair,) = row["vs_control"]["pairs"]
            (control_dir,) = pair["control_runs"]
            assert pair["gain"] == pytest.approx(
                metrics["AP"] - _shown_metrics(control_dir)["AP"], nan_ok=True)
            assert row["vs_control"]["ci95"] is None and row["vs_control"]["unpaired"] == []
    pg = next(r for r in raw["rows"] if (r["method"], r["nms"]) == ("PG γ=1", "soft-NMS"))
    assert pg["paper"] == {"AP": 38.5, "AP50": 60.8, "AP75": 41.3, "APs": 20.9, "APm": 43.4,
                           "APl": 52.7}


def _config(run_dir):
    with open(os.path.join(run_dir, "config.yaml")) as f:
        return yaml.safe_load(f)


def test_each_stage_trained_and_evaluated_what_its_row_claims(experiment):
    out = experiment["out"]
    baseline = _config(out / "baseline")
    assert baseline["SOLVER"]["MAX_ITER"] == 8 and baseline["MODEL"]["WEIGHTS"] == ""
    claims = {  # folder: (PG enabled, gamma, ROI heads)
        "finetune_standard": (False, None, "PGROIHeads"),
        "ohem": (False, None, "OHEMROIHeads"),
        "pg_gamma0": (True, 0.0, "PGROIHeads"),
        "pg_gamma1": (True, 1.0, "PGROIHeads"),
        "rs_loss": (False, None, "RSROIHeads"),
    }
    weights = str(out / "baseline" / "model_final.pth")
    for folder, (enabled, gamma, heads) in claims.items():
        run = out / folder / "seed0"
        cfg = _config(run)
        assert cfg["MODEL"]["WEIGHTS"] == weights
        assert cfg["SOLVER"]["MAX_ITER"] == 2 and cfg["SEED"] == 0
        assert cfg["MODEL"]["PG"]["ENABLED"] is enabled
        assert cfg["MODEL"]["ROI_HEADS"]["NAME"] == heads
        assert cfg["MODEL"]["RS_LOSS"]["ENABLED"] is (heads == "RSROIHeads")
        if gamma is not None:
            assert cfg["MODEL"]["PG"]["GAMMA"] == gamma
        assert not cfg["MODEL"]["SOFT_NMS"]["ENABLED"]
        soft = _config(run / "soft_nms")
        assert soft["MODEL"]["SOFT_NMS"]["ENABLED"] and soft["MODEL"]["WEIGHTS"] == str(
            run / "model_final.pth")
        assert not (run / "soft_nms" / "model_final.pth").exists()  # evaluated, not trained
    records = [json.loads(line) for line in (out / "pg_gamma1" / "seed0" / "metrics.json").open()]
    assert any("pg/mean_weight" in r for r in records)
    records = [json.loads(line) for line in (out / "rs_loss" / "seed0" / "metrics.json").open()]
    assert any("rs/ranking_error" in r for r in records)


def test_bootstrap_rescores_what_each_evaluation_scored(experiment):
    """The identity resample of a run's saved predictions is the AP its COCOEvaluator reported,
    so the bootstrap resamples the evaluation the table shows; a model without detections, for
    which COCOEvaluator reports NaN, has AP 0."""
    from pgdet.evaluation import per_image_evaluation, resampled_ap
    out = experiment["out"]
    for run_dir in _expected_runs(out).values():
        ground_truth, predictions = bootstrap.evaluation_files(run_dir, "tiny_val")
        (ap,) = 100 * resampled_ap(per_image_evaluation(ground_truth, predictions), np.ones((1, 4)))
        reported = _eval_metrics(run_dir)["AP"]
        if math.isnan(reported):
            with open(predictions) as f:
                assert json.load(f) == [] and ap == 0, run_dir
        else:
            assert ap == pytest.approx(reported, abs=1e-9), run_dir
    table = parse_markdown_table((out / "table1.md").read_text())
    raw = json.loads((out / "table1.json").read_text())
    assert raw["bootstrap"] == {"resamples": 1000, "seed": 0}
    for row in raw["rows"]:
        cell = table[row["method"], row["nms"]]["ΔAP, test-image bootstrap 95 %"]
        if row["method"] == "standard fine-tune":
            assert row["vs_control"] is None and cell == "—"
            continue
        low, high = row["vs_control"]["bootstrap95"]
        assert low <= high
        assert cell == _unicode_minus(f"[{low:+.1f}, {high:+.1f}]")


def test_figures_are_pngs(experiment):
    for name in ("figure3_detections.png", "training_curves.png", "forest_plot.png"):
        path = experiment["out"] / "figures" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert min(image.size) >= 400
            assert np.asarray(image.convert("L")).std() > 10  # not a blank canvas


def test_report_html_shows_table1_md_and_every_picture(experiment):
    out = experiment["out"]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert parse_html_table(page) == parse_markdown_table((out / "table1.md").read_text())
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 3
    assert "report written to" in experiment["second"]


def test_jobs_show_one_progress_display_and_log_each_stage(experiment):
    first = experiment["first"]
    progress = [line for line in first.splitlines() if "stages done" in line]
    assert len(progress) == 2 * 12  # a line when each stage starts and when it ends
    assert progress[-1].startswith("[table1] 12/12 stages done, 0 running, 0 left | ")
    assert "total_loss" not in first  # the iterations go to the stages' logs only
    for (label, nms), run_dir in _expected_runs(experiment["out"]).items():
        (log,) = [f for f in os.listdir(run_dir) if f.startswith("log_")]
        text = open(os.path.join(run_dir, log)).read()
        assert "copypaste: AP,AP50,AP75,APs,APm,APl" in text, run_dir  # its final evaluation
        assert ("total_loss" in text) == (nms == "greedy"), run_dir


def test_rerun_reuses_every_stage(experiment):
    assert experiment["before"] == experiment["after"]  # no weights, log or metrics rewritten
    assert experiment["second"].count("reusing finished run") == 12
    assert "$ " not in experiment["second"]  # no train_net.py command was started
    assert experiment["first"].count("$ ") == 12


def _row(aps, nms="greedy", method="PG γ=1"):
    row_runs = [runs.Run(seed, f"/runs/{seed}", {k: ap + i for i, k in enumerate(METRICS)})
                for seed, ap in enumerate(aps)]
    return runs.Row(method, nms, row_runs)


def test_mean_and_sample_std_over_seeds_and_no_gain_without_the_controls_seed():
    pg_aps, control_aps = [30.0, 31.5, 29.25], [28.0, 28.5]
    rows = [_row(control_aps, method="standard fine-tune"), _row(pg_aps)]
    table = parse_markdown_table(report.format_table1(rows, stats.compare_with_control(rows)))
    cells = table["PG γ=1", "greedy"]
    assert cells["runs"] == "3"
    for i, key in enumerate(METRICS):
        values = [ap + i for ap in pg_aps]
        assert cells[key] == f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
    # seed 2 has no control run: no gain is computed from the unequal sets of runs
    assert cells[GAIN] == "not paired: no standard fine-tune run for seed 2"
    assert cells["ΔAP per pair"] == "+2.0, +3.0"  # the seeds that do pair


def _keyed_row(aps, method):
    """A greedy-NMS row of runs {(baseline, seed): AP}."""
    row_runs = [runs.Run(seed, f"/{method}/{b}/{seed}", dict.fromkeys(METRICS, ap), b)
                for (b, seed), ap in aps.items()]
    return runs.Row(method, "greedy", row_runs)


def _unicode_minus(text):
    return text.replace("-", "\u2212")


def test_paired_t_interval_on_hand_computed_gains():
    # mean 0.6667, sample sd 0.4509, t_{0.975,2} = 4.303: 0.6667 ± 4.303 · 0.4509 / √3
    low, high = stats.paired_t_interval([0.2, 0.7, 1.1])
    assert (low, high) == pytest.approx((-0.4535, 1.7869), abs=1e-4)
    assert stats.paired_t_interval([0.5]) is None
    assert stats.paired_t_interval([0.3, 0.3]) == pytest.approx((0.3, 0.3))


def test_t_quantiles_match_scipy_and_are_never_too_small():
    scipy_stats = pytest.importorskip("scipy.stats")
    dfs = np.arange(1, 1000)
    exact = scipy_stats.t.ppf(0.975, dfs)
    tabulated = np.array([stats.t_quantile_975(d) for d in dfs])
    assert (tabulated[:30] - exact[:30] < 1e-3).all()  # df 1-30: scipy's value rounded up
    assert ((exact <= tabulated) & (tabulated <= 1.011 * exact)).all()


def test_runs_pair_by_baseline_and_seed_whatever_their_order():
    control = {(0, 0): 50.0, (0, 1): 51.0, (1, 0): 49.0, (1, 1): 52.0}
    method = {(1, 1): 52.2, (0, 0): 50.7, (1, 0): 50.1, (0, 1): 51.8}  # gains .2 .7 1.1 .8
    baselines = {(0, None): 49.5, (1, None): 50.1}  # vs their controls' means 50.5 and 50.5
    rows = [_keyed_row(aps, label) for aps, label in (
        (baselines, "standard (baseline)"), (control, "standard fine-tune"), (method, "PG γ=1"))]
    comparisons = stats.compare_with_control(rows)
    pg = comparisons["PG γ=1", "greedy"]
    assert pg.unpaired == []
    assert pg.gains() == pytest.approx([0.2, 0.7, 1.1, 0.8])
    assert [c.output_dir for _, (c,) in pg.pairs] == [
        "/standard fine-tune/1/1", "/standard fine-tune/0/0", "/standard fine-tune/1/0",
        "/standard fine-tune/0/1"]
    # mean 0.7, sample sd 0.3742, t_{0.975,3} = 3.182: 0.7 ± 3.182 · 0.3742 / 2 (the runner's
    # table rounds t up to 3.183)
    assert pg.interval() == pytest.approx((0.1047, 1.2953), abs=1e-3)
    assert comparisons["standard (baseline)", "greedy"].gains() == pytest.approx([-1.0, -0.4])
    table = parse_markdown_table(report.format_table1(rows, comparisons))
    assert table["PG γ=1", "greedy"][GAIN] == "+0.7 [+0.1, +1.3]"
    assert table["PG γ=1", "greedy"]["ΔAP per pair"] == "+0.2, +0.7, +1.1, +0.8"
    # −0.7 ± 12.706 · 0.4243 / √2
    baseline = table["standard (baseline)", "greedy"]
    assert baseline[GAIN] == _unicode_minus("-0.7 [-4.5, +3.1] no gain")
    assert table["standard fine-tune", "greedy"][GAIN] == "—"


def test_a_missing_run_is_named_not_paired_around():
    control = {(0, 0): 50.0, (0, 1): 51.0, (1, 0): 49.0, (1, 1): 52.0}
    method = {(0, 0): 50.7, (0, 1): 51.6, (1, 0): 50.1}  # (1, 1) did not run
    extra = {(0, 0): 50.7, (0, 1): 51.6, (1, 0): 50.1, (1, 1): 52.0, (2, 0): 49.0}
    rows = [_keyed_row(control, "standard fine-tune"),
            _keyed_row(method, "PG γ=1"), _keyed_row(extra, "OHEM")]
    comparisons = stats.compare_with_control(rows)
    pg, ohem = comparisons["PG γ=1", "greedy"], comparisons["OHEM", "greedy"]
    assert pg.unpaired == ["no PG γ=1 run for baseline 1, seed 1"]
    assert ohem.unpaired == ["no standard fine-tune run for baseline 2, seed 0"]
    assert pg.interval() is None and ohem.interval() is None
    table = parse_markdown_table(report.format_table1(rows, comparisons))
    assert table["PG γ=1", "greedy"][GAIN] == "not paired: no PG γ=1 run for baseline 1, seed 1"
    assert table["OHEM", "greedy"]["ΔAP per pair"] == "+0.7, +0.6, +1.1, +0.0"


def test_grid_is_the_cartesian_product_and_duplicates_of_pg_are_dropped():
    grid = methods.grid_variants(["MODEL.PG.REWARD_ESTIMATOR=joint,conditional",
                                 "MODEL.PG.SAMPLE_NMS=False,True", "MODEL.PG.REWARD_SCALE=1.0,2.0"])
    assert len(grid) == 8 and len({m.slug for m in grid}) == 8
    config = os.path.join(DEMO, "ft_MobileNetV2_FPN_demo.yaml")
    settings = set()
    for method in grid:
        pg = build_cfg(config, list(method.opts)).MODEL.PG
        assert pg.ENABLED and pg.GAMMA == 1.0
        settings.add((pg.REWARD_ESTIMATOR, pg.SAMPLE_NMS, pg.REWARD_SCALE))
    assert settings == {(e, n, c) for e in ("joint", "conditional") for n in (False, True)
                        for c in (1.0, 2.0)}
    distinct = methods.distinct_methods(grid, lambda opts: build_cfg(config, list(opts)))
    # the (joint, no NMS, c = 1) point is the paper's defaults, i.e. PG γ=1 itself
    assert [m.label for m in distinct[:5]] == ["standard fine-tune", "OHEM", "PG γ=0", "PG γ=1",
                                              "RS loss"]
    assert len(distinct) == 5 + 7
    variant = methods.parse_variant("sampled mean=MODEL.PG.BASELINE sampled_mean")
    assert variant.slug == "pg_sampled_mean"
    assert variant.opts[-2:] == ("MODEL.PG.BASELINE", "sampled_mean")
    assert methods.grid_variants([]) == []  # no --grid: no nameless "PG γ=1, " variant
    gamma0 = methods.parse_variant("cond g0=MODEL.PG.REWARD_ESTIMATOR conditional MODEL.PG.GAMMA 0.0")
    assert gamma0.label == "PG γ=0, cond g0" and gamma0.slug == "pg_cond_g0"
    assert build_cfg(config, list(gamma0.opts)).MODEL.PG.GAMMA == 0.0


def test_grid_points_whose_options_cannot_work_are_left_out_and_named_variants_stop_the_run(capsys):
    """`joint` with BASELINE sampled_mean is rejected (its advantage is never positive): a grid
    over the baseline with the default `joint` drops that point instead of failing mid-run, while
    the same combination written out as a --variants entry stops before anything trains."""
    config = os.path.join(DEMO, "ft_MobileNetV2_FPN_demo.yaml")
    finetune_cfg = lambda opts: build_cfg(config, list(opts))  # noqa: E731
    grid = methods.grid_variants(["MODEL.PG.BASELINE=nms,sampled_mean",
                                  "MODEL.PG.REWARD_SCALE=1.0,2.0"])
    kept = methods.distinct_methods(grid, finetune_cfg, methods.select_methods([]), skippable=grid)
    baselines = {finetune_cfg(m.opts).MODEL.PG.BASELINE for m in kept if m.base is not None}
    assert [m.label for m in kept] == ["standard fine-tune", "PG γ=1, BASELINE=nms, REWARD_SCALE=1.0",
                                       "PG γ=1, BASELINE=nms, REWARD_SCALE=2.0"]
    assert baselines == {"nms"}
    assert capsys.readouterr().out.count("not run, Invalid policy-gradient config") == 2
    named = methods.parse_variant("mean=MODEL.PG.BASELINE sampled_mean")
    with pytest.raises(ConfigError, match=r"PG γ=1, mean: Invalid policy-gradient config.*sampled_mean"):
        methods.distinct_methods([named], finetune_cfg, methods.select_methods([]))


def test_rs_variants_extend_the_rs_row_and_duplicates_are_dropped():
    config = os.path.join(DEMO, "ft_MobileNetV2_FPN_demo.yaml")
    lr = methods.parse_variant("lr0.003=SOLVER.BASE_LR 0.003", methods.rs_variant)
    same = methods.parse_variant("delta=MODEL.RS_LOSS.DELTA 0.5", methods.rs_variant)
    assert lr.label == "RS loss, lr0.003" and lr.slug == "rs_lr0_003" and lr.base.label == "RS loss"
    cfg = build_cfg(config, list(lr.opts))
    assert cfg.MODEL.RS_LOSS.ENABLED and cfg.MODEL.ROI_HEADS.NAME == "RSROIHeads"
    assert cfg.SOLVER.BASE_LR == 0.003
    distinct = methods.distinct_methods([lr, same], lambda opts: build_cfg(config, list(opts)))
    assert [m.label for m in distinct[-2:]] == ["RS loss", "RS loss, lr0.003"]  # δ 0.5: the default


def test_methods_option_keeps_the_control():
    chosen = methods.select_methods(["pg_gamma1"])
    assert [m.label for m in chosen] == ["standard fine-tune", "PG γ=1"]
    with pytest.raises(ConfigError, match="unknown"):
        methods.select_methods(["pg_gamma2"])


def test_a_model_without_detections_counts_as_zero_where_the_baseline_measured():
    nan = float("nan")
    baseline = runs.Row("standard (baseline)", "greedy", [runs.Run(None, "b", dict(
        AP=50.0, AP50=80.0, AP75=55.0, APs=40.0, APm=60.0, APl=nan))])
    collapsed = runs.Row("PG γ=0", "greedy", [
        runs.Run(0, "s0", dict(AP=1.0, AP50=2.0, AP75=1.0, APs=1.0, APm=0.0, APl=nan)),
        runs.Run(1, "s1", {k: nan for k in METRICS})])
    no_detections.count_no_detections_as_zero([baseline, collapsed])
    assert collapsed.runs[1].metrics == dict(AP=0.0, AP50=0.0, AP75=0.0, APs=0.0, APm=0.0,
                                             APl=pytest.approx(nan, nan_ok=True))
    assert collapsed.mean("AP") == 0.5 and collapsed.runs[0].metrics["AP"] == 1.0
    assert baseline.runs[0].metrics["AP"] == 50.0


def _fake_stages(monkeypatch):
    """Replace the runner's train_net.py stages by a recorder: nothing trains, and every stage
    gets a different AP (its position in the order of stages)."""
    calls = []

    def run_stage(name, config_file, output_dir, opts=(), num_gpus=1, eval_only=False,
                  echo=True):
        metrics = {key: float(len(calls)) for key in METRICS}
        calls.append(dict(name=name, config=config_file, output_dir=output_dir, opts=list(opts),
                          eval_only=eval_only, metrics=metrics))
        return metrics

    monkeypatch.setattr(stages, "run_stage", run_stage)
    return calls


def _opt(opts, key):
    """The value a KEY VALUE override list gives `key` (the last one wins, as in detectron2)."""
    return [value for k, value in zip(opts[::2], opts[1::2]) if k == key][-1]


@pytest.mark.parametrize("baseline_seeds", [None, [3, 4]])
def test_every_fine_tune_seed_runs_from_every_baseline_in_its_own_folder(
        tmp_path, monkeypatch, baseline_seeds):
    calls = _fake_stages(monkeypatch)
    argv = ["--baseline-config", "b.yaml", "--finetune-config", "f.yaml", "--seeds", "0", "1",
            "--output", str(tmp_path), "--methods", "pg_gamma1"]
    argv += ["--baseline-seeds", *map(str, baseline_seeds)] if baseline_seeds else []
    args = cli.parse_args(argv + ["--", "SEED", "9"])
    rows = stages.run_experiment(args, methods.select_methods(args.methods))

    by_dir = {call["output_dir"]: call for call in calls}
    baselines = baseline_seeds or [None]
    assert len(calls) == len(by_dir) == len(baselines) * 2 * (1 + 2 * 2)
    expected = {"standard (baseline)": [], "standard fine-tune": [], "PG γ=1": []}
    for b in baselines:
        base_dir = str(tmp_path / ("baseline" if b is None else f"baseline_seed{b}"))
        base = by_dir[base_dir]
        assert base["config"] == os.path.abspath("b.yaml") and not base["eval_only"]
        assert _opt(base["opts"], "SEED") == ("9" if b is None else str(b))
        expected["standard (baseline)"].append((b, None, base_dir))
        for folder, label in (("finetune_standard", "standard fine-tune"),
                              ("pg_gamma1", "PG γ=1")):
            for s in (0, 1):
                name = f"seed{s}" if b is None else f"baseline{b}_seed{s}"
                run_dir = str(tmp_path / folder / name)
                run = by_dir[run_dir]
                assert run["config"] == os.path.abspath("f.yaml") and not run["eval_only"]
                assert _opt(run["opts"], "SEED") == str(s)
                assert _opt(run["opts"], "MODEL.WEIGHTS") == os.path.join(base_dir,
                                                                          "model_final.pth")
                soft = by_dir[os.path.join(run_dir, "soft_nms")]
                assert soft["eval_only"] and _opt(soft["opts"], "MODEL.WEIGHTS") == os.path.join(
                    run_dir, "model_final.pth")
                expected[label].append((b, s, run_dir))
    for row in rows:
        suffix = [] if row.nms == "greedy" else ["soft_nms"]
        assert [(r.baseline, r.seed, r.output_dir) for r in row.runs] == [
            (b, s, os.path.join(d, *suffix)) for b, s, d in expected[row.method]]
        assert all(r.metrics == by_dir[r.output_dir]["metrics"] for r in row.runs)


def test_no_soft_nms_runs_and_tabulates_greedy_nms_only(tmp_path, monkeypatch):
    calls = _fake_stages(monkeypatch)
    args = cli.parse_args(["--baseline-config", "b.yaml", "--finetune-config", "f.yaml",
                              "--seeds", "0", "1", "--output", str(tmp_path), "--methods",
                              "pg_gamma1", "--no-soft-nms"])
    rows = stages.run_experiment(args, methods.select_methods(args.methods))
    assert len(calls) == 1 + 2 * 2 and not any(call["eval_only"] for call in calls)
    assert {row.nms for row in rows} == {"greedy"} and len(rows) == 3


def test_only_runs_one_cell_in_the_folder_of_the_full_run(tmp_path, monkeypatch):
    calls = _fake_stages(monkeypatch)
    demo = os.path.join(REPO, "pgdet", "configs", "demo")
    common = ["--baseline-config", os.path.join(demo, "frcnn_MobileNetV2_FPN_demo.yaml"),
              "--finetune-config", os.path.join(demo, "ft_MobileNetV2_FPN_demo.yaml"),
              "--seeds", "0", "1", "--output", str(tmp_path), "--no-soft-nms",
              "--variants", "v=MODEL.PG.GAMMA 0.5"]
    cli.main(common + ["--only", "pg_v", "1"])
    assert [c["output_dir"] for c in calls] == [str(tmp_path / "baseline"),
                                               str(tmp_path / "pg_v" / "seed1")]
    assert _opt(calls[1]["opts"], "MODEL.PG.GAMMA") == "0.5"
    with pytest.raises(SystemExit):
        cli.main(common + ["--only", "pg_v"])
    calls.clear()  # several cells, one after the other, in the full run's folders
    cli.main(common + ["--only", "pg_v", "0", "finetune_standard", "1"])
    assert [c["output_dir"] for c in calls if not c["output_dir"].endswith("baseline")] == [
        str(tmp_path / "pg_v" / "seed0"), str(tmp_path / "finetune_standard" / "seed1")]
    with pytest.raises(SystemExit):
        cli.main(common + ["--only", "pg_v", "0", "finetune_standard"])
    with pytest.raises(SystemExit):
        cli.main(common + ["--only", "pg_v", "0", "pg_nope", "1"])


# The test-image bootstrap: COCO AP on resampled test images, against pycocotools run directly.

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]


def _box(image_id, category_id, bbox, **fields):
    return dict(image_id=image_id, category_id=category_id, bbox=list(bbox), **fields)


def _hand_made_coco():
    """Ground truth and detections with what COCOeval treats specially: a crowd box (ignored),
    a duplicate detection, matches only at low IoU thresholds, equal scores across and within
    images, a category without ground truth, an image without ground truth."""
    ground_truth = [
        _box(1, 1, (10, 10, 50, 50)), _box(1, 1, (100, 100, 40, 40)),
        _box(1, 2, (200, 50, 60, 30)),
        _box(2, 1, (20, 20, 30, 30)), _box(2, 1, (60, 20, 30, 30), iscrowd=1),
        _box(2, 2, (5, 5, 100, 100)), _box(3, 2, (50, 50, 50, 50)), _box(3, 1, (0, 0, 20, 20)),
    ]
    for i, annotation in enumerate(ground_truth):
        w, h = annotation["bbox"][2:]
        annotation.update(id=i + 1, area=w * h, iscrowd=annotation.get("iscrowd", 0))
    detections = [
        _box(1, 1, (12, 11, 50, 48), score=0.9), _box(1, 1, (100, 100, 40, 40), score=0.8),
        _box(1, 1, (10, 10, 50, 50), score=0.7), _box(1, 2, (210, 50, 60, 30), score=0.6),
        _box(1, 3, (0, 0, 10, 10), score=0.5), _box(2, 1, (20, 20, 30, 30), score=0.8),
        _box(2, 1, (62, 22, 28, 28), score=0.4), _box(2, 2, (5, 5, 80, 80), score=0.9),
        _box(3, 1, (300, 300, 20, 20), score=0.95), _box(3, 2, (50, 50, 50, 50), score=0.3),
        _box(3, 2, (52, 52, 50, 50), score=0.3), _box(4, 1, (0, 0, 30, 30), score=0.2),
    ]
    images = [{"id": i, "width": 400, "height": 400, "file_name": f"{i}.jpg"} for i in (1, 2, 3, 4)]
    return {"images": images, "annotations": ground_truth, "categories": CATEGORIES}, detections


def _random_ground_truth(rng, num_images=6):
    """One to three boxes of category 1 or 2 on each of `num_images` images."""
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 300, "height": 300, "file_name": f"{image_id}.jpg"})
        for _ in range(int(rng.integers(1, 4))):
            x, y, w, h = (float(v) for v in rng.uniform([0, 0, 20, 20], [200, 200, 90, 90]))
            annotations.append(_box(image_id, int(rng.integers(1, 3)), (x, y, w, h),
                                    id=len(annotations) + 1, area=w * h, iscrowd=0))
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def _random_detections(ground_truth, rng):
    """A model's detections of `ground_truth`: jittered boxes, some with the wrong class, some
    objects missed, a false positive per image; scores that never tie."""
    detections = []
    for annotation in ground_truth["annotations"]:
        if rng.random() < 0.8:
            x, y, w, h = annotation["bbox"]
            jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
            category = annotation["category_id"] if rng.random() < 0.8 else 3
            detections.append(_box(annotation["image_id"], category,
                                   (x + jitter[0], y + jitter[1], w, h)))
    detections += [_box(image["id"], int(rng.integers(1, 3)), (250, 250, 30, 30))
                   for image in ground_truth["images"]]
    for detection in detections:
        detection["score"] = float(rng.random())
    return detections


def _pycocotools_ap(ground_truth, detections):
    """AP@[.5:.95] as pycocotools computes it (and detectron2's COCOEvaluator without its C++)."""
    return _pycocotools_stats(ground_truth, detections)[0]


def _pycocotools_stats(ground_truth, detections):
    """pycocotools' 12 bbox stats; the first six are METRICS as fractions, -1 where undefined."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    coco = COCO()
    coco.dataset = ground_truth
    coco.createIndex()
    coco_eval = COCOeval(coco, coco.loadRes(detections), "bbox")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval.stats


def _pycocotools_ap_on_resample(ground_truth, detections, counts):
    """pycocotools' AP on a resample made real: the i-th image (in id order) copied counts[i]
    times under new ids, with its ground truth and detections."""
    images, annotations, copied = [], [], []
    for image, count in zip(sorted(ground_truth["images"], key=lambda i: i["id"]), counts):
        for copy in range(int(count)):
            new_id = image["id"] * 1000 + copy
            images.append(dict(image, id=new_id))
            annotations += [dict(a, image_id=new_id) for a in ground_truth["annotations"]
                            if a["image_id"] == image["id"]]
            copied += [dict(d, image_id=new_id) for d in detections
                       if d["image_id"] == image["id"]]
    annotations = [dict(a, id=i + 1) for i, a in enumerate(annotations)]
    return _pycocotools_ap(dict(ground_truth, images=images, annotations=annotations), copied)


def _write_run(run_dir, dataset, ground_truth, detections):
    """The files a run's COCOEvaluator leaves for a dataset registered without a json_file."""
    folder = os.path.join(run_dir, "inference", dataset)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{dataset}_coco_format.json"), "w") as f:
        json.dump(ground_truth, f)
    with open(os.path.join(folder, "coco_instances_results.json"), "w") as f:
        json.dump(detections, f)
    return str(run_dir)


def test_identity_resample_gives_pycocotools_ap_exactly(tmp_path):
    from pgdet.evaluation import per_image_evaluation, resampled_ap
    ground_truth, detections = _hand_made_coco()
    run_dir = _write_run(tmp_path, "hand", ground_truth, detections)
    evaluation = per_image_evaluation(*bootstrap.evaluation_files(run_dir, "hand"))
    (ap,) = resampled_ap(evaluation, np.ones((1, 4)))
    expected = _pycocotools_ap(ground_truth, detections)
    assert 0.3 < expected < 0.9
    assert ap == expected  # same operations in the same order: bit for bit
    no_detections = per_image_evaluation(*bootstrap.evaluation_files(
        _write_run(tmp_path / "empty", "hand", ground_truth, []), "hand"))
    assert list(resampled_ap(no_detections, np.array([[1, 1, 1, 1], [0, 0, 4, 0]]))) == [0, 0]


def test_resampled_ap_equals_pycocotools_on_the_resample_made_real(tmp_path):
    from pgdet.evaluation import per_image_evaluation, resample_counts, resampled_ap
    rng = np.random.default_rng(1)
    ground_truth = _random_ground_truth(rng)
    detections = _random_detections(ground_truth, rng)
    run_dir = _write_run(tmp_path, "random", ground_truth, detections)
    evaluation = per_image_evaluation(*bootstrap.evaluation_files(run_dir, "random"))
    counts = resample_counts(6, 5, seed=3)
    assert (counts.sum(axis=1) == 6).all() and (counts == 0).any() and (counts > 1).any()
    ap = resampled_ap(evaluation, counts)
    expected = [_pycocotools_ap_on_resample(ground_truth, detections, c) for c in counts]
    assert ap == pytest.approx(expected, rel=1e-12)
    assert len(set(np.round(expected, 9))) == len(expected)  # the resamples do differ


def _bootstrap_rows(tmp_path, detections_by_row, ground_truth):
    """Greedy rows of runs (seed s) whose evaluations left `detections_by_row[label][s]`."""
    return [runs.Row(label, "greedy", [
        runs.Run(seed, _write_run(tmp_path / _slug(label) / str(seed), "data", ground_truth,
                                    detections), dict.fromkeys(METRICS, 50.0))
        for seed, detections in enumerate(per_seed)]) for label, per_seed in detections_by_row]


def _slug(label):
    return "".join(c if c.isalnum() else "_" for c in label)


def test_bootstrap_interval_is_the_spread_of_pycocotools_gains_on_real_resamples(tmp_path):
    from pgdet.evaluation import resample_counts
    rng = np.random.default_rng(2)
    ground_truth = _random_ground_truth(rng)
    detections = {label: [_random_detections(ground_truth, rng) for seed in (0, 1)]
                  for label in ("standard fine-tune", "PG γ=1")}
    rows = _bootstrap_rows(tmp_path, detections.items(), ground_truth)
    comparisons = stats.compare_with_control(rows)
    bootstrap.add_image_bootstrap(comparisons, "data", resamples=12)

    counts = resample_counts(6, 12, bootstrap.BOOTSTRAP_SEED)
    gains = np.mean([[_pycocotools_ap_on_resample(ground_truth, method, c)
                      - _pycocotools_ap_on_resample(ground_truth, control, c) for c in counts]
                     for method, control in zip(detections["PG γ=1"],
                                                detections["standard fine-tune"])], axis=0)
    expected = np.percentile(100 * gains, [2.5, 97.5])
    assert comparisons["PG γ=1", "greedy"].bootstrap == pytest.approx(expected, abs=1e-9)
    assert expected[0] < expected[1]


def test_identical_methods_have_a_zero_bootstrap_interval(tmp_path):
    rng = np.random.default_rng(4)
    ground_truth = _random_ground_truth(rng)
    same = [_random_detections(ground_truth, rng)] * 2
    rows = _bootstrap_rows(tmp_path, [("standard fine-tune", same), ("OHEM", same)],
                           ground_truth)
    comparisons = stats.compare_with_control(rows)
    bootstrap.add_image_bootstrap(comparisons, "data", resamples=1000)
    assert comparisons["OHEM", "greedy"].bootstrap == (0.0, 0.0)
    table = parse_markdown_table(report.format_table1(rows, comparisons))
    assert table["OHEM", "greedy"]["ΔAP, test-image bootstrap 95 %"] == "[+0.0, +0.0]"
    assert table["standard fine-tune", "greedy"]["ΔAP, test-image bootstrap 95 %"] == "—"


# Models without any detection: what the table shows must be what the log says.

def test_untrained_models_count_as_zero_in_the_table_as_the_log_says(tmp_path, monkeypatch,
                                                                     capsys):
    """Every model untrained: COCOEvaluator reports NaN for all of them, the runner logs "counted
    as AP 0", and the table must show 0.0 where COCOeval would measure the test set and nan where
    it cannot (no large object here). Oracle: pycocotools on the same ground truth with one
    detection matching nothing, which scores 0 on each measurable metric and -1 elsewhere."""
    ground_truth, _ = _hand_made_coco()
    ground_truth["annotations"] = [a for a in ground_truth["annotations"] if a["area"] < 96 ** 2]
    oracle = _pycocotools_stats(ground_truth, [_box(1, 1, (380, 380, 10, 10), score=0.5)])
    expected = {key: "0.0" if oracle[i] == 0 else "nan" for i, key in enumerate(METRICS)}
    assert oracle[5] == -1 and set(oracle[:5]) == {0}  # the oracle does tell the two apart

    def untrained_stage(name, config_file, output_dir, opts=(), num_gpus=1, eval_only=False,
                        echo=True):
        _write_run(output_dir, "pgdet_demo_val", ground_truth, [])
        return dict.fromkeys(METRICS, float("nan"))

    monkeypatch.setattr(stages, "run_stage", untrained_stage)
    monkeypatch.setattr(cli, "draw_figures", lambda *a, **k: None)  # no weights to draw with
    cli.main(["--baseline-config", os.path.join(DEMO, "frcnn_MobileNetV2_FPN_demo.yaml"),
              "--finetune-config", os.path.join(DEMO, "ft_MobileNetV2_FPN_demo.yaml"),
              "--output", str(tmp_path), "--methods", "pg_gamma1", "--no-soft-nms",
              "--bootstrap", "0"])
    assert capsys.readouterr().out.count("made no detection: counted as AP 0") == 3
    table = parse_markdown_table((tmp_path / "table1.md").read_text())
    assert len(table) == 3
    for cells in table.values():
        assert {key: cells[key] for key in METRICS} == expected
    assert table["PG γ=1", "greedy"][GAIN] == "+0.0 (1 pair, no CI)"
    page = (tmp_path / "report.html").read_text(encoding="utf-8")  # without figures too
    assert parse_html_table(page) == table
    assert (tmp_path / "figures" / "forest_plot.png").is_file()


# --jobs: independent stages side by side, each after the stages it needs.

def test_jobs_run_stages_side_by_side_after_what_they_need(tmp_path, monkeypatch, capsys):
    """With --jobs 2 the fine-tunes must run two at a time: each waits at a barrier for a second
    one, which times out unless the scheduler runs them concurrently. No stage may start before
    the stage it needs has finished, never more than two may run, and the rows must hold the
    runs in the same order as one job at a time."""
    events, lock = [], threading.Lock()
    pair_up = threading.Barrier(2, timeout=30)

    def stage(name, config_file, output_dir, opts=(), num_gpus=1, eval_only=False, echo=True):
        with lock:
            events.append(("start", output_dir, eval_only, _opt(opts, "MODEL.WEIGHTS")
                           if "MODEL.WEIGHTS" in opts else None))
        if not eval_only and "MODEL.WEIGHTS" in opts:  # a fine-tune
            pair_up.wait()
        time.sleep(0.01)
        with lock:
            events.append(("end", output_dir))
        return dict.fromkeys(METRICS, 1.0)

    monkeypatch.setattr(stages, "run_stage", stage)
    argv = ["--baseline-config", "b.yaml", "--finetune-config", "f.yaml", "--seeds", "0", "1",
            "--baseline-seeds", "3", "4", "--methods", "pg_gamma1"]
    args = cli.parse_args(argv + ["--output", str(tmp_path / "two"), "--jobs", "2"])
    rows = stages.run_experiment(args, methods.select_methods(args.methods))

    ended, running, most = set(), set(), 0
    for event in events:
        if event[0] == "end":
            running.remove(event[1])
            ended.add(event[1])
            continue
        _, output_dir, eval_only, weights = event
        if weights:  # it needs the stage whose final weights it loads
            assert os.path.dirname(weights) in ended, output_dir
        running.add(output_dir)
        most = max(most, len(running))
    assert most == 2 and len(ended) == 2 * (1 + 2 * 2) * 2
    progress = [line for line in capsys.readouterr().out.splitlines() if "stages done" in line]
    assert len(progress) == len(ended) * 2  # a line when each starts and when it ends
    assert progress[-1].startswith("[table1] 20/20 stages done, 0 running, 0 left | ")

    pair_up = threading.Barrier(1)  # one job: no partner to wait for
    one = cli.parse_args(argv + ["--output", str(tmp_path / "one")])
    rows_one_job = stages.run_experiment(one, methods.select_methods(one.methods))
    assert [[(r.baseline, r.seed, os.path.relpath(r.output_dir, tmp_path / "two"))
             for r in row.runs] for row in rows] == [
        [(r.baseline, r.seed, os.path.relpath(r.output_dir, tmp_path / "one"))
         for r in row.runs] for row in rows_one_job]
