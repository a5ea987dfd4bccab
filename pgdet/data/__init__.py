"""pgdet's datasets: the procedurally generated demo, Pascal-VOC folders, COCO json files named
in the config, and input checks.

``import pgdet.data`` registers ``pgdet_demo_train`` / ``pgdet_demo_val`` / ``pgdet_demo_tune``
under the default cache root (nothing is generated until first loaded). A config selects other datasets through:

    DATASETS.DEMO.ROOT / DATASETS.DEMO.SEED   where and with which seed the demo is generated
    DATASETS.VOC_DIRS: ["bccd_trainval:/data/bccd/BCCD:trainval",
                        "bccd_test:/data/bccd/BCCD:test"]
    DATASETS.COCO_JSONS: ["mydata_train:/data/mydata/train.json:/data/mydata/images"]

and the trainer calls :func:`register_datasets_from_cfg` then
:func:`check_datasets_exist` on ``DATASETS.TRAIN + DATASETS.TEST``.
"""
import logging
from typing import Iterable, Optional

from .checks import (
    DatasetConfigError,
    DatasetContentError,
    DatasetNotFoundError,
    UnknownDatasetError,
    check_datasets_exist,
    load_training_dicts,
)
from .coco_json import parse_coco_json_entry, register_coco_json_dataset
from .demo import CLASS_NAMES as DEMO_CLASS_NAMES
from .demo import generate_demo_dataset, register_demo_datasets
from .mapper import CheckedDatasetMapper, ImageReadError
from .voc import MalformedAnnotationError, register_voc_dataset

logger = logging.getLogger(__name__)

__all__ = [
    "CheckedDatasetMapper",
    "DatasetConfigError",
    "DatasetContentError",
    "DEMO_CLASS_NAMES",
    "DatasetNotFoundError",
    "ImageReadError",
    "MalformedAnnotationError",
    "UnknownDatasetError",
    "check_datasets_exist",
    "generate_demo_dataset",
    "load_training_dicts",
    "parse_coco_json_entry",
    "parse_voc_dir_entry",
    "register_coco_json_dataset",
    "register_datasets_from_cfg",
    "register_demo_datasets",
    "register_voc_dataset",
]


def parse_voc_dir_entry(entry: str):
    """``"name:dir:split"`` → ``(name, dir, split)``; ``dir`` may itself contain colons."""
    name, sep, rest = entry.partition(":")
    dirname, sep2, split = rest.rpartition(":")
    if not (sep and sep2 and name and dirname and split):
        raise DatasetConfigError(
            f"DATASETS.VOC_DIRS entry {entry!r} is not 'name:dir:split', "
            "e.g. 'bccd_test:/data/bccd/BCCD:test'."
        )
    return name, dirname, split


def register_datasets_from_cfg(cfg, used: Optional[Iterable[str]] = None) -> None:
    """(Re)register the demo datasets for DATASETS.DEMO.{ROOT, SEED}, each DATASETS.VOC_DIRS
    folder and each DATASETS.COCO_JSONS file.

    Only the datasets the run `used` (default DATASETS.TRAIN and DATASETS.TEST) must be
    readable: a config inheriting BCCD's entries trains on its own data where BCCD is absent.
    Other entries whose files are missing or unparsable are left unregistered (logged); a
    malformed entry, or one whose name another dataset has, always raises.
    """
    register_demo_datasets(root=cfg.DATASETS.DEMO.ROOT or None, seed=cfg.DATASETS.DEMO.SEED)
    used = set(cfg.DATASETS.TRAIN) | set(cfg.DATASETS.TEST) if used is None else set(used)
    entries = [(register_voc_dataset, parse_voc_dir_entry(e)) for e in cfg.DATASETS.VOC_DIRS]
    entries += [(register_coco_json_dataset, parse_coco_json_entry(e))
                for e in cfg.DATASETS.COCO_JSONS]
    for register, (name, *paths) in entries:
        try:
            register(name, *paths)
        except (DatasetNotFoundError, MalformedAnnotationError) as e:
            if name in used:
                raise
            logger.info(f"Not registering dataset '{name}', which this run does not use: {e}")


register_demo_datasets()
