"""Speed of pgdet's per-image COCO AP reward (image_ap) against pycocotools and faster-coco-eval.

Run from the repository root:  .venv/bin/python benchmarks/bench_reward.py

Each case is one image as the policy-gradient loss sees it: G ground-truth boxes of C classes,
``n`` foreground candidates (GT boxes jittered, class of their GT, score p_b), the test-time NMS
result D of those candidates plus background boxes, and k + 1 detection sets over the pool
[D; candidates]: D itself and k Bernoulli(p_b) samples of the candidates (top 100 by score).
All three implementations get the same boxes; the COCO tools get them as annotation dicts,
prepared before timing, and are restricted to what AP needs: the categories present, area range
"all" only, maxDets [100], evaluate() + accumulate(), no summarize(). Their timing includes
building the COCO objects (one ground-truth object per image, one result object per set).
Times are CPU time of the (single) benchmark thread, time.thread_time, so that other processes on a
shared machine do not inflate them; all three run single-threaded (torch.set_num_threads(1)), and
they are timed in turn, round after round, taking medians. Speed-ups are baseline time / pgdet
time on the same image.
"""
import contextlib
import io
import statistics
import time

import numpy as np
import torch
import torchvision
import pycocotools.coco as pycocotools_module
from pycocotools.cocoeval import COCOeval

from pgdet.modeling.pg.reward import COCO_IOU_THRESHOLDS, image_ap

try:
    import faster_coco_eval
except ImportError:  # reported in the output
    faster_coco_eval = None

IMAGE_W, IMAGE_H = 800, 600


def make_case(rng, num_candidates, num_gt, num_classes, k=10, crowd=1):
    """One image's pool, sets and GT (float32 boxes, XYXY).

    crowd > 1: GTs come in rows of ``crowd`` boxes of one class, each shifted by a fifth of its
    width from the previous one, so that candidates reach two GTs (image_ap's replay).
    """
    centre = rng.uniform([0, 0], [IMAGE_W, IMAGE_H], (num_gt, 2))
    size = np.exp(rng.uniform(np.log(16), np.log(300), (num_gt, 2)))
    gt_classes = rng.integers(0, num_classes, num_gt)
    lead = np.arange(num_gt) - np.arange(num_gt) % crowd
    centre[:, 0] = centre[lead, 0] + (np.arange(num_gt) - lead) * size[lead, 0] / 5
    centre[:, 1], size, gt_classes = centre[lead, 1], size[lead], gt_classes[lead]
    gt = np.concatenate([centre - size / 2, centre + size / 2], 1)
    gt = gt.clip(0, [IMAGE_W, IMAGE_H] * 2).astype(np.float32)

    owner = rng.integers(0, num_gt, num_candidates)
    wh = np.tile(gt[owner, 2:] - gt[owner, :2], 2)
    cand = (gt[owner] + rng.normal(0, 0.1, (num_candidates, 4)) * wh).astype(np.float32)
    cand[:, 2:] = np.maximum(cand[:, 2:], cand[:, :2] + 1)
    cand_classes = gt_classes[owner]
    cand_scores = rng.uniform(0.05, 0.95, num_candidates).astype(np.float32)

    num_bg = num_candidates // 2
    corner = rng.uniform(0, [IMAGE_W, IMAGE_H], (num_bg, 2))
    bg = np.concatenate([corner, corner + rng.uniform(16, 200, (num_bg, 2))], 1).astype(np.float32)
    all_boxes = torch.from_numpy(np.concatenate([cand, bg]))
    all_scores = torch.from_numpy(np.concatenate(
        [cand_scores, rng.uniform(0.05, 0.6, num_bg).astype(np.float32)]))
    all_classes = torch.from_numpy(np.concatenate(
        [cand_classes, rng.integers(0, num_classes, num_bg)]))
    keep = torchvision.ops.batched_nms(all_boxes, all_scores, all_classes, 0.5)[:100].numpy()

    boxes = np.concatenate([all_boxes.numpy()[keep], cand])
    scores = np.concatenate([all_scores.numpy()[keep], cand_scores])
    classes = np.concatenate([all_classes.numpy()[keep], cand_classes])
    membership = np.zeros((k + 1, len(boxes)), dtype=bool)
    membership[0, : len(keep)] = True
    for j in range(1, k + 1):
        drawn = np.flatnonzero(rng.random(num_candidates) < cand_scores)
        drawn = drawn[np.argsort(-cand_scores[drawn], kind="stable")[:100]]
        membership[j, len(keep) + drawn] = True
    return {"boxes": boxes, "scores": scores, "classes": classes, "membership": membership,
            "gt": gt, "gt_classes": gt_classes}


def as_tensors(cases):
    """Pad cases into image_ap's batched arguments."""
    B = len(cases)
    N = max(len(c["scores"]) for c in cases)
    G = max(len(c["gt_classes"]) for c in cases)
    S = max(len(c["membership"]) for c in cases)
    boxes, scores = torch.zeros(B, N, 4), torch.zeros(B, N)
    classes = torch.full((B, N), -1)
    membership = torch.zeros(B, S, N, dtype=torch.bool)
    gt, gt_classes = torch.zeros(B, G, 4), torch.full((B, G), -1)
    gt_valid = torch.zeros(B, G, dtype=torch.bool)
    for b, c in enumerate(cases):
        n, g, s = len(c["scores"]), len(c["gt_classes"]), len(c["membership"])
        boxes[b, :n], scores[b, :n] = torch.from_numpy(c["boxes"]), torch.from_numpy(c["scores"])
        classes[b, :n] = torch.from_numpy(c["classes"])
        membership[b, :s, :n] = torch.from_numpy(c["membership"])
        gt[b, :g], gt_classes[b, :g] = torch.from_numpy(c["gt"]), torch.from_numpy(c["gt_classes"])
        gt_valid[b, :g] = True
    return boxes, scores, classes, membership, gt, gt_classes, gt_valid, COCO_IOU_THRESHOLDS


def shares_gts(case):
    """Whether a pool detection reaches two GTs of its class at IoU >= 0.5 (image_ap's replay)."""
    boxes, gt = case["boxes"].astype(np.float64), case["gt"].astype(np.float64)
    lt = np.maximum(boxes[:, None, :2], gt[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], gt[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda b: (b[:, 2:] - b[:, :2]).prod(-1)
    iou = inter / (area(boxes)[:, None] + area(gt)[None] - inter)
    iou *= case["classes"][:, None] == case["gt_classes"][None]
    return bool(((iou >= 0.5).sum(1) >= 2).any())


def coco_inputs(case):
    """Annotation dicts for the COCO tools: GT and, per set, the results loadRes would build."""
    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    gts = [{"id": i + 1, "image_id": 1, "category_id": int(c) + 1, "bbox": xywh(b),
            "area": xywh(b)[2] * xywh(b)[3], "iscrowd": 0}
           for i, (b, c) in enumerate(zip(case["gt"], case["gt_classes"]))]
    sets = []
    for member in case["membership"]:
        idx = np.flatnonzero(member)
        sets.append([{"id": i + 1, "image_id": 1, "category_id": int(case["classes"][n]) + 1,
                      "bbox": xywh(case["boxes"][n]), "area": xywh(case["boxes"][n])[2]
                      * xywh(case["boxes"][n])[3], "iscrowd": 0,
                      "score": float(case["scores"][n])} for i, n in enumerate(idx)])
    categories = sorted({a["category_id"] for a in gts})
    return gts, sets, categories


def coco_tool_ap(module, evaluator_cls, gts, sets, categories):
    """AP of every set with one COCO tool: the work the tool needs, nothing more."""
    def coco(annotations):
        obj = module.COCO()
        obj.dataset = {"images": [{"id": 1, "width": IMAGE_W, "height": IMAGE_H}],
                       "categories": [{"id": c} for c in categories],
                       "annotations": annotations}
        obj.createIndex()
        return obj

    aps = []
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco(gts)
        for dts in sets:
            evaluator = evaluator_cls(gt, coco(dts), "bbox")
            evaluator.params.imgIds = [1]
            evaluator.params.catIds = categories
            evaluator.params.areaRng = [[0, 1e5 ** 2]]
            evaluator.params.areaRngLbl = ["all"]
            evaluator.params.maxDets = [100]
            evaluator.evaluate()
            evaluator.accumulate()
            precision = evaluator.eval["precision"][:, :, :, 0, 0]
            aps.append(float(np.mean(precision[precision > -1])))
    return np.array(aps)


def quiet_faster_eval(gt, dt, iou_type):
    return faster_coco_eval.COCOeval_faster(gt, dt, iou_type, print_function=lambda *a, **k: None)


def cpu_time(fn, calls):
    """CPU time (s) of this thread per call of fn, averaged over ``calls`` calls."""
    start = time.thread_time()
    for _ in range(calls):
        fn()
    return (time.thread_time() - start) / calls


def measure(case, rounds=5):
    """Times (s) of pgdet / pycocotools / faster-coco-eval on one image, and their disagreement.

    The three are timed in turn, round after round, so that they see the same machine; each
    time is the median over the rounds.
    """
    args = as_tensors([case])
    gts, sets, categories = coco_inputs(case)
    runs = {
        "pgdet": (lambda: image_ap(*args), 10),
        "pycoco": (lambda: coco_tool_ap(pycocotools_module, COCOeval, gts, sets, categories), 1),
    }
    if faster_coco_eval is not None:
        runs["faster"] = (
            lambda: coco_tool_ap(faster_coco_eval, quiet_faster_eval, gts, sets, categories), 3)
    results = {name: np.asarray(fn(), dtype=np.float64).reshape(-1)
               for name, (fn, _) in runs.items()}
    diff = max(np.abs(results[a] - results[b]).max() for a in results for b in results)
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (fn, calls) in runs.items():
            times[name].append(cpu_time(fn, calls))
    median = {name: statistics.median(t) for name, t in times.items()}
    return median["pgdet"], median["pycoco"], median.get("faster", float("nan")), diff


def ms(seconds):
    return f"{seconds * 1e3:8.2f}"


def main():
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, CPU; faster-coco-eval: "
          f"{faster_coco_eval.__version__ if faster_coco_eval else 'NOT INSTALLED'}")
    rng = np.random.default_rng(2018)

    print("\n== Random realistic images (k = 10: 11 sets per image) ==")
    print("   n    N   G   C shared | pgdet ms | pycoco ms | faster ms | x pycoco | x faster |"
          " max diff")
    rows = []
    for _ in range(30):
        n = int(rng.integers(64, 257))
        g = int(np.exp(rng.uniform(0, np.log(50))).round())
        c = int(rng.integers(1, min(g, 10) + 1))
        case = make_case(rng, n, g, c)
        t_pgdet, t_pycoco, t_faster, diff = measure(case)
        rows.append((t_pgdet, t_pycoco, t_faster, diff))
        shared = "  yes " if shares_gts(case) else "   no "
        print(f"{n:4d} {len(case['scores']):4d} {g:3d} {c:3d} {shared}|{ms(t_pgdet)}  |"
              f"{ms(t_pycoco)}   |{ms(t_faster)}   | {t_pycoco / t_pgdet:7.1f}  | "
              f"{t_faster / t_pgdet:7.1f}  | {diff:.1e}")
    t = np.array(rows)
    for name, col in (("pycocotools", 1), ("faster-coco-eval", 2)):
        ratio = t[:, col] / t[:, 0]
        print(f"speed-up over {name}: min {ratio.min():.1f}x, median {np.median(ratio):.1f}x, "
              f"geometric mean {np.exp(np.log(ratio).mean()):.1f}x, "
              f"total time {t[:, col].sum() / t[:, 0].sum():.1f}x")
    print(f"largest disagreement between the three: {t[:, 3].max():.2e}")
    assert t[:, 3].max() <= 1e-6, "implementations disagree"

    print("\n== Scaling (medians; x = speed-up; crowd: GTs per row of overlapping boxes) ==")
    print("      what      | pgdet ms | pycoco ms | faster ms | x pycoco | x faster")
    for label, settings in (
        ("candidates", [(n, 10, 5, 10) for n in (64, 128, 192, 256)]),
        ("GT", [(128, g, min(g, 5), 10) for g in (1, 5, 10, 25, 50)]),
        ("k", [(128, 10, 5, k) for k in (1, 5, 10, 20)]),
        ("crowd", [(128, 12, 3, 10, crowd) for crowd in (1, 2, 3, 4, 6)]),
    ):
        for n, g, c, k, *crowd in settings:
            case = make_case(np.random.default_rng(7), n, g, c, k, *crowd)
            t_pgdet, t_pycoco, t_faster, diff = measure(case)
            value = {"candidates": n, "GT": g, "k": k, "crowd": crowd and crowd[0]}[label]
            assert diff <= 1e-6, diff
            print(f"{label:>10} = {value:3d} |{ms(t_pgdet)}  |{ms(t_pycoco)}   |{ms(t_faster)}   |"
                  f" {t_pycoco / t_pgdet:7.1f}  | {t_faster / t_pgdet:7.1f}")

    print("\n== Batched: B images per image_ap call (16 more random images) ==")
    cases = [make_case(np.random.default_rng(100 + i), int(n), int(g), int(c))
             for i, (n, g, c) in enumerate(zip(rng.integers(64, 257, 16),
                                                rng.integers(1, 51, 16), rng.integers(1, 11, 16)))]
    singles = [as_tensors([c]) for c in cases]
    single = sum(cpu_time(lambda: image_ap(*args), 20) for args in singles) / len(cases)
    print(f"B =  1: {ms(single)} ms per image")
    for B in (2, 16):
        args = as_tensors(cases[:B])
        per_call = cpu_time(lambda: image_ap(*args), 20)
        print(f"B = {B:2d}: {ms(per_call)} ms per call, {ms(per_call / B)} ms per image")


if __name__ == "__main__":
    main()
