"""The pictures of a Table-1 experiment (pgdet/engine/figures.py draws them): Figure 3 of the
first runs, and the training curves of every fine-tuning run."""
import os
from typing import List, Sequence

from ..data import register_datasets_from_cfg
from ..engine.figures import detection_figure, training_curves_figure
from .methods import BASELINE, CONTROL, PG_GAMMA1
from .runs import Row, run_name

FIGURE_SCORE_THRESH = 0.5  # paper Figure 3: "boxes with the confident scores higher than 0.5"
FIGURE_MAX_MODELS = 4  # model rows of Figure 3 (beside the ground truth): one image row each


def figure_methods(methods, rows: Sequence[Row]) -> List[str]:
    """The labels Figure 3 draws, in this order: the baseline, the standard fine-tune, then the
    policy-gradient rows that ran (the paper's PG γ=1 first, then the named variants in table
    order), at most FIGURE_MAX_MODELS in all.

    The paper's figure sets the baseline's confident mistakes beside PG's, so a protocol that
    runs only a chosen variant (no PG γ=1) must still show that variant's detections.
    """
    ran = {r.method for r in rows if r.nms == "greedy" and r.runs}
    pg_labels = [m.label for m in methods if m is PG_GAMMA1 or m.base is PG_GAMMA1]
    pg_labels.sort(key=lambda label: label != PG_GAMMA1.label)
    wanted = [BASELINE, CONTROL] + pg_labels
    return [label for label in wanted if label in ran][:FIGURE_MAX_MODELS]


def draw_figures(args, methods, rows: Sequence[Row], ft_cfg, base_cfg, dataset: str):
    """Figure 3 (the first run of each of :func:`figure_methods`) and the training curves of
    every fine-tuning run."""
    figures = os.path.join(args.output, "figures")
    method_opts = {m.label: m.opts for m in methods}
    first_runs = {r.method: r.runs[0] for r in rows if r.nms == "greedy" and r.runs}
    models = []
    for label in figure_methods(methods, rows):
        make_cfg = base_cfg if label == BASELINE else ft_cfg
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
