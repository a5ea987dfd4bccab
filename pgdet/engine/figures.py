"""Pictures of a Table-1 experiment: the paper's Figure 3 and the fine-tuning curves.

Figure 3 of Rao et al. shows the baseline's and the PG model's detections with score > 0.5 on the
same images, to make the claim visible: the PG model keeps fewer confident false positives.
:func:`detection_figure` rebuilds that picture for any set of trained models (one row each, under a
ground-truth row). :func:`training_curves_figure` plots what each fine-tuning run logged to its
``metrics.json``: the losses, and for PG runs the rewards and weights of SPEC §1, which show
whether the policy gradient did anything at all (e.g. a mean weight of exactly γ means every
advantage was zero).

Both draw on a bare ``matplotlib.figure.Figure`` (Agg canvas, no pyplot), so they never touch a
display or the global backend of the calling program.
"""
import json
import os
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import Visualizer
from matplotlib import colormaps
from matplotlib.figure import Figure

# Visualizer's labels (≈ 1/90 of the drawing's size) would be unreadable once panels are shrunk
LABEL_FONT_SCALE = 1.6
# metrics.json keys plotted by training_curves_figure, with their panel titles
CURVES = (
    ("total_loss", "total loss"),
    ("loss_cls", "classification loss"),
    ("pg/baseline_reward", "r' = AP of the NMS result (pg/baseline_reward)"),
    ("pg/sampled_reward", "mean AP of sampled actions (pg/sampled_reward)"),
    ("pg/positive_advantage_frac", "fraction of advantages > 0"),
    ("pg/mean_weight", "mean loss weight c·A + γ (pg/mean_weight)"),
)


def predict(cfg, dataset_dicts: Sequence[dict], score_thresh: float) -> List:
    """Detections (detectron2 ``Instances`` on CPU, score > `score_thresh`) of the model `cfg`
    describes (MODEL.WEIGHTS loaded) on each image, at the config's test resolution.

    DefaultPredictor takes BGR images and converts them to INPUT.FORMAT itself, so the image is
    read as BGR whatever the model's format (reading it in an RGB model's format would feed the
    model swapped colour channels)."""
    predictor = DefaultPredictor(cfg)
    results = []
    for record in dataset_dicts:
        image = read_image(record["file_name"], format="BGR")
        instances = predictor(image)["instances"].to("cpu")
        results.append(instances[instances.scores > score_thresh])
    return results


def detection_figure(
    models: Sequence[Tuple[str, CfgNode]], dataset_name: str, path: str, num_images: int = 4,
    score_thresh: float = 0.5, min_side: int = 480,
) -> None:
    """Draw the first `num_images` images of `dataset_name` in columns: ground truth in the top
    row, then one row of detections (score > `score_thresh`) per ``(label, cfg)`` in `models`.

    The dataset must be registered (pgdet's ``register_datasets_from_cfg``). Small images are
    drawn with their shorter side magnified to `min_side` pixels, so that the class labels
    (whose font size detectron2's Visualizer derives from the drawing size) stay legible.
    """
    dataset_dicts = DatasetCatalog.get(dataset_name)[:num_images]
    metadata = MetadataCatalog.get(dataset_name)
    images = [read_image(d["file_name"], format="RGB") for d in dataset_dicts]

    def canvas(image):
        scale = max(1.0, min_side / min(image.shape[:2]))
        return Visualizer(image, metadata, scale=scale, font_size_scale=LABEL_FONT_SCALE)

    # rows of (label, [(drawing, number of boxes drawn) per image])
    rows = [("ground truth", [(canvas(im).draw_dataset_dict(d), len(d["annotations"]))
                              for im, d in zip(images, dataset_dicts)])]
    for label, cfg in models:
        detections = predict(cfg, dataset_dicts, score_thresh)
        rows.append((label, [(canvas(im).draw_instance_predictions(det), len(det))
                             for im, det in zip(images, detections)]))

    fig = Figure(figsize=(4.0 * len(images), 4.2 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(images), squeeze=False)
    for r, (label, panels) in enumerate(rows):
        for c, (drawing, num_boxes) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(drawing.get_image())
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{label}: {num_boxes} boxes", fontsize=10)
            if r == len(rows) - 1:
                ax.set_xlabel(f"image {dataset_dicts[c]['image_id']}", fontsize=9)
    fig.suptitle(f"Detections with score > {score_thresh} on {dataset_name} (paper Figure 3)")
    _save(fig, path)


def read_metrics(run_dir: str) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """``{key: (iterations, values)}`` from a run's ``metrics.json`` (detectron2's JSONWriter: one
    JSON object per line). A resumed run re-logs some iterations; the last record of each wins."""
    by_iteration: Dict[int, dict] = {}
    with open(os.path.join(run_dir, "metrics.json")) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                by_iteration.setdefault(record["iteration"], {}).update(record)
    series: Dict[str, List[Tuple[int, float]]] = {}
    for iteration in sorted(by_iteration):
        for key, value in by_iteration[iteration].items():
            if key != "iteration" and isinstance(value, (int, float)):
                series.setdefault(key, []).append((iteration, float(value)))
    return {key: (np.array([i for i, _ in points]), np.array([x for _, x in points]))
            for key, points in series.items()}


def training_curves_figure(runs: Mapping[str, Sequence[str]], path: str) -> None:
    """One panel per key of :data:`CURVES`; one line per method of `runs` (``{label: run dirs of
    its seeds}``): the mean over seeds at the iterations all seeds logged, with the min-max band
    when there are several seeds. Methods that never logged a key are left out of its panel."""
    metrics = {label: [read_metrics(d) for d in dirs] for label, dirs in runs.items()}
    palette = colormaps["tab10" if len(runs) <= 10 else "tab20"]
    colours = {label: palette(i % palette.N) for i, label in enumerate(runs)}  # same in every panel
    fig = Figure(figsize=(15, 8.5), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for ax, (key, title) in zip(axes, CURVES):
        for label, seeds in metrics.items():
            curves = [m[key] for m in seeds if key in m]
            if not curves:
                continue
            common = curves[0][0]
            for iterations, _ in curves[1:]:
                common = np.intersect1d(common, iterations)
            values = np.stack([v[np.isin(i, common)] for i, v in curves])
            ax.plot(common, values.mean(0), marker="." if len(common) < 20 else None,
                    color=colours[label],
                    label=label + (f" ({len(curves)} seeds)" if len(curves) > 1 else ""))
            if len(curves) > 1:
                ax.fill_between(common, values.min(0), values.max(0), color=colours[label],
                                alpha=0.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle("Fine-tuning from the same baseline (metrics.json; detectron2 logs the median "
                 "of the last 20 iterations)")
    _save(fig, path)


def _save(fig: Figure, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
