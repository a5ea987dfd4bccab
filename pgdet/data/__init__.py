"""pgdet's datasets: the procedurally generated demo, Pascal-VOC folders, COCO json files named
in the config, and input checks.

``import pgdet.data`` registers ``pgdet_demo_train`` / ``pgdet_demo_val`` / ``pgdet_demo_tune``
under the default cache root (nothing is generated until first loaded). A config selects other datasets through:

    DATASETS.DEMO.ROOT / DATASETS.DEMO.SEED   where and with which seed the demo is generated
    DATASETS.VOC_DIRS: ["bccd_trainval:$PGDET_DATA/bccd/BCCD:trainval",
                        "bccd_test:$PGDET_DATA/bccd/BCCD:test"]
    DATASETS.COCO_JSONS: ["mydata_train:/data/mydata/train.json:/data/mydata/images"]

(a path beginning with ``$PGDET_DATA/`` is found under the data roots, pgdet/data/data_root.py)

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
from .data_root import missing_data_hint, resolve_data_path
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
    folder and each DATASETS.COCO_JSONS file, their ``$PGDET_DATA/`` paths resolved
    (:func:`resolve_data_path`); one found under no data root raises naming the fetch command.

    Only the datasets the run `used` (default DATASETS.TRAIN and DATASETS.TEST) must be
    readable: a config inheriting BCCD's entries trains on its own data where BCCD is absent.
    Other entries whose files are missing or unparsable are left unregistered (logged); a
    malformed entry, or one whose name another dataset has, always raises.
    """
    register_demo_datasets(root=cfg.DATASETS.DEMO.ROOT or None, seed=cfg.DATASETS.DEMO.SEED)
    used = set(cfg.DATASETS.TRAIN) | set(cfg.DATASETS.TEST) if used is None else set(used)
    entries = [(register_voc_dataset, ("dirname", None), parse_voc_dir_entry(e))
               for e in cfg.DATASETS.VOC_DIRS]
    entries += [(register_coco_json_dataset, ("annotation json", "image root"),
                 parse_coco_json_entry(e)) for e in cfg.DATASETS.COCO_JSONS]
    for register, kinds, (name, *paths) in entries:
        try:
            _require_data_root_paths(name, zip(kinds, paths))
            register(name, *map(resolve_data_path, paths))
        except (DatasetNotFoundError, MalformedAnnotationError) as e:
            if name in used:
                raise
            logger.info(f"Not registering dataset '{name}', which this run does not use: {e}")


def _require_data_root_paths(name: str, kinds_and_paths) -> None:
    """Raise :class:`DatasetNotFoundError` for dataset `name`'s first ``$PGDET_DATA/`` path found
    under no data root, saying which command fetches it (`kinds_and_paths`: (what, path) pairs;
    a what of None marks a field that is not a path, e.g. a VOC split)."""
    for what, path in kinds_and_paths:
        hint = missing_data_hint(path) if what else None
        if hint:
            raise DatasetNotFoundError(name, what, resolve_data_path(path), hint)


register_demo_datasets()
