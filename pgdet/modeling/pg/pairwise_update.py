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

(iii) *memory opponents* (``PAIRWISE_MEMORY_OPPONENTS`` > 0, with ``REWARD_SCOPE dataset``):
     a box of D and a detection of its class in the reward memory (past training images,
     :mod:`pgdet.modeling.pg.reward_memory`) whose order is wrong at the lowest threshold: a
     false positive of D above a memory true positive, or a true positive of D below a memory
     false positive. Pairs (i) and (ii) are within an image, so a detection of a class absent
     from its image (always a false positive, and its image's AP never sees it) is in none;
     here it meets the true positives of its class that it outranks in other images, which is
     how it lowers the dataset AP. The memory's detection cannot move (its logits are gone), so
     the counterfactual is the one the box alone can reach: the box moved just past its
     opponent (to the opponent's score, where the memory ranks first among equals, or the next
     float above it), ΔAP = AP(D with the box moved) − AP(D), exact under the dataset reward.
     Per box up to ``PAIRWISE_MEMORY_OPPONENTS`` opponents, spread from the nearest to the
     farthest (moving past the farthest is leaving the class's ranking where it matters), at
     most ``PAIRWISE_MAX_PAIRS`` per image, those of the highest-ranked boxes first.

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

``MODEL.PG.PAIRWISE_MARGIN background`` takes ``z = x_c − x_K`` (K the background) instead: the
test-time score's log-odds lowers a wrong class c by lifting every other class of the RoI
(∂z/∂x_j = −p_j / (1 − p_c)), this margin by lifting background alone
(:func:`background_log_odds`).

The classification loss of the batch is then

    L_cls = (γ · Σ_b CE(x_b, l_b) + c · Σ_pairs ℓ) / R,

R the sampled RoIs of the batch, as detectron2 normalises its CE (γ = MODEL.PG.GAMMA,
c = MODEL.PG.REWARD_SCALE): a pair moves its two logits by about c·|ΔAP| / R, the size by which
the weighted CE moves one RoI by its advantage.

A memory opponent has no logit: its log-odds is the box's own, detached, plus the gap of their
test-time scores' log-odds, so the margin is that gap and the gradient moves the box alone.

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
PAIRWISE_MARGINS = ("log_odds", "background")  # values of MODEL.PG.PAIRWISE_MARGIN


class OrderPairs(NamedTuple):
    """The P pairs of a batch whose order decides AP (see the module docstring).

    above_slot / below_slot: [P] long, the slots (sampled RoIs, indexed over the batch) of the
        box ranked above in D (s, or the false positive u) and of the one below (b, or v);
    above_class / below_class: [P] long, the class whose log-odds ranks each box;
    delta_ap: [P] float, AP after exchanging their order minus AP of D (signed);
    suppression: [P] bool, True for a pair (i) (candidate and its suppressor), False otherwise;
    opponent_gap: [P] float, for a pair (iii) logit(opponent's score) − logit(box's score),
        the memory side's slot being -1 (its class the box's); 0 for pairs (i) and (ii);
    absent_class: [P] bool, a pair (iii) whose box is of a class absent from its image (pairs
        (i) and (ii) hold boxes of present classes only).
    """

    above_slot: torch.Tensor
    above_class: torch.Tensor
    below_slot: torch.Tensor
    below_class: torch.Tensor
    delta_ap: torch.Tensor
    suppression: torch.Tensor
    opponent_gap: torch.Tensor
    absent_class: torch.Tensor

    @staticmethod
    def cat(pairs: List["OrderPairs"], device) -> "OrderPairs":
        if not pairs:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return OrderPairs(empty, empty, empty, empty, empty.float(), empty.bool(),
                              empty.float(), empty.bool())
        return OrderPairs(*(torch.cat(field) for field in zip(*pairs)))


class BaseMatching(NamedTuple):
    """Each image's D after COCOeval's greedy matching at the lowest IoU threshold, padded to
    the batch's largest D: scores [B, n], classes [B, n] (-1 padding), tp [B, n] bool (a true
    positive), active [B, n] bool (a box within the reward's per-class cap)."""

    scores: torch.Tensor
    classes: torch.Tensor
    tp: torch.Tensor
    active: torch.Tensor


@torch.no_grad()
def base_matching(bases: List[Instances], gts: List[Instances], iou_thresholds,
                  max_dets: int) -> BaseMatching:
    """:class:`BaseMatching` of the batch, in one matching call.

    bases: each image's D (pred_boxes, scores, pred_classes), in descending score order as
    detectron2's inference returns it; gts: each image's ground truth.
    """
    device = bases[0].scores.device if bases else torch.device("cpu")
    num = len(bases)
    n_max = max((len(b) for b in bases), default=0)
    g_max = max((len(g) for g in gts), default=0)
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
    if n_max == 0:
        none = torch.zeros((num, 0), dtype=torch.bool, device=device)
        return BaseMatching(scores, classes, none, none)
    lowest = (min(float(t) for t in iou_thresholds),)
    matches = match_sets(boxes, scores, classes, valid, gt_boxes, gt_classes, gt_valid, lowest,
                         max_dets)
    # back from class-major positions to D's order (without GT nothing is a true positive)
    tp = torch.zeros((num, n_max), dtype=torch.bool, device=device).scatter_(
        1, matches.order, matches.tp[:, 0, 0])
    active = torch.zeros_like(tp).scatter_(1, matches.order, matches.active[:, 0])
    return BaseMatching(scores, classes, tp, active)


@torch.no_grad()
def misordered_pairs(matching: BaseMatching, max_pairs: int) -> List[torch.Tensor]:
    """Per image [P_i, 2] long indices into D: (u, v), u a false positive ranked above a true
    positive v of its class in the batch's :class:`BaseMatching` (pairs (ii)).

    "Above" is COCOeval's order: a higher score, or an equal one loaded earlier.
    """
    scores, classes, tp, active = matching
    num, n_max = scores.shape
    index = torch.arange(n_max, device=scores.device)
    above = (scores[:, :, None] > scores[:, None, :]) | (
        (scores[:, :, None] == scores[:, None, :]) & (index[:, None] < index[None, :]))
    pairs = (above & (classes[:, :, None] == classes[:, None, :])
             & (active & ~tp)[:, :, None] & (active & tp)[:, None, :])  # [B, u, v]
    found = []
    for i in range(num):
        u, v = pairs[i].nonzero(as_tuple=True)  # row-major: by u's rank, then v's
        found.append(torch.stack([u, v], dim=1)[:max_pairs])
    return found


class MemoryPairs(NamedTuple):
    """One image's pairs (iii): a box of D and a detection of the reward memory, its fixed
    opponent (see the module docstring). Q pairs:

    box [Q] long: the index into D; demoted [Q] bool: True where the box is a false positive
    above a true positive of the memory (the counterfactual moves it just below), False where
    it is a true positive below a false positive of the memory (moved just above);
    moved_score [Q]: the box's score in that counterfactual; opponent_score [Q]: the memory
    detection's score.
    """

    box: torch.Tensor
    demoted: torch.Tensor
    moved_score: torch.Tensor
    opponent_score: torch.Tensor

    @staticmethod
    def none(device, dtype=torch.float32) -> "MemoryPairs":
        index = torch.zeros(0, dtype=torch.long, device=device)
        score = torch.zeros(0, dtype=dtype, device=device)
        return MemoryPairs(index, index.bool(), score, score)


def _spread_opponents(first: torch.Tensor, count: torch.Tensor, step: int, per_box: int):
    """(box, position) of up to ``per_box`` opponents per box, from the nearest (``first``) to
    the farthest (``first + step · (count − 1)``), evenly spread over those between."""
    k = torch.arange(per_box, device=first.device)
    spread = torch.round(k * (count - 1).clamp(min=0).unsqueeze(1).double()
                         / max(per_box - 1, 1)).long()  # [n, per_box], non-decreasing
    keep = (k < count.unsqueeze(1)) & torch.cat(
        [torch.ones_like(spread[:, :1], dtype=torch.bool), spread[:, 1:] != spread[:, :-1]], 1)
    box, slot = keep.nonzero(as_tuple=True)
    return box, first[box] + step * spread[box, slot]


@torch.no_grad()
def memory_pairs(matching: BaseMatching, memory_classes: torch.Tensor,
                 memory_scores: torch.Tensor, memory_tp: torch.Tensor, per_box: int,
                 max_pairs: int) -> List[MemoryPairs]:
    """Per image its :class:`MemoryPairs`: each false positive of D with up to ``per_box`` true
    positives of its class in the memory ranked below it, each true positive of D with up to
    ``per_box`` false positives of its class ranked above it, spread from the nearest to the
    farthest; at most ``max_pairs`` per image, those of D's highest-ranked boxes first.

    matching: the batch's D (:func:`base_matching`); memory_classes [M], memory_scores [M] and
    memory_tp [M] bool (at the lowest IoU threshold): the memory's detections, class-major and
    score-descending (:class:`~pgdet.modeling.pg.reward_memory.RewardMemory`'s order). Ties
    follow the dataset reward's: a memory detection ranks above a box of the image with the
    same score, so a box moved to an opponent's score ranks just below it, and one moved just
    above an opponent takes the next larger float.
    """
    scores, classes, tp, active = matching
    device = scores.device
    if per_box == 0 or not len(memory_classes) or not active.any():
        return [MemoryPairs.none(device, scores.dtype)] * len(scores)
    image, box = active.nonzero(as_tuple=True)  # row-major: by image, then by D's rank
    box_class, box_score, box_tp = classes[image, box], scores[image, box], tp[image, box]
    # (class ascending, score descending) as one ascending float64 key: class·2 + (1 − score)
    box_key = box_class.double() * 2 + (1 - box_score.double())
    found_image, found_box, found_demoted, found_opponent = [], [], [], []
    for demoted in (True, False):
        mine = box_tp != demoted  # D's false positives meet true positives, and vice versa
        theirs = memory_tp == demoted
        key = (memory_classes[theirs].double() * 2 + (1 - memory_scores[theirs].double()))
        opponent_scores = memory_scores[theirs]
        at = mine.nonzero(as_tuple=True)[0]
        if demoted:  # the opponents strictly below the box, nearest first
            first = torch.searchsorted(key, box_key[at], right=True)
            count = torch.searchsorted(key, box_class[at].double() * 2 + 1, right=True) - first
            step = 1
        else:  # the opponents at or above the box, nearest first
            first = torch.searchsorted(key, box_key[at], right=True) - 1
            count = first + 1 - torch.searchsorted(key, box_class[at].double() * 2)
            step = -1
        which, position = _spread_opponents(first, count, step, per_box)
        found_image.append(image[at[which]])
        found_box.append(box[at[which]])
        found_demoted.append(torch.full_like(which, demoted, dtype=torch.bool))
        found_opponent.append(opponent_scores[position])
    image, box, demoted, opponent = (torch.cat(x) for x in (
        found_image, found_box, found_demoted, found_opponent))
    order = torch.argsort(image * (scores.shape[1] + 1) + box, stable=True)
    image, box, demoted, opponent = image[order], box[order], demoted[order], opponent[order]
    moved = torch.where(demoted, opponent, torch.nextafter(opponent, torch.full_like(
        opponent, float("inf"))))
    pairs = []
    for i in range(len(scores)):
        mine = image == i
        pairs.append(MemoryPairs(box[mine][:max_pairs], demoted[mine][:max_pairs],
                                 moved[mine][:max_pairs], opponent[mine][:max_pairs]))
    return pairs


def rescored_sets(num_base: int, first_copy: int, pool: int,
                  replaced: torch.Tensor) -> torch.Tensor:
    """[Q, pool] bool: row q is D with its boxes ``replaced[q]`` taken out and their rescored
    copies put in, the pool's entries ``first_copy + k·q + j`` for j < k (:func:`rescored_pool`).

    replaced: [Q, k] indices into D. Exchanging a pair (ii) rescores its two boxes (k = 2, each
    with the other's score); moving a box past a memory opponent rescores one (k = 1).
    """
    num, width = replaced.shape
    device = replaced.device
    rows = torch.arange(num, device=device)[:, None]
    sets = torch.zeros((num, pool), dtype=torch.bool, device=device)
    sets[:, :num_base] = True
    sets[rows, replaced] = False
    sets[rows, first_copy + width * rows + torch.arange(width, device=device)] = True
    return sets


def rescored_pool(base: Instances, replaced: torch.Tensor, scores: torch.Tensor):
    """The pool entries of :func:`rescored_sets`: D's boxes ``replaced`` [Q, k] with the new
    ``scores`` [Q, k], row-major: ([Q·k, 4] boxes, [Q·k] scores, [Q·k] classes)."""
    flat = replaced.flatten()
    return base.pred_boxes.tensor[flat], scores.flatten().to(base.scores), base.pred_classes[flat]


def exchanged_scores(base: Instances, exchanges: torch.Tensor) -> torch.Tensor:
    """[P, 2] the scores the pairs (ii) ``exchanges`` [P, 2] = (u, v) give their boxes when
    exchanged: u takes v's score and v takes u's."""
    return base.scores[exchanges.flip(1)]


def class_log_odds(logits: torch.Tensor, slots: torch.Tensor,
                   classes: torch.Tensor) -> torch.Tensor:
    """[P] z = log p_c − log(1 − p_c) of the softmax of ``logits[slots]`` ([R, K+1] logits),
    c = ``classes``, computed stably as x_c − logsumexp over the other classes."""
    x = logits[slots]
    own = x.gather(1, classes[:, None]).squeeze(1)
    others = x.scatter(1, classes[:, None], float("-inf")).logsumexp(dim=1)
    return own - others


def background_log_odds(logits: torch.Tensor, slots: torch.Tensor,
                        classes: torch.Tensor) -> torch.Tensor:
    """[P] z = log p_c − log p_background = x_c − x_K of ``logits[slots]`` ([R, K+1] logits,
    background last), c = ``classes``: a RoI's class against background alone.

    Why (MODEL.PG.PAIRWISE_MARGIN background). The softmax log-odds of
    :func:`class_log_odds` has ∂z/∂x_j = −p_j / (1 − p_c) for every other class j, so a step
    down on a wrong class c lifts all the others, the RoI's other wrong classes included; on a
    dataset where one object's RoI scores many classes (ASL's letters) pushing one absent class
    down raises the next. This margin's gradient is ±1 on x_c and ∓1 on the background logit
    and 0 on every other class: it moves the class between "this class" and "no object" only.
    """
    x = logits[slots]
    return x.gather(1, classes[:, None]).squeeze(1) - x[:, -1]


def order_loss(z_above: torch.Tensor, z_below: torch.Tensor,
               delta_ap: torch.Tensor) -> torch.Tensor:
    """Σ over P pairs of |ΔAP| · softplus(−sign(ΔAP) · (z_below − z_above)), unnormalised.

    z_above, z_below: [P] the log-odds of the box ranked above in D and of the one below;
    delta_ap: [P] the change of AP from exchanging their order."""
    delta = delta_ap.to(z_above.dtype)
    return (delta.abs() * F.softplus(-torch.sign(delta) * (z_below - z_above))).sum()


def _pair_log_odds(log_odds, pairs: OrderPairs):
    """(z_above, z_below) [P] of the pairs, ``log_odds(slots, classes)`` giving a box's.

    A memory opponent (slot -1) has no logit to move: its log-odds is the box's own, detached,
    plus ``opponent_gap``, so that the margin is the two detections' gap in test-time score
    log-odds and the gradient reaches the box alone, as it would if the opponent's logit were a
    constant. (Where the test-time score is the class probability, two-stage and RetinaNet, that
    is logit(opponent's score) itself; FCOS ranks by sqrt(p · centerness), and its margin is
    measured on that scale, as D's order is.)
    """
    z_above = log_odds(pairs.above_slot.clamp(min=0), pairs.above_class)
    z_below = log_odds(pairs.below_slot.clamp(min=0), pairs.below_class)
    return (torch.where(pairs.above_slot < 0, z_below.detach() + pairs.opponent_gap, z_above),
            torch.where(pairs.below_slot < 0, z_above.detach() + pairs.opponent_gap, z_below))


def pairwise_order_loss(logits: torch.Tensor, pairs: OrderPairs,
                        margin: str = "log_odds") -> torch.Tensor:
    """:func:`order_loss` of a two-stage batch, on the class log-odds of the softmax
    (``margin`` "log_odds", :func:`class_log_odds`) or on the class against background
    ("background", :func:`background_log_odds`).

    logits: [R, K+1] the box predictor's class logits of the batch's sampled RoIs. A memory
    opponent's side is the box's own z, detached, plus the test-time score gap under either
    margin: the loss's size follows D's order, the gradient moves x_c (and x_K) of the box.
    """
    score = background_log_odds if margin == "background" else class_log_odds
    return order_loss(*_pair_log_odds(lambda slots, classes: score(logits, slots, classes),
                                      pairs), pairs.delta_ap)


def dense_pairwise_order_loss(log_probs: torch.Tensor, pairs: OrderPairs) -> torch.Tensor:
    """:func:`order_loss` of a one-stage batch, on the (anchor, class) logits.

    log_probs: [N, R, K] log σ(x) of the class logits; a slot indexes them flattened (image,
    anchor, class), so the pairs' classes are already in their slots. Each slot is its own
    Bernoulli, whose log-odds is the logit itself: z = log p − log(1 − p) = x, computed from
    log p (log(1 − p) = log(−expm1(log p)), stable for p → 1; log p is capped just below 0
    so that a slot at p = 1 in float32 keeps a finite z).
    """
    flat = log_probs.flatten()

    def log_odds(slots, classes):
        log_p = flat[slots].clamp(max=-1e-30)
        return log_p - torch.log(-torch.expm1(log_p))

    return order_loss(*_pair_log_odds(log_odds, pairs), pairs.delta_ap)


def log_pair_stats(storage, pairs: OrderPairs):
    """``pg/order_pairs``: pairs of the batch whose exchange changes AP (ΔAP ≠ 0);
    ``pg/order_pair_abs_delta_ap``: their mean |ΔAP|; ``pg/memory_pairs``: how many of them
    have a memory opponent; ``pg/absent_class_pair_frac``: the share of them that move a box of
    a class absent from its image, which only memory opponents can reach."""
    moving = pairs.delta_ap != 0
    storage.put_scalar("pg/order_pairs", float(moving.sum()))
    storage.put_scalar("pg/memory_pairs",
                       float((moving & ((pairs.above_slot < 0) | (pairs.below_slot < 0))).sum()))
    if moving.any():
        storage.put_scalar("pg/order_pair_abs_delta_ap",
                           pairs.delta_ap[moving].abs().mean().item())
        storage.put_scalar("pg/absent_class_pair_frac",
                           pairs.absent_class[moving].float().mean().item())
