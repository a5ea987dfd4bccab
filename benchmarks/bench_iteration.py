#!/usr/bin/env python
"""What does the policy gradient cost in a training iteration? (issue: "no computational overhead")
And, beside it, Rank & Sort loss (``--methods pg rs``)?

Time: in one process, on one model and one fixed list of batches, full training iterations
(forward, loss, backward, SGD step) alternate between the method on and off (PG: the flag of the
same box predictor, or of PGRetinaNet; RS: the flag plus the ROI heads' sampler, sampling-free or detectron2's), so
both see the same weights' regime, the same data and the same machine load. Prints the median of
the per-pair ratios method / standard with its spread (interquartile range), and the share of
the PG iteration spent computing rewards and advantages (``pg/reward_time``; "—" for RS).

Memory: peak resident memory of two fresh processes running the same iterations, one with the
method and one without (on CUDA: peak allocated memory). Prints the ratio.

    .venv/bin/python benchmarks/bench_iteration.py                       # all configs, PG
    .venv/bin/python benchmarks/bench_iteration.py --configs demo --pairs 20
    .venv/bin/python benchmarks/bench_iteration.py --configs retinanet_demo retinanet_bccd
    .venv/bin/python benchmarks/bench_iteration.py --configs demo bccd \
        --pg-opts MODEL.PG.REWARD_ESTIMATOR swap MODEL.PG.KEPT_BOX_CREDIT True
    .venv/bin/python benchmarks/bench_iteration.py --configs bccd --methods pg rs

``--pg-opts`` sets the PG options (estimator, credits, ...) that the PG iterations use, and
``--rs-opts`` the MODEL.RS_LOSS.* options of the RS iterations; the standard iterations ignore
them.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import pgdet  # noqa: F401
from pgdet.data import CheckedDatasetMapper, register_datasets_from_cfg, register_demo_datasets
from pgdet.engine import build_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DATA = ["MODEL.ROI_HEADS.NUM_CLASSES", "4", "DATASETS.TRAIN", "('pgdet_demo_train',)"]
# name: (config, overrides); the batches come from the config's first DATASETS.TRAIN
CONFIGS = {
    "demo": ("pgdet/configs/demo/frcnn_MobileNetV2_FPN_demo.yaml", DEMO_DATA),
    # BCCD: ~14 overlapping cells per image, the crowded case for the reward's cost
    "bccd": ("pgdet/configs/bccd/frcnn_MobileNetV2_FPN_bccd.yaml", []),
    # the paper's R-101 detectors, at a CPU-sized input, on demo images (4 classes); random
    # weights (no ImageNet download here) need trainable BN, or frozen identity BN diverges
    "R101": ("pgdet/configs/frcnn_R101.yaml", DEMO_DATA + [
        "INPUT.MIN_SIZE_TRAIN", "(320,)", "INPUT.MAX_SIZE_TRAIN", "320", "MODEL.RESNETS.NORM", "BN"]),
    "R101_FPN": ("pgdet/configs/frcnn_R101_FPN.yaml", DEMO_DATA + [
        "INPUT.MIN_SIZE_TRAIN", "(320,)", "INPUT.MAX_SIZE_TRAIN", "320", "MODEL.RESNETS.NORM", "BN"]),
    # one-stage: PGRetinaNet, the PG term over the positive anchors (pgdet/modeling/pg/
    # dense_policy_gradient.py)
    "retinanet_demo": ("pgdet/configs/demo/retinanet_MobileNetV2_FPN_demo.yaml",
                       ["DATASETS.TRAIN", "('pgdet_demo_train',)"]),
    "retinanet_bccd": ("pgdet/configs/bccd/retinanet_MobileNetV2_FPN_bccd.yaml", []),
}
COMMON = ["MODEL.DEVICE", "cuda" if torch.cuda.is_available() else "cpu",
          "SOLVER.IMS_PER_BATCH", "2"]
# the model each method is measured on; its flag is switched per iteration by `switch`
METHOD_OPTS = {"pg": [], "rs": ["MODEL.ROI_HEADS.NAME", "RSROIHeads", "MODEL.RS_LOSS.ENABLED",
                                "True"]}


def switch(model, cfg, method: str, on: bool):
    """Turn `method` on or off in a model built with it on: PG is the predictor's flag; RS is
    the predictor's flag and the ROI heads' sampler (all proposals, or the config's batch)."""
    if method == "pg":
        if hasattr(model, "pg"):  # PGRetinaNet
            model.pg = model.pg._replace(enabled=on)
        else:
            model.roi_heads.box_predictor.pg_enabled = on
        return
    heads = model.roi_heads
    heads.box_predictor.rs_enabled = on
    sampling_free = on and cfg.MODEL.RS_LOSS.SAMPLING_FREE
    heads.batch_size_per_image = sys.maxsize if sampling_free else cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
    heads.positive_fraction = 1.0 if sampling_free else cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION


def setup(name, method="pg", method_opts=(), weights=""):
    """Model, 4 batches of 2 training images and an optimizer. `weights`: a trained model of
    the config (the reward's cost depends on how many boxes survive NMS; a random head is not
    representative of a fine-tune), or "" for random heads."""
    config, opts = CONFIGS[name]
    cfg = build_cfg(os.path.join(REPO, config),
                    COMMON + opts + METHOD_OPTS[method] + list(method_opts))
    cfg.MODEL.WEIGHTS = weights
    register_demo_datasets()
    register_datasets_from_cfg(cfg)
    model = build_model(cfg)
    if weights:
        DetectionCheckpointer(model).load(weights)
    model.train()
    mapper = CheckedDatasetMapper(cfg, True)
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    torch.manual_seed(0)
    batches = [[mapper(dict(dicts[2 * i + j])) for j in range(2)] for i in range(4)]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    return model, cfg, batches, optimizer


def step(model, cfg, method, batch, optimizer, storage, on: bool) -> float:
    switch(model, cfg, method, on)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    losses = model(batch)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    sync()
    storage.step()
    return time.perf_counter() - start


def time_ratio(name, method, pairs, warmup, method_opts, weights):
    model, cfg, batches, optimizer = setup(name, method, method_opts, weights)
    ratios, t_on, t_std, reward_time = [], [], [], []
    with EventStorage() as storage:
        for i in range(warmup):
            step(model, cfg, method, batches[i % len(batches)], optimizer, storage, bool(i % 2))
        for i in range(pairs):
            batch = batches[i % len(batches)]
            # alternate which goes first, so a drift in machine load does not favour one side
            order = (True, False) if i % 2 else (False, True)
            times = {on: step(model, cfg, method, batch, optimizer, storage, on) for on in order}
            if method == "pg":
                reward_time.append(storage.latest()["pg/reward_time"][0])
            t_on.append(times[True])
            t_std.append(times[False])
            ratios.append(times[True] / times[False])
    q = statistics.quantiles(ratios, n=4)
    return {
        "config": name,
        "method": method,
        "standard_s": statistics.median(t_std),
        "method_s": statistics.median(t_on),
        "ratio_median": statistics.median(ratios),
        "ratio_iqr": (q[0], q[2]),
        "reward_share": statistics.median(r / t for r, t in zip(reward_time, t_on))
        if reward_time else None,
    }


def peak_memory_child(name, method, on, iterations, method_opts, weights):
    """Run in a fresh process: peak memory of `iterations` steps with the method on or off."""
    model, cfg, batches, optimizer = setup(name, method, method_opts, weights)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with EventStorage() as storage:
        for i in range(iterations):
            step(model, cfg, method, batches[i % len(batches)], optimizer, storage, on)
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_ratio(name, method, iterations, method_opts, weights):
    peaks = {}
    for on in (False, True):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", name, method, str(int(on)),
             str(iterations), "--weights", weights, f"--{method}-opts", *method_opts],
            check=True, capture_output=True, text=True,
        ).stdout
        peaks[on] = int(out.strip().splitlines()[-1])
    return peaks[True] / peaks[False], peaks


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--pairs", type=int, default=12, help="PG/standard iteration pairs")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--memory-iterations", type=int, default=6)
    parser.add_argument("--methods", nargs="+", default=["pg"], choices=list(METHOD_OPTS),
                        help="methods timed against the standard iterations (pg, rs)")
    parser.add_argument("--pg-opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="MODEL.PG.* overrides for the PG iterations")
    parser.add_argument("--rs-opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="MODEL.RS_LOSS.* overrides for the RS iterations")
    parser.add_argument("--weights", default="", help="trained weights of the (single) config "
                        "measured; default: random heads")
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    method_opts = {"pg": args.pg_opts, "rs": args.rs_opts}
    if args.memory_child:
        name, method, on, iterations = args.memory_child
        print(peak_memory_child(name, method, bool(int(on)), int(iterations),
                                method_opts[method], args.weights))
        return
    if args.weights and len(args.configs) != 1:
        parser.error("--weights belongs to one model: name one --configs entry")
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {device}; {args.pairs} alternating pairs after {args.warmup} warm-up steps; "
          f"PG options: {' '.join(args.pg_opts) or 'the config defaults'}; "
          f"RS options: {' '.join(args.rs_opts) or 'the config defaults'}\n")
    print("| config | method | standard s/it | method s/it | time method ÷ std (median [IQR]) "
          "| reward share of PG it | peak memory method ÷ std |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for name in args.configs:
        for method in args.methods:
            timing = time_ratio(name, method, args.pairs, args.warmup, method_opts[method],
                                args.weights)
            mem_ratio, peaks = memory_ratio(name, method, args.memory_iterations,
                                            method_opts[method], args.weights)
            timing.update(memory_ratio=mem_ratio,
                          peak_bytes={str(k): v for k, v in peaks.items()})
            results.append(timing)
            lo, hi = timing["ratio_iqr"]
            share = timing["reward_share"]
            print(f"| {name} | {method.upper()} | {timing['standard_s']:.3f} | "
                  f"{timing['method_s']:.3f} | {timing['ratio_median']:.3f} [{lo:.3f}, {hi:.3f}] | "
                  f"{'—' if share is None else f'{100 * share:.2f} %'} | {mem_ratio:.3f} |",
                  flush=True)
    print("\n" + json.dumps(results))


if __name__ == "__main__":
    main()
