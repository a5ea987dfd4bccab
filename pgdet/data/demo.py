"""The built-in demo dataset: procedurally drawn shapes, generated once into a cache, COCO format.

Why it exists: pgdet must be trainable and testable without downloading anything, and the policy
gradient only helps where greedy NMS makes mistakes. So the images are made hard in exactly that
way: shapes of four classes (the *shape* is the class; colours are random, so colour alone cannot
classify), sizes from 8 px to half the image, objects that overlap and occlude each other (often
two of the same class, which greedy NMS tends to merge), and textured clutter behind them (a colour
gradient, blurred blobs, sharp lines, pixel noise).

Annotation convention: the box of an object is the full extent of the drawn shape, including any
part hidden by objects drawn on top of it, clipped to the image (XYWH_ABS in the JSON, continuous
pixel coordinates where pixel ``i`` spans ``[i, i+1)``). Placement guarantees that every object
keeps at least ``MIN_VISIBLE_FRACTION`` of its pixels visible and at least half of its area inside
the image, so no box marks an invisible object.

The dataset is deterministic in ``seed``: image ``i`` of a split is drawn from its own
``numpy.random.default_rng([seed, split_code, i])``, so the same seed always gives the same bytes
(on the same numpy/Pillow/zlib build). It is written once, under ``<root>/<version-seed-size>/``,
into a temporary directory renamed atomically into place; concurrent writers (e.g. several DDP
processes starting at once) each build a copy and the first rename wins.
"""
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from PIL import Image, ImageDraw, ImageFilter

logger = logging.getLogger(__name__)

CLASS_NAMES = ("disc", "square", "triangle", "cross")
# train: what models learn from; val: where results are reported (the demo's test split); tune:
# a third split, drawn independently, on which settings are chosen before anything is reported.
TRAIN_NAME, VAL_NAME, TUNE_NAME = "pgdet_demo_train", "pgdet_demo_val", "pgdet_demo_tune"
# Bump whenever the drawing changes, so caches of an older generator are not reused.
GENERATOR_VERSION = 2  # v2: adds the tune split; train/val bytes are v1's
DEFAULT_NUM_TRAIN, DEFAULT_NUM_VAL, DEFAULT_IMAGE_SIZE = 800, 100, 160

MIN_VISIBLE_FRACTION = 0.4  # of an object's in-image pixels that must stay unoccluded
MIN_INSIDE_FRACTION = 0.5  # of an object's area that must lie inside the image
MIN_OBJECT_EXTENT = 8.0  # px, the longer side of the smallest box
OBJECTS_PER_IMAGE = (3, 12)  # inclusive range of objects attempted per image
NEAR_EXISTING_PROB = 0.45  # chance a new object is placed overlapping an existing one
SAME_CLASS_WHEN_NEAR_PROB = 0.6  # chance that such an overlapping object repeats the class
PLACEMENT_ATTEMPTS = 10
SUPERSAMPLE = 2  # shapes are drawn at 2x and box-filtered down, for anti-aliased edges
BLOB_OPACITY = 0.6  # clutter blobs are blended into the gradient, softer than the objects
MIN_COLOUR_DISTANCE = 70.0  # RGB L2 distance from the background and from overlapping objects
_SPLIT_CODES = {"train": 0, "val": 1, "tune": 2}


def _regular_polygon(num_vertices: int, start_angle: float) -> np.ndarray:
    angles = start_angle + np.arange(num_vertices) * (2 * math.pi / num_vertices)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _cross_polygon(arm_half_width: float = 0.35) -> np.ndarray:
    a = arm_half_width
    return np.array(
        [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a),
         (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)],
        dtype=np.float64,
    )


# Unit outlines (V, 2) centred on the origin, indexed like CLASS_NAMES.
_UNIT_SHAPES = (
    _regular_polygon(48, 0.0),
    np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64),
    _regular_polygon(3, math.pi / 2),
    _cross_polygon(),
)


class DemoSplit(NamedTuple):
    """Where one generated split lives: a COCO json and the folder its file_names are under."""

    json_file: str
    image_root: str


@dataclass
class _PlacedObject:
    class_index: int
    vertices: np.ndarray  # (V, 2) outline in image pixels (x, y)
    visible: np.ndarray  # (S*H, S*W) bool, its pixels not covered by later objects
    num_pixels: int  # its in-image pixel count on the canvas before any occlusion
    colour: Tuple[int, int, int]

    @property
    def center(self) -> np.ndarray:
        return (self.vertices.min(0) + self.vertices.max(0)) / 2

    @property
    def extent(self) -> float:
        return float(np.ptp(self.vertices, axis=0).max())


def default_demo_root() -> str:
    """``$PGDET_CACHE/demo`` if PGDET_CACHE is set, else ``~/.cache/pgdet/demo``."""
    cache = os.environ.get("PGDET_CACHE") or os.path.join("~", ".cache", "pgdet")
    return os.path.expanduser(os.path.join(cache, "demo"))


def demo_dataset_dir(root: str, seed: int, num_train: int, num_val: int, image_size: int) -> str:
    """The cache folder of one (generator version, seed, size) combination."""
    name = f"v{GENERATOR_VERSION}_seed{seed}_{image_size}px_{num_train}-{num_val}"
    return os.path.join(os.path.expanduser(root), name)


def _split_paths(dataset_dir: str) -> Dict[str, DemoSplit]:
    return {
        split: DemoSplit(
            os.path.join(dataset_dir, f"{split}.json"), os.path.join(dataset_dir, split)
        )
        for split in _SPLIT_CODES
    }


def _background(rng: np.random.Generator, canvas_size: int) -> Image.Image:
    """Clutter: a two-colour linear gradient, blurred irregular blobs, then sharp straight lines."""
    angle = rng.uniform(0, 2 * math.pi)
    start, end = rng.uniform(0, 255, size=(2, 3))
    ys, xs = np.mgrid[0:canvas_size, 0:canvas_size]
    projection = math.cos(angle) * xs + math.sin(angle) * ys
    t = (projection - projection.min()) / max(np.ptp(projection), 1e-6)
    gradient = Image.fromarray((start + t[..., None] * (end - start)).astype(np.uint8))
    blobs = gradient.copy()
    draw = ImageDraw.Draw(blobs)
    for _ in range(rng.integers(3, 9)):
        num_vertices = int(rng.integers(8, 15))
        angles = np.sort(rng.uniform(0, 2 * math.pi, size=num_vertices))
        radii = rng.uniform(0.05, 0.25) * canvas_size * rng.uniform(0.5, 1.0, size=num_vertices)
        center = rng.uniform(0, canvas_size, size=2)
        outline = center + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.polygon([tuple(p) for p in outline], fill=colour)
    blurred = blobs.filter(ImageFilter.GaussianBlur(radius=rng.uniform(2, 6)))
    image = Image.blend(gradient, blurred, BLOB_OPACITY)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 9)):
        ends = rng.uniform(-0.2, 1.2, size=(2, 2)) * canvas_size
        draw.line([tuple(p) for p in ends], fill=tuple(int(c) for c in rng.integers(0, 256, 3)),
                  width=int(rng.integers(1, 5)))
    return image


def _propose_outline(rng, image_size: int, objects: List[_PlacedObject]) -> Tuple[int, np.ndarray]:
    """A class and an outline (V, 2) in image pixels: either anywhere, or overlapping an object."""
    max_extent = image_size / 2
    if objects and rng.random() < NEAR_EXISTING_PROB:
        anchor = objects[int(rng.integers(len(objects)))]
        same_class = rng.random() < SAME_CLASS_WHEN_NEAR_PROB
        class_index = anchor.class_index if same_class else int(rng.integers(len(CLASS_NAMES)))
        extent = anchor.extent * rng.uniform(0.7, 1.4)
        extent = float(np.clip(extent, MIN_OBJECT_EXTENT, max_extent))
        center = anchor.center + rng.uniform(-0.6, 0.6, size=2) * anchor.extent
        center = np.clip(center, 0, image_size)
    else:
        class_index = int(rng.integers(len(CLASS_NAMES)))
        extent = math.exp(rng.uniform(math.log(MIN_OBJECT_EXTENT), math.log(max_extent)))
        center = rng.uniform(0, image_size, size=2)
    outline = _UNIT_SHAPES[class_index] * np.array([1.0, rng.uniform(0.75, 1.33)])
    angle = rng.uniform(0, 2 * math.pi)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    outline = outline @ rotation.T
    outline *= extent / np.ptp(outline, axis=0).max()
    outline += center - (outline.min(0) + outline.max(0)) / 2
    return class_index, outline


def _polygon_area(outline: np.ndarray) -> float:
    x, y = outline[:, 0], outline[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _canvas_points(outline: np.ndarray) -> List[Tuple[float, float]]:
    """Image-pixel outline → supersampled canvas points in Pillow's convention (pixel i at i+½)."""
    return [tuple(p) for p in outline * SUPERSAMPLE - 0.5]


def _outline_mask(outline: np.ndarray, canvas_size: int) -> np.ndarray:
    mask = Image.new("1", (canvas_size, canvas_size), 0)
    ImageDraw.Draw(mask).polygon(_canvas_points(outline), fill=1)
    return np.asarray(mask, dtype=bool)


def _pick_colour(rng, avoid: List[np.ndarray]) -> Tuple[int, int, int]:
    """A colour far from every colour in ``avoid`` (background under it, overlapping objects).

    Gives up after 20 random tries and keeps the last one: rare, and a hard case is acceptable.
    """
    for _ in range(20):
        colour = rng.integers(0, 256, size=3)
        if all(np.linalg.norm(colour - other) >= MIN_COLOUR_DISTANCE for other in avoid):
            break
    return tuple(int(c) for c in colour)


def _place_objects(rng, image_size: int, background: np.ndarray) -> List[_PlacedObject]:
    """Objects in drawing order (later ones on top), each still visible enough once all are drawn.

    ``background`` is the (S*H, S*W, 3) canvas; it decides which colours would be invisible.
    """
    canvas_size = image_size * SUPERSAMPLE
    objects: List[_PlacedObject] = []
    for _ in range(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1)):
        for _ in range(PLACEMENT_ATTEMPTS):
            class_index, outline = _propose_outline(rng, image_size, objects)
            mask = _outline_mask(outline, canvas_size)
            inside_area = mask.sum() / SUPERSAMPLE**2
            if inside_area < MIN_INSIDE_FRACTION * _polygon_area(outline):
                continue
            still_visible = [obj.visible & ~mask for obj in objects]
            if all(visible.sum() >= MIN_VISIBLE_FRACTION * obj.num_pixels
                   for visible, obj in zip(still_visible, objects)):
                break
        else:
            continue
        overlapped = [np.array(obj.colour) for obj in objects if (obj.visible & mask).any()]
        colour = _pick_colour(rng, [background[mask].mean(0)] + overlapped)
        for obj, visible in zip(objects, still_visible):
            obj.visible = visible
        objects.append(_PlacedObject(class_index, outline, mask, int(mask.sum()), colour))
    return objects


def render_demo_image(
    rng: np.random.Generator, image_size: int
) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """Draw one image: the (H, W, 3) uint8 RGB pixels and a (class index, (4,) XYXY box) list."""
    canvas = _background(rng, image_size * SUPERSAMPLE)
    objects = _place_objects(rng, image_size, np.asarray(canvas, dtype=np.float64))
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        draw.polygon(_canvas_points(obj.vertices), fill=obj.colour)
    image = np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float64)
    image += rng.normal(0.0, rng.uniform(2, 12), size=image.shape)
    boxes = [
        (obj.class_index, np.clip(np.r_[obj.vertices.min(0), obj.vertices.max(0)], 0, image_size))
        for obj in objects
    ]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), boxes


def _write_split(dataset_dir: str, split: str, seed: int, num_images: int, image_size: int) -> None:
    """Render ``num_images`` images into ``<dataset_dir>/<split>/``, their COCO json beside it."""
    paths = _split_paths(dataset_dir)[split]
    os.makedirs(paths.image_root)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
        pixels, boxes = render_demo_image(rng, image_size)
        file_name = f"{index:06d}.png"
        Image.fromarray(pixels).save(os.path.join(paths.image_root, file_name))
        images.append(
            {"id": index + 1, "file_name": file_name, "width": image_size, "height": image_size}
        )
        for class_index, (x0, y0, x1, y1) in boxes:
            w, h = round(float(x1 - x0), 2), round(float(y1 - y0), 2)
            annotations.append({
                "id": len(annotations) + 1, "image_id": index + 1, "category_id": class_index + 1,
                "bbox": [round(float(x0), 2), round(float(y0), 2), w, h],
                "area": round(w * h, 2), "iscrowd": 0,
            })
    coco = {
        "info": {"description": (
            f"pgdet demo shapes, generator v{GENERATOR_VERSION}, seed {seed}, {split}"
        )},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASS_NAMES)],
    }
    with open(paths.json_file, "w") as f:
        json.dump(coco, f, separators=(",", ":"))


def generate_demo_dataset(
    root: Optional[str] = None,
    seed: int = 0,
    *,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> Dict[str, DemoSplit]:
    """Make sure the dataset for these parameters is on disk (generating it once); return its paths.

    Returns ``{"train": DemoSplit, "val": DemoSplit, "tune": DemoSplit}`` (tune has as many
    images as val). An existing folder is complete by
    construction (it only ever appears through an atomic rename) and is reused without being read.
    """
    root = os.path.expanduser(root or default_demo_root())
    dataset_dir = demo_dataset_dir(root, seed, num_train, num_val, image_size)
    if os.path.isdir(dataset_dir):
        return _split_paths(dataset_dir)
    os.makedirs(root, exist_ok=True)
    logger.info(f"Generating the pgdet demo dataset ({num_train} train + {num_val} val images of "
                f"{image_size}px, seed {seed}) into {dataset_dir} ...")
    start = time.perf_counter()
    staging_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(dataset_dir)}.tmp-", dir=root)
    try:
        for split, num_images in (("train", num_train), ("val", num_val), ("tune", num_val)):
            _write_split(staging_dir, split, seed, num_images, image_size)
        os.chmod(staging_dir, 0o755)
        try:
            os.rename(staging_dir, dataset_dir)
        except OSError:
            if not os.path.isdir(dataset_dir):
                raise
            logger.info(f"{dataset_dir} was completed by another process meanwhile; using it.")
    finally:
        if os.path.isdir(staging_dir):
            shutil.rmtree(staging_dir)
    logger.info(f"pgdet demo dataset ready in {time.perf_counter() - start:.1f}s.")
    return _split_paths(dataset_dir)


def _load_split(split: str, dataset_name: str, generator_kwargs: dict) -> List[dict]:
    paths = generate_demo_dataset(**generator_kwargs)[split]
    return load_coco_json(paths.json_file, paths.image_root, dataset_name)


def register_demo_datasets(
    root: Optional[str] = None,
    seed: int = 0,
    *,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> None:
    """Register ``pgdet_demo_train`` / ``pgdet_demo_val`` / ``pgdet_demo_tune`` as COCO-format
    detectron2 datasets.

    Lazy: nothing is generated until ``DatasetCatalog.get`` is first called on one of them. Calling
    again with the same arguments does nothing; with different ones it replaces both registrations.
    Metadata carries ``created_on_load=True``: :func:`pgdet.data.checks.check_datasets_exist` then
    generates the files instead of reporting the json as missing. Until then, COCOEvaluator cannot
    be built for them (it reads the json); detectron2's ``DefaultTrainer.test`` builds the data
    loader, which loads the dataset, before the evaluator.
    """
    generator_kwargs = dict(root=os.path.expanduser(root or default_demo_root()), seed=seed,
                            num_train=num_train, num_val=num_val, image_size=image_size)
    paths = _split_paths(demo_dataset_dir(**generator_kwargs))
    for split, name in (("train", TRAIN_NAME), ("val", VAL_NAME), ("tune", TUNE_NAME)):
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).get("json_file") == paths[split].json_file:
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda s=split, n=name: _load_split(s, n, generator_kwargs))
        MetadataCatalog.get(name).set(
            json_file=paths[split].json_file,
            image_root=paths[split].image_root,
            evaluator_type="coco",
            thing_classes=list(CLASS_NAMES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(CLASS_NAMES))},
            created_on_load=True,
        )
