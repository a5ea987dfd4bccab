"""The runs of a Table-1 experiment: where each lives (the output folder's documented layout) and
the rows of the table that collect them."""
import os
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional

import numpy as np

NMS_TYPES = ("greedy", "soft-NMS")
SOFT_NMS_DIR = "soft_nms"


class Run(NamedTuple):
    seed: Optional[int]  # the fine-tune's SEED; None: a baseline
    output_dir: str
    metrics: Dict[str, float]  # COCO bbox metrics in %, as in the run's eval_metrics.json
    baseline: Optional[int] = None  # the --baseline-seeds seed it comes from; None: the only one


@dataclass
class Row:
    """One table row: a model family evaluated with one NMS, with the metrics of each run."""

    method: str
    nms: str
    runs: List[Run] = field(default_factory=list)

    def mean(self, key: str) -> float:
        return float(np.mean([run.metrics[key] for run in self.runs]))

    def std(self, key: str) -> float:
        """Sample standard deviation over the runs (nan for a single run)."""
        values = [run.metrics[key] for run in self.runs]
        return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def baseline_dir(output: str, baseline: Optional[int]) -> str:
    """<output>/baseline, or <output>/baseline_seed<B> for each B of --baseline-seeds."""
    return os.path.join(output, "baseline" if baseline is None else f"baseline_seed{baseline}")


def finetune_dir(output: str, slug: str, baseline: Optional[int], seed: int) -> str:
    """<output>/<method>/seed<s>, or <output>/<method>/baseline<B>_seed<s> with --baseline-seeds
    (every fine-tune seed runs from every baseline)."""
    run = f"seed{seed}" if baseline is None else f"baseline{baseline}_seed{seed}"
    return os.path.join(output, slug, run)


def run_name(run: Run) -> str:
    """A run named by its seeds, as the table's notes and the figures name it ("" for the only
    baseline)."""
    parts = [] if run.baseline is None else [f"baseline {run.baseline}"]
    parts += [] if run.seed is None else [f"seed {run.seed}"]
    return ", ".join(parts)
