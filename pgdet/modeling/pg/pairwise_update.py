"""``MODEL.PG.UPDATE pairwise``: an update that moves the order of two boxes, not only a weight.

Why. The paper's update is a re-weighted cross-entropy, ``w_b · CE(x_b, l_b)``, whose gradient
on the true-class logit is ``w_b (p_b − 1)``. Two boxes of one object that both score ~0.9, the
one NMS kept and a better one it suppressed, both get gradients ≈ −0.1·w: whatever weights the
advantages give them, the CE cannot exchange their order unless a weight goes negative (the
unstable regime). The same holds for a confident false positive ranked above a true positive of
its class. AP depends only on such orders, so this update acts on them directly, with
LambdaRank's principle (Burges et al. 2006): a logistic loss on the difference of the two boxes'
scores, weighted by the exact change of the reward when their order is exchanged.

Which pairs. Per image, on the real NMS outcome D (detectron2's inference on the sampled RoIs):

(i)  *suppression*: a candidate b (foreground RoI, its label l_b, not in D) and the box s of D
     that suppressed it in greedy NMS (the ``swap`` estimator's suppressor). Exchanging their
     order makes NMS keep b instead of s: ΔAP = AP(D − s + b) − AP(D), which is the ``swap``
     estimator's advantage A_b, so UPDATE pairwise needs REWARD_ESTIMATOR swap;
(ii) *misordering*: a false positive u ranked above a true positive v of the same class in D.
     TP / FP come from the reward's own matching (:func:`pgdet.modeling.pg.reward.match_sets`,
     COCOeval's greedy per-image matching) at the *lowest* of MODEL.PG.IOU_THRESHOLDS (0.5 by
     default); among D's boxes within the reward's per-class cap. ΔAP = AP(D with the scores
     of u and v exchanged) − AP(D), exact over all thresholds (so a pair whose exchange would
     hurt at the higher thresholds gets the sign that says so). At most
     ``PAIRWISE_MAX_PAIRS`` per image: those of the highest-ranked false positives first (D is
     in descending score order), each with its true positives from the highest down — the
     confident mistakes of the paper's Figure 3; the cap bounds the reward's cost, which grows
     as the number of sets times the pool (D plus two exchanged copies per pair).

Every ΔAP is computed in the same reward call as the estimator's sets, so it is the reward of
MODEL.PG.REWARD_SCOPE (image, or dataset: then the dataset AP of memory ∪ batch).

The loss. With ``z = log p_c − log(1 − p_c) = x_c − logsumexp_{j≠c} x_j`` the log-odds of a
box's class c under the softmax of its RoI's logits x [K+1], a pair (a above, b below in D) with
``ΔAP`` the change from exchanging them costs

    ℓ = |ΔAP| · softplus(−m),    m = sign(ΔAP) · (z_b − z_a),

i.e. when exchanging helps (ΔAP > 0) b should outrank a, otherwise a should stay above b. Its
gradient on the margin is ``−|ΔAP| · σ(−m)``: of size |ΔAP| while the order is wrong (m < 0)
and |ΔAP|/2 at a tie, whatever the probabilities: it does not saturate at p ≈ 0.9 as the CE's
``p − 1`` does, and needs no negative weight. A pair whose ΔAP is 0 costs nothing.

The classification loss of the batch is then

    L_cls = (γ · Σ_b CE(x_b, l_b) + c · Σ_pairs ℓ) / R,

R the sampled RoIs of the batch, as detectron2 normalises its CE (γ = MODEL.PG.GAMMA,
c = MODEL.PG.REWARD_SCALE): a pair moves its two logits by about c·|ΔAP| / R, the size by which
the weighted CE moves one RoI by its advantage.

One-stage detectors (RetinaNet, FCOS). The pairs are found the same way over D and the
positive anchors (:mod:`pgdet.modeling.pg.dense_policy_gradient`); a box is an (anchor, class)
sigmoid, whose log-odds is its logit x itself, so ``m = sign(ΔAP) · (x_b − x_a)`` and
``L_cls = γ · FL + c · Σ_pairs ℓ / N_pos`` with the focal loss's normaliser.
"""
from typing import List, NamedTuple

import torch
import torch.nn.functional as F
from detectron2.structures import Instances

from .reward import match_sets

UPDATES = ("weighted_ce", "pairwise")  # values of MODEL.PG.UPDATE


class OrderPairs(NamedTuple):
    """The P pairs of a batch whose order decides AP (see the module docstring).

    above_slot / below_slot: [P] long, the slots (sampled RoIs, indexed over the batch) of the
        box ranked above in D (s, or the false positive u) and of the one below (b, or v);
    above_class / below_class: [P] long, the class whose log-odds ranks each box;
    delta_ap: [P] float, AP after exchanging their order minus AP of D (signed);
    suppression: [P] bool, True for a pair (i) (candidate and its suppressor), False for (ii).
    """

    above_slot: torch.Tensor
    above_class: torch.Tensor
    below_slot: torch.Tensor
    below_class: torch.Tensor
    delta_ap: torch.Tensor
    suppression: torch.Tensor

    @staticmethod
    def cat(pairs: List["OrderPairs"], device) -> "OrderPairs":
        if not pairs:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return OrderPairs(empty, empty, empty, empty, empty.float(), empty.bool())
        return OrderPairs(*(torch.cat(field) for field in zip(*pairs)))


@torch.no_grad()
def misordered_pairs(bases: List[Instances], gts: List[Instances], iou_thresholds,
                     max_dets: int, max_pairs: int) -> List[torch.Tensor]:
    """Per image [P_i, 2] long indices into D: (u, v), u a false positive ranked above a true
    positive v of its class, by COCOeval's matching at the lowest threshold (pairs (ii)).

    bases: each image's D (pred_boxes, scores, pred_classes), in descending score order as
    detectron2's inference returns it; gts: each image's ground truth. "Above" is COCOeval's
    order: a higher score, or an equal one loaded earlier. One matching call for the batch.
    """
    device = bases[0].scores.device if bases else torch.device("cpu")
    sizes = [len(b) for b in bases]
    n_max, g_max = max(sizes, default=0), max((len(g) for g in gts), default=0)
    if n_max == 0 or g_max == 0:
        return [torch.zeros((0, 2), dtype=torch.long, device=device) for _ in bases]
    num = len(bases)
    boxes = torch.zeros((num, n_max, 4), device=device)
    scores = torch.zeros((num, n_max), device=device)
    classes = torch.full((num, n_max), -1, dtype=torch.long, device=device)
    valid = torch.zeros((num, 1, n_max), dtype=torch.bool, device=device)
    gt_boxes = torch.zeros((num, g_max, 4), device=device)
    gt_classes = torch.full((num, g_max), -1, dtype=torch.long, device=device)
    gt_valid = torch.zeros((num, g_max), dtype=torch.bool, device=device)
    for i, (base, gt) in enumerate(zip(bases, gts)):
        n, g = len(base), len(gt)
        boxes[i, :n] = base.pred_boxes.tensor
        scores[i, :n] = base.scores
        classes[i, :n] = base.pred_classes
        valid[i, 0, :n] = True
        gt_boxes[i, :g] = gt.gt_boxes.tensor.to(device)
        gt_classes[i, :g] = gt.gt_classes.to(device)
        gt_valid[i, :g] = True
    lowest = (min(float(t) for t in iou_thresholds),)
    matches = match_sets(boxes, scores, classes, valid, gt_boxes, gt_classes, gt_valid, lowest,
                         max_dets)
    # back from class-major positions to D's order
    tp = torch.zeros((num, n_max), dtype=torch.bool, device=device).scatter_(
        1, matches.order, matches.tp[:, 0, 0])
    active = torch.zeros_like(tp).scatter_(1, matches.order, matches.active[:, 0])
    index = torch.arange(n_max, device=device)
    above = (scores[:, :, None] > scores[:, None, :]) | (
        (scores[:, :, None] == scores[:, None, :]) & (index[:, None] < index[None, :]))
    pairs = (above & (classes[:, :, None] == classes[:, None, :])
             & (active & ~tp)[:, :, None] & (active & tp)[:, None, :])  # [B, u, v]
    found = []
    for i in range(num):
        u, v = pairs[i].nonzero(as_tuple=True)  # row-major: by u's rank, then v's
        found.append(torch.stack([u, v], dim=1)[:max_pairs])
    return found


def exchange_sets(num_base: int, num_cand: int, exchanges: torch.Tensor) -> torch.Tensor:
    """[P, |D| + C + 2P] bool: row j is D with the scores of its boxes u_j and v_j exchanged.

    The pool holds, after D and the C candidates, two copies per pair (u_j's box with v_j's
    score, then v_j's box with u_j's score; see :func:`exchange_pool`): row j swaps u_j and v_j
    out of D and their copies in. exchanges: [P, 2] indices into D.
    """
    num = len(exchanges)
    rows = torch.arange(num, device=exchanges.device)
    sets = torch.zeros((num, num_base + num_cand + 2 * num), dtype=torch.bool,
                       device=exchanges.device)
    sets[:, :num_base] = True
    sets[rows, exchanges[:, 0]] = False
    sets[rows, exchanges[:, 1]] = False
    copies = num_base + num_cand + 2 * rows
    sets[rows, copies] = True
    sets[rows, copies + 1] = True
    return sets


def exchange_pool(base: Instances, exchanges: torch.Tensor):
    """The pool entries of :func:`exchange_sets`: ([2P, 4] boxes, [2P] scores, [2P] classes),
    pair j's u-copy at 2j and its v-copy at 2j + 1."""
    u, v = exchanges[:, 0], exchanges[:, 1]
    order = torch.stack([u, v], dim=1).flatten()
    scores = torch.stack([base.scores[v], base.scores[u]], dim=1).flatten()
    return base.pred_boxes.tensor[order], scores, base.pred_classes[order]


def class_log_odds(logits: torch.Tensor, slots: torch.Tensor,
                   classes: torch.Tensor) -> torch.Tensor:
    """[P] z = log p_c − log(1 − p_c) of the softmax of ``logits[slots]`` ([R, K+1] logits),
    c = ``classes``, computed stably as x_c − logsumexp over the other classes."""
    x = logits[slots]
    own = x.gather(1, classes[:, None]).squeeze(1)
    others = x.scatter(1, classes[:, None], float("-inf")).logsumexp(dim=1)
    return own - others


def order_loss(z_above: torch.Tensor, z_below: torch.Tensor,
               delta_ap: torch.Tensor) -> torch.Tensor:
    """Σ over P pairs of |ΔAP| · softplus(−sign(ΔAP) · (z_below − z_above)), unnormalised.

    z_above, z_below: [P] the log-odds of the box ranked above in D and of the one below;
    delta_ap: [P] the change of AP from exchanging their order."""
    delta = delta_ap.to(z_above.dtype)
    return (delta.abs() * F.softplus(-torch.sign(delta) * (z_below - z_above))).sum()


def pairwise_order_loss(logits: torch.Tensor, pairs: OrderPairs) -> torch.Tensor:
    """:func:`order_loss` of a two-stage batch, on the class log-odds of the softmax.

    logits: [R, K+1] the box predictor's class logits of the batch's sampled RoIs.
    """
    return order_loss(class_log_odds(logits, pairs.above_slot, pairs.above_class),
                      class_log_odds(logits, pairs.below_slot, pairs.below_class),
                      pairs.delta_ap)


def dense_pairwise_order_loss(log_probs: torch.Tensor, pairs: OrderPairs) -> torch.Tensor:
    """:func:`order_loss` of a one-stage batch, on the (anchor, class) logits.

    log_probs: [N, R, K] log σ(x) of the class logits; a slot indexes them flattened (image,
    anchor, class), so the pairs' classes are already in their slots. Each slot is its own
    Bernoulli, whose log-odds is the logit itself: z = log p − log(1 − p) = x, computed from
    log p (log(1 − p) = log(−expm1(log p)), stable for p → 1; log p is capped just below 0
    so that a slot at p = 1 in float32 keeps a finite z).
    """
    flat = log_probs.flatten()

    def log_odds(slots):
        log_p = flat[slots].clamp(max=-1e-30)
        return log_p - torch.log(-torch.expm1(log_p))

    return order_loss(log_odds(pairs.above_slot), log_odds(pairs.below_slot), pairs.delta_ap)


def log_pair_stats(storage, pairs: OrderPairs):
    """``pg/order_pairs``: pairs of the batch whose exchange changes AP (ΔAP ≠ 0), and
    ``pg/order_pair_abs_delta_ap``: their mean |ΔAP|."""
    moving = pairs.delta_ap != 0
    storage.put_scalar("pg/order_pairs", float(moving.sum()))
    if moving.any():
        storage.put_scalar("pg/order_pair_abs_delta_ap",
                           pairs.delta_ap[moving].abs().mean().item())
