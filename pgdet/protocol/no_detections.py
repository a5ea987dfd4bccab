"""Runs whose model made no detection at all (an untrained model, a collapsed PG γ=0 run): COCO AP
0, which detectron2's COCOEvaluator reports as NaN ("No predictions from the model!") instead of
running COCOeval, and which would poison the mean ± std of their row."""
import json
import math
from typing import Optional, Sequence, Set

from ..engine.experiment import METRIC_KEYS
from .bootstrap import evaluation_files
from .runs import Row

# COCOeval's area range of each metric (params.areaRng: all, small, medium, large), in pixels²
AREA_RANGES = {"AP": (0, 1e10), "AP50": (0, 1e10), "AP75": (0, 1e10), "APs": (0, 32 ** 2),
               "APm": (32 ** 2, 96 ** 2), "APl": (96 ** 2, 1e10)}


def measurable_metrics(ground_truth_file: str) -> Set[str]:
    """The metrics COCOeval measures on this ground truth (COCO json): those whose area range
    holds a box that is not a crowd. In any other range every precision stays -1, which
    detectron2 reports as NaN whatever the model detects (e.g. APl without large objects)."""
    with open(ground_truth_file) as f:
        annotations = json.load(f)["annotations"]
    return {key for key, (low, high) in AREA_RANGES.items()
            if any(not a.get("iscrowd", 0) and low <= a["area"] <= high for a in annotations)}


def _all_nan(metrics) -> bool:
    return all(math.isnan(metrics.get(k, float("nan"))) for k in METRIC_KEYS)


def _measurable(rows: Sequence[Row], dataset: Optional[str]) -> Set[str]:
    """What the test set lets COCOeval measure: from the ground truth a run's evaluation scored,
    else from what the runs with detections measured (the same set); empty if neither tells."""
    runs = [run for row in rows for run in row.runs]
    for run in runs if dataset else ():
        try:
            return measurable_metrics(evaluation_files(run.output_dir, dataset)[0])
        except FileNotFoundError:
            continue
    return {k for run in runs for k in METRIC_KEYS
            if not math.isnan(run.metrics.get(k, float("nan")))}


def count_no_detections_as_zero(rows: Sequence[Row], dataset: Optional[str] = None) -> None:
    """Give each run without any detection (every metric NaN) 0 for each metric the test set
    `dataset` lets COCOeval measure; metrics undefined for the test set stay NaN. In place."""
    if not any(_all_nan(run.metrics) for row in rows for run in row.runs):
        return
    measurable = _measurable(rows, dataset)
    for row in rows:
        for i, run in enumerate(row.runs):
            if not _all_nan(run.metrics):
                continue
            if not measurable:
                print(f"[table1] {row.method} ({row.nms}) in {run.output_dir} made no detection, "
                      "and no ground truth nor other run tells which metrics the test set has: "
                      "left NaN", flush=True)
                continue
            print(f"[table1] {row.method} ({row.nms}) in {run.output_dir} made no detection: "
                  "counted as AP 0", flush=True)
            row.runs[i] = run._replace(metrics={
                k: 0.0 if k in measurable else float("nan") for k in METRIC_KEYS})
