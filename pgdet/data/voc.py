"""Pascal-VOC-format detection datasets read in place (e.g. BCCD), evaluated with COCOEvaluator.

A VOC directory holds ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg`` and
``ImageSets/Main/<split>.txt`` (one ``<id>`` per line). Nothing is ever written into it.

Coordinate convention (same as detectron2's own ``load_voc_instances``): VOC corners are 1-based
inclusive pixel indices, so ``xmin, ymin`` are decreased by 1 and ``xmax, ymax`` kept, giving
continuous XYXY_ABS boxes where (1, 1, W, H) covers the whole image. BCCD follows it (its minima
start at 1, its maxima reach W and H).

Bad boxes: a box annotated with ``xmax <= xmin`` or ``ymax <= ymin`` is a click without a drag,
not a 1-pixel object, and is dropped (BCCD has two: BloodImage_00338 and BloodImage_00343); a box
reaching outside the image is clipped to it, and dropped if nothing remains. Both are counted in
the log. "difficult" objects are kept, as detectron2 does for training.
"""
import glob
import logging
import os
import xml.etree.ElementTree as ET
from typing import List, NamedTuple, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .checks import DatasetNotFoundError

logger = logging.getLogger(__name__)


class MalformedAnnotationError(ValueError):
    """A VOC annotation file that cannot be parsed or lacks a required field."""


class _VocObject(NamedTuple):
    class_name: str
    box: Tuple[float, float, float, float]  # as annotated: xmin, ymin, xmax, ymax (1-based)


class _VocAnnotation(NamedTuple):
    width: int
    height: int
    objects: List[_VocObject]


def _required_text(element: ET.Element, path: str, xml_file: str) -> str:
    found = element.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise MalformedAnnotationError(f"VOC annotation {xml_file} has no <{path}>.")
    return found.text.strip()


def _parse_annotation(xml_file: str) -> _VocAnnotation:
    """Read one annotation file; any parse error or missing field raises naming ``xml_file``."""
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as e:
        raise MalformedAnnotationError(f"VOC annotation {xml_file} is not valid XML: {e}") from e
    try:
        width = int(float(_required_text(root, "size/width", xml_file)))
        height = int(float(_required_text(root, "size/height", xml_file)))
        objects = [
            _VocObject(
                _required_text(obj, "name", xml_file),
                tuple(float(_required_text(obj, f"bndbox/{k}", xml_file))
                      for k in ("xmin", "ymin", "xmax", "ymax")),
            )
            for obj in root.findall("object")
        ]
    except ValueError as e:
        if isinstance(e, MalformedAnnotationError):
            raise
        raise MalformedAnnotationError(
            f"VOC annotation {xml_file} has a non-numeric field: {e}"
        ) from e
    return _VocAnnotation(width, height, objects)


def _require_dir(dataset_name: str, dirname: str) -> None:
    if not os.path.isdir(dirname):
        raise DatasetNotFoundError(dataset_name, "dirname", dirname)


def discover_voc_classes(dirname: str, dataset_name: str = "") -> List[str]:
    """Sorted class names found in every ``Annotations/*.xml`` of ``dirname`` (all splits alike,
    so that train and test of one directory always share the same class indices)."""
    _require_dir(dataset_name, dirname)
    names = set()
    for xml_file in sorted(glob.glob(os.path.join(dirname, "Annotations", "*.xml"))):
        names.update(obj.class_name for obj in _parse_annotation(xml_file).objects)
    if not names:
        pattern = os.path.join(dirname, "Annotations", "*.xml")
        raise DatasetNotFoundError(dataset_name, "annotations", pattern)
    return sorted(names)


def _read_split_ids(dataset_name: str, dirname: str, split: str) -> List[str]:
    split_file = os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(split_file):
        raise DatasetNotFoundError(dataset_name, "split file", split_file)
    with open(split_file) as f:
        return [line.strip() for line in f if line.strip()]


def load_voc_detection(
    dirname: str, split: str, class_names: Sequence[str], dataset_name: str = ""
) -> List[dict]:
    """detectron2 dataset dicts (XYXY_ABS boxes, ``image_id`` = the VOC id) for one split."""
    _require_dir(dataset_name, dirname)
    dataset_dicts = []
    dropped, clipped = [], 0
    for file_id in _read_split_ids(dataset_name, dirname, split):
        xml_file = os.path.join(dirname, "Annotations", f"{file_id}.xml")
        if not os.path.isfile(xml_file):
            raise DatasetNotFoundError(dataset_name, f"annotation of '{file_id}'", xml_file)
        annotation = _parse_annotation(xml_file)
        instances = []
        for obj in annotation.objects:
            if obj.class_name not in class_names:
                raise MalformedAnnotationError(
                    f"VOC annotation {xml_file} has class '{obj.class_name}', not among the "
                    f"dataset's classes {list(class_names)}."
                )
            xmin, ymin, xmax, ymax = obj.box
            box = [max(xmin - 1.0, 0.0), max(ymin - 1.0, 0.0),
                   min(xmax, float(annotation.width)), min(ymax, float(annotation.height))]
            if xmax <= xmin or ymax <= ymin or box[2] <= box[0] or box[3] <= box[1]:
                dropped.append(file_id)
                continue
            clipped += box != [xmin - 1.0, ymin - 1.0, xmax, ymax]
            instances.append({"category_id": list(class_names).index(obj.class_name),
                              "bbox": box, "bbox_mode": BoxMode.XYXY_ABS})
        dataset_dicts.append({
            "file_name": os.path.join(dirname, "JPEGImages", f"{file_id}.jpg"),
            "image_id": file_id,
            "height": annotation.height,
            "width": annotation.width,
            "annotations": instances,
        })
    num_boxes = sum(len(d["annotations"]) for d in dataset_dicts)
    logger.info(
        f"Loaded VOC dataset '{dataset_name}' ({dirname}, split {split}): "
        f"{len(dataset_dicts)} images, {num_boxes} boxes; dropped {len(dropped)} degenerate boxes"
        + (f" (in {', '.join(sorted(set(dropped)))})" if dropped else "")
        + f"; clipped {clipped} boxes to the image."
    )
    return dataset_dicts


def register_voc_dataset(
    name: str, dirname: str, split: str, class_names: Optional[Sequence[str]] = None
) -> None:
    """Register VOC directory ``dirname``'s ``split`` as detectron2 dataset ``name``.

    Class names, when not given, are read from the annotations now (they are needed in the
    metadata before any loading), so a missing ``dirname`` raises :class:`DatasetNotFoundError`
    here. Calling again with the same arguments does nothing; with different ones it re-registers.
    """
    dirname = os.path.abspath(os.path.expanduser(dirname))
    if class_names is None:
        class_names = discover_voc_classes(dirname, name)
    class_names = list(class_names)
    if name in DatasetCatalog.list():
        metadata = MetadataCatalog.get(name)
        if (metadata.get("dirname"), metadata.get("split"), metadata.get("thing_classes")) == (
            dirname, split, class_names
        ):
            return
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_voc_detection(dirname, split, class_names, name))
    MetadataCatalog.get(name).set(
        thing_classes=class_names, dirname=dirname, split=split, evaluator_type="coco"
    )
