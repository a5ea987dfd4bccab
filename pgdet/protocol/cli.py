"""Paper Table 1 on any dataset: from a converged baseline (or one per baseline seed), fine-tune
with standard training, OHEM, the policy gradient (γ = 0 and 1) and, beyond the paper, Rank & Sort
loss, over several seeds; evaluate each with greedy NMS and soft-NMS; write the table (mean ± std
over the runs, each method's AP gain over the standard fine-tune paired run by run with 95 %
intervals, the paper's numbers beside) and the pictures.

    pgdet-table1 --baseline-config demo/frcnn_MobileNetV2_FPN_demo.yaml \\
        --finetune-config demo/ft_MobileNetV2_FPN_demo.yaml --jobs 2 \\
        --seeds 0 1 2 --baseline-seeds 0 1 --output output/table1_demo --paper-column \\
        --variants "conditional=MODEL.PG.REWARD_ESTIMATOR conditional" \\
        --grid MODEL.PG.REWARD_ESTIMATOR=conditional,reinforce MODEL.PG.BASELINE=nms,sampled_mean \\
        -- DATALOADER.NUM_WORKERS 2

The configs are paths or names of configs pgdet ships (pgdet/configs); benchmarks/table1.py in
the repository is this command as a script.

Stages (each one ``pgdet-train`` process whose command is printed, pgdet/engine/experiment.py):
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
                           variant identical to a method before it is not run twice, and a grid
                           point whose options cannot work together (e.g. ``joint`` with
                           ``BASELINE sampled_mean``) is left out with a note;
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
     first baseline and of the first run of the standard fine-tune and of up to two PG rows, the
     paper's γ=1 first, then the named variants, on the first test images) and
     training_curves.png (losses, rewards and PG weights of every fine-tuning run);
  7. <output>/report.html: one self-contained page (pictures embedded) with the forest plot of
     the paired gains (also figures/forest_plot.png: each row's mean gain, 95 % paired-t and
     bootstrap intervals, every pair's gain, a line at 0), the table, the training curves and
     Figure 3. ``python -m pgdet.protocol.html_report <output>`` draws it again from
     table1.json alone, e.g. for a results folder written before it existed.

``--methods finetune_standard pg_gamma1`` runs only those standard methods (the control always
runs), e.g. to compare a different fine-tuning schedule cheaply. ``--no-soft-nms`` skips step 3
(a tuning sweep on a validation split needs one number per run).

The protocol of benchmarks/RESULTS.md §8 (choose on a validation split, report the test split
once): run the sweep with ``-- DATASETS.TRAIN "('<train>',)" DATASETS.TEST "('<val>',)"`` into
one folder and the control's own tuning (e.g. ``--finetune-opts SOLVER.BASE_LR ...``) into
another, pick by the paired gains on val, then run only the chosen PG configuration and the
chosen control, with ``--baseline-seeds``, on the config's train/test split.

``--jobs N`` runs up to N stages at once, each as soon as the stages it needs have finished
(fine-tunes after their baseline, soft-NMS evaluations after their run): one progress line per
change (stages done / running / left, elapsed, ETA), each stage's output in its
<run dir>/log_<stage>.txt. The N processes share the machine: unless OMP_NUM_THREADS is set, each
gets the CPU count / (N x --num-gpus) threads.

``--only SLUG SEED`` runs one cell (one method at one seed, from every baseline) and writes no
table, ``--only SLUG SEED SLUG SEED ...`` several cells one after the other; ``--only baseline``
trains the baselines.

Overrides after ``--`` apply to every stage (data sets, batch size, ...); --baseline-opts and
--finetune-opts to one side only (e.g. different SOLVER.MAX_ITER). A stage whose folder holds a
finished result is reused, so an interrupted run continues where it stopped when started again
with the same arguments; delete a run's folder to redo it. So several processes can fill one
output folder, e.g. one per baseline seed (``--baseline-seeds B``), or one per fine-tune seed:
a stage holds ``<its folder>.lock`` while it runs, so two processes that both need a missing
baseline train it once (the second waits, then reuses it); a last invocation with all the seeds
reuses every stage and writes the whole table.
"""
import argparse
import os
import sys

from ..configs import ConfigNotFoundError, resolve_config_file
from ..data import DatasetConfigError, register_datasets_from_cfg
from ..engine import ConfigError, build_cfg
from .bootstrap import add_image_bootstrap
from .figures import draw_figures
from .html_report import write_html_report
from .methods import (
    METHODS, distinct_methods, grid_variants, parse_variant, rs_variant, select_methods,
)
from .no_detections import count_no_detections_as_zero
from .report import PAPER, write_report
from .stages import run_cell, run_experiment
from .stats import compare_with_control


def _config_path(path_or_name: str) -> str:
    """The absolute path of a config given by path or by name; a missing one is left for
    :func:`main` to report (it checks every config before the first stage)."""
    try:
        return os.path.abspath(resolve_config_file(path_or_name))
    except ConfigNotFoundError:
        return os.path.abspath(path_or_name)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-config", required=True,
                        help="path, or name of a config pgdet ships (pgdet/configs)")
    parser.add_argument("--finetune-config", required=True,
                        help="schedule of every fine-tuning run (e.g. a PG config); path or name")
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
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="stages run at once, each as soon as the stages it needs have "
                        "finished (default 1: one after the other)")
    parser.add_argument("--figure-images", type=int, default=4, help="images in Figure 3")
    parser.add_argument("--only", nargs="+", metavar="SLUG SEED",
                        help="run some cells and write no table: 'baseline' (the baselines), or "
                        "pairs of a method's folder name and a seed, run one after the other; "
                        "a final run without --only reuses them all and writes the table")
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
    if args.jobs < 1:
        parser.error("--jobs N needs N >= 1")
    if args.only and not (args.only == ["baseline"] or (
            len(args.only) % 2 == 0 and all(seed.isdigit() for seed in args.only[1::2]))):
        parser.error("--only takes 'baseline' or pairs of a method folder and a seed, e.g. "
                     "--only pg_gamma1 0 pg_gamma1 1")
    args.opts = args.opts[1:] if args.opts[:1] == ["--"] else args.opts
    args.output = os.path.abspath(args.output)
    args.baseline_config = _config_path(args.baseline_config)
    args.finetune_config = _config_path(args.finetune_config)
    return args


def share_threads(jobs: int, num_gpus: int) -> None:
    """With several jobs and unless the user set OMP_NUM_THREADS, give each of the
    jobs x num_gpus processes that run at once an equal share of the CPUs (each would otherwise
    start one thread per CPU)."""
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // (jobs * num_gpus))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        print(f"[table1] {jobs} stages at once: OMP_NUM_THREADS={threads} for each process",
              flush=True)


def main(argv=None):
    args = parse_args(argv)
    ft_common = [*args.opts, *args.finetune_opts]

    def ft_cfg(opts):
        return build_cfg(args.finetune_config, [*ft_common, *opts])

    def base_cfg(opts):
        return build_cfg(args.baseline_config, [*args.opts, *args.baseline_opts, *opts])

    try:
        grid = grid_variants(args.grid)
        variants = [parse_variant(v) for v in args.variants] + grid + [
            parse_variant(v, rs_variant, "--rs-variants") for v in args.rs_variants]
        methods = distinct_methods(variants, ft_cfg, select_methods(args.methods), skippable=grid)
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
    share_threads(args.jobs, args.num_gpus)
    if args.only:
        run_cell(args, methods)
        return
    rows = run_experiment(args, methods)
    count_no_detections_as_zero(rows, cfg.DATASETS.TEST[0])
    comparisons = compare_with_control(rows)
    if args.bootstrap:
        add_image_bootstrap(comparisons, cfg.DATASETS.TEST[0], args.bootstrap)
    markdown = write_report(args, methods, rows, comparisons, cfg.MODEL.SOFT_NMS,
                            cfg.DATASETS.TEST[0])
    print("\n" + markdown, flush=True)
    draw_figures(args, methods, rows, ft_cfg, base_cfg, cfg.DATASETS.TEST[0])
    print(f"[table1] report written to {write_html_report(args.output)}", flush=True)


if __name__ == "__main__":
    main()