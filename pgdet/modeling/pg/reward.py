"""AP_img: the COCO average precision of one image, for many detection sets at once (SPEC §2).

The policy-gradient loss rewards every sampled detection set with the AP that pycocotools'
``COCOeval`` reports as ``stats[0]`` for that image alone (bbox, area "all", maxDets 100). It
needs 11 such numbers per image and iteration, so this module reproduces COCOeval exactly but
computes all of them together, in torch, on the device of the inputs.

* **Pool + membership.** The sets of an image share boxes, so the boxes live once in a pool and
  ``membership`` says which set holds which box; IoUs with the ground truth (GT) are computed once
  per pool. The pool's order is the order in which detections would be loaded into COCO, which
  decides ties in score.
* **COCOeval's arithmetic.** Detections are ranked by score with a stable sort (COCOeval's
  mergesort) and only the ``max_dets`` best of each class and set count. IoU repeats pycocotools'
  ``bbIou`` operations in float64 (bit-identical for float32 boxes), so comparisons with the
  thresholds, and of recall with COCOeval's ``np.linspace(0, 1, 101)`` points, come out the same.
  Everything is laid out class-major (classes never interact), score-descending within a class.
* **Greedy matching.** COCOeval walks each class's detections by score; each takes the free GT of
  highest IoU >= t (ties: the later GT). A GT that no detection reaches together with another GT
  (at the lowest threshold) simply goes to the first active detection eligible for it: one
  masked maximum over all images, sets, thresholds and GTs. GTs that some detection reaches
  together form groups (connected components), and only their detections are replayed, by
  *match events*: in one step every group, set, threshold and image lets its next detection that
  still has an eligible free GT take the first free one on its preference list. Each step
  matches a GT per group, so the Python loop runs (GTs in the largest group) times — usually 2
  to 4 — and never once per detection.
* **Accumulation per true positive.** Each GT's match is a true positive (TP); sorting them by
  position lines up each class's TPs in COCO order. The k-th TP of a class has precision
  k / (detections so far + eps) as in COCOeval, the suffix maximum over the class's TPs is the
  precision envelope (a false positive never beats the TP before it), and it answers the recall
  points r with (k-1)/npig < r <= k/npig (k = 1 also r = 0). AP = sum of envelope * answered
  points / 101, averaged over IoU thresholds and the classes that have GT.

Host-device synchronisations: none with a single GT slot, one to learn whether any detection
reaches two GTs, and one more, only then, for the sizes of the replay: at most two per call,
whatever the numbers of boxes, sets and images. CPU note: small tensors make intra-op threads a
loss on a busy machine; the tests and benchmark use torch.set_num_threads(1).
"""
import functools
from typing import NamedTuple, Optional

import numpy as np
import torch

__all__ = ["COCO_IOU_THRESHOLDS", "SetMatches", "image_ap", "match_sets"]

# COCOeval's IoU thresholds as the floats it compares with (0.8999999999999999, not 0.9).
COCO_IOU_THRESHOLDS = tuple(np.linspace(0.5, 0.95, 10).tolist())
# COCOeval's 101 recall points, as np.linspace computes them (0.5700000000000001, ...).
_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
# COCOeval adds np.spacing(1) to the denominator of precision.
_EPS = float(np.spacing(1))
# COCOeval lowers a threshold of 1 to this so that a perfect overlap still matches.
_MAX_THRESHOLD = 1 - 1e-10


def image_ap(det_boxes, det_scores, det_classes, membership, gt_boxes, gt_classes, gt_valid,
             iou_thresholds, max_dets=100) -> torch.Tensor:
    """COCO AP (``COCOeval.stats[0]`` of the image alone) of every detection set of every image.

    det_boxes   [B, N, 4] float, XYXY absolute  — a *pool* of detections per image (padded)
    det_scores  [B, N] float
    det_classes [B, N] int64
    membership  [B, S, N] bool — detection n belongs to detection set s of image b (padding False)
    gt_boxes    [B, G, 4] float XYXY; gt_classes [B, G] int64; gt_valid [B, G] bool (padding False)
    iou_thresholds: sequence of floats or 1-D tensor [T] in (0, 1]; :data:`COCO_IOU_THRESHOLDS`
                gives COCOeval's exact values (a float32 tensor would round them)
    max_dets:   detections counted per class and set, best scores first (COCOeval's maxDets)
    returns     [B, S] float32 on the inputs' device: AP of each set; 0 for an image with no
                valid GT
    """
    B, S, N = membership.shape
    G = gt_classes.shape[1]
    device = det_scores.device
    if N == 0 or G == 0 or S == 0:
        return torch.zeros((B, S), dtype=torch.float32, device=device)
    thresholds, lowest = _thresholds(iou_thresholds, device)  # [T, 1] float64
    # The reward has no gradient: inference mode skips autograd's per-operation bookkeeping,
    # and the clone turns the result into an ordinary tensor for the loss.
    with torch.inference_mode():
        ap = _image_ap(det_boxes, det_scores, det_classes, membership, gt_boxes, gt_classes,
                       gt_valid, thresholds, lowest, max_dets)
    return ap.clone()


class SetMatches(NamedTuple):
    """COCOeval's per-image matching of every detection set, class-major as in :func:`image_ap`:
    what a reward over several images (:mod:`pgdet.modeling.pg.dataset_reward`) needs.

    classes [B, N] int64 ascending (padding's class, -1, first), scores within a class descending
    (ties in pool order); order [B, N]: the pool index of each position; active [B, S, N] bool:
    the position's detection is in set s and within its class's ``max_dets`` best; tp [B, S, T, N]
    bool: it matched a GT at threshold t (true positive).
    """

    classes: torch.Tensor
    scores: torch.Tensor
    order: torch.Tensor
    active: torch.Tensor
    tp: torch.Tensor


def match_sets(det_boxes, det_scores, det_classes, membership, gt_boxes, gt_classes, gt_valid,
               iou_thresholds, max_dets=100) -> SetMatches:
    """The matching behind :func:`image_ap` (same arguments), as true-positive flags per set,
    threshold and detection; images without valid GT have none."""
    B, S, N = membership.shape
    T = len(iou_thresholds)
    device = det_scores.device
    thresholds, lowest = _thresholds(iou_thresholds, device)
    with torch.inference_mode():
        match = _match(det_boxes, det_scores, det_classes, membership, gt_boxes, gt_classes,
                       gt_valid, thresholds, lowest, max_dets)
        tp = torch.zeros((B, S, T, N + 1), dtype=torch.bool, device=device)
        if match.winner is not None:  # its column G is scratch; unmatched GTs point at N
            tp.scatter_(3, match.winner[..., :gt_classes.shape[1]], True)
        found = SetMatches(match.classes, det_scores.gather(1, match.order), match.order,
                           match.active, tp[..., :N])
    return SetMatches(*(x.clone() for x in found))


class _Matching(NamedTuple):
    """_match's result: class-major ``classes`` / ``order`` [B, N], ``active`` [B, S, N],
    ``rank`` [B, S, N] float64, ``class_start`` [B, N] and ``winner`` [B, S, T, G + 1] (None
    without GT slots)."""

    classes: torch.Tensor
    order: torch.Tensor
    active: torch.Tensor
    rank: torch.Tensor
    class_start: torch.Tensor
    winner: Optional[torch.Tensor]


def _image_ap(det_boxes, det_scores, det_classes, membership, gt_boxes, gt_classes, gt_valid,
              thresholds, lowest, max_dets):
    """image_ap's computation; thresholds [T, 1] float64 with minimum ``lowest``."""
    match = _match(det_boxes, det_scores, det_classes, membership, gt_boxes, gt_classes,
                   gt_valid, thresholds, lowest, max_dets)
    G = gt_classes.shape[1]
    return _average_precision(match.winner[..., :G], match.rank, match.class_start, gt_classes,
                              gt_valid)


def _match(det_boxes, det_scores, det_classes, membership, gt_boxes, gt_classes, gt_valid,
           thresholds, lowest, max_dets) -> _Matching:
    """COCOeval's greedy matching of every set (see the module docstring)."""
    B, S, N = membership.shape
    G = gt_classes.shape[1]

    # Class-major order, by descending score within a class; both sorts stable as COCOeval's.
    order = torch.sort(det_scores, dim=1, descending=True, stable=True).indices
    classes, by_class = torch.sort(det_classes.gather(1, order), dim=1, stable=True)  # [B, N]
    order = order.gather(1, by_class)
    boxes = det_boxes.gather(1, order.unsqueeze(2).expand(B, N, 4))
    member = membership.gather(2, order.unsqueeze(1).expand(B, S, N))
    class_start = torch.searchsorted(classes, classes)  # [B, N] where each one's class begins
    rank = _segment_cumsum(member, class_start.unsqueeze(1))  # [B, S, N] float64, 1-based
    active = member & (rank <= max_dets) if N > max_dets else member  # COCOeval's maxDets cap

    if G == 0 or N == 0:
        return _Matching(classes, order, active, rank, class_start, None)
    same_class = (classes.unsqueeze(2) == gt_classes.unsqueeze(1)) & gt_valid.unsqueeze(1)
    iou = _pycocotools_iou(boxes, gt_boxes) * same_class  # [B, N, G] float64; 0 across classes
    best_iou, best_gt = iou.topk(min(G, 2), dim=2)  # [B, N, 1 or 2]
    winner = _first_candidates(best_iou[..., 0], best_gt[..., 0], active, thresholds, G)
    if G > 1 and bool((best_iou[..., 1] >= lowest).any()):  # host sync: a box reaches two GTs?
        _replay_shared_gts(winner, iou, best_iou[..., 0], best_gt[..., 0], active, thresholds,
                           lowest)
    return _Matching(classes, order, active, rank, class_start, winner)


def _thresholds(iou_thresholds, device):
    """COCOeval's effective thresholds min(t, 1 - 1e-10), float64 [T, 1], and the lowest one."""
    if torch.is_tensor(iou_thresholds):
        thresholds = iou_thresholds.to(device, torch.float64).clamp(max=_MAX_THRESHOLD)
        return thresholds.view(-1, 1), thresholds.min()
    values = tuple(min(float(t), _MAX_THRESHOLD) for t in iou_thresholds)
    if min(values) <= 0:
        raise ValueError(f"IoU thresholds must be positive, got {iou_thresholds}")
    return _constant(values, device).view(-1, 1), min(values)


@functools.lru_cache(maxsize=32)
def _constant(values, device):
    """A float64 tensor of ``values`` on ``device``, built once (no host copy per call)."""
    return torch.tensor(values, dtype=torch.float64, device=device)


@functools.lru_cache(maxsize=64)
def _arange(start, end, step, device):
    """An int32 ``torch.arange`` built once per size and device (callers never modify it)."""
    return torch.arange(start, end, step, dtype=torch.int32, device=device)


@functools.lru_cache(maxsize=32)
def _recall_weights(num_gt, device):
    """[P + 1, P + 1] float64, P >= num_gt: entry (npig, k) counts COCOeval's recall points r that
    the k-th true positive of a class with npig GTs answers, (k-1)/npig < r <= k/npig (k = 1 also
    takes r = 0); row 0 is zero. Computed with numpy's float64 division and searchsorted, as
    COCOeval compares recall with its points.

    P is rounded up to a power of two so that few tables are ever built.
    """
    size = 1 << max(num_gt, 1).bit_length()
    k = np.arange(size + 1)
    npig = np.maximum(k, 1)[:, None]
    upto = np.searchsorted(_RECALL_POINTS, k / npig, side="right")
    below = np.where(k > 1, np.searchsorted(_RECALL_POINTS, (k - 1) / npig, side="right"), 0)
    weights = (upto - below) * (k[:, None] > 0)
    return torch.tensor(weights, dtype=torch.float64, device=device)


def _pycocotools_iou(boxes, gt_boxes):
    """IoU [B, N, G] float64 with pycocotools' ``bbIou`` operations: no +1, union = (a + b) - i.

    boxes [B, N, 4], gt_boxes [B, G, 4] XYXY. No overlap gives 0, as in bbIou.
    """
    d_min, d_max = boxes.double().unsqueeze(2).split(2, -1)  # [B, N, 1, 2] each
    g_min, g_max = gt_boxes.double().unsqueeze(1).split(2, -1)  # [B, 1, G, 2] each
    inter = (torch.minimum(d_max, g_max) - torch.maximum(d_min, g_min)).clamp_(min=0).prod(-1)
    union = ((d_max - d_min).prod(-1) + (g_max - g_min).prod(-1)) - inter
    return inter / union.clamp(min=np.finfo(np.float64).tiny)


def _segment_cumsum(x, starts):
    """Inclusive float64 running count of bool ``x`` [..., N], restarted where each run begins."""
    total = x.cumsum(-1, dtype=torch.float64)
    before = torch.nn.functional.pad(total, (1, 0))  # count before each position, plus the end
    return total - before.gather(-1, starts.expand(x.shape))


def _first_candidates(best_iou, best_gt, active, thresholds, num_gt):
    """Matches of GTs that no detection shares with another GT; [B, S, T, G + 1] int64 positions.

    Such a GT goes to the first active detection eligible for it: later ones find it taken.
    best_iou [B, N] float64 and best_gt [B, N]: each detection's highest IoU and its GT,
    active [B, S, N] bool, thresholds [T, 1] float64. Entry N: the GT stays unmatched.
    """
    B, S, N = active.shape
    T = thresholds.shape[0]
    candidate = (best_iou.view(B, 1, 1, N) >= thresholds) & active.view(B, S, 1, N)
    # N - position for candidates, 0 elsewhere, in int32: masks multiply faster than torch.where
    # selects, and CPU reductions over int64 are not vectorised.
    countdown = candidate * _arange(N, 0, -1, active.device)
    first = countdown.new_zeros((B, S, T, num_gt + 1)).scatter_reduce_(
        3, best_gt.view(B, 1, 1, N).expand(B, S, T, N), countdown, "amax")
    return (N - first).long()  # column G stays N: scratch space for the replay


def _gt_groups(reach):
    """Connected components of GTs that one detection reaches together; [B, G] smallest member.

    reach [B, N, G] bool. Squaring the 0/1 reachability matrix ceil(log2(G-1)) times closes it.
    """
    G = reach.shape[2]
    link = reach.float()
    closure = (link.transpose(1, 2) @ link + torch.eye(G, device=reach.device)).clamp_(max=1)
    for _ in range(max(G - 2, 0).bit_length()):
        closure = (closure @ closure).clamp_(max=1)
    return closure.argmax(2)


def _replay_shared_gts(winner, iou, best_iou, best_gt, active, thresholds, lowest):
    """Redo, in place in ``winner`` [B, S, T, G + 1], the matches of GTs that detections share.

    COCOeval's walk is replayed by match events within each group of GTs linked by a detection
    reaching two of them: per step, each group's next detection with an eligible free GT takes
    the one it prefers. Only detections of groups of two or more GTs take part.
    iou [B, N, G] float64 (0 across classes), best_iou / best_gt [B, N], active [B, S, N] bool,
    thresholds [T, 1] float64 with minimum ``lowest``. Column G of ``winner`` is scratch.
    """
    B, N, G = iou.shape
    S, T = active.shape[1], thresholds.shape[0]
    device = iou.device
    reach = iou >= lowest
    group = _gt_groups(reach)  # [B, G]
    group_size = (group.unsqueeze(2) == torch.arange(G, device=device)).sum(1)  # per group id
    shared = group_size.gather(1, group) > 1  # [B, G]
    relevant = (best_iou >= lowest) & shared.gather(1, best_gt)  # detections of shared groups
    D, R, steps = torch.stack(
        [relevant.sum(1).max(), reach.sum(2).max(), group_size.max()]).tolist()  # host sync

    # The D first relevant detections of each image, in position order (the rest is padding).
    dets = torch.sort((~relevant).int(), dim=1, stable=True).indices[:, :D]  # [B, D]
    det_group = group.gather(1, best_gt.gather(1, dets))
    # Each detection's R best GTs, most preferred first: highest IoU, the later GT on ties.
    # Lists run along dimension R, before D, so that reductions over them are vectorised.
    det_iou = iou.gather(1, dets.unsqueeze(2).expand(B, D, G)) * relevant.gather(1, dets)[..., None]
    det_iou, choice = torch.sort(det_iou.flip(2), dim=2, descending=True, stable=True)
    choice = ((G - 1) - choice[..., :R]).transpose(1, 2).reshape(B, 1, 1, R * D)  # GT ids
    det_iou = det_iou[..., :R].transpose(1, 2).contiguous()  # [B, R, D], D innermost in memory
    eligible = det_iou.view(B, 1, 1, R, D) >= thresholds.view(T, 1, 1)
    pending = active.gather(2, dets.unsqueeze(1).expand(B, S, D)).unsqueeze(2) & eligible.any(3)
    # code > 0 ranks the list in its high bits and names the GT in its low ``bits``: the maximum
    # over free entries is the one to take.
    bits = G.bit_length()
    code = ((_arange(R, 0, -1, device).view(R, 1) << bits) + choice.view(B, 1, 1, R, D)).int()

    shape = (B, S, T, D)
    det_group = det_group.view(B, 1, 1, D).expand(shape)
    choice = choice.expand(B, S, T, R * D)
    position = dets.view(B, 1, 1, D).expand(shape)
    countdown = _arange(D, 0, -1, device)  # D - index, so that the first has the largest
    taken = torch.zeros((B, S, T, G + 1), dtype=torch.bool, device=device)  # column G: scratch
    no_event = torch.zeros((B, S, T, G), dtype=torch.int32, device=device)
    winner.masked_fill_(torch.nn.functional.pad(shared, (0, 1)).view(B, 1, 1, G + 1), N)
    for _ in range(steps):
        # the next detection of each group that has an eligible free GT ...
        free = eligible > taken.gather(3, choice).view(B, S, T, R, D)  # eligible and not taken
        wish = (free * code).amax(3)  # [B, S, T, D]: 0 if nothing is free
        ready = (wish > 0) & pending
        order = ready * countdown
        first = no_event.scatter_reduce(3, det_group, order, "amax").gather(3, det_group)
        event = (order == first) & ready  # [B, S, T, D], one per group at most
        pending &= countdown < first
        # ... takes the free one it prefers
        target = torch.where(event, wish & ((1 << bits) - 1), G).long()
        taken.scatter_(3, target, True)
        winner.scatter_(3, target, position)


def _average_precision(winner, rank, class_start, gt_classes, gt_valid):
    """COCOeval's accumulate, then the mean over thresholds and classes with GT; [B, S] float32.

    winner [B, S, T, G] int64: class-major position of the detection that matched each GT (N:
    none); rank [B, S, N] float64: detections of the class counted up to each position;
    class_start [B, N]; gt_classes [B, G]; gt_valid [B, G] bool.
    """
    B, S, T, G = winner.shape
    N = rank.shape[2]
    device = winner.device
    # TPs by position: classes contiguous, each class's k-th TP k-th, unmatched GTs last.
    position, by_position = winner.sort(-1)
    matched = position < N
    at = position.clamp(max=N - 1)
    start = class_start.view(B, 1, 1, N).expand(B, S, T, N).gather(3, at)  # [B, S, T, G]
    k = _arange(1, G + 1, 1, device) - torch.searchsorted(start, start)  # TPs of the class so far
    counted = rank.view(B, S, 1, N).expand(B, S, T, N).gather(3, at)  # = COCOeval's tp + fp
    precision = (matched * k) / (counted + _EPS)
    # Suffix maximum within each class (later classes shifted below earlier ones): the envelope.
    shift = start * 2
    envelope = (precision - shift).flip(-1).cummax(-1).values.flip(-1) + shift

    gt_same = (gt_classes.unsqueeze(2) == gt_classes.unsqueeze(1)) & gt_valid.unsqueeze(1)
    npig = gt_same.sum(2)  # [B, G] GTs of each GT's class
    weights = _recall_weights(G, device)  # row 0 is zero: unmatched entries answer nothing
    row = matched * npig.view(B, 1, 1, G).expand(B, S, T, G).gather(3, by_position)
    ap_sum = (weights.take(row * weights.shape[1] + k) * envelope).sum((2, 3))  # [B, S]
    num_classes = (gt_valid / npig.clamp(min=1)).sum(1, keepdim=True).round()  # [B, 1]
    return (ap_sum / (num_classes * (T * len(_RECALL_POINTS))).clamp(min=1)).float()
