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
  highest IoU >= t (ties: the later GT). Usually no detection reaches two GTs even at the lowest
  threshold; then the first active detection eligible for a GT takes it, which is one masked
  minimum over all sets, thresholds and GTs. Otherwise the walk is replayed by *match events*:
  GTs are grouped into the connected components of "one detection reaches both" (groups never
  interact), and in one step every group, set, threshold and image lets its next detection that
  still has an eligible free GT take its preferred one. Each step matches a GT per group, so the
  Python loop runs (GTs in the largest group) times, usually 2 to 4, never once per detection.
* **Accumulation without a loop.** For the k-th true positive of a class, precision is
  k / (detections so far + eps) as in COCOeval; its suffix maximum over the class is the precision
  envelope, and the recall points r with (k-1)/npig < r <= k/npig (r = 0 joins k = 1) read it.
  AP = sum over true positives of (their recall points) * envelope / 101, averaged over the IoU
  thresholds and the classes that have GT.

Host-device synchronisations: one per call when no detection reaches two GTs, two otherwise
(group sizes), whatever the numbers of boxes, sets and images.
"""
import functools

import numpy as np
import torch

__all__ = ["COCO_IOU_THRESHOLDS", "image_ap"]

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
    returns     [B, S] float32 on the inputs' device: AP of each set; 0 for an image with no valid GT
    """
    B, S, N = membership.shape
    G = gt_classes.shape[1]
    device = det_scores.device
    if N == 0 or G == 0 or S == 0:
        return torch.zeros((B, S), dtype=torch.float32, device=device)
    thresholds, lowest = _thresholds(iou_thresholds, device)

    # Class-major order, by descending score within a class; both sorts stable as COCOeval's.
    order = torch.sort(det_scores, dim=1, descending=True, stable=True).indices
    order = order.gather(1, torch.sort(det_classes.gather(1, order), dim=1, stable=True).indices)
    classes = det_classes.gather(1, order)  # [B, N]
    boxes = det_boxes.gather(1, order[:, :, None].expand(B, N, 4))
    member = membership.gather(2, order[:, None].expand(B, S, N))
    class_start = torch.searchsorted(classes, classes)  # [B, N] where each one's class begins
    rank = _segment_cumsum(member.int(), class_start[:, None])  # [B, S, N] 1-based, within class
    active = member & (rank <= max_dets) if N > max_dets else member  # COCOeval's maxDets cap

    same_class = (classes[:, :, None] == gt_classes[:, None]) & gt_valid[:, None]  # [B, N, G]
    iou = _pycocotools_iou(boxes, gt_boxes) * same_class  # float64; 0 across classes
    best_iou, best_gt = iou.topk(min(G, 2), dim=2)  # [B, N, 1 or 2]
    if G > 1 and bool((best_iou[:, :, 1] >= lowest).any()):  # host sync: a box reaches two GTs?
        tp = _match_in_groups(iou, best_iou[:, :, 0], best_gt[:, :, 0], active, thresholds, lowest)
    else:
        tp = _match_single_reach(best_iou[:, :, 0], best_gt[:, :, 0], active, thresholds, G)
    return _average_precision(tp, rank, class_start, same_class, gt_classes, gt_valid)


def _thresholds(iou_thresholds, device):
    """COCOeval's effective thresholds min(t, 1 - 1e-10) as float64 [T], and the lowest one."""
    if torch.is_tensor(iou_thresholds):
        thresholds = iou_thresholds.to(device, torch.float64).clamp(max=_MAX_THRESHOLD)
        return thresholds, thresholds.min()
    values = tuple(min(float(t), _MAX_THRESHOLD) for t in iou_thresholds)
    if min(values) <= 0:
        raise ValueError(f"IoU thresholds must be positive, got {iou_thresholds}")
    return _constant(values, device), min(values)


@functools.lru_cache(maxsize=32)
def _constant(values, device):
    """A float64 tensor of ``values`` on ``device``, built once (no copy per call)."""
    return torch.tensor(values, dtype=torch.float64, device=device)


@functools.lru_cache(maxsize=32)
def _recall_weights(num_gt, device):
    """[P + 1, P + 1] float64, P >= num_gt: entry (npig, k) counts COCOeval's recall points r that
    the k-th true positive of a class with npig GTs answers, (k-1)/npig < r <= k/npig (k = 1 also
    takes r = 0). Computed with numpy's float64 division and searchsorted, as COCOeval does.

    P is rounded up to a power of two so that few tables are ever built.
    """
    size = 1 << max(num_gt, 1).bit_length()
    k = np.arange(size + 1)
    npig = np.maximum(k, 1)[:, None]
    upto = np.searchsorted(_RECALL_POINTS, k / npig, side="right")
    below = np.where(k > 1, np.searchsorted(_RECALL_POINTS, (k - 1) / npig, side="right"), 0)
    weights = (upto - below) * (k[:, None] > 0)  # row npig = 0 (no TP) reads nothing
    return torch.tensor(weights, dtype=torch.float64, device=device)


def _pycocotools_iou(boxes, gt_boxes):
    """IoU [B, N, G] float64 with pycocotools' ``bbIou`` operations: no +1, union = (a + b) - i.

    boxes [B, N, 4], gt_boxes [B, G, 4] XYXY. No overlap gives 0, as in bbIou.
    """
    d_min, d_max = boxes.double()[:, :, None].split(2, -1)  # [B, N, 1, 2] each
    g_min, g_max = gt_boxes.double()[:, None].split(2, -1)  # [B, 1, G, 2] each
    inter = (torch.minimum(d_max, g_max) - torch.maximum(d_min, g_min)).clamp(min=0).prod(-1)
    union = ((d_max - d_min).prod(-1) + (g_max - g_min).prod(-1)) - inter
    return inter / union.clamp(min=np.finfo(np.float64).tiny)


def _segment_cumsum(x, starts):
    """Inclusive cumulative sum of ``x`` [..., N] restarted where each run begins (``starts``)."""
    total = x.cumsum(-1)
    return total - (total - x).gather(-1, starts.expand(x.shape))


def _match_single_reach(best_iou, best_gt, active, thresholds, num_gt):
    """Greedy matching when no detection reaches two GTs; true positives [B, S, T, N].

    The first active detection eligible for a GT takes it; later ones find it taken.
    best_iou [B, N] float64 and best_gt [B, N]: each detection's only reachable GT,
    active [B, S, N] bool, thresholds [T] float64.
    """
    B, S, N = active.shape
    T = thresholds.numel()
    candidate = (best_iou[:, None] >= thresholds[:, None])[:, None] & active[:, :, None]
    # N - position of candidates (0 elsewhere), in int32: masks multiply faster than torch.where,
    # and CPU reductions over int64 are not vectorised.
    countdown = candidate * torch.arange(N, 0, -1, dtype=torch.int32, device=active.device)
    first = N - countdown.new_zeros((B, S, T, num_gt)).scatter_reduce_(
        3, best_gt[:, None, None].expand(B, S, T, N), countdown, "amax")
    tp = candidate.new_zeros((B, S, T, N + 1))
    return tp.scatter_(3, first.long(), True)[..., :N]


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


def _match_in_groups(iou, best_iou, best_gt, active, thresholds, lowest):
    """COCOeval's greedy matching replayed by match events; true positives [B, S, T, N].

    iou [B, N, G] float64 (0 across classes), best_iou / best_gt [B, N] each detection's
    highest IoU and its GT, active [B, S, N] bool, thresholds [T] float64 (lowest: their min).
    """
    B, N, G = iou.shape
    S, T = active.shape[1], thresholds.numel()
    device = iou.device
    group = _gt_groups(iou >= lowest)  # [B, G]
    relevant = best_iou >= lowest
    det_group = group.gather(1, best_gt)  # [B, N]; meaningful where relevant
    seen = (torch.nn.functional.one_hot(det_group, G) * relevant[:, :, None]).cumsum(1)
    local = seen.gather(2, det_group[:, :, None]).squeeze(2) - 1  # rank within the group
    gts_per_group = torch.nn.functional.one_hot(group, G).sum(1)
    M, steps = torch.stack([seen[:, -1].max(), gts_per_group.max()]).tolist()  # host sync

    # dets[b, g, m]: pool index of the m-th detection of g's group (N: none, also in column M).
    table = torch.full((B, (G + 1) * M), N, device=device)  # row G: discarded
    table.scatter_(1, torch.where(relevant, det_group * M + local, G * M),
                   torch.arange(N, device=device).expand(B, N))
    dets = table.view(B, G + 1, M).gather(1, group[:, :, None].expand(B, G, M))
    dets = torch.cat([dets, dets.new_full((B, G, 1), N)], 2)  # [B, G, M + 1]
    index = dets.clamp(max=N - 1)
    local_iou = torch.where(dets < N, iou.transpose(1, 2).gather(2, index), -1.0)
    eligible = local_iou[:, None] >= thresholds[:, None, None]  # [B, T, G, M + 1]
    local_active = active.gather(2, index.view(B, 1, -1).expand(B, S, -1))
    candidate = eligible[:, None] & local_active.view(B, S, 1, G, M + 1)  # [B, S, T, G, M + 1]
    # A detection prefers the free GT of highest IoU, the later GT on ties: preference 1..G.
    preference = torch.zeros(iou.shape, dtype=torch.int64, device=device).scatter_(
        2, torch.sort(iou, dim=2, stable=True).indices,
        torch.arange(1, G + 1, device=device).expand(B, N, G))
    key = torch.where(eligible, preference.transpose(1, 2).gather(2, index)[:, None], -1).int()

    shape = (B, S, T, G)
    group = group[:, None, None].expand(shape)
    key = key[:, None].expand(shape + (M + 1,))
    # int32 positions and keys (CPU reductions over int64 are not vectorised); M - position of
    # candidates, 0 elsewhere, as masks multiply faster than torch.where selects
    position = torch.arange(M + 1, dtype=torch.int32, device=device)
    countdown = M - position
    taken = torch.zeros(shape, dtype=torch.bool, device=device)
    matched_at = torch.full(shape, M, device=device)
    no_event = torch.full(shape, M, dtype=torch.int32, device=device)
    no_key = torch.zeros(shape, dtype=torch.int32, device=device)
    for _ in range(steps):
        # the next detection of each group that has an eligible free GT ...
        reachable = (M - (candidate * countdown).amax(-1)).masked_fill_(taken, M)
        event = no_event.scatter_reduce(3, group, reachable, "amin").gather(3, group)
        candidate &= position > event[..., None]
        event = event.long()
        # ... takes the free one it prefers (preferences of one detection are distinct)
        wish = key.gather(4, event[..., None]).squeeze(4).masked_fill_(taken, -1)
        won = wish == no_key.scatter_reduce(3, group, wish, "amax").gather(3, group)
        taken |= won
        matched_at = torch.where(won, event, matched_at)
    winner = dets[:, None, None].expand(shape + (M + 1,)).gather(4, matched_at[..., None])
    tp = torch.zeros((B, S, T, N + 1), dtype=torch.bool, device=device)
    return tp.scatter_(3, winner.view(shape), True)[..., :N]


def _average_precision(tp, rank, class_start, same_class, gt_classes, gt_valid):
    """COCOeval's accumulate, then the mean over thresholds and classes with GT; [B, S] float32.

    tp [B, S, T, N] bool and rank [B, S, N] (detections of the class so far) in class-major
    order, class_start [B, N], same_class [B, N, G] bool, gt_classes [B, G], gt_valid [B, G].
    """
    B, S, T, N = tp.shape
    G = gt_classes.shape[1]
    k = _segment_cumsum(tp.int(), class_start[:, None, None])  # true positives of the class so far
    # Precision at every position; a false positive never beats the true positive before it, so
    # the suffix maximum over all positions is COCOeval's envelope at the true positives.
    precision = k / (rank.double() + _EPS)[:, :, None]
    shift = 2.0 * class_start.double()[:, None, None]  # later classes sink below earlier ones
    envelope = (precision - shift).flip(-1).cummax(-1).values.flip(-1) + shift
    weights = _recall_weights(G, tp.device)  # row 0 is zero: positions that are not TPs read none
    npig = same_class.sum(2)[:, None, None]  # [B, 1, 1, N] GTs of the detection's class
    reads = weights.take(tp * (npig * weights.shape[1]) + k)  # recall points each TP answers
    ap_sum = (reads * envelope).sum((2, 3))  # [B, S]

    gt_same = (gt_classes[:, :, None] == gt_classes[:, None]) & gt_valid[:, None]
    first_of_class = gt_same.int().argmax(2) == torch.arange(G, device=tp.device)
    num_classes = (gt_valid & first_of_class).sum(1, keepdim=True)  # [B, 1]
    return (ap_sum / (num_classes * (T * len(_RECALL_POINTS))).clamp(min=1)).float()
