#!/usr/bin/env python
"""What the reward gives the boxes of D whose class is absent from their image, during training.

``MODEL.PG.REWARD_SCOPE dataset`` exists so that such a box, invisible to the per-image AP,
gets a credit (RESULTS.md §13, §14). This script trains a two-stage fine-tune for a few
iterations exactly as configured and records, for every box of D of every image, whether its
class is absent from the image, its score and the advantage its RoI receives (after
``ADVANTAGE_NORM``; signed for the RoI's label, so A > 0 on a background RoI pushes the box's
class down). It prints, over the last half of the iterations (a full reward memory), the share
of each kind of box with A < 0 and A > 0 and their mean A and |A|.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/absent_class_credit.py \\
        --weights output/val/baseline/model_final.pth --iterations 100 -- \\
        MODEL.PG.REWARD_SCOPE dataset MODEL.PG.REWARD_MEMORY_IMAGES 200 \\
        DATASETS.TRAIN "('bccd_train',)"
"""
import argparse
import tempfile

import torch

import pgdet.modeling.pg.policy_gradient as policy_gradient
from pgdet.data import register_datasets_from_cfg
from pgdet.engine import Trainer, build_cfg

CHOSEN = ["MODEL.PG.ENABLED", "True", "MODEL.PG.REWARD_ESTIMATOR", "swap",
          "MODEL.PG.SUPPRESSOR_CREDIT", "True", "MODEL.PG.KEPT_BOX_CREDIT", "True",
          "MODEL.PG.ADVANTAGE_NORM", "image_max", "MODEL.PG.REWARD_SCALE", "0.5"]


def record_base_advantages(rows):
    """Wrap advantages_of_images so that each call appends (absent, score, A) per box of D."""
    real = policy_gradient.advantages_of_images

    def recording(images, *args, **kwargs):
        pg = real(images, *args, **kwargs)
        offset = 0
        for image in images:
            slots = image.base_slot + offset
            rows.extend(zip(pg.absent_class_mask[slots].tolist(), image.base.scores.tolist(),
                            pg.advantages[slots].tolist()))
            offset += image.num_slots
        return pg

    policy_gradient.advantages_of_images = recording


def summary(rows) -> str:
    table = torch.tensor(rows, dtype=torch.float64).view(-1, 3)
    lines = []
    for name, mask in (("absent-class", table[:, 0] == 1), ("other", table[:, 0] == 0)):
        boxes = table[mask]
        if not len(boxes):
            lines.append(f"{name} boxes of D: none")
            continue
        adv = boxes[:, 2]
        lines.append(
            f"{name} boxes of D: {len(boxes)} ({int((boxes[:, 1] >= 0.5).sum())} at score >= 0.5)"
            f" | A < 0: {float((adv < 0).double().mean()):.3f} | A > 0: "
            f"{float((adv > 0).double().mean()):.3f} | mean A {float(adv.mean()):+.4f} | "
            f"mean |A| {float(adv.abs().mean()):.4f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="pgdet/configs/bccd/ft_MobileNetV2_FPN_bccd.yaml")
    parser.add_argument("--weights", required=True, help="the trained model to fine-tune")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides after the chosen PG options")
    args = parser.parse_args(argv)
    rows = []
    record_base_advantages(rows)
    with tempfile.TemporaryDirectory() as output:
        cfg = build_cfg(args.config, CHOSEN + ["MODEL.WEIGHTS", args.weights, "OUTPUT_DIR", output,
                                               "SOLVER.MAX_ITER", str(args.iterations),
                                               "DATASETS.TEST", "()"] + args.opts)
        register_datasets_from_cfg(cfg)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    print(summary(rows[len(rows) // 2:]))


if __name__ == "__main__":
    main()
