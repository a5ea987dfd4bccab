"""Rank & Sort (RS) loss (Oksuz, Cam, Akbas, Kalkan, ICCV 2021), written from the paper's
definitions.

Every score is a sigmoid logit s; P is the set of positives, each with a localisation quality
y_i in [0, 1] (its IoU), N the negatives. For a positive i and any j, x_ij = s_j − s_i and H is
the paper's smoothed step: 0 below −δ, x/(2δ) + 1/2 on [−δ, δ], 1 above δ (δ = 0: the step).

- rank(i) = rank⁺(i) + N_FP(i), with rank⁺(i) = Σ_{j∈P} H(x_ij) and N_FP(i) = Σ_{j∈N} H(x_ij);
- ranking error ℓ_R(i) = N_FP(i) / rank(i) (1 − precision at i), target 0;
- sorting error ℓ_S(i) = Σ_{j∈P} H(x_ij)(1 − y_j) / rank⁺(i) (the mean localisation error of the
  positives ranked at or above i), target ℓ*_S(i) = the same mean over those with y_j ≥ y_i only
  (what it would be if the positives above i were sorted by quality);
- L_RS = (1/|P|) Σ_{i∈P} [ℓ_R(i) + ℓ_S(i) − ℓ*_S(i)].

i itself is one of the terms of rank(i) and rank⁺(i), as the paper's sums Σ_{j∈P} H(x_ij) say:
H(x_ii) = H(0), which is 1/2 with the smoothed step (δ > 0) and 1 with the hard one (δ = 0), as
in the authors' implementation (the relation of a positive with itself is 0/(2δ) + 0.5). With
hard steps the mean ranking error is exactly 1 − AP; with δ > 0 each positive counts half in its
own rank, which weighs the errors of the best-ranked positives more than a rank would.

The loss is not differentiated: its gradient is the paper's error-driven *identity update*. Each
error is spread over the examples that cause it as primary terms L_ij = (ℓ(i) − ℓ*(i)) p(j|i):
the ranking error over the negatives above i, p_R(j|i) = H(x_ij) / N_FP(i), and the sorting
error over the positives above i with lower quality, p_S(j|i) = H(x_ij)[y_j < y_i] / Σ_k
H(x_ik)[y_k < y_i]. Then ∂L/∂s_i = (1/|P|)(Σ_j L_ji − Σ_j L_ij):

    negative j:  (1/|P|) Σ_{i∈P} ℓ_R(i) p_R(j|i)
    positive i:  (1/|P|) [−ℓ_R(i) − (ℓ_S(i) − ℓ*_S(i)) + Σ_{k∈P} (ℓ_S(k) − ℓ*_S(k)) p_S(i|k)]

(an error whose pmf is empty is 0, so every error is spread in full: the gradients sum to 0).
Both terms are [P, N] and [P, P] matrices; negatives below every positive by more than δ have
H = 0 for all of them and are left out, which changes nothing but the memory.
"""
from typing import Tuple

import torch

TINY = 1e-12  # guards 0 / 0 where the numerator is 0 as well (an empty pmf carries no error)


def smoothed_step(x: torch.Tensor, delta: float) -> torch.Tensor:
    """H(x): 0 for x < −δ, x/(2δ) + 1/2 on [−δ, δ], 1 for x > δ; δ = 0: 1 for x >= 0, else 0."""
    if delta == 0:
        return (x >= 0).to(x.dtype)
    return (x / (2 * delta) + 0.5).clamp(0.0, 1.0)


def rank_sort_errors(pos_logits: torch.Tensor, quality: torch.Tensor, neg_logits: torch.Tensor,
                     delta: float):
    """The per-positive errors and the identity-update gradients of the two terms.

    Args:
        pos_logits: [P] logits of the positives; quality: [P] their y_i;
        neg_logits: [N] logits of the negatives.
    Returns:
        ranking [P] ℓ_R(i); sorting [P] ℓ_S(i) − ℓ*_S(i); and, *not* divided by |P|, the
        gradients of Σ_i ℓ_R(i) w.r.t. (positives [P], negatives [N]) and of Σ_i (ℓ_S − ℓ*_S)(i)
        w.r.t. the positives [P] (the sorting term does not touch negatives).
    """
    h_neg = smoothed_step(neg_logits[None, :] - pos_logits[:, None], delta)  # [P, N]: H(x_ij)
    h_pos = smoothed_step(pos_logits[None, :] - pos_logits[:, None], delta)  # [P, P], H(0) diagonal
    num_fp = h_neg.sum(1)
    rank_pos = h_pos.sum(1)
    ranking = num_fp / (rank_pos + num_fp)

    loc_error = 1.0 - quality  # [P]
    at_least_as_good = quality[None, :] >= quality[:, None]  # [P, P]: y_j >= y_i
    target = h_pos * at_least_as_good
    sorting = h_pos @ loc_error / rank_pos - target @ loc_error / target.sum(1)

    missorted = h_pos * ~at_least_as_good  # [P, P]: j ranked above i with y_j < y_i
    rank_grad_neg = (ranking / num_fp.clamp_min(TINY)) @ h_neg  # Σ_i ℓ_R(i) p_R(j|i)
    sort_grad_pos = -sorting + (sorting / missorted.sum(1).clamp_min(TINY)) @ missorted
    return ranking, sorting, (-ranking, rank_grad_neg), sort_grad_pos


class RankSortLoss(torch.autograd.Function):
    """(ranking, sorting) = the means over positives of ℓ_R and ℓ_S − ℓ*_S, whose sum is L_RS;
    backward returns the identity update (module docstring), not autograd of the forward."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, positive: torch.Tensor, quality: torch.Tensor,
                delta: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            logits: [M] sigmoid logits of every (example, class) pair ranked together.
            positive: [M] bool, the positives.
            quality: [M] y of each positive in [0, 1] (read only where `positive`).
            delta: δ of the smoothed step (the paper: 0.5).
        Returns:
            two scalars, mean ranking error and mean sorting error (0 without positives).
        """
        logits = logits.detach()
        rank_grad = torch.zeros_like(logits)
        sort_grad = torch.zeros_like(logits)
        num_pos = int(positive.sum())
        if num_pos == 0:
            ctx.save_for_backward(rank_grad, sort_grad)
            zero = logits.new_zeros(())
            return zero, zero.clone()
        pos_logits = logits[positive]
        # negatives more than δ below every positive have H = 0 for all of them
        relevant = ~positive & (logits >= pos_logits.min() - delta)
        ranking, sorting, (rank_pos, rank_neg), sort_pos = rank_sort_errors(
            pos_logits, quality.detach()[positive].to(logits.dtype), logits[relevant], delta)
        rank_grad[positive] = rank_pos / num_pos
        rank_grad[relevant] = rank_neg / num_pos
        sort_grad[positive] = sort_pos / num_pos
        ctx.save_for_backward(rank_grad, sort_grad)
        return ranking.mean(), sorting.mean()

    @staticmethod
    def backward(ctx, grad_ranking, grad_sorting):
        rank_grad, sort_grad = ctx.saved_tensors
        return grad_ranking * rank_grad + grad_sorting * sort_grad, None, None, None


def rank_sort_loss(logits: torch.Tensor, positive: torch.Tensor, quality: torch.Tensor,
                   delta: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """:class:`RankSortLoss` on any shape: logits, positive, quality of the same shape (e.g.
    [R, K], one column per class, all ranked together as the paper does)."""
    return RankSortLoss.apply(logits.reshape(-1), positive.reshape(-1), quality.reshape(-1),
                              delta)
