"""The policy gradient of Rao et al. (§3.3) for one-stage (dense) detectors: RetinaNet, FCOS.

**The policy.** A dense detector scores every (anchor, class) pair with its own sigmoid, so each
pair already is a Bernoulli variable: ``p[a, c] = σ(x[a, c])`` is the probability that detection
(a, c) is kept. It is also the test-time score for RetinaNet; a detector that ranks by another
score (FCOS: sqrt(p · σ(centerness))) passes both, D using the score and the actions the policy
(:mod:`pgdet.modeling.pg.pg_fcos`). As in the two-stage method (SPEC §1):

- the *candidates* b are the positive anchors (label in [0, K); ignored anchors, label −1,
  never), each with its ground-truth class l_b, the box decoded from its deltas (clipped to
  the image) and ``p_b = p[b, l_b]``;
- the baseline detections D are exactly the detector's own inference on the same image (score
  threshold, top-k per level, class-wise NMS, detection cap, then clipping and dropping empty
  boxes as detectron2's post-processing does), keeping for each detection its anchor;
- rewards, estimators and options are the shared ones
  (:func:`pgdet.modeling.pg.policy_gradient.advantages_of_images`), over *slots* that are the
  (anchor, class) logits: slot = a·K + c, so A has the shape of the class logits [N, R, K].

**The PG term for a sigmoid/focal classifier.** For a Bernoulli choice of b with probability
p_b, REINFORCE ascends E[r] along ``A_b ∇ log p_b`` (A_b the estimator's advantage; with
``reinforce``, A_b = p_b Δ_b, the step is the exact ∂E[r]/∂x_b). The loss that descends along
it is ``L_PG = −c Σ_b A_b log p_b``. For a sigmoid, ∂ log σ(x)/∂x = 1 − σ(x), so

    ∂L_PG / ∂x[b, l_b] = c · A_b · (p_b − 1),

eq. 11's factor, on that one logit only: the other classes of b are other Bernoullis (a
softmax couples them, hence the two-stage's c·A_b·p_j on the other classes). The focal loss
cannot carry this term as cross-entropy does in the two-stage method: its gradient on a
positive logit is ``−α (1 − p)^γf (1 − p − γf p log p)``, so a focal loss weighted by c·A_b + γ
would scale the policy gradient by α(1 − p)^γf (1 − γf p log p / (1 − p)), which vanishes for
confident boxes and is no longer the gradient of E[r]. Hence a separate REINFORCE term on
log σ of the candidate's true-class logit, and eq. 10 with the focal loss in the role of the
cross-entropy:

    L_cls = γ · FL + c · Σ_b A_b · (−log p_b) / N_pos,

``N_pos`` being the focal loss's own normaliser (detectron2's moving average of the positive
anchors per batch). γ = 1 with c = 0, or PG off, is detectron2's loss exactly; c means what it
means with cross-entropy (a box of advantage A gets c·A times the step cross-entropy would give
it), but against the focal loss, whose positive gradient is α = 0.25 times smaller and shrinks
with (1 − p)^2, the PG term weighs relatively more: c is the knob.

The credits of the options go to the logit of their box: ``KEPT_BOX_CREDIT`` to the (anchor,
detected class) of each box of D, ``SUPPRESSOR_CREDIT`` to the suppressor's, with sign +1 (the
logit *is* that box's Bernoulli, whatever the anchor's label: D also holds boxes of background
and ignored anchors). ``INCLUDE_GT_PROPOSALS`` means nothing here: no boxes are appended.

``UPDATE pairwise`` (:mod:`pgdet.modeling.pg.pairwise_update`) replaces the REINFORCE term by
the order loss of the pairs whose order decides AP (a candidate and its suppressor, a false
positive above a true positive of its class in D), on the slots' logits: a sigmoid's log-odds
is its logit, so the margin of a pair is the difference of two logits, and L_cls = γ · FL +
c · Σ_pairs ℓ / N_pos. FCOS ranks D by sqrt(p · σ(centerness)); the pairs are found in that
order, and the loss moves the class logits only (the centerness keeps its own loss).

Logged as for the two-stage method, ``pg/mean_weight`` and ``pg/negative_weight_frac`` being
over the slots that have an advantage: c·A + γ there is the weight the term would have had,
the focal loss being cross-entropy.
"""
import time
from typing import List, NamedTuple, Optional, Tuple

import torch
from detectron2.layers import batched_nms, cat
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage

from .pairwise_update import dense_pairwise_order_loss, log_pair_stats
from .pg_options import PGOptions, action_generator, log_pg_stats
from .pg_output_layers import NonFiniteOutputsError
from .policy_gradient import PGImage, advantages_of_images
from .reward_memory import RewardMemory


class DenseInference(NamedTuple):
    """A dense detector's test-time parameters (RetinaNet's and FCOS's attributes)."""

    score_thresh: float
    topk_candidates: int  # per level, before NMS
    nms_thresh: float
    max_detections: int


def dense_detections(anchors: List[Boxes], scores: List[torch.Tensor],
                     deltas: List[torch.Tensor], box2box_transform, inference: DenseInference,
                     image_size: Tuple[int, int]) -> Tuple[Instances, torch.Tensor, torch.Tensor]:
    """D of one image, the anchor of each of its boxes, and the boxes as NMS compared them.

    detectron2's DenseDetector inference (``_decode_multi_level_predictions``, class-wise
    ``batched_nms``, the cap) and ``detector_postprocess``'s clipping, computed here because
    detectron2 drops the anchor indices that the slots need (tests/test_pg_retinanet.py compares
    the two).

    anchors: per level Boxes [A_l]; scores: per level [A_l, K]; deltas: per level [A_l, 4].
    Returns D (pred_boxes, scores, pred_classes), [|D|] indices into the levels' anchors
    concatenated, and [|D|, 4] D's boxes before clipping: NMS runs on those (a box reaching
    past the border overlaps its neighbours less than its clipped self does).
    """
    boxes, top_scores, classes, sources = [], [], [], []
    offset = 0
    for level_anchors, level_scores, level_deltas in zip(anchors, scores, deltas):
        above = level_scores > inference.score_thresh
        pairs = torch.nonzero(above)  # [M, 2] (anchor, class), in the order of scores[above]
        top, order = level_scores[above].topk(min(len(pairs), inference.topk_candidates))
        anchor_idx, class_idx = pairs[order].unbind(dim=1)
        boxes.append(box2box_transform.apply_deltas(level_deltas[anchor_idx],
                                                    level_anchors.tensor[anchor_idx]))
        top_scores.append(top)
        classes.append(class_idx)
        sources.append(anchor_idx + offset)
        offset += len(level_anchors)
    boxes, top_scores, classes, sources = (cat(x) for x in (boxes, top_scores, classes, sources))
    keep = batched_nms(boxes, top_scores, classes, inference.nms_thresh)
    keep = keep[: inference.max_detections]
    nms_boxes = boxes[keep]
    kept_boxes = Boxes(nms_boxes.clone())
    kept_boxes.clip(image_size)
    nonempty = kept_boxes.nonempty()
    detections = Instances(image_size, pred_boxes=kept_boxes[nonempty],
                           scores=top_scores[keep][nonempty], pred_classes=classes[keep][nonempty])
    return detections, sources[keep][nonempty], nms_boxes[nonempty]


def _dense_images(anchors, scores, deltas, gt_labels, targets, image_sizes, box2box_transform,
                  inference, policy) -> List[PGImage]:
    """The reward's inputs of each image (see the module docstring); shapes as in
    :func:`dense_pg_loss`, `policy` not None. Each candidate carries its policy probability
    (drawn) and its test-time score (ranked against D), and its box unclipped (for NMS) and
    clipped (for the reward)."""
    num_classes = scores[0].shape[2]
    all_anchors = Boxes.cat(anchors).tensor
    images = []
    for i, (labels, gt, image_size) in enumerate(zip(gt_labels, targets, image_sizes)):
        image_scores = [s[i] for s in scores]
        image_policy = [p[i] for p in policy]
        image_deltas = [d[i] for d in deltas]
        base, base_anchor, base_nms_boxes = dense_detections(
            anchors, image_scores, image_deltas, box2box_transform, inference, image_size)
        cand_anchor = torch.nonzero((labels >= 0) & (labels < num_classes), as_tuple=True)[0]
        cand_classes = labels[cand_anchor]
        cand_nms_boxes = box2box_transform.apply_deltas(cat(image_deltas)[cand_anchor],
                                                        all_anchors[cand_anchor])
        cand_boxes = Boxes(cand_nms_boxes.clone())
        cand_boxes.clip(image_size)
        images.append(PGImage(
            len(labels) * num_classes, base, base_anchor * num_classes + base.pred_classes,
            torch.ones_like(base.scores), cand_anchor * num_classes + cand_classes, cand_classes,
            cat(image_policy)[cand_anchor, cand_classes], cand_boxes.tensor, gt,
            cand_rank_scores=cat(image_scores)[cand_anchor, cand_classes],
            base_nms_boxes=base_nms_boxes, cand_nms_boxes=cand_nms_boxes,
        ))
    return images


def _check_finite(log_probs: torch.Tensor, deltas: torch.Tensor, iteration: int):
    """Stop on non-finite outputs (naming the images) instead of silent zero advantages."""
    finite = (torch.isfinite(log_probs).flatten(1).all(dim=1)
              & torch.isfinite(deltas).flatten(1).all(dim=1))
    if not bool(finite.all()):
        bad = torch.nonzero(~finite, as_tuple=True)[0].tolist()
        raise NonFiniteOutputsError(
            f"Non-finite dense-head outputs at iteration {iteration} in the images at batch "
            f"positions {bad}.", bad)


def dense_pg_loss(log_probs: torch.Tensor, scores: List[torch.Tensor],
                  deltas: List[torch.Tensor], anchors: List[Boxes],
                  gt_labels: List[torch.Tensor], targets: List[Instances], image_sizes,
                  box2box_transform, inference: DenseInference, options: PGOptions,
                  normalizer: float, policy: Optional[List[torch.Tensor]] = None,
                  reward_memory: Optional[RewardMemory] = None) -> torch.Tensor:
    """The PG term ``c · Σ A · (−log p) / normalizer`` of a batch, logging ``pg/*``; with
    MODEL.PG.UPDATE pairwise ``c · Σ_pairs ℓ / normalizer`` instead (the order loss of
    :mod:`pgdet.modeling.pg.pairwise_update` on the (anchor, class) logits, whose log-odds
    are the logits themselves).

    log_probs: [N, R, K] log-probabilities of the (anchor, class) Bernoullis, with gradient
        (RetinaNet: log σ of the class logits), R anchors over all levels;
    scores: per level [N, A_l, K] the test-time scores as the detector's inference computes
        them (so that D is exactly its output); deltas: per level [N, A_l, 4];
    anchors: per level Boxes [A_l]; gt_labels: per image [R] in {−1, 0..K−1, K} (ignored,
        class, background); targets: per image the full ground truth; image_sizes: per image
        (h, w); normalizer: the focal loss's;
    policy: per level [N, A_l, K] the Bernoulli probabilities (exp of `log_probs`) when the
        inference scores are not them (FCOS); None: the scores are the policy (RetinaNet);
    reward_memory: the detector's recent images for MODEL.PG.REWARD_SCOPE dataset.
    """
    storage = get_event_storage()
    _check_finite(log_probs.detach(), cat(deltas, dim=1).detach(), storage.iter)
    start = time.perf_counter()
    with torch.no_grad():
        scores = [s.detach() for s in scores]
        policy = scores if policy is None else [p.detach() for p in policy]
        images = _dense_images(anchors, scores, [d.detach() for d in deltas], gt_labels, targets,
                               image_sizes, box2box_transform, inference, policy)
        # the detector's own NMS threshold (D's), as the two-stage path passes its predictor's
        pg = advantages_of_images(images, options.settings,
                                  action_generator(options.seed, log_probs.device, storage.iter),
                                  log_probs.device, inference.nms_thresh,
                                  inference.max_detections, reward_memory)
        advantages = pg.advantages.view_as(log_probs)
        weights = options.reward_scale * pg.advantages[pg.candidate_mask] + options.gamma
        if pg.order_pairs is not None:  # the advantages weigh nothing (as in the two-stage path)
            weights = torch.full_like(weights, options.gamma)
    log_pg_stats(storage, pg, weights, time.perf_counter() - start)
    if pg.order_pairs is not None:
        log_pair_stats(storage, pg.order_pairs)
        pair_loss = dense_pairwise_order_loss(log_probs, pg.order_pairs)
        return options.reward_scale * pair_loss / normalizer
    return -options.reward_scale * (advantages * log_probs).sum() / normalizer
