#!/usr/bin/env python
"""Soak test: does a long policy-gradient run leak memory?

Starts ``train_net.py`` on the demo config with PG on (from scratch: a leak does not need a good
model) for --iterations iterations, samples the resident memory of its whole process tree (the
trainer and its data-loader workers) every --interval seconds next to the iteration it has
reached, and prints the table and the growth after warm-up: (RSS at the end − RSS when
--warmup iterations were done) ÷ RSS at warm-up. Target: at most 5 %.

    .venv/bin/python benchmarks/bench_soak.py                   # 2000 iterations
    .venv/bin/python benchmarks/bench_soak.py --iterations 300  # quicker look
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and all its descendants, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
        stack.extend(children.get(p, []))
    return total


def last_iteration(output_dir: str) -> int:
    try:
        with open(os.path.join(output_dir, "metrics.json")) as f:
            lines = f.read().splitlines()
        return json.loads(lines[-1])["iteration"] if lines else -1
    except (OSError, ValueError, KeyError):
        return -1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--interval", type=float, default=20.0, help="seconds between samples")
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="pgdet_soak_")
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file",
           os.path.join(REPO, "pgdet", "configs", "demo", "frcnn_MobileNetV2_FPN_demo.yaml"),
           "MODEL.PG.ENABLED", "True", "SOLVER.MAX_ITER", str(args.iterations),
           "DATASETS.TEST", "()", "OUTPUT_DIR", out]
    print("$", " ".join(cmd), flush=True)
    with open(os.path.join(out, "stdout.txt"), "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    samples = []  # (seconds, iteration, rss bytes)
    start = time.time()
    print("| elapsed s | iteration | RSS MiB |\n|---|---|---|", flush=True)
    while proc.poll() is None:
        time.sleep(args.interval)
        sample = (time.time() - start, last_iteration(out), tree_rss_bytes(proc.pid))
        if sample[2]:
            samples.append(sample)
            print(f"| {sample[0]:.0f} | {sample[1]} | {sample[2] / 2**20:.0f} |", flush=True)
    if proc.returncode != 0:
        sys.exit(f"training failed (exit {proc.returncode}); see {out}/stdout.txt")
    after_warmup = [s for s in samples if s[1] >= args.warmup]
    if len(after_warmup) < 2:
        sys.exit("too few samples after warm-up: lower --interval or raise --iterations")
    first, last = after_warmup[0], after_warmup[-1]
    peak = max(s[2] for s in after_warmup)
    print(f"\nRSS after warm-up (iteration {first[1]}): {first[2] / 2**20:.0f} MiB; "
          f"at iteration {last[1]}: {last[2] / 2**20:.0f} MiB; peak {peak / 2**20:.0f} MiB")
    print(f"growth after warm-up: {100 * (last[2] - first[2]) / first[2]:+.2f} % "
          f"(peak {100 * (peak - first[2]) / first[2]:+.2f} %; target <= 5 %)")


if __name__ == "__main__":
    main()
