#!/usr/bin/env python
"""The main job: the paper's protocol on the built-in demo dataset, on CPU, in minutes.

1. train a baseline Faster R-CNN from scratch (pgdet/configs/demo/frcnn_MobileNetV2_FPN_demo.yaml);
2. fine-tune it twice from the same checkpoint for the same iterations: once with standard
   cross-entropy, once with the policy-gradient loss;
3. print the three COCO results side by side;
4. draw the detections (score > 0.5) of the baseline and of the PG model on the first val images,
   as ``pgdet-predict`` does.

Outputs (weights, metrics.json, logs, COCO results) go to output/demo/<stage>/, the pictures to
output/demo/pictures/<model>/. Finished stages are reused: delete output/demo to start over.
"""
import argparse
import os

from detectron2.data import DatasetCatalog

from pgdet.engine.experiment import format_table, run_stage
from pgdet.tools.predict import RESULTS_FILE, predict_images, prediction_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "pgdet", "configs", "demo")
PICTURE_IMAGES = 4  # val images drawn per model


def draw_detections(models, output: str) -> None:
    """Each ``(name, config file, weights)`` of `models` run on the first val images; the
    pictures and the COCO results into <output>/pictures/<name>/."""
    images = [d["file_name"] for d in DatasetCatalog.get("pgdet_demo_val")[:PICTURE_IMAGES]]
    for name, config_file, weights in models:
        folder = os.path.join(output, "pictures", name)
        predict_images(prediction_config(config_file, weights), images, folder)
        print(f"{name}: detections on {len(images)} val images drawn in {folder} "
              f"(and {RESULTS_FILE})")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "demo"))
    parser.add_argument("--num-gpus", type=int, default=1, help="processes (CPU: gloo)")
    args = parser.parse_args()
    baseline_dir = os.path.join(args.output, "baseline")
    baseline_weights = os.path.join(baseline_dir, "model_final.pth")
    baseline_config = os.path.join(CONFIG_DIR, "frcnn_MobileNetV2_FPN_demo.yaml")
    rows = {}
    rows["baseline"] = run_stage("baseline", baseline_config, baseline_dir,
                                 num_gpus=args.num_gpus)
    for name, cfg in (("standard", "ft_MobileNetV2_FPN_demo.yaml"),
                      ("PG γ=1", "pg_MobileNetV2_FPN_demo.yaml")):
        rows[f"baseline + {name} fine-tune"] = run_stage(
            name, os.path.join(CONFIG_DIR, cfg),
            os.path.join(args.output, "finetune_" + ("pg" if "PG" in name else "standard")),
            opts=["MODEL.WEIGHTS", baseline_weights], num_gpus=args.num_gpus,
        )
    print("\nCOCO bbox metrics on pgdet_demo_val (Δ vs. the baseline):\n")
    print(format_table(rows, reference=rows["baseline"]))
    print()
    draw_detections([
        ("baseline", baseline_config, baseline_weights),
        ("pg", os.path.join(CONFIG_DIR, "pg_MobileNetV2_FPN_demo.yaml"),
         os.path.join(args.output, "finetune_pg", "model_final.pth")),
    ], args.output)


if __name__ == "__main__":
    main()
