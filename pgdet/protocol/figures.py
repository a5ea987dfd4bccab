"""The pictures of a Table-1 experiment (pgdet/engine/figures.py draws them): Figure 3 of the
first runs, and the training curves of every fine-tuning run."""
import os
from typing import Sequence

from ..data import register_datasets_from_cfg
from ..engine.figures import detection_figure, training_curves_figure
from .methods import BASELINE, CONTROL, PG_GAMMA1
from .runs import Row, run_name

FIGURE_SCORE_THRESH = 0.5  # paper Figure 3: "boxes with the confident scores higher than 0.5"


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
