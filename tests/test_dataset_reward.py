"""MODEL.PG.REWARD_SCOPE dataset against its oracle: pycocotools' COCOeval run on the memory's
images and the batch's together (ids in the order they entered, the scored image last).

Before this reward existed every set was scored by its image's AP alone; each test below also
checks that the image-scope number differs from the dataset one, so it tells the two apart.
"""
import contextlib
import io

import numpy as np
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from test_pg_estimators import _pg_cfg
from test_pg_loss import IMAGE_SIZE, NUM_CLASSES, _image
from test_pg_retinanet import _batch, _models
from test_reward import _xywh, padded_image_sets, random_case

from pgdet.modeling.pg.dataset_reward import _answering_tps, dataset_ap
from pgdet.modeling.pg.pg_options import log_pg_stats
from pgdet.modeling.pg.pg_output_layers import PGFastRCNNOutputLayers
from pgdet.modeling.pg.policy_gradient import PGSettings, compute_advantages
from pgdet.modeling.pg.reward import COCO_IOU_THRESHOLDS, image_ap, match_sets
from pgdet.modeling.pg.reward_memory import RewardMemory

TOLERANCE = 1e-9


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def coco_dataset_ap(images):
    """COCOeval's stats[0] of several images evaluated together (area "all", maxDets 100: the
    mean of ``precision`` over the classes with GT, as summarize reads it); 0 without GT.
    images: (gt_boxes, gt_classes, det_boxes, det_scores, det_classes), ids in list order."""
    gts, dts = [], []
    for image_id, (gt_boxes, gt_classes, boxes, scores, classes) in enumerate(images, 1):
        for b, c in zip(gt_boxes, gt_classes):
            gts.append({"id": len(gts) + 1, "image_id": image_id, "category_id": int(c) + 1,
                        "bbox": _xywh(b), "area": _xywh(b)[2] * _xywh(b)[3], "iscrowd": 0})
        for b, s, c in zip(boxes, scores, classes):
            dts.append({"id": len(dts) + 1, "image_id": image_id, "category_id": int(c) + 1,
                        "bbox": _xywh(b), "area": _xywh(b)[2] * _xywh(b)[3], "iscrowd": 0,
                        "score": float(s)})

    def coco(annotations):
        data = COCO()
        data.dataset = {"images": [{"id": i + 1} for i in range(len(images))],
                        "categories": [{"id": c} for c in range(1, 12)],
                        "annotations": annotations}
        data.createIndex()
        return data

    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco(gts), coco(dts), "bbox")
        evaluator.params.areaRng = [[0, 1e5 ** 2]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.params.maxDets = [100]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, 0]
    return float(np.mean(precision[precision > -1])) if (precision > -1).any() else 0.0


def _padded(cases):
    """image_ap's / match_sets' arguments for several random_case images."""
    return padded_image_sets(cases) + (COCO_IOU_THRESHOLDS, 100)


def _score(cases, memory):
    """(dataset AP [B, S] float64 with `memory`, then updated; image AP [B, S])."""
    args = _padded(cases)
    return dataset_ap(match_sets(*args), args[5], args[6], memory), image_ap(*args).double()


def _as_image(case, s):
    """The detections of set s of a case, for the oracle."""
    m = case["membership"][s]
    return (case["gt_boxes"], case["gt_classes"], case["det_boxes"][m], case["det_scores"][m],
            case["det_classes"][m])


def test_answering_tp_is_cocoevals_searchsorted():
    """k_r = the least k >= 1 with k / npig >= r in float64, as COCOeval's
    np.searchsorted(tp / npig, recThrs, 'left') finds it (numpy oracle, every npig to 3000)."""
    npig = torch.arange(0, 3001)
    got = _answering_tps(npig).numpy()
    points = np.linspace(0.0, 1.0, 101)
    for n in range(1, 3001):
        recall = np.arange(1, n + 1) / n  # recall after the k-th TP, k = 1..n
        expected = np.searchsorted(recall, points, side="left") + 1
        assert (got[n] == expected).all(), n
    assert (got[0] > 1 << 30).all()  # a class without GT is never answered


def test_dataset_ap_is_cocoeval_on_memory_and_batch():
    """(a) Each set of each batch image, scored against the memory (the last N images that
    entered, N from 0 to 6, some evicted) and the batch's other images at their set 0 (D),
    equals COCOeval on all of them. Random images: 1-5 classes each, so classes are absent
    from some images and present in others, detections of classes without GT, tied scores,
    > 100 detections of a class; 2-3 batches per memory, 1-3 images each."""
    rng = np.random.default_rng(5)
    compared = differs = 0
    for _ in range(8):
        memory = RewardMemory(int(rng.integers(0, 7)))
        history = []
        for _ in range(int(rng.integers(2, 4))):
            cases = [random_case(rng) for _ in range(int(rng.integers(1, 4)))]
            got, per_image = _score(cases, memory)
            held = history[max(0, len(history) - memory.num_images):] if memory.num_images else []
            for b, case in enumerate(cases):
                others = [_as_image(c, 0) for o, c in enumerate(cases) if o != b]
                for s in range(len(case["membership"])):
                    expected = coco_dataset_ap(held + others + [_as_image(case, s)])
                    assert abs(got[b, s].item() - expected) <= TOLERANCE, (b, s)
                    compared += 1
                    differs += abs(per_image[b, s].item() - expected) > 1e-3
            history += [_as_image(c, 0) for c in cases]
            assert len(memory) == min(len(history), memory.num_images)
    assert compared >= 60 and differs >= compared // 2, (compared, differs)


def test_one_detection_changes_the_dataset_ap_as_cocoeval_says():
    """(b) Deleting a detection of D or adding one: the change of the dataset AP equals the
    difference of COCOeval's numbers (memory of 3 images, a second batch image at D)."""
    rng = np.random.default_rng(11)
    checked = differs = 0
    for _ in range(6):
        memory = RewardMemory(3)
        past = [random_case(rng) for _ in range(3)]
        _score(past, memory)
        case, other = random_case(rng), random_case(rng)
        n = len(case["det_scores"])
        if n < 4:
            continue
        base = rng.random(n) < 0.5
        changed = list(rng.choice(n, size=min(n, 8), replace=False))
        sets = [base]
        for d in changed:  # D without d, or D with d
            row = base.copy()
            row[d] = not row[d]
            sets.append(row)
        case["membership"] = np.stack(sets)
        got, per_image = _score([case, other], memory)
        context = [_as_image(c, 0) for c in past] + [_as_image(other, 0)]
        at_d = coco_dataset_ap(context + [_as_image(case, 0)])
        for s in range(1, len(sets)):
            expected = coco_dataset_ap(context + [_as_image(case, s)]) - at_d
            assert abs((got[0, s] - got[0, 0]).item() - expected) <= TOLERANCE, s
            checked += 1
            differs += abs((per_image[0, s] - per_image[0, 0]).item() - expected) > 1e-4
    assert checked >= 30 and differs >= checked // 3, (checked, differs)


# ---- through the estimators: the detection of a class absent from its image ----
OBJECT_A = torch.tensor([[20.0, 20.0, 80.0, 90.0]])  # class 1, the memory's image
OBJECT_B = torch.tensor([[100.0, 40.0, 170.0, 100.0]])  # class 0, the scored image
NOTHING = torch.tensor([[20.0, 120.0, 80.0, 180.0]])  # no object in the scored image


def _two_stage_image(rois, labels, probs, gt_boxes, gt_classes):
    """One image's inputs to compute_advantages: boxes decode to the RoIs themselves."""
    props = Instances(IMAGE_SIZE, proposal_boxes=Boxes(rois), gt_classes=torch.tensor(labels))
    gt = Instances(IMAGE_SIZE, gt_boxes=Boxes(gt_boxes), gt_classes=torch.tensor(gt_classes))
    return torch.tensor(probs), rois.repeat(1, NUM_CLASSES), props, gt


def _absent_class_advantages(scope):
    """The memory holds image A (its class-1 object found at 0.6); the scored image B holds a
    class-0 object found at 0.8 and, on its background, a class-1 box at 0.9: a class absent
    from B. Returns the PGAdvantages of B (swap, KEPT_BOX_CREDIT) and the memory."""
    settings = PGSettings(reward_estimator="swap", kept_box_credit=True, reward_scope=scope)
    memory = RewardMemory(10)
    for image in (
        _two_stage_image(OBJECT_A, [1], [[0.01, 0.6, 0.01, 0.38]], OBJECT_A, [1]),
        _two_stage_image(torch.cat([OBJECT_B, NOTHING]), [0, NUM_CLASSES],
                         [[0.8, 0.01, 0.01, 0.18], [0.03, 0.9, 0.03, 0.04]], OBJECT_B, [0]),
    ):
        probs, boxes, props, gt = image
        pg = compute_advantages([probs], [boxes], [props], [gt], settings, torch.Generator(),
                                reward_memory=memory)
    return pg, memory


def test_absent_class_detection_gets_a_credit_only_with_the_dataset_reward():
    """(c) KEPT_BOX_CREDIT of B's class-1 box. Image AP: B's AP has class 0 only, so the credit
    is exactly 0. Dataset AP (A and B): class 1 ranks B's false positive above A's true
    positive, precision 1/2 (AP 0.5) instead of 1, so keeping it costs (1 + 0.5) / 2 - 1 =
    -0.25, as COCOeval says; its RoI's label is background, so the credit enters with sign -1:
    +0.25 on the RoI's cross-entropy, which pushes the box down."""
    image_pg, _ = _absent_class_advantages("image")
    dataset_pg, memory = _absent_class_advantages("dataset")
    assert image_pg.advantages[1].item() == 0.0
    a_at_d = (OBJECT_A.numpy(), [1], OBJECT_A.numpy(), [0.6], [1])
    b_boxes = torch.cat([OBJECT_B, NOTHING]).numpy()
    with_box = coco_dataset_ap([a_at_d, (OBJECT_B.numpy(), [0], b_boxes, [0.8, 0.9], [0, 1])])
    without = coco_dataset_ap([a_at_d, (OBJECT_B.numpy(), [0], b_boxes[:1], [0.8], [0])])
    assert with_box - without == pytest.approx(-0.25)
    assert dataset_pg.advantages[1].item() == pytest.approx(-(with_box - without), abs=1e-6)
    assert dataset_pg.baseline_reward.item() == pytest.approx(with_box, abs=1e-6)
    assert len(memory) == 2
    assert dataset_pg.absent_class_mask.tolist() == [False, True]


def test_absent_class_share_is_logged():
    """pg/absent_class_advantage_frac: both RoIs of B have a nonzero credit under the dataset
    reward, one of them for an absent class (1/2); under the image reward only the class-0
    box's credit is nonzero (0)."""
    for scope, share in (("image", 0.0), ("dataset", 0.5)):
        pg, _ = _absent_class_advantages(scope)
        with EventStorage() as storage:
            log_pg_stats(storage, pg, pg.advantages + 1.0, 0.0)
            assert storage.latest()["pg/absent_class_advantage_frac"][0] == share, scope


def test_box_predictor_keeps_its_memory_out_of_checkpoints():
    """The two-stage predictor scores against images of earlier iterations, and its
    state_dict is the image reward's (checkpoints stay interchangeable)."""
    cfg = _pg_cfg(0)
    cfg.MODEL.PG.REWARD_SCOPE = "dataset"
    cfg.MODEL.PG.REWARD_MEMORY_IMAGES = 3
    predictor = PGFastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
    images = [_image(4, 30, 61), _image(0, 20, 62)]
    rois = sum(len(p) for p in images)
    with EventStorage():
        for _ in range(2):
            predictor.losses((torch.randn(rois, NUM_CLASSES + 1),
                              torch.zeros(rois, NUM_CLASSES * 4)), images)
    assert len(predictor.pg_reward_memory) == 3
    cfg.MODEL.PG.REWARD_SCOPE = "image"
    assert predictor.state_dict().keys() == PGFastRCNNOutputLayers(
        cfg, ShapeSpec(channels=8)).state_dict().keys()


def test_retinanet_trains_with_the_dataset_reward():
    """The dense path: two training steps of the demo RetinaNet (a batch with an unannotated
    image) with swap + KEPT_BOX_CREDIT and the dataset reward: finite losses, the memory filled
    with both steps' images, the absent-class share logged."""
    _, model = _models("MODEL.PG.REWARD_ESTIMATOR", "swap", "MODEL.PG.KEPT_BOX_CREDIT", "True",
                       "MODEL.PG.REWARD_SCOPE", "dataset")
    model.train()
    with EventStorage() as storage:
        for _ in range(2):
            losses = model(_batch())
            assert torch.isfinite(sum(losses.values())), losses
            storage.step()
        assert len(storage.history("pg/absent_class_advantage_frac").values()) == 2
    assert len(model.pg_reward_memory) == 4
