"""Table 1 written out: the markdown table shaped like the paper's, table1.md with its notes and
table1.json with every raw number."""
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..engine.experiment import METRIC_KEYS
from .bootstrap import BOOTSTRAP_SEED
from .methods import BASELINE, CONTROL, METHODS
from .runs import Row
from .stats import Comparison, t_quantile_975

# Paper Table 1 (COCO minival, ResNet-101), keyed by (row, NMS), values in METRIC_KEYS order.
PAPER = {
    "frcnn": {
        ("standard (baseline)", "greedy"): (36.3, 57.3, 38.8, 17.7, 42.4, 51.4),
        ("standard (baseline)", "soft-NMS"): (36.9, 57.2, 40.1, 18.0, 42.7, 52.1),
        ("OHEM", "greedy"): (36.9, 57.3, 40.2, 17.7, 42.7, 52.4),
        ("PG γ=0", "greedy"): (37.6, 60.0, 40.2, 19.6, 42.6, 52.0),
        ("PG γ=1", "greedy"): (38.3, 60.6, 40.9, 20.7, 43.2, 52.6),
        ("PG γ=1", "soft-NMS"): (38.5, 60.8, 41.3, 20.9, 43.4, 52.7),
    },
    "fpn": {
        ("standard (baseline)", "greedy"): (37.7, 58.5, 40.8, 19.3, 41.7, 52.3),
        ("PG γ=1", "greedy"): (39.5, 60.2, 43.3, 22.7, 44.1, 51.9),
    },
}
GAIN_COLUMN = f"ΔAP vs {CONTROL} (paired, 95 % CI)"
PER_PAIR_COLUMN = "ΔAP per pair"
BOOTSTRAP_COLUMN = "ΔAP, test-image bootstrap 95 %"


def _number(value: float, sign: str = "") -> str:
    """One decimal, as the paper prints; "nan" where COCO had nothing to measure (no boxes)."""
    return "nan" if np.isnan(value) else f"{value:{sign}.1f}"


def _cell(row: Row, key: str) -> str:
    mean = _number(row.mean(key))
    return mean if len(row.runs) == 1 else f"{mean} ± {_number(row.std(key))}"


def _signed(value: float) -> str:
    """One decimal with its sign, minus as "−" (U+2212)."""
    return _number(value, "+").replace("-", "\u2212")


def _gain_cell(comparison: Comparison) -> str:
    """Mean paired gain and its 95 % interval; "no gain" when the interval contains 0."""
    if comparison.unpaired:
        return "not paired: " + "; ".join(comparison.unpaired)
    gains, interval = comparison.gains(), comparison.interval()
    if interval is None:
        return f"{_signed(gains.mean())} (1 pair, no CI)" if len(gains) else "—"
    low, high = interval
    verdict = " no gain" if low <= 0 <= high else ""
    return f"{_signed(gains.mean())} [{_signed(low)}, {_signed(high)}]{verdict}"


def _bootstrap_cell(comparison: Optional[Comparison]) -> str:
    """The test-image bootstrap interval of the gain, or "—" where there is none."""
    if comparison is None or comparison.bootstrap is None:
        return "—"
    low, high = comparison.bootstrap
    return f"[{_signed(low)}, {_signed(high)}]"


def table1_cells(rows: Sequence[Row], comparisons: Dict[Tuple[str, str], Comparison],
                 paper: Optional[str] = None) -> Tuple[List[str], List[List[str]]]:
    """The header and the cells of Table 1, shaped like the paper's: one line per (method, NMS);
    COCO metrics as mean ± sample std over the runs; the AP gain over the standard fine-tune with
    the same NMS (the fair control), paired run by run (`comparisons`), and its test-image
    bootstrap interval when one was computed; the paper's AP of the same row when `paper`
    ("frcnn" or "fpn") is given. table1.md and report.html show these same cells."""
    bootstrapped = any(c.bootstrap for c in comparisons.values())
    head = ["method", "NMS", "runs", *METRIC_KEYS, GAIN_COLUMN, PER_PAIR_COLUMN]
    head += [BOOTSTRAP_COLUMN] if bootstrapped else []
    head += [f"paper AP ({paper})"] if paper else []
    lines = []
    for row in rows:
        comparison = comparisons.get((row.method, row.nms))  # None: the control itself
        per_pair = ", ".join(map(_signed, comparison.gains())) if comparison else ""
        cells = [row.method, row.nms, str(len(row.runs)), *(_cell(row, k) for k in METRIC_KEYS),
                 _gain_cell(comparison) if comparison else "—", per_pair or "—"]
        cells += [_bootstrap_cell(comparison)] if bootstrapped else []
        if paper:
            reference = PAPER[paper].get((row.method, row.nms))
            cells.append(f"{reference[0]:.1f}" if reference else "—")
        lines.append(cells)
    return head, lines


def format_table1(rows: Sequence[Row], comparisons: Dict[Tuple[str, str], Comparison],
                  paper: Optional[str] = None) -> str:
    """Table 1 as a markdown table (the cells of :func:`table1_cells`)."""
    head, lines = table1_cells(rows, comparisons, paper)
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(cells) + " |" for cells in lines])


def _baselines_note(baseline_seeds: Optional[Sequence[int]]) -> str:
    return "" if not baseline_seeds else (
        f", each from every baseline (baseline seeds {' '.join(map(str, baseline_seeds))})")


def write_report(args, methods, rows, comparisons, soft_nms_cfg, dataset: str) -> str:
    """Write table1.md and table1.json into the output folder; return the markdown."""
    variants = [m for m in methods if m not in METHODS]
    notes = [
        f"# Table 1 on `{dataset}`",
        "",
        f"Baseline `{args.baseline_config}` (+ `{' '.join(args.baseline_opts)}`), fine-tuned "
        f"with `{args.finetune_config}` (+ `{' '.join(args.finetune_opts)}`), seeds "
        f"{' '.join(map(str, args.seeds))}{_baselines_note(args.baseline_seeds)}; overrides for "
        f"every stage: `{' '.join(args.opts)}`.",
        "",
        format_table1(rows, comparisons, args.paper_column),
        "",
        "- Metrics: COCO bbox AP (%) of the final models; mean ± sample standard deviation over "
        "the runs (one per baseline and fine-tune seed; the baseline row: one per baseline).",
        f"- *{BASELINE}* is the converged baseline (the paper's *standard*); *{CONTROL}* trains it "
        "for the same extra iterations without PG: the fair control for every fine-tuned row.",
        f"- {GAIN_COLUMN}: each run's AP minus that of the control run with the same baseline and "
        "fine-tune seed (the same data order); the baseline row pairs each baseline with the mean "
        f"of the control runs fine-tuned from it. *{PER_PAIR_COLUMN}* lists the gains in the "
        "order of the runs (by baseline, then fine-tune seed). Mean gain and 95 % confidence "
        "interval of the paired t distribution (t quantile with n − 1 degrees of freedom for n "
        "pairs); an interval containing 0 is *no gain*; one pair gives no interval.",
        *([f"- {BOOTSTRAP_COLUMN}: 2.5 and 97.5 percentiles of the mean paired gain over "
           f"{args.bootstrap} resamples of the test images with replacement (numpy seed "
           f"{BOOTSTRAP_SEED}; the same images for both runs of a pair), COCO AP recomputed on "
           "each from the runs' saved predictions: how far the choice of test images alone "
           "moves the gain."] if any(c.bootstrap for c in comparisons.values()) else []),
        "- A model with no detection at all counts as 0 on every metric the baseline measured "
        "(detectron2's COCOEvaluator reports NaN for it).",
        f"- soft-NMS: {soft_nms_cfg.METHOD}, IoU threshold {soft_nms_cfg.IOU_THRESH}, sigma "
        f"{soft_nms_cfg.SIGMA}, score threshold {soft_nms_cfg.SCORE_THRESH} (MODEL.SOFT_NMS.*).",
    ]
    notes += [f"- *{m.label}*: the {m.base.label} run's overrides, then "
              f"`{' '.join(m.opts[len(m.base.opts):])}`" for m in variants]
    if args.paper_column:
        notes.append("- paper: Rao et al. 2018, Table 1 (COCO minival, ResNet-101); only the AP "
                     "column is shown, all six metrics are in table1.json.")
    notes += ["", "![Figure 3](figures/figure3_detections.png)", "",
              "![training curves](figures/training_curves.png)", ""]
    markdown = "\n".join(notes)
    with open(os.path.join(args.output, "table1.md"), "w") as f:
        f.write(markdown)
    raw = {
        "baseline_config": args.baseline_config, "finetune_config": args.finetune_config,
        "seeds": args.seeds, "baseline_seeds": args.baseline_seeds, "opts": args.opts,
        "baseline_opts": args.baseline_opts, "finetune_opts": args.finetune_opts,
        "test_dataset": dataset, "paper_column": args.paper_column,
        "bootstrap": {"resamples": args.bootstrap, "seed": BOOTSTRAP_SEED},
        "methods": {m.label: {"folder": m.slug, "opts": list(m.opts)} for m in methods},
        "rows": [{
            "method": r.method, "nms": r.nms,
            "runs": [run._asdict() for run in r.runs],
            "mean": {k: r.mean(k) for k in METRIC_KEYS},
            "std": {k: r.std(k) for k in METRIC_KEYS},
            "paper": dict(zip(METRIC_KEYS, PAPER[args.paper_column][r.method, r.nms]))
            if args.paper_column and (r.method, r.nms) in PAPER[args.paper_column] else None,
            "vs_control": comparison_json(comparisons.get((r.method, r.nms))),
        } for r in rows],
    }
    with open(os.path.join(args.output, "table1.json"), "w") as f:
        json.dump(raw, f, indent=1, ensure_ascii=False)
    return markdown


def comparison_json(comparison: Optional[Comparison]) -> Optional[dict]:
    """A row's pairing with the control, every number of the table's gain columns (None for the
    control itself)."""
    if comparison is None:
        return None
    interval = comparison.interval()
    return {
        "pairs": [{"baseline": run.baseline, "seed": run.seed, "run": run.output_dir,
                   "control_runs": [c.output_dir for c in controls], "gain": float(gain)}
                  for (run, controls), gain in zip(comparison.pairs, comparison.gains())],
        "unpaired": comparison.unpaired,
        "mean_gain": float(np.mean(comparison.gains())) if comparison.pairs else None,
        "t_quantile": t_quantile_975(len(comparison.pairs) - 1) if interval else None,
        "ci95": list(interval) if interval else None,
        "no_gain": bool(interval[0] <= 0 <= interval[1]) if interval else None,
        "bootstrap95": list(comparison.bootstrap) if comparison.bootstrap else None,
    }
