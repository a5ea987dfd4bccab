"""AP_data: the dataset-level reward of ``MODEL.PG.REWARD_SCOPE dataset`` (beyond the paper).

**Why.** The paper's reward (:func:`pgdet.modeling.pg.reward.image_ap`) is each image's own COCO
AP, which COCOeval averages over the classes with ground truth (GT) *in that image*. A detection
of a class absent from its image enters none of those terms: its image's reward changes by
exactly 0, under every estimator and credit. Evaluation, though, pools each class's detections
over all images: there that detection is a false positive ranked among the class's detections of
other images, and lowers the class's AP. On COCO (about 3.5 of 80 classes per image) and on ASL
(1 of 26 per image) this blind spot covers most of the detections that can go wrong. The same
pooling is why a true positive that outranks other images' false positives is worth more than
its image's AP says.

**The reward.** COCO's AP of a set of images ("dataset AP", ``COCOeval.stats[0]`` of the images
evaluated together): for each class c and IoU threshold t, the detections of c on all images
ranked by score, each marked true positive (TP) by its own image's greedy matching, give the
101-point interpolated precision, with recall over all GTs of c; the mean over thresholds and
over the classes that have GT somewhere (a class with GT and no detection has AP 0). The dataset
is the last N training images (:class:`~pgdet.modeling.pg.reward_memory.RewardMemory`,
``MODEL.PG.REWARD_MEMORY_IMAGES``) and the current batch. Detection set a of image b scores

    r(a) = AP( memory ∪ {D_b' : b' ≠ b in the batch} ∪ {a on image b} ),

everything but image b at its baseline D, as ``swap`` holds the image's other boxes at D. So r'
is one number for the whole batch, AP(memory ∪ batch at D), and every estimator's advantage is
the change image b's set alone makes to it: a confident detection of an absent class now costs
AP (``KEPT_BOX_CREDIT``'s leave-one-out gives it a negative credit, the only estimator that
scores boxes D already holds), and a TP that outranks other images' false positives earns it.
Images without GT are scored too: their detections are the dataset's false positives.

**What the memory approximates, and its bias.** The target is the AP of the current detector on
the training set. Other images' detections are (i) a sample of N images, and (ii) made by the
parameters of up to N / (images per iteration) iterations ago. (i) makes the reward a noisy
estimate: the AP of N images, not of the dataset, and a class absent from the sample (no GT in
memory ∪ batch) is excluded as COCOeval excludes it, so its detections earn 0 again. (ii) biases
it: a new detection is ranked against stale scores, so when scores drift (they rise while the
PG fine-tunes), current detections outrank the memory's more often than they would outrank the
current detector's, which favours them (and the reverse when scores fall). N trades the two: it
must hold enough images for each class's ranking (COCO: 500 images carry about 3600 objects,
every frequent class many times), while staying recent (500 images at 16 per iteration are 31
iterations old at most, a few optimiser steps at PG's learning rates) and cheap (cost below).
The memory is updated once per iteration, after scoring, with each image's baseline D and its
matching (set 0 of :class:`~pgdet.modeling.pg.reward.SetMatches`): never with sampled or
counterfactual sets, which are not what the detector outputs.

**Magnitude.** A detection moves the dataset AP about 1/(images in memory ∪ batch) as much as it
moves its image's AP, so advantages are that much smaller than with ``image``: scale
``REWARD_SCALE`` accordingly, or normalise them (``ADVANTAGE_NORM image_max``).

**Ties.** COCOeval's mergesort keeps image order among equal scores; here the memory's images
count in the order they entered, then the batch's in batch order, and the scored image's
detections rank after every other detection of equal score. That is COCOeval exactly when the
scored image has the largest image id (memory ∪ image, the tests' oracle); otherwise it can only
differ on scores equal across images.

**Several GPUs.** Each process keeps its own memory of its own images and scores its batch
against it (no gathering: it would add an all-gather of variable-size tensors per iteration).
With P processes the dataset of a reward is N images of that process, a sample like any other.

**Computation.** Per image b, the other images' detections (the *context*: memory ∪ other batch
D, sorted once) and b's pool of boxes are merged in class-major, score-descending order, the
same for all of b's sets; a set only switches pool entries on or off and sets their TPs. For a
class c and threshold t, COCOeval answers recall point r with the envelope (suffix maximum) of
precision at the first TP whose recall reaches r: the k_r-th TP, k_r the least k >= 1 with
k / npig_c >= r in float64. Precision at a TP is (TPs so far) / (detections so far); for a
context TP both are its context counts plus the set's pool entries of the class before it, which
are the same for a whole *run* of context TPs between two pool entries. So precisions and their
suffix maxima are computed once per distinct (run, offsets), and per set only the runs and pool
entries remain (a few dozen *units*), among which one ``searchsorted`` finds each k_r-th TP;
sets that treat a class's units alike share its sum. Only classes that some set of b holds (its
*touched* classes) differ between its sets; any other class contributes its AP over memory ∪
batch at D, computed once per batch. Cost grows with the context TPs times the distinct
offsets of a run (a few for ``swap`` and leave-one-out sets) plus the sets times 101 recall
points per touched class and threshold; host syncs: a few sizes per call, not per set.
The estimators take the rewards as float32, like image_ap's: near AP 0.5 that resolves changes
of about 6e-8.
"""
from typing import NamedTuple

import numpy as np
import torch

from .reward import SetMatches
from .reward_memory import RewardMemory, ScoredDetections, sort_detections

__all__ = ["dataset_ap"]

_RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCOeval's recall thresholds
_EPS = float(np.spacing(1))  # COCOeval adds it to the denominator of precision
_K_BITS = 32  # a sort key is class << _K_BITS | (TPs so far): TP counts stay below 2**32


@torch.no_grad()
def dataset_ap(matches: SetMatches, gt_classes: torch.Tensor, gt_valid: torch.Tensor,
               memory: RewardMemory) -> torch.Tensor:
    """[B, S] float64: the dataset AP of every set of every image, then the memory updated.

    matches: the sets' per-image matching (:func:`pgdet.modeling.pg.reward.match_sets`), set 0
        of each image being its baseline D; gt_classes [B, G] int64 and gt_valid [B, G] bool: the
        batch's ground truth; memory: the recent images, which the batch's D then joins.
    """
    B, S, T, N = matches.tp.shape
    device = matches.tp.device
    batch = _baseline(matches)
    context = sort_detections(ScoredDetections(
        *(torch.cat(pair) for pair in zip(memory.detections(batch), batch))))
    batch_gt = gt_classes[gt_valid]
    all_gt = torch.cat([memory.gt_classes(device), batch_gt])
    num_classes = int(torch.cat([all_gt, context.classes, matches.classes.flatten(),
                                 all_gt.new_zeros(1)]).max()) + 1  # host sync
    npig = torch.bincount(all_gt, minlength=num_classes)  # [K] GTs of each class
    answered = _answering_tps(npig)  # [K, 101]

    held = _held_classes(matches, num_classes)  # [B, K]
    touched = _listed(held)  # [B, C], -1 padding
    per_class = _class_ap_sums(context, matches, touched, npig, answered,
                               own=torch.arange(B, device=device))  # [B, S, C]
    # the classes no set of b holds: their AP over memory ∪ batch at D, the same for all sets
    # (computed for the classes with GT that some image does not hold)
    untouched = torch.zeros(B, dtype=torch.float64, device=device)
    needed = _listed(((npig > 0) & ~held.all(0)).unsqueeze(0))  # [1, K']
    if needed.shape[1]:
        nothing = SetMatches(matches.classes[:1, :0], matches.scores[:1, :0],
                             matches.order[:1, :0], matches.active[:1, :1, :0],
                             matches.tp[:1, :1, :, :0])
        at_baseline = _class_ap_sums(context, nothing, needed, npig, answered,
                                     own=torch.full((1,), -2, device=device))[0, 0]  # [K']
        untouched = (~held[:, needed[0]] * at_baseline).sum(1)
    total = per_class.sum(2) + untouched.unsqueeze(1)
    denominator = (npig > 0).sum() * T * len(_RECALL_POINTS)
    rewards = total / denominator.clamp(min=1)

    memory.add(batch, batch_gt, torch.nonzero(gt_valid, as_tuple=True)[0], B)
    return rewards


def _baseline(matches: SetMatches) -> ScoredDetections:
    """The batch's D (set 0 of each image) with its matching, image-major, each image's
    detections in class-major order."""
    B, S, T, N = matches.tp.shape
    kept = matches.active[:, 0]  # [B, N]
    image = torch.arange(B, device=kept.device).view(B, 1).expand(B, N)
    return ScoredDetections(matches.classes[kept], matches.scores[kept],
                            matches.tp[:, 0].transpose(1, 2)[kept], image[kept])


def _answering_tps(npig: torch.Tensor) -> torch.Tensor:
    """[K, 101] int64: per class, the TP whose precision envelope answers each recall point: the
    least k >= 1 with k / npig >= r in float64 (COCOeval: ``searchsorted(tp / npig, r, 'left')``;
    r = 0 goes to the first detection, whose envelope is the first TP's). 2**32 - 1 (never
    reached) for classes without GT."""
    points = torch.tensor(_RECALL_POINTS, dtype=torch.float64, device=npig.device)
    n = npig.double().clamp(min=1).unsqueeze(1)  # [K, 1]
    k = torch.ceil(points * n)
    for _ in range(2):  # the product rounds: step to the exact least k in float64 division
        k = torch.where((k - 1) / n >= points, k - 1, k)
        k = torch.where(k / n < points, k + 1, k)
    k = k.clamp(min=1).long()
    return torch.where(npig.unsqueeze(1) > 0, k, (1 << _K_BITS) - 1)


def _held_classes(matches: SetMatches, num_classes: int) -> torch.Tensor:
    """[B, K] bool: the classes of each image's pool entries in some set (its touched classes)."""
    B = matches.active.shape[0]
    used = matches.active.any(1)  # [B, N]
    table = torch.zeros((B, num_classes + 1), dtype=torch.bool, device=used.device)
    table.scatter_(1, torch.where(used, matches.classes, num_classes), True)
    return table[:, :num_classes]


def _listed(table: torch.Tensor) -> torch.Tensor:
    """[B, C] int64: the classes marked in ``table`` [B, K], ascending, -1 padding."""
    C = int(table.sum(1).max()) if table.numel() else 0  # host sync
    ids = torch.sort((~table).int(), dim=1, stable=True).indices[:, :C]
    return torch.where(table.gather(1, ids), ids, -1)


class _Merged(NamedTuple):
    """Image b's pool merged into the context (set-independent); P = E + N positions, class-major,
    scores descending, context first among equals.

    classes [B, P]; from_pool [B, P] bool; ctx_count [B, P] and ctx_tps [B, T, P] int64: the
    context detections (not image b's own) and their TPs of the position's class up to it,
    inclusive; ctx_tp [B, T, P] bool: the position is a counted context TP; pool_upto [B, P]:
    pool entries up to it, inclusive (an index into a set's cumulative sums over the pool);
    pool_class_start [B, P]: the pool entries of earlier classes; pool_position [B, N]: where each
    (class-major) pool entry is.
    """

    classes: torch.Tensor
    from_pool: torch.Tensor
    ctx_count: torch.Tensor
    ctx_tps: torch.Tensor
    ctx_tp: torch.Tensor
    pool_upto: torch.Tensor
    pool_class_start: torch.Tensor
    pool_position: torch.Tensor


def _merge(context: ScoredDetections, matches: SetMatches, own: torch.Tensor) -> _Merged:
    """The context (without image ``own[b]``'s entries) merged with each image's pool."""
    B, S, T, N = matches.tp.shape
    E = len(context.classes)
    merged_classes = torch.cat([context.classes.expand(B, E), matches.classes], dim=1)
    scores = torch.cat([context.scores.expand(B, E), matches.scores], dim=1)
    if N:
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        order = order.gather(1, torch.sort(merged_classes.gather(1, order), dim=1,
                                           stable=True).indices)  # [B, P]
    else:  # the context alone is sorted already
        order = torch.arange(E, device=scores.device).expand(B, E)
    classes = merged_classes.gather(1, order)
    from_pool = order >= E
    if E:
        ctx_at = order.clamp(max=E - 1)
        counted = ~from_pool & (context.image.take(ctx_at) != own.view(B, 1))
        ctx_tp = counted.unsqueeze(1) & context.tp.index_select(0, ctx_at.flatten()).view(
            B, -1, T).transpose(1, 2)  # [B, T, P]
    else:
        counted = torch.zeros_like(from_pool)
        ctx_tp = counted.unsqueeze(1).expand(B, T, N)
    start = torch.searchsorted(classes, classes)  # [B, P] where each position's class begins
    pool_position = torch.nonzero(from_pool, as_tuple=True)[1].view(B, N)
    return _Merged(classes, from_pool, _segment_cumsum(counted, start),
                   _segment_cumsum(ctx_tp, start.unsqueeze(1)), ctx_tp,
                   from_pool.long().cumsum(1), torch.searchsorted(matches.classes, classes),
                   pool_position)


def _class_ap_sums(context: ScoredDetections, matches: SetMatches, classes: torch.Tensor,
                   npig: torch.Tensor, answered: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """[B, S, C] float64: Σ over thresholds and recall points of COCOeval's precision envelope,
    for each listed class of each image, over the context (without image ``own[b]``'s entries)
    merged with set s of image b. 0 for padding classes (-1) and classes without GT.

    context: E detections (``image`` -1 or a batch index); matches: the B images' pools and
    sets; classes [B, C]; npig [K]; answered [K, 101] (:func:`_answering_tps`); own [B].

    The context TPs between two consecutive pool entries of a class (a *run*) all see the same
    set-dependent offsets: α pool detections and β pool TPs of the class before them, so their
    precisions (m + β) / (n + α) and suffix maximum are computed once per distinct (run, α, β)
    (a *combo*), not once per set: sets mostly differ from D in a box or two, so a run has few
    distinct offsets. Per set and threshold only *units* remain (runs and pool entries, in
    merged order): their TP counts, their precision maxima, and the maximum over later units of
    the class. Sets whose units of a class are the same share that class's sum.
    """
    B, S, T, N = matches.tp.shape
    K = len(npig)
    merged = _merge(context, matches, own)
    listed = torch.zeros((B, K + 1), dtype=torch.bool, device=npig.device)
    listed.scatter_(1, torch.where(classes >= 0, classes, K), True)
    listed[:, K] = False  # column K: padding
    listed_at = listed.gather(1, torch.where(merged.classes >= 0, merged.classes, K))  # [B, P]
    # per set, the pool entries (class-major) so far and their TPs: [B, S, N + 1], [B, S, T, N + 1]
    active_sum = torch.nn.functional.pad(matches.active.long().cumsum(2), (1, 0))
    tp_sum = torch.nn.functional.pad(matches.tp.long().cumsum(3), (1, 0))
    runs = _runs(merged, listed_at)
    combos = _combos(runs, active_sum, tp_sum)
    units = _units(runs, merged, listed_at, T)
    values = _unit_values(units, runs, combos, merged, matches, active_sum, tp_sum)
    return _sum_by_configuration(values, units, classes, answered, combos)


class _Combos(NamedTuple):
    """The distinct (run, α, β) of a batch's sets, plus a padding combo (no TPs, maximum 0) at
    index X for the units that are no run: envelope [Y + 1] (each combo's precision suffix
    maximum, combos one after the other), offset [X + 1] (where each starts), maximum [X + 1],
    of [R + 1, S] (the combo of each run in each set; row R: padding)."""

    envelope: torch.Tensor
    offset: torch.Tensor
    maximum: torch.Tensor
    of: torch.Tensor


def _combos(runs: "_Runs", active_sum, tp_sum) -> _Combos:
    N = active_sum.shape[2] - 1
    device = active_sum.device
    # the offsets of each run in each set [R, S]
    alpha = active_sum[runs.image, :, runs.upto] - active_sum[runs.image, :, runs.start]
    beta = (tp_sum[runs.image, :, runs.threshold, runs.upto]
            - tp_sum[runs.image, :, runs.threshold, runs.start])
    base = N + 1
    combo, combo_of = torch.unique((torch.arange(len(runs.first), device=device).view(-1, 1)
                                    * base + alpha) * base + beta, return_inverse=True)
    run, combo_alpha, combo_beta = combo // (base * base), combo // base % base, combo % base
    # every combo's context TPs (index_select: CPU advanced indexing is several times slower)
    length = runs.length.index_select(0, run)
    offset = length.cumsum(0) - length
    of = torch.repeat_interleave(torch.arange(len(combo), device=device), length)
    element = (runs.first.index_select(0, run).index_select(0, of)
               + torch.arange(len(of), device=device) - offset.index_select(0, of))
    precision = ((runs.tps.index_select(0, element) + combo_beta.index_select(0, of)).double()
                 / ((runs.count.index_select(0, element)
                     + combo_alpha.index_select(0, of)).double() + _EPS))
    envelope = torch.nn.functional.pad(_segment_suffix_max(precision, of), (0, 1))
    offset = torch.nn.functional.pad(offset, (0, 1), value=len(of))
    return _Combos(envelope, offset, envelope.index_select(0, offset),
                   torch.nn.functional.pad(combo_of, (0, 0, 0, 1), value=len(combo)))


class _UnitValues(NamedTuple):
    """Per image, set, threshold and unit [B, S, T, U]: classes, is_run, combo (runs'),
    tps (the unit's TPs), tps_upto (the class's TPs up to the unit, inclusive), maximum (its
    highest precision), later (the envelope after it, < 0 past its class) and signature (what
    the set makes of the unit: its combo, or the pool entry's activity and TP)."""

    classes: torch.Tensor
    is_run: torch.Tensor
    combo: torch.Tensor
    tps: torch.Tensor
    tps_upto: torch.Tensor
    maximum: torch.Tensor
    later: torch.Tensor
    signature: torch.Tensor


def _unit_values(units: "_Units", runs: "_Runs", combos: _Combos, merged: _Merged,
                 matches: SetMatches, active_sum, tp_sum) -> _UnitValues:
    B, S, T, N = matches.tp.shape
    U = units.kind.shape[2]
    shape = (B, S, T, U)
    is_run = (units.kind == 1).unsqueeze(1).expand(shape)
    run_ref = torch.where(units.kind == 1, units.ref, len(runs.first)).unsqueeze(1).expand(shape)
    pool_ref = torch.where(units.kind == 2, units.ref, N).unsqueeze(1).expand(shape)
    combo = combos.of.take(run_ref * S + torch.arange(S, device=run_ref.device).view(1, S, 1, 1))
    pool_tps = torch.nn.functional.pad(matches.tp.long(), (0, 1)).gather(3, pool_ref)
    pool_prec = torch.nn.functional.pad(_pool_precision(merged, matches, active_sum, tp_sum),
                                        (0, 1))  # [B, S, T, N + 1]; column N: not a pool unit
    tps = torch.where(is_run, torch.nn.functional.pad(runs.length, (0, 1)).take(run_ref),
                      pool_tps)
    maximum = torch.where(is_run, combos.maximum.take(combo), pool_prec.gather(3, pool_ref))
    classes = units.classes.unsqueeze(1).expand(shape)
    class_start = torch.searchsorted(units.classes, units.classes).unsqueeze(1)
    shift = 2.0 * classes.double()
    later = torch.nn.functional.pad(
        (maximum - shift).flip(-1).cummax(-1).values.flip(-1)[..., 1:], (0, 1),
        value=-float("inf")) + shift
    pool_active = torch.nn.functional.pad(matches.active.long(), (0, 1)).unsqueeze(2).expand(
        B, S, T, N + 1).gather(3, pool_ref)
    return _UnitValues(classes, is_run, combo, tps, _segment_cumsum_counts(tps, class_start),
                       maximum, later, torch.where(is_run, combo, -1 - 2 * pool_active - pool_tps))


def _sum_by_configuration(values: _UnitValues, units: "_Units", classes: torch.Tensor,
                          answered: torch.Tensor, combos: _Combos) -> torch.Tensor:
    """[B, S, C] the AP sums, computed once per distinct (image, listed class, threshold,
    signatures of the class's units) and shared by the sets that have it."""
    B, S, T, U = values.classes.shape
    C = classes.shape[1]
    device = classes.device
    pair_image, pair_slot = torch.nonzero(classes >= 0, as_tuple=True)  # V (image, class) pairs
    V = len(pair_image)
    pair_class = classes[pair_image, pair_slot]
    in_class = units.classes.index_select(0, pair_image) == pair_class.view(V, 1, 1)  # [V, T, U]
    rows = torch.where(in_class.unsqueeze(2),
                       values.signature.index_select(0, pair_image).transpose(1, 2), -(1 << 62))
    ids = torch.stack(torch.meshgrid(torch.arange(V, device=device), torch.arange(T, device=device),
                                     indexing="ij"), -1).view(V, T, 1, 2).expand(V, T, S, 2)
    rows = torch.cat([ids, rows], dim=3).view(V * T * S, U + 2)  # (pair, threshold) first
    distinct, config = torch.unique(rows, dim=0, return_inverse=True)
    first_set = torch.full((len(distinct),), S, dtype=torch.long, device=device).scatter_reduce(
        0, config, torch.arange(S, device=device).repeat(V * T), "amin")
    pair, threshold = distinct[:, 0], distinct[:, 1]
    row = (pair_image.index_select(0, pair) * S + first_set) * T + threshold  # [Q] into B*S*T

    def rows_of(x):  # [B, S, T, U] -> [Q, U]
        return x.reshape(B * S * T, U).index_select(0, row)

    sums = _answer_recall_points(
        pair_class.index_select(0, pair), answered, rows_of(values.classes),
        rows_of(values.tps_upto), rows_of(values.tps), rows_of(values.is_run),
        rows_of(values.combo), rows_of(values.maximum), rows_of(values.later), combos)  # [Q]
    out = torch.zeros((B, C, S), dtype=torch.float64, device=device)
    out[pair_image, pair_slot] = sums.index_select(0, config).view(V, T, S).sum(1)
    return out.transpose(1, 2)


def _answer_recall_points(classes, answered, unit_classes, tps_upto, unit_tps, is_run,
                          unit_combo, unit_max, later, combos: _Combos) -> torch.Tensor:
    """[Q] float64: Σ over recall points of the precision envelope of class ``classes`` [Q] in
    each of Q (threshold, set) rows of units [Q, U] (see :class:`_UnitValues`)."""
    U = unit_classes.shape[1]
    # the k_r-th TP of the class: its unit by the key class << bits | TPs so far
    key = (unit_classes << _K_BITS) | tps_upto  # non-decreasing along U
    target = (classes.unsqueeze(1) << _K_BITS) | answered.index_select(0, classes)  # [Q, 101]
    found = torch.searchsorted(key, target).clamp(max=U - 1)
    found_key = key.gather(1, found)  # the first at or past the target, or the row's last
    hit = (found_key >= target) & ((found_key >> _K_BITS) == classes.unsqueeze(1))
    # in a run, its TP number within the run picks the combo's envelope
    within = (target & ((1 << _K_BITS) - 1)) - (tps_upto - unit_tps).gather(1, found) - 1
    in_run = combos.envelope.take((combos.offset.take(unit_combo.gather(1, found)) + within)
                                  .clamp(0, len(combos.envelope) - 1))
    own_value = torch.where(is_run.gather(1, found), in_run, unit_max.gather(1, found))
    return torch.where(hit, torch.maximum(own_value, later.gather(1, found)), 0.0).sum(1)


class _Runs(NamedTuple):
    """The counted context TPs of the listed classes, per (image, threshold), in merged order,
    grouped into runs (same class, no pool entry between). Per element: count [X] and tps [X]
    (context detections and TPs of the class up to it); per run: image, threshold, classes,
    upto (pool entries before it: the index of the run's set offsets), start (pool entries of
    earlier classes), first (its first element) and length [R]."""

    count: torch.Tensor
    tps: torch.Tensor
    image: torch.Tensor
    threshold: torch.Tensor
    classes: torch.Tensor
    upto: torch.Tensor
    start: torch.Tensor
    first: torch.Tensor
    length: torch.Tensor


def _runs(merged: _Merged, listed_at: torch.Tensor) -> _Runs:
    B, T, P = merged.ctx_tp.shape
    b, t, p = torch.nonzero(listed_at.unsqueeze(1) & merged.ctx_tp, as_tuple=True)
    at = b * P + p  # flat indices: take is much faster than advanced indexing on CPU
    classes, upto = merged.classes.take(at), merged.pool_upto.take(at)
    new = torch.ones_like(b, dtype=torch.bool)
    new[1:] = (b[1:] != b[:-1]) | (t[1:] != t[:-1]) | (classes[1:] != classes[:-1]) | (
        upto[1:] != upto[:-1])
    first = torch.nonzero(new, as_tuple=True)[0]
    length = torch.diff(first, append=first.new_full((1,), len(b)))
    return _Runs(merged.ctx_count.take(at), merged.ctx_tps.take((b * T + t) * P + p), b[first],
                 t[first], classes[first], upto[first], merged.pool_class_start.take(at[first]),
                 first, length)


class _Units(NamedTuple):
    """Per (image, threshold), the runs and the listed classes' pool entries in merged order,
    padded to U: kind [B, T, U] (0 padding, 1 run, 2 pool entry), ref (run index or class-major
    pool index) and classes (K + 1 for padding, so it sorts last)."""

    kind: torch.Tensor
    ref: torch.Tensor
    classes: torch.Tensor


def _units(runs: _Runs, merged: _Merged, listed_at: torch.Tensor, T: int) -> _Units:
    B, N = merged.pool_position.shape
    device = listed_at.device
    big = int(merged.classes.max()) + 2 if merged.classes.numel() else 1  # host sync
    pool_listed = listed_at.gather(1, merged.pool_position)  # [B, N]
    pb, pn = torch.nonzero(pool_listed, as_tuple=True)
    pool_classes = merged.classes.gather(1, merged.pool_position)[pb, pn]
    pb, pn, pool_classes = (x.repeat(T) for x in (pb, pn, pool_classes))
    pt = torch.arange(T, device=device).repeat_interleave(len(pb) // T if T else 0)
    image = torch.cat([runs.image, pb])
    threshold = torch.cat([runs.threshold, pt])
    classes = torch.cat([runs.classes, pool_classes])
    # a run after p pool entries sits between pool entries p - 1 and p: slots 2p and 2p + 1
    slot = torch.cat([2 * runs.upto, 2 * pn + 1])
    kind = torch.cat([torch.ones_like(runs.image), torch.full_like(pb, 2)])
    ref = torch.cat([torch.arange(len(runs.image), device=device), pn])
    group = image * T + threshold
    order = torch.argsort(((group * big + classes + 1) * (2 * N + 2) + slot))
    group = group[order]
    counts = torch.bincount(group, minlength=B * T)
    U = max(int(counts.max()), 1) if len(group) else 1  # host sync
    position = torch.arange(len(group), device=device) - (counts.cumsum(0) - counts)[group]
    out_kind = torch.zeros((B * T, U), dtype=torch.long, device=device)
    out_ref = torch.zeros_like(out_kind)
    out_classes = torch.full_like(out_kind, big)
    for out, value in ((out_kind, kind), (out_ref, ref), (out_classes, classes)):
        out[group, position] = value[order]
    return _Units(out_kind.view(B, T, U), out_ref.view(B, T, U), out_classes.view(B, T, U))


def _pool_precision(merged: _Merged, matches: SetMatches, active_sum, tp_sum) -> torch.Tensor:
    """[B, S, T, N] float64: each pool entry's precision in each set if it is a TP there, else 0.
    active_sum [B, S, N + 1], tp_sum [B, S, T, N + 1]: the sets' cumulative sums over the pool."""
    B, S, T, N = matches.tp.shape
    at = merged.pool_position  # [B, N]
    start = merged.pool_class_start.gather(1, at).view(B, 1, N)
    upto = merged.pool_upto.gather(1, at).view(B, 1, N)  # = n + 1, itself included
    ranked = merged.ctx_count.gather(1, at).view(B, 1, N) + (
        active_sum.gather(2, upto.expand(B, S, N)) - active_sum.gather(2, start.expand(B, S, N)))
    tps = merged.ctx_tps.gather(2, at.view(B, 1, N).expand(B, T, N)).unsqueeze(1) + (
        tp_sum.gather(3, upto.unsqueeze(2).expand(B, S, T, N))
        - tp_sum.gather(3, start.unsqueeze(2).expand(B, S, T, N)))
    return torch.where(matches.tp, tps.double() / (ranked.unsqueeze(2).double() + _EPS), 0.0)


def _segment_suffix_max(values: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """Suffix maximum of ``values`` [X] in [0, 1] within runs of equal non-decreasing
    ``segment`` [X]: later segments are shifted below every value of earlier ones."""
    shift = 2.0 * segment.double()
    return (values - shift).flip(0).cummax(0).values.flip(0) + shift


def _segment_cumsum_counts(x: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Inclusive running sum of int64 ``x`` [..., U], restarted where each run begins."""
    total = x.cumsum(-1)
    before = torch.nn.functional.pad(total, (1, 0))
    return total - before.gather(-1, starts.expand(x.shape))


def _segment_cumsum(x: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Inclusive int64 running count of bool ``x`` [..., P], restarted where each run begins."""
    total = x.long().cumsum(-1)
    before = torch.nn.functional.pad(total, (1, 0))
    return total - before.gather(-1, starts.expand(x.shape))
