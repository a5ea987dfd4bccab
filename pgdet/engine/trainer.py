"""Training and evaluation through detectron2's DefaultTrainer, with what pgdet needs on top.

- COCO evaluation (detectron2's COCOEvaluator; pycocotools where detectron2's C++ is absent) for
  every dataset, COCO or not (COCOEvaluator converts any registered dataset to COCO json), except
  detectron2's builtin Pascal VOC sets, which get the VOC07 mAP@0.5 of the paper's VOC table.
- Distributed training on CPU: detectron2's ``create_ddp_model`` passes ``device_ids``, which
  DistributedDataParallel rejects for a CPU model, so :meth:`Trainer.__init__` builds the DDP
  wrapper itself (gloo on CPU, NCCL on GPU as usual).
- Exact resume: the data of iteration i (pgdet/data/iteration_loader.py) and every random draw
  of the model at iteration i (RoI/anchor sampling, the PG actions) are functions of
  (SEED, i, rank), and checkpoints are tagged atomically, so a run killed at any moment and
  restarted with ``--resume`` ends with the same weights as an uninterrupted one.
- A training batch that produces non-finite values is named by its dataset image ids.
"""
import functools
import json
import logging
import os
import random
import weakref

import numpy as np
import torch
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, HookBase, SimpleTrainer, TrainerBase
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config_error import ConfigError
from ..data.checks import load_training_dicts
from ..data.mapper import CheckedDatasetMapper
from ..data.iteration_loader import IterationSampler, build_iteration_train_loader, mix_seed
from ..modeling import PGFastRCNNOutputLayers, PGRetinaNet
from ..modeling.comparators import RSFastRCNNOutputLayers
from .checkpoint import PGCheckpointer

EVAL_FILE = "eval_metrics.json"  # what pgdet.engine.experiment reads


class _BatchRecorder:
    """Iterates a data loader and remembers the image ids of the batch it handed out last."""

    def __init__(self, data_loader):
        self.data_loader = data_loader
        self.last_image_ids = []

    def __iter__(self):
        for batch in self.data_loader:
            self.last_image_ids = [d.get("image_id", d.get("file_name")) for d in batch]
            yield batch


def check_pg_model(cfg, model):
    """MODEL.PG.ENABLED needs pgdet's box predictors (or PGRetinaNet), MODEL.RS_LOSS.ENABLED the
    RS box predictor; fail at build time, saying what to change."""
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    if cfg.MODEL.RS_LOSS.ENABLED and not isinstance(predictor, RSFastRCNNOutputLayers):
        raise ConfigError(
            f"MODEL.RS_LOSS.ENABLED is True but the ROI heads {cfg.MODEL.ROI_HEADS.NAME!r} use the "
            f"box predictor {type(predictor).__name__}, which has no RS loss. Set "
            "MODEL.ROI_HEADS.NAME to RSROIHeads."
        )
    if not cfg.MODEL.PG.ENABLED or isinstance(model, PGRetinaNet):
        return
    # a cascade has one predictor per stage
    predictors = list(predictor) if isinstance(predictor, torch.nn.ModuleList) else [predictor]
    unfit = [p for p in predictors if not isinstance(p, PGFastRCNNOutputLayers)]
    if unfit:
        raise ConfigError(
            f"MODEL.PG.ENABLED is True but the ROI heads {cfg.MODEL.ROI_HEADS.NAME!r} use the box "
            f"predictor {type(unfit[0]).__name__}, which cannot compute the policy gradient. Set "
            "MODEL.ROI_HEADS.NAME to PGROIHeads (or a subclass of it, e.g. OHEMROIHeads), to "
            "PGCascadeROIHeads for a Cascade R-CNN, or MODEL.META_ARCHITECTURE to PGRetinaNet "
            "for a RetinaNet."
        )


def num_classes_key(cfg) -> str:
    """The config key holding the detector's number of classes: RetinaNet's own, else the ROI
    heads'. Error messages name it, so a RetinaNet user is not sent to a key it never reads."""
    if cfg.MODEL.META_ARCHITECTURE in ("RetinaNet", "PGRetinaNet"):
        return "MODEL.RETINANET.NUM_CLASSES"
    return "MODEL.ROI_HEADS.NUM_CLASSES"


def num_classes(cfg) -> int:
    """The detector's number of classes, read from :func:`num_classes_key`."""
    return functools.reduce(getattr, num_classes_key(cfg).split("."), cfg)


def create_ddp(model, **kwargs):
    """detectron2's ``create_ddp_model`` (DDP when there are several processes), also for a model
    on CPU: DDP takes ``device_ids`` only for a module on one GPU, for CPU it must be None."""
    if next(model.parameters()).device.type == "cpu":
        kwargs["device_ids"] = None
    return create_ddp_model(model, **kwargs)


def resolve_seed(seed: int) -> int:
    """`seed`, or if it is < 0 ("random" in detectron2) one drawn by rank 0 for all processes."""
    return seed if seed >= 0 else comm.shared_random_seed()


def run_seed(cfg) -> int:
    """The seed shared by all processes of a run (SEED, or one drawn by rank 0 if SEED < 0)."""
    return resolve_seed(cfg.SEED)


def with_run_seed(cfg):
    """`cfg` with SEED < 0 ("random" in detectron2) replaced by one seed drawn for the run and
    shared by its processes, so the data order, the augmentations and the PG actions all come
    from the same seed, which the log records."""
    if cfg.SEED >= 0:
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SEED = run_seed(cfg)
    cfg.freeze()
    logging.getLogger(__name__).info("SEED -1: this run's seed is %d", cfg.SEED)
    return cfg


class ReseedHook(HookBase):
    """Seeds torch/numpy/random from (seed, iteration, rank) before every step."""

    def __init__(self, seed: int):
        self.seed = seed

    def before_step(self):
        seed = mix_seed(self.seed, self.trainer.iter, comm.get_rank())
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer, made to run DDP on CPU and to name bad batches."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = with_run_seed(DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size()))

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        self._batches = _BatchRecorder(self.build_train_loader(cfg))
        model = create_ddp(model, broadcast_buffers=False)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, self._batches, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = PGCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        return [ReseedHook(run_seed(self.cfg))] + super().build_hooks()

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        sampler = getattr(self._batches.data_loader, "sampler", None)
        if isinstance(sampler, IterationSampler):
            sampler.start = self.start_iter

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        check_pg_model(cfg, model)
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        dataset_dicts = load_training_dicts(
            cfg.DATASETS.TRAIN, num_classes(cfg), num_classes_key=num_classes_key(cfg),
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        )
        if not cfg.DATALOADER.EXACT_RESUME:
            return build_detection_train_loader(
                cfg, mapper=CheckedDatasetMapper(cfg, True), dataset=dataset_dicts
            )
        loader, _ = build_iteration_train_loader(
            dataset_dicts, CheckedDatasetMapper(cfg, True), cfg.SOLVER.IMS_PER_BATCH, comm.get_rank(),
            comm.get_world_size(), run_seed(cfg), cfg.DATALOADER.NUM_WORKERS,
        )
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, False))

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:
            ids = self._batches.last_image_ids
            positions = getattr(e, "positions", None)  # NonFiniteOutputsError knows the images
            offending = "" if positions is None else (
                f"; offending image ids: {[ids[p] for p in positions if p < len(ids)]}"
            )
            raise FloatingPointError(
                f"{e}\nIteration {self.iter}{offending}; image ids of this batch: {ids}"
            ) from e

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's evaluation, plus the first test set's bbox metrics in eval_metrics.json."""
        results = super().test(cfg, model, evaluators)
        first = results.get("bbox") or next(iter(results.values()), {}).get("bbox")
        if comm.is_main_process() and first:
            with open(os.path.join(cfg.OUTPUT_DIR, EVAL_FILE), "w") as f:
                json.dump(first, f, indent=1)
        return results

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        if MetadataCatalog.get(dataset_name).get("evaluator_type") == "pascal_voc":
            # detectron2's builtin VOC sets: VOC07 mAP@0.5, the metric of supplement Table 2
            return PascalVOCDetectionEvaluator(dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder)


def default_device() -> str:
    """"cuda" when a GPU is visible, else "cpu": configs say cuda, CPU machines still run them."""
    return "cuda" if torch.cuda.is_available() else "cpu"
