"""How much AP the per-image reward cannot see: detections of a class absent from their image.

COCOeval averages an image's AP over the classes with ground truth in that image, so the paper's
per-image reward gives a detection of an absent class exactly 0, while the dataset AP that
evaluation reports counts it as a false positive of its class. For
each run this prints, from the files COCOEvaluator wrote (pycocotools only, no model):

- the share of detections whose class has no ground truth in their image (all detections, and
  those scoring >= 0.5, the ones a user sees);
- the dataset AP / AP50 as evaluated, and after deleting exactly those detections (an oracle:
  what a detector that never fires on absent classes would score with the same boxes).

A PG configuration that sees these detections (``MODEL.PG.REWARD_SCOPE dataset``) should shrink
both the share and the gap.

    python benchmarks/absent_class.py output/table1_bccd/baseline_seed1 output/table1_bccd/*/baseline1_seed0

A run folder is one with ``inference/<test set>/coco_instances_results.json`` and either the
``<test set>_coco_format.json`` COCOEvaluator caches beside it or, for a COCO-json test set
(``DATASETS.COCO_JSONS``, e.g. ASL), that entry in the run's ``config.yaml``; ``--gt`` and
``--results`` name the two files directly instead.
"""
import argparse
import contextlib
import glob
import io
import json
import os
import sys
from typing import Dict, List, NamedTuple

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

SEEN_SCORE = 0.5  # the score above which a detection is drawn / counted by most users


class AbsentClassStats(NamedTuple):
    detections: int
    absent_share: float  # of all detections
    seen: int  # detections scoring >= SEEN_SCORE
    seen_absent_share: float
    ap: float
    ap50: float
    ap_without_absent: float
    ap50_without_absent: float


def _coco_ap(gt: COCO, detections: List[Dict]) -> tuple:
    """(AP, AP50) of `detections` on `gt` by COCOeval, in %; 0 without detections."""
    if not detections:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return 100.0 * max(evaluation.stats[0], 0.0), 100.0 * max(evaluation.stats[1], 0.0)


def absent_class_stats(gt_json: str, results: List[Dict]) -> AbsentClassStats:
    """The statistics above for one run: `gt_json` a COCO file, `results` COCO results."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
    present = {(a["image_id"], a["category_id"]) for a in gt.dataset["annotations"]}
    absent = [(d["image_id"], d["category_id"]) not in present for d in results]
    kept = [d for d, gone in zip(results, absent) if not gone]
    seen = [gone for d, gone in zip(results, absent) if d["score"] >= SEEN_SCORE]
    ap, ap50 = _coco_ap(gt, results)
    ap_kept, ap50_kept = _coco_ap(gt, kept)
    share = lambda flags: 100.0 * sum(flags) / len(flags) if flags else 0.0  # noqa: E731
    return AbsentClassStats(len(results), share(absent), len(seen), share(seen), ap, ap50,
                            ap_kept, ap50_kept)


def _run_files(run_dir: str) -> tuple:
    """(ground-truth json, results json) of the evaluated model in `run_dir`.

    COCOEvaluator writes the test set's ground truth as ``<set>_coco_format.json`` beside the
    results only for datasets that are not COCO json already; for a ``DATASETS.COCO_JSONS``
    dataset the ground truth is that entry's json, read from the run's ``config.yaml``.
    """
    found = sorted(glob.glob(os.path.join(run_dir, "inference", "*", "coco_instances_results.json")))
    if not found:
        sys.exit(f"error: {run_dir} has no inference/<test set>/coco_instances_results.json")
    folder = os.path.dirname(found[0])
    name = os.path.basename(folder)
    gt = os.path.join(folder, f"{name}_coco_format.json")
    if not os.path.isfile(gt):
        gt = _coco_json_of(run_dir, name)
    if gt is None or not os.path.isfile(gt):
        sys.exit(f"error: no ground truth found for {name} (neither {name}_coco_format.json in "
                 f"{folder} nor a DATASETS.COCO_JSONS entry of {run_dir}/config.yaml): pass "
                 "--gt <the test set's COCO json> --results <its coco_instances_results.json>")
    return gt, found[0]


def _coco_json_of(run_dir: str, name: str):
    """The annotation json of dataset `name` in the run's DATASETS.COCO_JSONS, its
    ``$PGDET_DATA/`` prefix resolved as the configs' are; None if the run has no such entry."""
    import yaml

    from pgdet.data.data_root import resolve_data_path

    config = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(config):
        return None
    with open(config) as f:
        entries = (yaml.safe_load(f) or {}).get("DATASETS", {}).get("COCO_JSONS", [])
    for entry in entries:
        fields = entry.split(":")
        if len(fields) == 3 and fields[0] == name:
            return resolve_data_path(fields[1])
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="run folders (OUTPUT_DIR of an evaluated model)")
    parser.add_argument("--gt", help="COCO ground-truth json (with --results)")
    parser.add_argument("--results", help="COCO results json (with --gt)")
    args = parser.parse_args(argv)
    pairs = [(run, *_run_files(run)) for run in args.runs]
    if args.gt or args.results:
        if not (args.gt and args.results):
            sys.exit("error: --gt and --results go together")
        pairs.append((args.results, args.gt, args.results))
    if not pairs:
        parser.error("name run folders, or --gt and --results")
    print("| run | detections | absent-class share | share at score >= 0.5 | AP | AP without "
          "absent-class detections | AP50 | AP50 without |")
    print("|---|---|---|---|---|---|---|---|")
    for name, gt, results_json in pairs:
        with open(results_json) as f:
            s = absent_class_stats(gt, json.load(f))
        print(f"| {name} | {s.detections} | {s.absent_share:.1f} % | {s.seen_absent_share:.1f} % "
              f"of {s.seen} | {s.ap:.2f} | {s.ap_without_absent:.2f} "
              f"({s.ap_without_absent - s.ap:+.2f}) | {s.ap50:.2f} | {s.ap50_without_absent:.2f} "
              f"({s.ap50_without_absent - s.ap50:+.2f}) |")


if __name__ == "__main__":
    main()
