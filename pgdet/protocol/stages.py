"""The stages of a Table-1 experiment and what each needs: every baseline, then from its final
weights every fine-tune seed of every method; each trained model evaluated again with soft-NMS.
They run through :func:`pgdet.protocol.schedule.run_stages`, ``--jobs`` at a time."""
import os
import sys
from typing import List, NamedTuple, Optional, Sequence, Tuple

from ..engine.experiment import run_stage
from .methods import BASELINE, Method
from .runs import NMS_TYPES, SOFT_NMS_DIR, Row, Run, baseline_dir, finetune_dir
from .schedule import Stage, run_stages


class PlannedRun(NamedTuple):
    """Where a stage's metrics go in the table."""

    row: Tuple[str, str]  # (method label, NMS)
    seed: Optional[int]
    output_dir: str
    baseline: Optional[int]


def plan_stages(args, methods: Sequence[Method]) -> Tuple[List[Stage], List[PlannedRun]]:
    """Every stage of the experiment with its place in the table, in the order a single job runs
    them: each baseline and its soft-NMS evaluation, then every fine-tune seed of every method
    from it, each followed by its soft-NMS evaluation."""
    base_opts = [*args.opts, *args.baseline_opts]
    ft_common = [*args.opts, *args.finetune_opts]
    stages, planned = [], []

    def add(name, kind, config, out_dir, opts, eval_only=False, after=()):
        def run():  # run_stage is looked up when the stage runs (tests replace it)
            return run_stage(name, config, out_dir, opts, num_gpus=args.num_gpus,
                             eval_only=eval_only, echo=args.jobs == 1)
        stages.append(Stage(name, kind, out_dir, run, tuple(after)))
        return len(stages) - 1

    def train_and_soft_nms(label, name, kind, config, opts, out_dir, seed, baseline, after=(),
                           weights_opts=()):
        trained = add(name, kind, config, out_dir, [*opts, *weights_opts], after=after)
        planned.append(PlannedRun((label, "greedy"), seed, out_dir, baseline))
        if not args.no_soft_nms:
            soft_dir = os.path.join(out_dir, SOFT_NMS_DIR)
            add(name + "_soft_nms", "evaluation", config, soft_dir,
                [*opts, "MODEL.WEIGHTS", os.path.join(out_dir, "model_final.pth"),
                 "MODEL.SOFT_NMS.ENABLED", "True"], eval_only=True, after=[trained])
            planned.append(PlannedRun((label, "soft-NMS"), seed, soft_dir, baseline))
        return trained

    for baseline in args.baseline_seeds or [None]:
        base_dir = baseline_dir(args.output, baseline)
        seed_opts = [] if baseline is None else ["SEED", str(baseline)]
        trained = train_and_soft_nms(
            BASELINE, os.path.basename(base_dir), "baseline", args.baseline_config,
            [*base_opts, *seed_opts], base_dir, None, baseline)
        for seed in args.seeds:
            for method in methods:
                out_dir = finetune_dir(args.output, method.slug, baseline, seed)
                train_and_soft_nms(
                    method.label, f"{method.slug}_{os.path.basename(out_dir)}", "fine-tune",
                    args.finetune_config, [*ft_common, *method.opts, "SEED", str(seed)], out_dir,
                    seed, baseline, after=[trained],
                    weights_opts=["MODEL.WEIGHTS", os.path.join(base_dir, "model_final.pth")])
    return stages, planned


def run_experiment(args, methods: Sequence[Method]) -> List[Row]:
    """Run (or reuse) every stage, ``args.jobs`` at a time; return the table rows, their runs in
    the order of :func:`plan_stages` whatever order they finished in."""
    stages, planned = plan_stages(args, methods)
    nms_types = NMS_TYPES[:1] if args.no_soft_nms else NMS_TYPES
    rows = {(m, n): Row(m, n) for m in [BASELINE] + [x.label for x in methods]
            for n in nms_types}
    for run, metrics in zip(planned, run_stages(stages, args.jobs)):
        rows[run.row].runs.append(Run(run.seed, run.output_dir, metrics, run.baseline))
    return list(rows.values())


def run_cell(args, methods: Sequence[Method]) -> None:
    """--only: the baselines, or cells (a method at a seed, from every baseline) one after the
    other (stages as run_experiment runs them, so the final table reuses them)."""
    if args.only == ["baseline"]:
        args.seeds = []
        run_experiment(args, methods)
        return
    by_slug = {m.slug: m for m in methods}
    cells = [(slug, int(seed)) for slug, seed in zip(args.only[::2], args.only[1::2])]
    unknown = sorted({slug for slug, _ in cells if slug not in by_slug})
    if unknown:
        sys.exit(f"error: --only {', '.join(unknown)}: no such method; choose from "
                 f"{list(by_slug)}")
    for slug, seed in cells:
        args.seeds = [seed]
        run_experiment(args, [by_slug[slug]])
