"""``pgdet-lazy-train``: train or evaluate a pgdet LazyConfig model, as detectron2's
tools/lazyconfig_train_net.py.

    pgdet-lazy-train --config-file lazy/pg_mask_rcnn_R_50_FPN_100ep_LSJ.py --num-gpus 8
    pgdet-lazy-train --config-file lazy/pg_mask_rcnn_R_50_FPN_100ep_LSJ.py --eval-only \\
        train.init_checkpoint=output/lazy/pg_mask_rcnn_R_50_FPN_100ep_LSJ/model_final.pth

--config-file takes a path or the name of a config pgdet ships (pgdet/configs). Overrides are
``key=value`` (``train.max_iter=100``, ``dataloader.train.total_batch_size=16``). Runs on CPU
when no GPU is visible; what pgdet adds to detectron2's loop: pgdet/engine/lazy.py. Needs
``pgdet[lazy]``. The repository's lazy_train_net.py is this command as a script.
"""
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..engine.checkpoint import PGCheckpointer
from ..engine.entry import launch_main
from ..engine.setup import config_path
from ..engine.lazy import (
    build_lazy_model, check_lazy_datasets, do_test, do_train, load_lazy_config,
)
from ..engine.trainer import create_ddp


def main(args):
    # a config given by name: its file, which detectron2's default_setup reads to log it
    args.config_file = config_path(args.config_file)
    cfg = load_lazy_config(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="pgdet")
    check_lazy_datasets(cfg, args.eval_only)
    if args.eval_only:
        model = create_ddp(build_lazy_model(cfg))
        PGCheckpointer(model, cfg.train.output_dir).resume_or_load(
            cfg.train.init_checkpoint, resume=args.resume
        )
        return do_test(cfg, model)
    do_train(cfg, resume=args.resume)


def cli() -> None:
    """The console script: detectron2's arguments from the command line, `main` on each process."""
    launch_main(main, __doc__)


if __name__ == "__main__":
    cli()
