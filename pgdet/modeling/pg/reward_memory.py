"""The detections of the most recent training images, for the dataset-level reward.

:mod:`pgdet.modeling.pg.dataset_reward` scores a detection set by the COCO AP of the dataset made
of the last N training images and the current batch. It needs, of each past image, only what
COCOeval's accumulation reads once the image's own matching is done: per detection its class,
score and true-positive flag at each IoU threshold, and per class the number of ground-truth
boxes. This module holds exactly that, for the last N images, as a handful of flat tensors.

The memory is a plain object, not a registered buffer: it is left out of checkpoints (a model
saved with it would not load into a detector built without the dataset reward, and its content
is a function of recent predictions that training refills within N / batch-size iterations of a
resume). Each process holds its own (see dataset_reward's note on several GPUs).
"""
from typing import NamedTuple, Optional

import torch

__all__ = ["RewardMemory", "ScoredDetections"]


class ScoredDetections(NamedTuple):
    """Detections of several images after each image's COCOeval matching.

    classes [E] int64 and scores [E] float: class-major (ascending), scores descending within a
    class, ties in image order; tp [E, T] bool: true positive at IoU threshold t; image [E]
    int64: the detection's image (-1: an image of the memory, b >= 0: image b of the batch).
    """

    classes: torch.Tensor
    scores: torch.Tensor
    tp: torch.Tensor
    image: torch.Tensor


def sort_detections(detections: ScoredDetections) -> ScoredDetections:
    """Class-major, scores descending, equal (class, score) kept in their given order: the order
    of COCOeval's mergesort over images loaded in that order."""
    order = torch.sort(detections.scores, descending=True, stable=True).indices
    order = order[torch.sort(detections.classes[order], stable=True).indices]
    return ScoredDetections(*(x[order] for x in detections))


class RewardMemory:
    """The baseline detections (with their matching) and the ground-truth classes of the last
    ``num_images`` training images, oldest first.

    Images enter through :meth:`add`, once per iteration, with their baseline D; an image
    ``num_images`` images older than the newest leaves. ``num_images`` 0 keeps nothing (the
    dataset is then the batch alone).
    """

    def __init__(self, num_images: int):
        self.num_images = num_images
        self._added = 0  # images added so far; the serial number of the next one
        self._detections: Optional[ScoredDetections] = None  # image = serial number
        self._gt_classes: Optional[torch.Tensor] = None  # [G_m] int64
        self._gt_serial: Optional[torch.Tensor] = None  # [G_m] int64

    def __len__(self) -> int:
        """The number of images held."""
        return min(self._added, self.num_images)

    def detections(self, like: ScoredDetections) -> ScoredDetections:
        """The held detections on the device and score dtype of ``like``, sorted as
        :func:`sort_detections`, ``image`` -1; empty (with ``like``'s T) when nothing is held."""
        if self._detections is None:
            return ScoredDetections(*(x[:0] for x in like))
        held = self._detections
        return ScoredDetections(held.classes.to(like.classes.device),
                                held.scores.to(like.scores), held.tp.to(like.tp.device),
                                torch.full_like(held.image, -1, device=like.image.device))

    def gt_classes(self, device) -> torch.Tensor:
        """[G_m] int64: the class of every ground-truth box held."""
        if self._gt_classes is None:
            return torch.zeros(0, dtype=torch.long, device=device)
        return self._gt_classes.to(device)

    @torch.no_grad()
    def add(self, detections: ScoredDetections, gt_classes: torch.Tensor, gt_image: torch.Tensor,
            num_images: int):
        """Append a batch of ``num_images`` images, then forget the images beyond the last
        ``num_images`` of the memory.

        detections: the batch's baseline detections, ``image`` in [0, num_images);
        gt_classes [G] int64 and gt_image [G] int64: the batch's ground truth and its image.
        """
        first = self._added
        self._added += num_images
        oldest = self._added - self.num_images
        batch = ScoredDetections(detections.classes, detections.scores, detections.tp,
                                 detections.image + first)
        gt_serial = gt_image + first
        if self._detections is not None:
            held = self._detections
            if held.tp.shape[1] != batch.tp.shape[1]:
                raise ValueError("MODEL.PG.IOU_THRESHOLDS changed during training: the reward "
                                 "memory holds true positives at the old thresholds")
            batch = ScoredDetections(*(torch.cat([h.to(b.device), b]) for h, b in zip(held, batch)))
            gt_classes = torch.cat([self._gt_classes.to(gt_classes.device), gt_classes])
            gt_serial = torch.cat([self._gt_serial.to(gt_serial.device), gt_serial])
        kept = batch.image >= oldest
        self._detections = sort_detections(ScoredDetections(*(x[kept] for x in batch)))
        kept_gt = gt_serial >= oldest
        self._gt_classes, self._gt_serial = gt_classes[kept_gt], gt_serial[kept_gt]
