#!/usr/bin/env python
"""Train or evaluate a pgdet detector: the ``pgdet-train`` command (pgdet/tools/train.py) as a
script of the repository.

    python train_net.py --config-file pgdet/configs/pg_frcnn_R101.yaml --num-gpus 8
    python train_net.py --config-file pg_frcnn_R101.yaml --eval-only MODEL.WEIGHTS model.pth
"""
from pgdet.tools.train import cli, main  # noqa: F401  (main: for code that loads this script)

if __name__ == "__main__":
    cli()
