"""The test-image bootstrap of Table 1's gains: the runs' saved predictions rescored with COCO AP
on resamples of the test images (pgdet/evaluation), paired as the t interval pairs them."""
import os
import time
from typing import Dict, Tuple

import numpy as np
from detectron2.data import MetadataCatalog

from ..evaluation import per_image_evaluation, resample_counts, resampled_ap
from .runs import Run
from .stats import Comparison

BOOTSTRAP_SEED = 0  # numpy seed of the test-image resamples (the same draws for every run)


def evaluation_files(run_dir: str, dataset: str) -> Tuple[str, str]:
    """The COCO-format ground truth and predictions that a run's COCOEvaluator scored.

    The evaluator writes ``coco_instances_results.json`` into <run>/inference/<dataset> (the
    folder of pgdet's Trainer.build_evaluator) and reads the dataset's ``json_file``, or, for a
    dataset registered without one (Pascal-VOC folders), the COCO conversion it caches there.
    """
    folder = os.path.join(run_dir, "inference", dataset)
    cached = os.path.join(folder, f"{dataset}_coco_format.json")
    ground_truth = cached if os.path.isfile(cached) else MetadataCatalog.get(dataset).get(
        "json_file")
    predictions = os.path.join(folder, "coco_instances_results.json")
    if not (ground_truth and os.path.isfile(ground_truth) and os.path.isfile(predictions)):
        raise FileNotFoundError(f"no COCO predictions and ground truth of {dataset} in {folder}")
    return ground_truth, predictions


class ResampledAP:
    """COCO AP (%) of runs on the same resamples of the test images, computed once per run."""

    def __init__(self, dataset: str, resamples: int):
        self.dataset, self.resamples = dataset, resamples
        self.image_ids, self.counts, self.by_run = None, None, {}

    def __call__(self, run: Run) -> np.ndarray:
        if run.output_dir not in self.by_run:
            evaluation = per_image_evaluation(*evaluation_files(run.output_dir, self.dataset))
            if self.counts is None:
                self.image_ids = evaluation.image_ids
                self.counts = resample_counts(len(self.image_ids), self.resamples,
                                              BOOTSTRAP_SEED)
            if evaluation.image_ids != self.image_ids:
                raise ValueError(f"{run.output_dir} was evaluated on other images than the "
                                 "runs before it; the test-image bootstrap needs one test set.")
            self.by_run[run.output_dir] = 100 * resampled_ap(evaluation, self.counts)
        return self.by_run[run.output_dir]


def bootstrap_interval(comparison: Comparison, resampled: ResampledAP) -> Tuple[float, float]:
    """2.5 and 97.5 percentiles of the mean paired gain over the resamples: on each resample,
    every pair's AP difference on the same images, averaged over the pairs."""
    mean_gain = np.mean([resampled(run) - np.mean([resampled(c) for c in controls], axis=0)
                         for run, controls in comparison.pairs], axis=0)
    low, high = np.percentile(mean_gain, [2.5, 97.5])
    return float(low), float(high)


def add_image_bootstrap(comparisons: Dict[Tuple[str, str], Comparison], dataset: str,
                        resamples: int) -> None:
    """Set the test-image bootstrap interval of every row whose runs all pair: the spread of the
    gain that the choice of test images alone causes, which the interval over seeds leaves out.
    A row whose runs left no COCO predictions (e.g. detectron2's VOC evaluator) gets none."""
    start, resampled = time.time(), ResampledAP(dataset, resamples)
    for (method, nms), comparison in comparisons.items():
        if comparison.unpaired or not comparison.pairs:
            continue
        try:
            comparison.bootstrap = bootstrap_interval(comparison, resampled)
        except FileNotFoundError as e:
            print(f"[table1] {method} ({nms}): no test-image bootstrap, {e}", flush=True)
    print(f"[table1] test-image bootstrap: {resamples} resamples of "
          f"{len(resampled.image_ids or ())} images, {len(resampled.by_run)} runs, "
          f"{time.time() - start:.1f} s", flush=True)
