"""Up-front checks that the datasets a config names exist, with errors that say how to fix them.

Why: detectron2 loads datasets lazily, so a wrong path otherwise surfaces minutes later as a bare
``FileNotFoundError`` (or pycocotools' assertion) with no dataset name, and builtin names such as
``coco_2017_train`` silently resolve under ``$DETECTRON2_DATASETS`` (default ``./datasets``).
"""
import contextlib
import difflib
import json
import logging
import os
from typing import Iterable, List, Tuple, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.build import filter_images_with_only_crowd_annotations
from detectron2.structures import BoxMode

logger = logging.getLogger(__name__)

# Metadata entries that name files or folders a dataset reads (detectron2's builtins and pgdet's).
PATH_METADATA_KEYS = ("json_file", "image_root", "dirname", "panoptic_json", "panoptic_root",
                      "sem_seg_root")
IMAGE_SAMPLE = 3  # images checked per dataset at start: this many first ones, this many at random


def _datasets_root_hint() -> str:
    value = os.environ.get("DETECTRON2_DATASETS")
    if value is None:
        return ("DETECTRON2_DATASETS is unset, so detectron2's builtin datasets resolve under "
                f"./datasets (here {os.path.abspath('datasets')})")
    return f"DETECTRON2_DATASETS={value!r}"


class DatasetNotFoundError(FileNotFoundError):
    """A registered dataset whose files are missing; the message names the dataset and the path,
    and says what to change (`hint`; by default where detectron2's builtin datasets resolve)."""

    def __init__(self, dataset_name: str, what: str, path: str, hint: str = None):
        self.dataset_name, self.what, self.path = dataset_name, what, path
        if hint is None:
            hint = (
                f"{_datasets_root_hint()}. Point DETECTRON2_DATASETS at the folder holding "
                "detectron2's builtin datasets, or register VOC folders with DATASETS.VOC_DIRS "
                "['name:/path/to/VOCdir:split'] and COCO json files with DATASETS.COCO_JSONS "
                "['name:/path/to/annotations.json:/path/to/images']."
            )
        super().__init__(f"Dataset '{dataset_name}': its {what} {path} does not exist. {hint}")


class DatasetConfigError(ValueError):
    """A DATASETS.VOC_DIRS / DATASETS.COCO_JSONS entry that cannot be registered; the message
    names the key and the entry."""


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
        "(cfg) first, and list VOC folders in DATASETS.VOC_DIRS, COCO json files in "
        "DATASETS.COCO_JSONS."
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
    ``DETECTRON2_DATASETS``), then loads each dataset and checks a sample of its images
    (:func:`check_image_sample`): an image root that exists but is the wrong folder otherwise
    fails only when the first batch, or the evaluation at the end of training, reads an image.
    Loading here also writes the files of datasets whose metadata says ``created_on_load``
    (pgdet's demo), so that COCOEvaluator finds their json even when it is built before any data
    loader.
    """
    registered = list(DatasetCatalog.list())
    for name in names:
        if name not in registered:
            raise UnknownDatasetError(_unknown_dataset_message(name, registered))
        if not MetadataCatalog.get(name).get("created_on_load", False):
            missing = missing_dataset_paths(name)
            if missing:
                raise DatasetNotFoundError(name, *missing[0])
        with _naming_malformed_json([name]):
            check_image_sample(name, DatasetCatalog.get(name))


def _image_folder(name: str, file_name: str) -> str:
    """Where dataset `name` says its images are: COCO's image root, a VOC folder's JPEGImages."""
    metadata = MetadataCatalog.get(name)
    if metadata.get("image_root"):
        return metadata.image_root
    if metadata.get("dirname"):
        return os.path.join(metadata.dirname, "JPEGImages")
    return os.path.dirname(file_name)


def check_image_sample(name: str, dicts: List[dict]) -> None:
    """Raise :class:`DatasetNotFoundError` naming dataset `name`, its image folder and the file,
    if one of its first :data:`IMAGE_SAMPLE` images or of :data:`IMAGE_SAMPLE` others drawn at
    random (a fixed draw) is missing: a few stat calls, whatever the dataset's size."""
    files = [d["file_name"] for d in dicts if "://" not in d.get("file_name", "://")]  # local
    rest = np.arange(IMAGE_SAMPLE, len(files))
    drawn = np.random.default_rng(0).choice(rest, min(IMAGE_SAMPLE, len(rest)), replace=False)
    for index in [*range(min(IMAGE_SAMPLE, len(files))), *drawn]:
        if not os.path.isfile(files[index]):
            folder = _image_folder(name, files[index])
            raise DatasetNotFoundError(
                name, "image", files[index],
                f"Its annotations name images under {folder}, which does not hold this one: "
                "point the dataset at the folder holding its images (for DATASETS.COCO_JSONS, "
                "the third field of 'name:annotation_json:image_root').",
            )


class DatasetContentError(ValueError):
    """A dataset whose annotations pgdet cannot train on; the message names the file or image."""


def load_training_dicts(names: Union[str, Iterable[str]], num_classes: int, filter_empty: bool,
                        num_classes_key: str = "MODEL.ROI_HEADS.NUM_CLASSES") -> List[dict]:
    """detectron2's ``get_detection_dataset_dicts``, with errors that name the bad file or image.

    A malformed annotation json otherwise fails with a bare JSONDecodeError, and a category id
    beyond `num_classes` with an index error deep inside the loss; the message names the config
    key the detector reads it from, `num_classes_key`. Boxes outside
    their image or without area are clipped or dropped with a count in the log
    (:func:`clip_and_drop_bad_boxes`).
    """
    names = [names] if isinstance(names, str) else list(names)  # one name, as detectron2 takes
    with _naming_malformed_json(names):
        dicts = get_detection_dataset_dicts(names, filter_empty=filter_empty)
    for record in dicts:
        for ann in record.get("annotations", []):
            if not 0 <= ann["category_id"] < num_classes:
                raise DatasetContentError(
                    f"Image {record.get('file_name')!r} (image_id {record.get('image_id')!r}) has "
                    f"an object of class index {ann['category_id']}"
                    f"{_dataset_category(names[0], ann['category_id'])}, but "
                    f"{num_classes_key} is {num_classes}: set it to the number of "
                    f"classes of {names} ({len(MetadataCatalog.get(names[0]).get('thing_classes', []))}"
                    " in the first one's metadata)."
                )
    return clip_and_drop_bad_boxes(dicts, names, filter_empty)


def _dataset_category(name: str, index: int) -> str:
    """`` (category id 40 in <json>)``: the id a COCO json gives class `index` (detectron2 maps
    a json's ids, e.g. 1, 3, 40, to indices 0..K-1), or "" for a dataset without such ids."""
    metadata = MetadataCatalog.get(name)
    ids = {i: dataset_id for dataset_id, i in
           metadata.get("thing_dataset_id_to_contiguous_id", {}).items()}
    if index not in ids:
        return ""
    return f" (category id {ids[index]} in {metadata.get('json_file', name)})"


def _box_problem_example(record: dict, ann: dict) -> str:
    return (f"{record.get('file_name')!r} (image_id {record.get('image_id')!r}): bbox "
            f"{list(ann['bbox'])} in {BoxMode(ann['bbox_mode']).name}")


def clip_and_drop_bad_boxes(dicts: List[dict], names: List[str], filter_empty: bool) -> List[dict]:
    """Clip every box to its image and drop those with no area left; log what changed, by file.

    Why: detectron2's mapper clips boxes and drops empty ones silently (``annotations_to_instances``
    and ``filter_empty_instances``), so a dataset whose boxes are mostly wrong (a flipped x/y
    convention, XYWH read as XYXY) trains without a word. Here the changes are counted and the
    first offenders named by image file and id (detectron2's COCO loader does not keep annotation
    ids). A box annotated with zero or negative width or height is dropped, not widened; one
    reaching outside its image is clipped to ``[0, width] x [0, height]`` and dropped if nothing
    remains. Clipped boxes are rewritten in XYXY_ABS. With `filter_empty`, images left without
    a non-crowd box are removed, as detectron2 does at load time.
    """
    records = [r for r in dicts if r.get("annotations")]
    anns = [a for r in records for a in r["annotations"]]
    if not anns:
        return dicts
    counts = [len(r["annotations"]) for r in records]
    boxes = np.array(
        [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns],
        dtype=np.float64,
    )  # [N, 4]
    image_size = np.repeat(
        [[r.get("width", np.inf), r.get("height", np.inf)] for r in records], counts, axis=0
    )  # [N, 2] width, height of each annotation's image
    clipped = np.clip(boxes, 0.0, np.tile(image_size, 2))

    def has_area(b):
        return (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])

    degenerate = ~has_area(boxes)
    outside = ~degenerate & ~has_area(clipped)
    was_clipped = ~degenerate & ~outside & (clipped != boxes).any(axis=1)
    keep = ~(degenerate | outside)

    if not keep.all() or was_clipped.any():
        owner = np.repeat(np.arange(len(records)), counts)
        examples = {
            what: [_box_problem_example(records[owner[i]], anns[i])
                   for i in np.flatnonzero(mask)[:3]]
            for what, mask in (("dropped (zero or negative size)", degenerate),
                               ("dropped (entirely outside the image)", outside),
                               ("clipped to the image", was_clipped))
            if mask.any()
        }
        files = [MetadataCatalog.get(n).get("json_file") or MetadataCatalog.get(n).get("dirname")
                 for n in names]
        logger.warning(
            f"Training data {names} ({', '.join(map(str, files))}): of {len(anns)} boxes, "
            f"{int(was_clipped.sum())} were clipped to their image, {int(degenerate.sum())} with "
            f"zero or negative size and {int(outside.sum())} entirely outside their image were "
            "dropped. First of each: "
            + "; ".join(f"{what}: {', '.join(ex)}" for what, ex in examples.items())
        )
    for index in np.flatnonzero(was_clipped):  # after the log, which names boxes as annotated
        anns[index]["bbox"], anns[index]["bbox_mode"] = clipped[index].tolist(), BoxMode.XYXY_ABS
    for record, kept in zip(records, np.split(keep, np.cumsum(counts)[:-1])):
        record["annotations"] = [a for a, k in zip(record["annotations"], kept) if k]
    if filter_empty:
        before = len(dicts)
        dicts = filter_images_with_only_crowd_annotations(dicts)
        if len(dicts) < before:
            logger.warning(
                f"{before - len(dicts)} training images had no box left and were removed."
            )
    return dicts


@contextlib.contextmanager
def _naming_malformed_json(names: List[str]):
    """Loading datasets `names` inside: a malformed annotation json is named, not a bare
    JSONDecodeError."""
    try:
        yield
    except json.JSONDecodeError as e:
        files = [MetadataCatalog.get(n).get("json_file") for n in names]
        bad = [f for f in files if f and not _parses_as_json(f)]
        raise DatasetContentError(f"Malformed annotation json {bad or files}: {e}") from e


def _parses_as_json(path: str) -> bool:
    try:
        with open(path) as f:
            json.load(f)
        return True
    except (OSError, ValueError):
        return False
