#!/usr/bin/env python
"""Train or evaluate a pgdet LazyConfig model, as detectron2's tools/lazyconfig_train_net.py.

    python lazy_train_net.py --config-file configs/lazy/pg_mask_rcnn_R_50_FPN_100ep_LSJ.py --num-gpus 8
    python lazy_train_net.py --config-file configs/lazy/pg_mask_rcnn_R_50_FPN_100ep_LSJ.py \\
        --eval-only train.init_checkpoint=output/lazy/pg_mask_rcnn_R_50_FPN_100ep_LSJ/model_final.pth

Overrides are ``key=value`` (``train.max_iter=100``, ``dataloader.train.total_batch_size=16``).
Runs on CPU when no GPU is visible; what pgdet adds to detectron2's loop: pgdet/engine/lazy.py.
"""
import pgdet  # noqa: F401  (first: quiets third-party warnings; registers components, datasets)
from pgdet.engine.checkpoint import PGCheckpointer
from pgdet.engine.entry import launch_main
from pgdet.engine.lazy import build_lazy_model, do_test, do_train, lazy_setup
from pgdet.engine.trainer import create_ddp


def main(args):
    cfg = lazy_setup(args)
    if args.eval_only:
        model = create_ddp(build_lazy_model(cfg))
        PGCheckpointer(model, cfg.train.output_dir).resume_or_load(
            cfg.train.init_checkpoint, resume=args.resume
        )
        return do_test(cfg, model)
    do_train(cfg, resume=args.resume)


if __name__ == "__main__":
    launch_main(main)
