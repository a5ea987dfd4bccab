"""pgdet: policy-gradient training of detectron2 detectors (Rao et al., CVPR 2018).

``import pgdet`` registers every component (ROI heads, box heads, RPN heads, backbones) and the
built-in datasets, so ``build_model(cfg)`` finds them.
"""
from . import data, modeling
from .config import add_pgdet_config

__all__ = ["add_pgdet_config", "data", "modeling"]
