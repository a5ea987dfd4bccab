"""Run training stages as ``pgdet-train`` processes and collect their COCO metrics.

The paper's protocol is two-stage (train a baseline to convergence, then fine-tune it with each
method from the same checkpoint), so a stage is a separate ``python -m pgdet.tools.train`` run
with its own OUTPUT_DIR. Each stage prints the exact command it runs, so a user can rerun any step
by hand, and a stage whose OUTPUT_DIR already holds a finished result is reused, not retrained: an
interrupted experiment continues where it stopped.

A stage runs in the caller's folder (relative paths in configs and overrides resolve from there,
as for ``pgdet-train``) with the pgdet that the caller imported, whichever is installed. Stages may
run in threads side by side (pgdet/protocol/schedule.py): each writes its lines to stdout whole.
Separate processes may share an experiment folder too (``pgdet-table1 --only`` cells run side by
side, each training its baseline if it is missing): a stage holds an exclusive lock on
``<output_dir>.lock`` while it runs, so a second process that needs the same stage waits for it
and then reuses it, instead of training it a second time into the same folder.
"""
import fcntl
import json
import math
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Dict, List, Sequence

from .trainer import EVAL_FILE

# the folder holding the pgdet package that runs this, put first on each stage's PYTHONPATH
PGDET_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
DONE_FILE = "pgdet_stage_done.json"


def final_metrics(output_dir: str) -> Dict[str, float]:
    """bbox metrics of the last evaluation of a run (written by :meth:`Trainer.test`)."""
    path = os.path.join(output_dir, EVAL_FILE)
    if not os.path.isfile(path):
        raise RuntimeError(f"No {EVAL_FILE} in {output_dir}: did the evaluation run?")
    with open(path) as f:
        return json.load(f)


_PRINT_LOCK = threading.Lock()


def say(line: str) -> None:
    """Print `line` in one piece, even while other stages' threads print theirs."""
    with _PRINT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def is_finished(output_dir: str) -> bool:
    """Whether `output_dir` holds a finished stage, which :func:`run_stage` reuses."""
    return os.path.isfile(os.path.join(output_dir, DONE_FILE))


def run_stage(
    name: str, config_file: str, output_dir: str, opts: Sequence[str] = (), num_gpus: int = 1,
    eval_only: bool = False, echo: bool = True,
) -> Dict[str, float]:
    """Train (or evaluate) one stage unless `output_dir` already holds its final metrics.

    The process's full log goes to ``<output_dir>/log_<name>.txt``; with `echo`, progress lines
    (iteration losses and the metrics table) are echoed so that a long run is visibly alive.
    Errors are echoed either way.
    """
    with _stage_lock(name, output_dir):
        done = os.path.join(output_dir, DONE_FILE)
        if is_finished(output_dir):
            with open(done) as f:
                metrics = json.load(f)
            say(f"[{name}] reusing finished run in {output_dir}: AP {metrics['AP']:.2f}")
            return metrics
        return _train_stage(name, config_file, output_dir, opts, num_gpus, eval_only, echo)


@contextmanager
def _stage_lock(name: str, output_dir: str):
    """Hold ``<output_dir>.lock`` exclusively (beside the folder, so that reusing or deleting the
    folder leaves it alone); say so when another process holds it and wait for it."""
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    with open(os.path.abspath(output_dir) + ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"[{name}] another process is running this stage in {output_dir}: waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _train_stage(name, config_file, output_dir, opts, num_gpus, eval_only, echo):
    """:func:`run_stage`'s training, the stage's lock held."""
    done = os.path.join(output_dir, DONE_FILE)
    os.makedirs(output_dir, exist_ok=True)
    cmd = [sys.executable, "-m", "pgdet.tools.train", "--config-file", config_file,
           "--num-gpus", str(num_gpus)]
    if eval_only:
        cmd.append("--eval-only")
    elif os.path.isfile(os.path.join(output_dir, "last_checkpoint")):
        cmd.append("--resume")
    cmd += ["OUTPUT_DIR", output_dir, *opts]
    say(f"[{name}] $ {shlex.join(cmd)}")
    start = time.time()
    _run_logged(cmd, os.path.join(output_dir, f"log_{name}.txt"), name, echo)
    metrics = final_metrics(output_dir)
    say(f"[{name}] finished in {time.time() - start:.0f}s: AP {metrics['AP']:.2f}")
    with open(done, "w") as f:
        json.dump(metrics, f)
    return metrics


_PROGRESS = re.compile(r"eta: (\S+)\s+iter: (\d+)\s+total_loss: (\S+)")


def _stage_env() -> Dict[str, str]:
    """The caller's environment with :data:`PGDET_ROOT` first on PYTHONPATH, so that the stage
    runs the caller's pgdet (a checkout's, or the installed one)."""
    path = os.pathsep.join(filter(None, [PGDET_ROOT, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


def _run_logged(cmd: List[str], log_path: str, name: str, echo: bool = True):
    """Run `cmd`, writing everything to `log_path`; with `echo`, also print progress to stdout:
    one line per logged iteration (iteration, total loss, ETA) and the final COCO table. Lines
    with an error are printed either way."""
    in_table = False
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=_stage_env(), bufsize=1)
        for line in proc.stdout:
            log.write(line)
            progress = _PROGRESS.search(line)
            if progress:
                if echo:
                    eta, iteration, loss = progress.groups()
                    say(f"[{name}] iter {iteration}  total_loss {loss}  eta {eta}")
            elif "Evaluation results for bbox" in line:
                in_table = True
            elif in_table and line.startswith("|"):
                if echo:
                    say(f"[{name}] {line.rstrip()}")
            elif in_table:
                in_table = False
            elif "Error" in line or "error:" in line:
                say(f"[{name}] {line.rstrip()}")
        if proc.wait() != 0:
            raise RuntimeError(f"Stage {name!r} failed (exit {proc.returncode}); see {log_path}")


def format_table(rows: Dict[str, Dict[str, float]], reference: Dict[str, float] = None) -> str:
    """A markdown table with one row per run and the COCO columns (values in %).

    A column that no run has a number for (e.g. APl on a dataset without large objects) is left
    out; with `reference`, each cell also shows its difference to that run.
    """
    keys = [k for k in METRIC_KEYS
            if any(not math.isnan(m.get(k, float("nan"))) for m in rows.values())]
    lines = ["| run | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for run, metrics in rows.items():
        cells = []
        for k in keys:
            value = metrics.get(k, float("nan"))
            delta = "" if reference is None else f" ({value - reference[k]:+.1f})"
            cells.append(f"{value:.1f}{delta}")
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
