"""pgdet: policy-gradient training of detectron2 detectors (Rao et al., CVPR 2018).

``import pgdet`` registers every component (ROI heads, box heads, RPN heads, backbones) and the
built-in datasets, so ``build_model(cfg)`` finds them. ``get_pgdet_cfg()`` is the config that
pgdet's YAML files (including those inheriting detectron2's model zoo) are merged into.
"""
from . import data, modeling
from .config import add_pgdet_config, get_pgdet_cfg

__all__ = ["add_pgdet_config", "data", "get_pgdet_cfg", "modeling"]
