"""COCO-format datasets named in the config (``DATASETS.COCO_JSONS``), read by detectron2.

Why: a user's own data exported as COCO json should train and be evaluated by ``train_net.py``
and ``benchmarks/table1.py`` without a line of Python. Each entry
``"name:annotation_json:image_root"`` is registered with detectron2's ``register_coco_instances``,
so the dataset behaves exactly as detectron2's COCO datasets do:

- category ids, contiguous or not (e.g. 3, 7, 12), become 0..K-1 in sorted id order
  (``load_coco_json``), and COCOEvaluator writes predictions back with the file's ids;
- crowd objects stay in the dataset dicts with ``iscrowd`` 1: detectron2's mapper leaves them
  out of the training targets, and COCOEvaluator (pycocotools' COCOeval on the json itself)
  ignores the detections they match;
- boxes outside their image or without area are clipped or dropped, with counts in the log, by
  the trainer's ``load_training_dicts`` (pgdet/data/checks.py), as for every format.

Registration checks that both paths exist and that the name is not already another dataset's.
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from .checks import DatasetConfigError, DatasetNotFoundError

FORMAT = "'name:annotation_json:image_root'"
EXAMPLE = "'mydata_train:/data/mydata/train.json:/data/mydata/images'"


def parse_coco_json_entry(entry: str):
    """``"name:annotation_json:image_root"`` → ``(name, annotation_json, image_root)``."""
    fields = entry.split(":")
    if len(fields) != 3 or not all(fields):
        raise DatasetConfigError(
            f"DATASETS.COCO_JSONS entry {entry!r} is not {FORMAT} (three non-empty fields "
            f"separated by ':'), e.g. {EXAMPLE}."
        )
    return tuple(fields)


def _registered_as(name: str) -> str:
    metadata = MetadataCatalog.get(name)
    source = metadata.get("json_file") or metadata.get("dirname")
    return f"from {source}" if source else "by other code"


def register_coco_json_dataset(name: str, json_file: str, image_root: str) -> None:
    """Register COCO json `json_file` with images under `image_root` as dataset `name`.

    Calling again with the same files does nothing (every stage of a run registers its config's
    datasets); a name already registered from other files, or by detectron2 (``coco_2017_val``),
    raises :class:`DatasetConfigError`; a missing file or folder :class:`DatasetNotFoundError`.
    """
    entry = f"{name}:{json_file}:{image_root}"
    json_file = os.path.abspath(os.path.expanduser(json_file))
    image_root = os.path.abspath(os.path.expanduser(image_root))
    if name in DatasetCatalog.list():
        metadata = MetadataCatalog.get(name)
        if (metadata.get("json_file"), metadata.get("image_root")) == (json_file, image_root):
            return
        raise DatasetConfigError(
            f"DATASETS.COCO_JSONS entry {entry!r}: a dataset named {name!r} is already "
            f"registered ({_registered_as(name)}); give this one another name."
        )
    hint = f"Fix DATASETS.COCO_JSONS entry {entry!r} ({FORMAT})."
    if not os.path.isfile(json_file):
        raise DatasetNotFoundError(name, "annotation json", json_file, hint)
    if not os.path.isdir(image_root):
        raise DatasetNotFoundError(name, "image root", image_root, hint)
    register_coco_instances(name, {}, json_file, image_root)
