"""``pgdet-train``: train or evaluate a pgdet detector with detectron2's DefaultTrainer.

    pgdet-train --config-file pg_frcnn_R101.yaml --num-gpus 8
    pgdet-train --config-file pg_frcnn_R101.yaml --eval-only MODEL.WEIGHTS model.pth

--config-file takes a path or the name of a config pgdet ships (pgdet/configs). Runs on CPU when
no GPU is visible; ``--num-gpus N`` then starts N processes (gloo backend). The repository's
train_net.py is this command as a script.
"""
from detectron2.checkpoint import DetectionCheckpointer

from ..engine import Trainer, setup
from ..engine.entry import launch_main


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


def cli() -> None:
    """The console script: detectron2's arguments from the command line, `main` on each process."""
    launch_main(main, __doc__)


if __name__ == "__main__":
    cli()
