#!/usr/bin/env python
"""Train or evaluate a pgdet LazyConfig model: the ``pgdet-lazy-train`` command
(pgdet/tools/lazy_train.py) as a script of the repository.

    python lazy_train_net.py --config-file lazy/pg_mask_rcnn_R_50_FPN_100ep_LSJ.py --num-gpus 8
"""
from pgdet.tools.lazy_train import cli, main  # noqa: F401  (main: for code that loads this script)

if __name__ == "__main__":
    cli()
