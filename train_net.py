#!/usr/bin/env python
"""Train or evaluate a pgdet detector with detectron2's DefaultTrainer.

    python train_net.py --config-file configs/pg_frcnn_R101.yaml --num-gpus 8
    python train_net.py --config-file configs/pg_frcnn_R101.yaml --eval-only MODEL.WEIGHTS model.pth

Runs on CPU when no GPU is visible; ``--num-gpus N`` then starts N processes (gloo backend).
"""
import pgdet  # noqa: F401  (first: quiets third-party warnings; registers components, datasets)
from detectron2.checkpoint import DetectionCheckpointer
from pgdet.engine import Trainer, setup
from pgdet.engine.entry import launch_main


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
    launch_main(main)
