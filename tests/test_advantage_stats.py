"""benchmarks/advantage_stats.py's measurements against hand-computed values."""

import pytest
import torch
from detectron2.structures import Boxes, Instances


@pytest.fixture(scope="module")
def stats(benchmark_script):
    return benchmark_script("advantage_stats")


def test_spearman_of_a_hand_ranked_case(stats):
    # ranks 0 1 2 3 vs 0 1 3 2: rho = 1 - 6 * 2 / (4 * 15) = 0.8
    x, y = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0, 40.0, 30.0])
    assert stats.spearman(x, y) == pytest.approx(0.8)
    assert stats.spearman(x, -y) == pytest.approx(-0.8)


def test_candidate_quality_uses_the_box_of_the_ground_truth_class(stats):
    proposals = Instances((20, 20), gt_classes=torch.tensor([1, 2]),
                          gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 10.0, 5.0]] * 2)))
    # 2 classes (background = 2): RoI 0 is class 1, whose box [0, 0, 10, 10] has IoU 50 / 100 with
    # its ground truth; its class-0 box would match exactly, and must not be the one measured
    boxes = torch.tensor([[0.0, 0.0, 10.0, 5.0, 0.0, 0.0, 10.0, 10.0],
                          [0.0, 0.0, 10.0, 5.0, 0.0, 0.0, 10.0, 5.0]])
    quality = stats.candidate_quality([boxes], [proposals])
    assert quality["iou"].tolist() == pytest.approx([0.5, 0.0])
    assert quality["fg"].tolist() == [True, False]


def test_spearman_gives_ties_their_average_rank(stats):
    # x = [0, 0, 0, 1] has average ranks [1, 1, 1, 3]; y = [4, 3, 2, 1] has ranks [3, 2, 1, 0].
    # Pearson of those ranks by hand: dx = [-.5, -.5, -.5, 1.5], dy = [1.5, .5, -.5, -1.5],
    # Σ dx dy = -3, |dx| = sqrt(3), |dy| = sqrt(5): rho = -3 / sqrt(15) = -0.7746.
    # Ties broken by position would rank x as [0, 1, 2, 3] and give rho = -1.
    x, y = torch.tensor([0.0, 0.0, 0.0, 1.0]), torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert stats.spearman(x, y) == pytest.approx(-3 / 15 ** 0.5)
    assert stats.average_ranks(torch.tensor([2.0, 1.0, 2.0])).tolist() == [1.5, 0.0, 1.5]
