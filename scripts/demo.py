#!/usr/bin/env python
"""The main job: the paper's protocol on the built-in demo dataset, on CPU, in minutes.

1. train a baseline Faster R-CNN from scratch (configs/demo/frcnn_MobileNetV2_FPN_demo.yaml);
2. fine-tune it twice from the same checkpoint for the same iterations: once with standard
   cross-entropy, once with the policy-gradient loss;
3. print the three COCO results side by side.

Outputs (weights, metrics.json, logs, COCO results) go to output/demo/<stage>/. Finished stages
are reused: delete output/demo to start over.
"""
import argparse
import os

from pgdet.engine.experiment import REPO, format_table, run_stage


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--output", default=os.path.join(REPO, "output", "demo"))
    parser.add_argument("--num-gpus", type=int, default=1, help="processes (CPU: gloo)")
    args = parser.parse_args()
    cfg_dir = os.path.join(REPO, "configs", "demo")
    baseline_dir = os.path.join(args.output, "baseline")
    baseline_weights = os.path.join(baseline_dir, "model_final.pth")
    rows = {}
    rows["baseline"] = run_stage(
        "baseline", os.path.join(cfg_dir, "frcnn_MobileNetV2_FPN_demo.yaml"), baseline_dir,
        num_gpus=args.num_gpus,
    )
    for name, cfg in (("standard", "ft_MobileNetV2_FPN_demo.yaml"), ("PG γ=1", "pg_MobileNetV2_FPN_demo.yaml")):
        rows[f"baseline + {name} fine-tune"] = run_stage(
            name, os.path.join(cfg_dir, cfg),
            os.path.join(args.output, "finetune_" + ("pg" if "PG" in name else "standard")),
            opts=["MODEL.WEIGHTS", baseline_weights], num_gpus=args.num_gpus,
        )
    print("\nCOCO bbox metrics on pgdet_demo_val (Δ vs. the baseline):\n")
    print(format_table(rows, reference=rows["baseline"]))


if __name__ == "__main__":
    main()
