#!/usr/bin/env python
"""Paper Table 1 on any dataset: from a converged baseline (or one per baseline seed), fine-tune
with standard training, OHEM, the policy gradient (γ = 0 and 1) and, beyond the paper, Rank & Sort
loss, over several seeds; evaluate
each with greedy NMS and soft-NMS; write the table (mean ± std over the runs, each method's AP gain
over the standard fine-tune paired run by run with 95 % intervals, the paper's numbers beside)
and the pictures.

    python benchmarks/table1.py \\
        --baseline-config configs/demo/frcnn_MobileNetV2_FPN_demo.yaml \\
        --finetune-config configs/demo/ft_MobileNetV2_FPN_demo.yaml \\
        --seeds 0 1 2 --baseline-seeds 0 1 --output output/table1_demo --paper-column \\
        --variants "conditional=MODEL.PG.REWARD_ESTIMATOR conditional" \\
        --grid MODEL.PG.SAMPLE_NMS=False,True MODEL.PG.BASELINE=nms,sampled_mean \\
        -- DATALOADER.NUM_WORKERS 2

Stages (each one ``train_net.py`` process whose command is printed, pgdet/engine/experiment.py):
  1. the baseline: --baseline-config (+ --baseline-opts) -> <output>/baseline; with
     --baseline-seeds B1 B2 ..., one baseline per seed B (``SEED B``) -> <output>/baseline_seed<B>;
  2. for every seed s of --seeds, from each baseline's model_final.pth, --finetune-config
     (+ --finetune-opts, ``SEED s``) with each method, all on the same schedule ->
     <output>/<method>/seed<s>, or with --baseline-seeds <output>/<method>/baseline<B>_seed<s>
     (every seed from every baseline):
       standard fine-tune  MODEL.PG.ENABLED False (the fair control: the same extra iterations
                           without PG; the paper's "standard" row is the baseline itself)
       OHEM                MODEL.ROI_HEADS.NAME OHEMROIHeads (fine-tuned like the others here)
       PG γ=0 / PG γ=1     MODEL.PG.ENABLED True, MODEL.PG.GAMMA 0.0 / 1.0
       RS loss             MODEL.ROI_HEADS.NAME RSROIHeads, MODEL.RS_LOSS.ENABLED True (Oksuz et
                           al. 2021: sampling-free RoIs, RS loss on sigmoid scores, score-weighted
                           GIoU, self-balanced; MODEL.RS_LOSS.*), the same schedule as the others
       variants            PG γ=1 plus named overrides (--variants NAME=KEY VALUE ...) or every
                           combination of --grid KEY=V1,V2 ... (the SPEC §1 ablation: estimator ×
                           sampled-set NMS × baseline r' × c); RS loss plus named overrides
                           (--rs-variants NAME=KEY VALUE ..., e.g. its own learning rate); a
                           variant identical to a method before it is not run twice;
  3. every final model evaluated again with soft-NMS (``--eval-only MODEL.SOFT_NMS.ENABLED True``,
     MODEL.SOFT_NMS.* as configured) -> <run dir>/soft_nms; greedy NMS is the training run's own
     final evaluation;
  4. every row compared with the standard fine-tune of the same NMS, pair by pair: a run's AP
     minus that of the control run with the same baseline and seed (the same data order; a
     baseline: minus the mean of the control runs fine-tuned from it). The table gives the mean
     gain with its 95 % confidence interval from the paired t distribution ("no gain" when it
     contains 0), the per-pair gains, and a test-image bootstrap: the runs' saved predictions
     (<run dir>/inference/<test set>/coco_instances_results.json) rescored with COCO AP on
     --bootstrap N resamples of the test images (default 1000, 0: none), the 2.5-97.5
     percentiles of the mean paired gain. A row with a run that the control lacks (or the
     reverse) names it instead of showing a gain;
  5. <output>/table1.md and table1.json (every raw number, run folders, configs, pairs);
  6. <output>/figures/: figure3_detections.png (paper Figure 3: detections with score > 0.5 of the
     first baseline and of the first run of the standard fine-tune and PG γ=1 on the first test
     images) and training_curves.png (losses, rewards and PG weights of every fine-tuning run).

``--methods finetune_standard pg_gamma1`` runs only those standard methods (the control always
runs), e.g. to compare a different fine-tuning schedule cheaply. ``--no-soft-nms`` skips step 3
(a tuning sweep on a validation split needs one number per run).

The protocol of benchmarks/RESULTS.md §8 (choose on a validation split, report the test split
once): run the sweep with ``-- DATASETS.TRAIN "('<train>',)" DATASETS.TEST "('<val>',)"`` into
one folder and the control's own tuning (e.g. ``--finetune-opts SOLVER.BASE_LR ...``) into
another, pick by the paired gains on val, then run only the chosen PG configuration and the
chosen control, with ``--baseline-seeds``, on the config's train/test split.

``--only SLUG SEED`` runs one cell (one method at one seed, from every baseline) and writes no
table; ``--only baseline`` trains the baselines. Cells are separate processes that can run side
by side once the baselines exist: that is how a 2-core machine runs two at a time.

Overrides after ``--`` apply to every stage (data sets, batch size, ...); --baseline-opts and
--finetune-opts to one side only (e.g. different SOLVER.MAX_ITER). A stage whose folder holds a
finished result is reused, so an interrupted run continues where it stopped when started again
with the same arguments; delete a run's folder to redo it. So several processes can fill one
output folder, e.g. one per baseline seed (``--baseline-seeds B``), or one per fine-tune seed
once the baselines are trained, provided no two run the same stage at the same time (nothing
locks a stage folder); a last invocation with all the seeds reuses every stage and writes the
whole table.
"""
import argparse
import itertools
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import MetadataCatalog

import pgdet  # noqa: F401  (registers pgdet's components)
from pgdet.data import DatasetConfigError, register_datasets_from_cfg
from pgdet.engine import ConfigError, build_cfg
from pgdet.engine.experiment import METRIC_KEYS, run_stage
from pgdet.engine.figures import detection_figure, training_curves_figure
from pgdet.evaluation import per_image_evaluation, resample_counts, resampled_ap

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
BASELINE, CONTROL = "standard (baseline)", "standard fine-tune"
GAIN_COLUMN = f"ΔAP vs {CONTROL} (paired, 95 % CI)"
PER_PAIR_COLUMN = "ΔAP per pair"
BOOTSTRAP_COLUMN = "ΔAP, test-image bootstrap 95 %"
BOOTSTRAP_SEED = 0  # numpy seed of the test-image resamples (the same draws for every run)
NMS_TYPES = ("greedy", "soft-NMS")
SOFT_NMS_DIR = "soft_nms"
FIGURE_SCORE_THRESH = 0.5  # paper Figure 3: "boxes with the confident scores higher than 0.5"
# Student's t quantile t_{0.975, df} (two-sided 95 %): scipy.stats.t.ppf(0.975, df) rounded up
# to 3 decimals, for df 1-30, 40, 60, 120 (scipy is not a pgdet dependency). Between tabulated df
# the smaller df's (larger) value is used and beyond 120 the df = 120 one (1.980, not the normal
# 1.960), so an interval is never narrower than the exact one and at most 1.1 % wider.
T_975 = {
    1: 12.707, 2: 4.303, 3: 3.183, 4: 2.777, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.307, 9: 2.263,
    10: 2.229, 11: 2.201, 12: 2.179, 13: 2.161, 14: 2.145, 15: 2.132, 16: 2.120, 17: 2.110,
    18: 2.101, 19: 2.094, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
    26: 2.056, 27: 2.052, 28: 2.049, 29: 2.046, 30: 2.043, 40: 2.022, 60: 2.001, 120: 1.980,
}


@dataclass(frozen=True)
class Method:
    """A fine-tuning method: its table label, its folder name, its fine-tune config overrides."""

    label: str
    slug: str
    opts: Tuple[str, ...]
    base: Optional["Method"] = None  # for a variant: the method whose overrides it extends


PG_GAMMA1 = Method("PG γ=1", "pg_gamma1", ("MODEL.PG.ENABLED", "True", "MODEL.PG.GAMMA", "1.0"))
# beyond the paper: the ranking loss a user would pick today to train toward AP
RS_LOSS = Method("RS loss", "rs_loss", ("MODEL.PG.ENABLED", "False", "MODEL.ROI_HEADS.NAME",
                                        "RSROIHeads", "MODEL.RS_LOSS.ENABLED", "True"))
METHODS = (
    Method(CONTROL, "finetune_standard", ("MODEL.PG.ENABLED", "False")),
    Method("OHEM", "ohem", ("MODEL.PG.ENABLED", "False", "MODEL.ROI_HEADS.NAME", "OHEMROIHeads")),
    Method("PG γ=0", "pg_gamma0", ("MODEL.PG.ENABLED", "True", "MODEL.PG.GAMMA", "0.0")),
    PG_GAMMA1,
    RS_LOSS,
)


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


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def pg_variant(name: str, opts: Sequence[str]) -> Method:
    """PG γ=1 with extra overrides, labelled and filed under `name`.

    The label names the γ the run uses, so a variant overriding MODEL.PG.GAMMA (e.g. the γ = 0
    counterpart of an estimator) is not mislabelled "PG γ=1".
    """
    overrides = dict(zip(opts[::2], opts[1::2]))
    gamma = overrides.get("MODEL.PG.GAMMA")
    gamma = "1" if gamma is None else f"{float(gamma):g}"
    return Method(f"PG γ={gamma}, {name}", "pg_" + _slug(name), PG_GAMMA1.opts + tuple(opts),
                  PG_GAMMA1)


def rs_variant(name: str, opts: Sequence[str]) -> Method:
    """RS loss with extra overrides (e.g. its own SOLVER.BASE_LR), filed under `name`."""
    return Method(f"{RS_LOSS.label}, {name}", "rs_" + _slug(name), RS_LOSS.opts + tuple(opts),
                  RS_LOSS)


def parse_variant(text: str, make=pg_variant, option: str = "--variants") -> Method:
    """``"NAME=KEY VALUE [KEY VALUE ...]"`` -> PG γ=1 (or, with `make` rs_variant, RS loss)
    plus those overrides."""
    name, sep, rest = text.partition("=")
    opts = rest.split()
    if not (sep and name.strip() and opts and len(opts) % 2 == 0):
        raise ConfigError(f"{option} entry {text!r} is not 'NAME=KEY VALUE [KEY VALUE ...]', "
                          "e.g. 'conditional=MODEL.PG.REWARD_ESTIMATOR conditional'.")
    return make(name.strip(), opts)


def grid_variants(specs: Sequence[str]) -> List[Method]:
    """Every combination of ``KEY=V1,V2,...`` entries, each a PG γ=1 variant named by its values.

    No entries, no variants (itertools.product of no axes would yield one empty combination).
    """
    if not specs:
        return []
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not (sep and key and values):
            raise ConfigError(f"--grid entry {spec!r} is not 'KEY=V1,V2,...', "
                              "e.g. 'MODEL.PG.REWARD_ESTIMATOR=joint,conditional'.")
        axes.append([(key, v) for v in values.split(",")])
    return [
        pg_variant(", ".join(f"{key.split('.')[-1]}={value}" for key, value in point),
                   [item for pair in point for item in pair])
        for point in itertools.product(*axes)
    ]


def select_methods(slugs: Sequence[str]) -> List[Method]:
    """The standard methods named by folder (``--methods``); the control is always kept, since
    every row's ΔAP is measured against it."""
    known = {m.slug: m for m in METHODS}
    unknown = [s for s in slugs if s not in known]
    if unknown:
        raise ConfigError(f"--methods {unknown} unknown; choose from {list(known)}.")
    return [m for m in METHODS if m.slug in slugs or m.label == CONTROL]


def distinct_methods(variants: Sequence[Method], finetune_cfg,
                     standard: Sequence[Method] = METHODS) -> List[Method]:
    """`standard` plus the variants that configure a run different from every method before them.

    `finetune_cfg(opts)` builds the fine-tune config with `opts`, which also rejects unknown keys
    before anything trains.
    """
    methods, configs = [], []
    for method in (*standard, *variants):
        cfg = finetune_cfg(method.opts)
        if cfg in configs:
            print(f"[table1] {method.label}: same config as "
                  f"{methods[configs.index(cfg)].label}; not run twice", flush=True)
            continue
        if method.slug in {m.slug for m in methods}:
            raise ConfigError(f"Two methods would share the folder {method.slug!r}; rename one.")
        methods.append(method)
        configs.append(cfg)
    return methods


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


class Progress:
    """Numbers the stages and prints the time elapsed since the experiment began."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.time()

    def stage(self, what: str):
        self.done += 1
        elapsed = time.strftime("%H:%M:%S", time.gmtime(time.time() - self.start))
        print(f"\n[table1] stage {self.done}/{self.total} ({elapsed} elapsed): {what}", flush=True)


def run_experiment(args, methods: Sequence[Method]) -> List[Row]:
    """Run (or reuse) every stage: each baseline, then every fine-tune seed of every method from
    it; return the table rows, runs in that order."""
    base_opts = [*args.opts, *args.baseline_opts]
    ft_common = [*args.opts, *args.finetune_opts]
    baselines = args.baseline_seeds or [None]
    nms_types = NMS_TYPES[:1] if args.no_soft_nms else NMS_TYPES
    progress = Progress(len(baselines) * len(nms_types) * (1 + len(args.seeds) * len(methods)))
    rows = {(m, n): Row(m, n) for m in [BASELINE] + [x.label for x in methods]
            for n in nms_types}

    def train_and_soft_nms(label, name, config, opts, out_dir, seed, baseline, weights_opts=()):
        progress.stage(f"{label}, train + greedy-NMS evaluation -> {out_dir}")
        metrics = run_stage(name, config, out_dir, [*opts, *weights_opts], num_gpus=args.num_gpus)
        rows[label, "greedy"].runs.append(Run(seed, out_dir, metrics, baseline))
        if args.no_soft_nms:
            return
        soft_dir = os.path.join(out_dir, SOFT_NMS_DIR)
        progress.stage(f"{label}, soft-NMS evaluation -> {soft_dir}")
        metrics = run_stage(
            name + "_soft_nms", config, soft_dir,
            [*opts, "MODEL.WEIGHTS", os.path.join(out_dir, "model_final.pth"),
             "MODEL.SOFT_NMS.ENABLED", "True"],
            num_gpus=args.num_gpus, eval_only=True)
        rows[label, "soft-NMS"].runs.append(Run(seed, soft_dir, metrics, baseline))

    for baseline in baselines:
        base_dir = baseline_dir(args.output, baseline)
        seed_opts = [] if baseline is None else ["SEED", str(baseline)]
        train_and_soft_nms(BASELINE, os.path.basename(base_dir), args.baseline_config,
                           [*base_opts, *seed_opts], base_dir, None, baseline)
        for seed in args.seeds:
            for method in methods:
                out_dir = finetune_dir(args.output, method.slug, baseline, seed)
                train_and_soft_nms(
                    method.label, f"{method.slug}_{os.path.basename(out_dir)}",
                    args.finetune_config, [*ft_common, *method.opts, "SEED", str(seed)], out_dir,
                    seed, baseline, ["MODEL.WEIGHTS", os.path.join(base_dir, "model_final.pth")])
    rows = list(rows.values())
    count_no_detections_as_zero(rows)
    return rows


def run_cell(args, methods: Sequence[Method]) -> None:
    """--only: the baselines, or one method at one seed from every baseline (stages as
    run_experiment runs them, so the final table reuses them)."""
    if args.only == ["baseline"]:
        args.seeds = []
    else:
        slug, seed = args.only[0], int(args.only[1])
        chosen = [m for m in methods if m.slug == slug]
        if not chosen:
            sys.exit(f"error: --only {slug}: no such method; choose from "
                     f"{[m.slug for m in methods]}")
        methods, args.seeds = chosen, [seed]
    run_experiment(args, methods)


def count_no_detections_as_zero(rows: Sequence[Row]) -> None:
    """A model that outputs no detection at all (e.g. a collapsed PG γ=0 run) has AP 0, but
    detectron2's COCOEvaluator reports NaN for it ("No predictions from the model!") instead of
    running COCOeval, which would poison the mean ± std. Such a run (every metric NaN) gets 0 for
    each metric that the baseline measured, i.e. where the test set has ground truth; metrics
    undefined for the dataset (APl without large objects) stay NaN."""
    baseline = next(r for r in rows if r.method == BASELINE and r.nms == "greedy").runs[0].metrics
    for row in rows:
        for i, run in enumerate(row.runs):
            if all(np.isnan(run.metrics.get(k, float("nan"))) for k in METRIC_KEYS):
                print(f"[table1] {row.method} ({row.nms}) in {run.output_dir} made no detection: "
                      "counted as AP 0", flush=True)
                row.runs[i] = run._replace(metrics={
                    k: float("nan") if np.isnan(baseline[k]) else 0.0 for k in METRIC_KEYS})


def t_quantile_975(df: int) -> float:
    """t_{0.975, df} from :data:`T_975`: the value of the largest tabulated df not above `df`."""
    return T_975[max(d for d in T_975 if d <= df)]


def paired_t_interval(gains: Sequence[float]) -> Optional[Tuple[float, float]]:
    """95 % confidence interval of the mean of n paired gains: mean ± t_{0.975, n-1}·sd/√n with
    the sample sd; None for fewer than 2 gains (no spread to measure)."""
    n = len(gains)
    if n < 2:
        return None
    half_width = t_quantile_975(n - 1) * np.std(gains, ddof=1) / np.sqrt(n)
    return float(np.mean(gains) - half_width), float(np.mean(gains) + half_width)


def _same_pair(run: Run, control_run: Run) -> bool:
    """A fine-tune pairs with the control run of its baseline and seed (same data order); a
    baseline (no seed) with every control run fine-tuned from it."""
    return run.baseline == control_run.baseline and run.seed in (None, control_run.seed)


@dataclass
class Comparison:
    """A row against the control with the same NMS, pair by pair (see :func:`_same_pair`)."""

    pairs: List[Tuple[Run, List[Run]]]  # each run of the row with its control runs
    unpaired: List[str]  # why some runs of either side have no partner; empty when all pair
    bootstrap: Optional[Tuple[float, float]] = None  # see add_image_bootstrap

    def gains(self) -> np.ndarray:
        """Per pair: the run's AP minus its control runs' (mean) AP."""
        return np.array([run.metrics["AP"] - np.mean([c.metrics["AP"] for c in controls])
                         for run, controls in self.pairs])

    def interval(self) -> Optional[Tuple[float, float]]:
        """The paired t interval of the mean gain; None unless every run pairs."""
        return None if self.unpaired else paired_t_interval(self.gains())


def pair_with_control(row: Row, control: Row) -> Comparison:
    """Pair the runs of `row` with those of the control; name the runs left without a partner
    (e.g. a seed that one side has not run) instead of comparing unequal sets of runs."""
    pairs = [(run, [c for c in control.runs if _same_pair(run, c)]) for run in row.runs]
    unpaired = [f"no {control.method} run for {run_name(run) or 'the baseline'}"
                for run, partners in pairs if not partners]
    unpaired += [f"no {row.method} run for {run_name(c)}" for c in control.runs
                 if not any(_same_pair(run, c) for run in row.runs)]
    return Comparison([(run, partners) for run, partners in pairs if partners], unpaired)


def compare_with_control(rows: Sequence[Row]) -> Dict[Tuple[str, str], Comparison]:
    """{(method, NMS): its pairing with the control of the same NMS} for every other row."""
    control = {r.nms: r for r in rows if r.method == CONTROL}
    return {(r.method, r.nms): pair_with_control(r, control[r.nms])
            for r in rows if r.method != CONTROL}


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


def format_table1(rows: Sequence[Row], comparisons: Dict[Tuple[str, str], Comparison],
                  paper: Optional[str] = None) -> str:
    """Markdown table shaped like the paper's Table 1: one line per (method, NMS); COCO metrics as
    mean ± sample std over the runs; the AP gain over the standard fine-tune with the same NMS
    (the fair control), paired run by run (`comparisons`), and its test-image bootstrap interval
    when one was computed; the paper's AP of the same row when `paper` ("frcnn" or "fpn") is
    given."""
    bootstrapped = any(c.bootstrap for c in comparisons.values())
    head = ["method", "NMS", "runs", *METRIC_KEYS, GAIN_COLUMN, PER_PAIR_COLUMN]
    head += [BOOTSTRAP_COLUMN] if bootstrapped else []
    head += [f"paper AP ({paper})"] if paper else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        comparison = comparisons.get((row.method, row.nms))  # None: the control itself
        per_pair = ", ".join(map(_signed, comparison.gains())) if comparison else ""
        cells = [row.method, row.nms, str(len(row.runs)), *(_cell(row, k) for k in METRIC_KEYS),
                 _gain_cell(comparison) if comparison else "—", per_pair or "—"]
        cells += [_bootstrap_cell(comparison)] if bootstrapped else []
        if paper:
            reference = PAPER[paper].get((row.method, row.nms))
            cells.append(f"{reference[0]:.1f}" if reference else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
        "test_dataset": dataset, "bootstrap": {"resamples": args.bootstrap, "seed": BOOTSTRAP_SEED},
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


def draw_figures(args, methods, rows: Sequence[Row], ft_cfg, base_cfg, dataset: str):
    """Figure 3 (the first run of the baseline, the standard fine-tune and PG γ=1, those that
    ran) and the training curves of every fine-tuning run."""
    figures = os.path.join(args.output, "figures")
    method_opts = {m.label: m.opts for m in methods}
    first_runs = {r.method: r.runs[0] for r in rows if r.nms == "greedy" and r.runs}
    models = []
    for label, make_cfg in ((BASELINE, base_cfg), (CONTROL, ft_cfg), (PG_GAMMA1.label, ft_cfg)):
        if label not in first_runs:
            continue
        cfg = make_cfg(method_opts.get(label, ()))
        cfg.MODEL.WEIGHTS = os.path.join(first_runs[label].output_dir, "model_final.pth")
        register_datasets_from_cfg(cfg)
        name = run_name(first_runs[label])
        models.append((f"{label}, {name}" if name else label, cfg))
    detection_figure(models, dataset, os.path.join(figures, "figure3_detections.png"),
                     num_images=args.figure_images, score_thresh=FIGURE_SCORE_THRESH)
    curves = {r.method: [run.output_dir for run in r.runs]
              for r in rows if r.nms == "greedy" and r.method != BASELINE}
    training_curves_figure(curves, os.path.join(figures, "training_curves.png"))
    print(f"[table1] figures written to {figures}", flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-config", required=True)
    parser.add_argument("--finetune-config", required=True,
                        help="schedule of every fine-tuning run (e.g. a PG config)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="fine-tune seeds (SEED), each run from every baseline")
    parser.add_argument("--baseline-seeds", type=int, nargs="+", metavar="B",
                        help="train one baseline per seed B (SEED B) into <output>/baseline_seed<B>"
                        " and fine-tune from each; default: one baseline in <output>/baseline")
    parser.add_argument("--output", required=True)
    parser.add_argument("--paper-column", nargs="?", const="frcnn", choices=sorted(PAPER),
                        help="add the paper's AP column (Faster R-CNN rows, or fpn)")
    parser.add_argument("--methods", nargs="+", default=[m.slug for m in METHODS],
                        metavar="SLUG", help="standard methods to run (default: all of "
                        f"{' '.join(m.slug for m in METHODS)}); the control always runs")
    parser.add_argument("--variants", nargs="+", default=[], metavar="NAME=KEY VALUE ...")
    parser.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2")
    parser.add_argument("--rs-variants", nargs="+", default=[], metavar="NAME=KEY VALUE ...",
                        help="RS loss plus named overrides, e.g. its own learning rate: "
                        "'lr0.003=SOLVER.BASE_LR 0.003'")
    parser.add_argument("--baseline-opts", nargs="+", default=[], metavar="KEY VALUE")
    parser.add_argument("--finetune-opts", nargs="+", default=[], metavar="KEY VALUE")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per stage (CPU: gloo)")
    parser.add_argument("--figure-images", type=int, default=4, help="images in Figure 3")
    parser.add_argument("--only", nargs="+", metavar="SLUG [SEED]",
                        help="run one cell and write no table: 'baseline' (the baselines), or a "
                        "method's folder name and a seed; cells are separate processes that can "
                        "run side by side once the baselines exist, and a final run without "
                        "--only reuses them all and writes the table")
    parser.add_argument("--no-soft-nms", action="store_true",
                        help="greedy NMS only: no soft-NMS evaluation of each model (a tuning "
                        "sweep on a validation split needs one number per run)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="resamples of the test images for the ΔAP bootstrap interval "
                        "(0: none)")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="KEY VALUE overrides for every stage, after --")
    args = parser.parse_args(argv)
    if args.bootstrap < 0:
        parser.error("--bootstrap N needs N >= 0 (0: no bootstrap)")
    if args.only and not (args.only == ["baseline"] or (len(args.only) == 2
                                                        and args.only[1].isdigit())):
        parser.error("--only takes 'baseline' or a method folder and a seed, e.g. "
                     "--only pg_gamma1 0")
    args.opts = args.opts[1:] if args.opts[:1] == ["--"] else args.opts
    args.output = os.path.abspath(args.output)
    args.baseline_config = os.path.abspath(args.baseline_config)
    args.finetune_config = os.path.abspath(args.finetune_config)
    return args


def main(argv=None):
    args = parse_args(argv)
    ft_common = [*args.opts, *args.finetune_opts]

    def ft_cfg(opts):
        return build_cfg(args.finetune_config, [*ft_common, *opts])

    def base_cfg(opts):
        return build_cfg(args.baseline_config, [*args.opts, *args.baseline_opts, *opts])

    try:
        variants = [parse_variant(v) for v in args.variants] + grid_variants(args.grid) + [
            parse_variant(v, rs_variant, "--rs-variants") for v in args.rs_variants]
        methods = distinct_methods(variants, ft_cfg, select_methods(args.methods))
        cfg = ft_cfg(())
        base_cfg(())
        # a bad DATASETS.* entry stops here, not in the first stage's log; and a COCO-json
        # test set's ground truth (the bootstrap's) is its json_file
        register_datasets_from_cfg(cfg)
    except (ConfigError, DatasetConfigError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    if not cfg.DATASETS.TEST:
        sys.exit("error: the fine-tune config has no DATASETS.TEST; Table 1 needs a test set.")
    os.makedirs(args.output, exist_ok=True)
    if args.only:
        run_cell(args, methods)
        return
    rows = run_experiment(args, methods)
    comparisons = compare_with_control(rows)
    if args.bootstrap:
        add_image_bootstrap(comparisons, cfg.DATASETS.TEST[0], args.bootstrap)
    markdown = write_report(args, methods, rows, comparisons, cfg.MODEL.SOFT_NMS,
                            cfg.DATASETS.TEST[0])
    print("\n" + markdown, flush=True)
    draw_figures(args, methods, rows, ft_cfg, base_cfg, cfg.DATASETS.TEST[0])


if __name__ == "__main__":
    main()
