"""Evaluation beyond detectron2's COCOEvaluator: COCO AP on resampled test sets (bootstrap)."""
from .coco_resample import PerImageEvaluation, per_image_evaluation, resample_counts, resampled_ap

__all__ = ["PerImageEvaluation", "per_image_evaluation", "resample_counts", "resampled_ap"]
