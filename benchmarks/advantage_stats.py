#!/usr/bin/env python
"""Does the policy-gradient advantage tell good boxes from bad ones? Measured on a trained model.

The PG loss re-weights the cross-entropy of each candidate RoI b (foreground, not already kept
by NMS) by ``c·A_b + γ``. The paper's intuition (§3.3): "boxes that have higher IoU with ground
truth boxes than selected ones will get positive rewards, while actions of selecting low IoU
boxes will be penalized". This script checks that for every choice SPEC §1 leaves open.

It runs a trained detector in training mode (RoI sampling with ground truth, no weight update) on
the first N batches of its training set, captures the box predictor's inputs to
:func:`pgdet.modeling.pg.policy_gradient.compute_advantages`, and recomputes the advantages on the
*same* predictor outputs with the *same* random stream under each setting. For the candidates
it prints: the share of positive advantages, mean and spread of A, the Spearman correlation of A
with the candidate's localisation quality (IoU of its decoded box with its ground truth) and with
its confidence p_b and with the exact counterfactual (the ``swap`` advantage: what putting b
into the NMS result in place of the box that suppressed it does to the image's AP), and the
share of candidates that γ = 1 and c = 10 would push *down* (c·A + γ < 0).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/advantage_stats.py \\
        --config pgdet/configs/bccd/ft_MobileNetV2_FPN_bccd.yaml \\
        --weights output/table1_bccd/baseline/model_final.pth --batches 20
"""
import argparse
import dataclasses
import os
import statistics
from typing import Dict, List

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.events import EventStorage

import pgdet  # noqa: F401  (registers pgdet's components)
import pgdet.modeling.pg.pg_output_layers as pg_output_layers
from pgdet.data import register_datasets_from_cfg
from pgdet.engine import Trainer, build_cfg
from pgdet.modeling.pg.policy_gradient import compute_advantages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (label, reward estimator, NMS on sampled sets, baseline r')
SETTINGS = (
    ("paper: joint, no sample NMS, r'=NMS", "joint", False, "nms"),
    ("conditional, no sample NMS, r'=NMS", "conditional", False, "nms"),
    ("conditional, sample NMS, r'=NMS", "conditional", True, "nms"),
    ("conditional, sample NMS, r'=sampled mean", "conditional", True, "sampled_mean"),
    ("reinforce (exact gradient), sample NMS", "reinforce", True, "nms"),
    ("swap (no sampling), r'=NMS", "swap", False, "nms"),
)
SWAP_LABEL = SETTINGS[-1][0]
PUSH_DOWN_SCALE = 10.0  # c at which the share of pushed-down candidates (c·A + 1 < 0) is shown


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """[N] float64 ranks 0..N-1 of `values`, tied values sharing their average rank (Spearman's
    definition; a mostly-zero advantage is one large tie, which position must not order)."""
    sorted_values, order = values.sort(stable=True)
    _, group, counts = torch.unique_consecutive(sorted_values, return_inverse=True,
                                                return_counts=True)
    last = counts.cumsum(0).double() - 1
    mean_rank = last - (counts.double() - 1) / 2
    ranks = torch.empty(len(values), dtype=torch.float64)
    ranks[order] = mean_rank[group]
    return ranks


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two [N] tensors: Pearson's on their average ranks."""
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()).clamp(min=1e-12))


def capture_predictor_inputs(cfg, weights: str, num_batches: int) -> List[tuple]:
    """(probs, boxes, proposals, targets, settings) of compute_advantages for `num_batches`."""
    register_datasets_from_cfg(cfg)
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    model.train()
    captured = []

    def recording(probs, boxes, proposals, targets, settings, generator):
        captured.append((probs, boxes, proposals, targets, settings))
        return compute_advantages(probs, boxes, proposals, targets, settings, generator)

    pg_output_layers.compute_advantages = recording
    loader = iter(Trainer.build_train_loader(cfg))
    with EventStorage(0) as storage, torch.no_grad():
        for _ in range(num_batches):
            model(next(loader))
            storage.step()
    pg_output_layers.compute_advantages = compute_advantages
    return captured


def candidate_quality(boxes, proposals) -> Dict[str, torch.Tensor]:
    """Per sampled RoI of a batch: [R] IoU of the box decoded for its ground-truth class with its
    matched ground truth (0 for background) and [R] foreground flag."""
    ious, foreground = [], []
    for box, prop in zip(boxes, proposals):
        num_classes = box.shape[1] // 4
        fg = (prop.gt_classes >= 0) & (prop.gt_classes < num_classes)
        cls = prop.gt_classes.clamp(max=num_classes - 1)
        decoded = box.view(len(prop), -1, 4)[torch.arange(len(prop)), cls]
        iou = pairwise_iou(Boxes(decoded), prop.gt_boxes).diagonal()
        ious.append(torch.where(fg, iou, torch.zeros_like(iou)))
        foreground.append(fg)
    return {"iou": torch.cat(ious), "fg": torch.cat(foreground)}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a fine-tune config (data, PG options)")
    parser.add_argument("--weights", required=True, help="the trained model to inspect")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = parser.parse_args()
    cfg = build_cfg(args.config, ["MODEL.PG.ENABLED", "True", "DATALOADER.NUM_WORKERS", "0",
                                  *args.opts])
    captured = capture_predictor_inputs(cfg, args.weights, args.batches)
    images = sum(len(c[2]) for c in captured)
    print(f"{args.weights}: {args.batches} training batches, {images} images, "
          f"k = {cfg.MODEL.PG.NUM_SAMPLES} actions per image\n")
    results = {label: advantages_under(captured, estimator, sample_nms, baseline)
               for label, estimator, sample_nms, baseline in SETTINGS}
    # compared on the same RoIs: the foreground RoIs not kept by NMS (swap's candidates), which
    # depend on the NMS result only (reinforce also estimates the kept ones; left out here)
    common = results[SWAP_LABEL]["candidates"]
    q, p = candidate_iou_and_prob(captured, common)
    exact = results[SWAP_LABEL]["A"][common]  # what swapping b into D does to its AP
    print(f"| setting | mean r' | mean r(a) | A > 0 | mean A | std A | ρ(A, IoU) | ρ(A, p_b) "
          f"| ρ(A, swap A) | c={PUSH_DOWN_SCALE:g}, γ=1: pushed down |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        a = r["A"][common]
        print(f"| {label} | {r['r_base']:.3f} | {r['r_sampled']:.3f} "
              f"| {(a > 0).float().mean():.1%} | {a.mean():+.4f} | {a.std():.4f} "
              f"| {spearman(a, q):+.2f} | {spearman(a, p):+.2f} "
              f"| {spearman(a, exact):+.2f} | {(PUSH_DOWN_SCALE * a + 1 < 0).float().mean():.1%} |")
    print(f"\n{len(q)} candidates (foreground RoIs not kept by NMS); their IoU and p_b have "
          f"ρ = {spearman(q, p):+.2f}; median IoU {statistics.median(q.tolist()):.2f}, "
          f"median p_b {statistics.median(p.tolist()):.2f}.")


def advantages_under(captured, estimator: str, sample_nms: bool, baseline: str) -> dict:
    """Under one setting: the [R] advantages A and [R] candidate mask (RoIs it estimates) of all
    sampled RoIs, and the mean rewards."""
    adv, cand, base, sampled = [], [], [], []
    for batch, (probs, boxes, proposals, targets, settings) in enumerate(captured):
        variant = dataclasses.replace(settings, reward_estimator=estimator,
                                      sample_nms=sample_nms, baseline=baseline)
        generator = torch.Generator().manual_seed(batch)  # same actions for every setting
        result = compute_advantages(probs, boxes, proposals, targets, variant, generator)
        adv.append(result.advantages)
        cand.append(result.candidate_mask)
        base.append(result.baseline_reward)
        sampled.append(result.sampled_reward.flatten())
    return {"A": torch.cat(adv), "candidates": torch.cat(cand),
            "r_base": float(torch.cat(base).mean()), "r_sampled": float(torch.cat(sampled).mean())}


def candidate_iou_and_prob(captured, candidates: torch.Tensor):
    """[M] IoU with its ground truth and [M] probability p_b of its ground-truth class, of the
    candidates selected by the [R] mask `candidates` over all captured RoIs."""
    iou, prob = [], []
    for probs, boxes, proposals, _, _ in captured:
        gt_classes = torch.cat([p.gt_classes for p in proposals])
        all_probs = torch.cat(probs)
        iou.append(candidate_quality(boxes, proposals)["iou"])
        prob.append(all_probs[torch.arange(len(gt_classes)),
                              gt_classes.clamp(max=all_probs.shape[1] - 1)])
    return torch.cat(iou)[candidates], torch.cat(prob)[candidates]


if __name__ == "__main__":
    main()
