"""pgdet: policy-gradient training of detectron2 detectors (Rao et al., CVPR 2018).

``import pgdet`` registers every component (ROI heads, box heads, RPN heads, backbones) and the
built-in datasets, so ``build_model(cfg)`` finds them. ``get_pgdet_cfg()`` is the config that
pgdet's YAML files (including those inheriting detectron2's model zoo) are merged into.
"""
from .third_party_warnings import silence_third_party_warnings

silence_third_party_warnings()  # before detectron2 is imported: some fire on import

from . import data, modeling  # noqa: E402
from .config import add_pgdet_config, get_pgdet_cfg  # noqa: E402

__all__ = ["add_pgdet_config", "data", "get_pgdet_cfg", "modeling"]
