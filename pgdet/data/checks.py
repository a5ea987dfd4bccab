"""Up-front checks that the datasets a config names exist, with errors that say how to fix them.

Why: detectron2 loads datasets lazily, so a wrong path otherwise surfaces minutes later as a bare
``FileNotFoundError`` (or pycocotools' assertion) with no dataset name, and builtin names such as
``coco_2017_train`` silently resolve under ``$DETECTRON2_DATASETS`` (default ``./datasets``).
"""
import difflib
import json
import os
from typing import Iterable, List, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts

# Metadata entries that name files or folders a dataset reads (detectron2's builtins and pgdet's).
PATH_METADATA_KEYS = ("json_file", "image_root", "dirname", "panoptic_json", "panoptic_root",
                      "sem_seg_root")


def _datasets_root_hint() -> str:
    value = os.environ.get("DETECTRON2_DATASETS")
    if value is None:
        return ("DETECTRON2_DATASETS is unset, so detectron2's builtin datasets resolve under "
                f"./datasets (here {os.path.abspath('datasets')})")
    return f"DETECTRON2_DATASETS={value!r}"


class DatasetNotFoundError(FileNotFoundError):
    """A registered dataset whose files are missing; the message names the dataset and the path."""

    def __init__(self, dataset_name: str, what: str, path: str):
        self.dataset_name, self.what, self.path = dataset_name, what, path
        super().__init__(
            f"Dataset '{dataset_name}': its {what} {path} does not exist. {_datasets_root_hint()}. "
            "Point DETECTRON2_DATASETS at the folder holding detectron2's builtin datasets, or "
            "register VOC folders with DATASETS.VOC_DIRS ['name:/path/to/VOCdir:split']."
        )


class UnknownDatasetError(KeyError):
    """A dataset name nobody registered. KeyError like detectron2's, but printed as plain text."""

    def __str__(self) -> str:
        return str(self.args[0])


def _unknown_dataset_message(name: str, registered: List[str]) -> str:
    close = difflib.get_close_matches(name, registered, n=5, cutoff=0.6)
    examples = close or sorted(registered, key=lambda n: (not n.startswith("pgdet_"), n))[:10]
    return (
        f"Dataset '{name}' is not registered. "
        + ("Did you mean: " if close else "Registered datasets include: ")
        + ", ".join(examples)
        + f" ({len(registered)} registered in all). Call pgdet.data.register_datasets_from_cfg"
        "(cfg) first, and list VOC folders in DATASETS.VOC_DIRS."
    )


def missing_dataset_paths(name: str) -> List[Tuple[str, str]]:
    """(metadata key, path) pairs of dataset ``name`` missing on disk (URLs are not checked)."""
    metadata = MetadataCatalog.get(name)
    return [
        (key, metadata.get(key))
        for key in PATH_METADATA_KEYS
        if metadata.get(key) is not None
        and "://" not in str(metadata.get(key))
        and not os.path.exists(metadata.get(key))
    ]


def check_datasets_exist(names: Iterable[str]) -> None:
    """Raise before training if any dataset in ``names`` is unregistered or points at missing files.

    Raises :class:`UnknownDatasetError` (lists close or example names) or
    :class:`DatasetNotFoundError` for the first missing path (names the dataset, the path and
    ``DETECTRON2_DATASETS``). Datasets whose metadata says ``created_on_load`` (pgdet's demo) are
    loaded here, which writes their files, so that COCOEvaluator finds their json even when it is
    built before any data loader.
    """
    registered = list(DatasetCatalog.list())
    for name in names:
        if name not in registered:
            raise UnknownDatasetError(_unknown_dataset_message(name, registered))
        if MetadataCatalog.get(name).get("created_on_load", False):
            DatasetCatalog.get(name)
        missing = missing_dataset_paths(name)
        if missing:
            raise DatasetNotFoundError(name, *missing[0])


class DatasetContentError(ValueError):
    """A dataset whose annotations pgdet cannot train on; the message names the file or image."""


def load_training_dicts(names: Iterable[str], num_classes: int, filter_empty: bool) -> List[dict]:
    """detectron2's ``get_detection_dataset_dicts``, with errors that name the bad file or image.

    A malformed annotation json otherwise fails with a bare JSONDecodeError, and a category id
    beyond ``MODEL.ROI_HEADS.NUM_CLASSES`` with an index error deep inside the loss.
    """
    names = list(names)
    try:
        dicts = get_detection_dataset_dicts(names, filter_empty=filter_empty)
    except json.JSONDecodeError as e:
        files = [MetadataCatalog.get(n).get("json_file") for n in names]
        bad = [f for f in files if f and not _parses_as_json(f)]
        raise DatasetContentError(f"Malformed annotation json {bad or files}: {e}") from e
    for record in dicts:
        for ann in record.get("annotations", []):
            if not 0 <= ann["category_id"] < num_classes:
                raise DatasetContentError(
                    f"Image {record.get('file_name')!r} (image_id {record.get('image_id')!r}) has "
                    f"an object of class index {ann['category_id']}, but "
                    f"MODEL.ROI_HEADS.NUM_CLASSES is {num_classes}: set it to the number of "
                    f"classes of {names} ({len(MetadataCatalog.get(names[0]).get('thing_classes', []))}"
                    " in the first one's metadata)."
                )
    return dicts


def _parses_as_json(path: str) -> bool:
    try:
        with open(path) as f:
            json.load(f)
        return True
    except (OSError, ValueError):
        return False
