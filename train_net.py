#!/usr/bin/env python
"""Train or evaluate a pgdet detector with detectron2's DefaultTrainer.

    python train_net.py --config-file configs/pg_frcnn_R101.yaml --num-gpus 8
    python train_net.py --config-file configs/pg_frcnn_R101.yaml --eval-only MODEL.WEIGHTS model.pth

Runs on CPU when no GPU is visible; ``--num-gpus N`` then starts N processes (gloo backend).
"""
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, launch

import pgdet  # noqa: F401  (registers pgdet's components and datasets)
from pgdet.data import DatasetConfigError, DatasetContentError, UnknownDatasetError
from pgdet.engine import ConfigError, Trainer, setup


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (ConfigError, FileNotFoundError, UnknownDatasetError, DatasetConfigError,
            DatasetContentError) as e:
        sys.exit(f"error: {e}")
