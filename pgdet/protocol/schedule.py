"""Run the stages of a protocol up to N at a time, each as soon as the stages it needs have
finished, with one progress display for the whole protocol.

A stage is a separate training process (pgdet/engine/experiment.py's ``run_stage``): the
scheduler's threads only wait on those processes, so N threads run N processes side by side. A
fine-tune needs its baseline's final weights and a soft-NMS evaluation its run's, so each stage
names the stages it needs (``after``). Ready stages start in the order they are listed: with
N = 1 the protocol runs in exactly that order.

The display prints one line on each change (a stage started, finished, was reused or failed):
stages done / running / left, time elapsed and an estimate of the time left. The estimate
assumes each unfinished stage takes the mean time of the finished stages of its kind (baseline
training, fine-tuning, evaluation; reused stages take none), the total shared by the N jobs; it
is unknown until a stage of every kind still to run has finished.
"""
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..engine.experiment import is_finished, say


@dataclass
class Stage:
    """One process of the protocol."""

    name: str  # as in its log file (log_<name>.txt) and the progress lines
    kind: str  # what it does; stages of one kind take about the same time (for the estimate)
    output_dir: str  # a finished stage there is reused (run_stage), which takes no time
    run: Callable[[], Dict[str, float]]  # runs it to the end and returns its COCO metrics
    after: Tuple[int, ...] = ()  # positions of the stages it needs in the list of stages


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds))


class Progress:
    """The protocol's progress display: one line per change (see the module docstring)."""

    def __init__(self, stages: Sequence[Stage], jobs: int, prefix: str):
        self.stages, self.jobs, self.prefix = stages, jobs, prefix
        self.start = time.time()
        self.started_at: Dict[int, float] = {}  # running stages: when they started
        self.reused: set = set()
        self.finished: set = set()
        self.durations: Dict[str, List[float]] = {}  # by kind, of the stages that ran

    def stage_started(self, i: int) -> None:
        self.started_at[i] = time.time()
        if is_finished(self.stages[i].output_dir):
            self.reused.add(i)  # announced when it is done, a moment later
        else:
            self._show(f"started {self.stages[i].name}")

    def stage_finished(self, i: int) -> None:
        seconds = time.time() - self.started_at.pop(i)
        self.finished.add(i)
        if i in self.reused:
            self._show(f"reused {self.stages[i].name}")
            return
        self.durations.setdefault(self.stages[i].kind, []).append(seconds)
        self._show(f"finished {self.stages[i].name} in {_clock(seconds)}")

    def stage_failed(self, i: int) -> None:
        self.started_at.pop(i)
        running = f"; waiting for the {len(self.started_at)} running to end" if self.started_at \
            else ""
        self._show(f"FAILED {self.stages[i].name}{running}")

    def time_left(self) -> Optional[float]:
        """Seconds until every stage has finished (module docstring); None while unknown."""
        now, mean = time.time(), {k: sum(v) / len(v) for k, v in self.durations.items()}
        unfinished = [i for i in range(len(self.stages)) if i not in self.finished]
        work = 0.0
        for i in unfinished:
            stage = self.stages[i]
            if i in self.reused or (i not in self.started_at and is_finished(stage.output_dir)):
                continue
            if stage.kind not in mean:
                return None
            work += max(mean[stage.kind] - (now - self.started_at.get(i, now)), 0.0)
        return work / max(min(self.jobs, len(unfinished)), 1)

    def _show(self, event: str) -> None:
        running = len(self.started_at)
        left = len(self.stages) - len(self.finished) - running
        eta = self.time_left()
        say(f"[{self.prefix}] {len(self.finished)}/{len(self.stages)} stages done, {running} "
            f"running, {left} left | {_clock(time.time() - self.start)} elapsed, ETA "
            f"{'unknown' if eta is None else _clock(eta)} | {event}")


def run_stages(stages: Sequence[Stage], jobs: int = 1,
               prefix: str = "table1") -> List[Dict[str, float]]:
    """Run every stage, at most `jobs` at once, each after the stages it needs; return their
    metrics in the order of `stages`. After a failure no stage starts; the running ones end, then
    the first error is raised (every finished stage is reused by the next invocation)."""
    results: List[Optional[Dict[str, float]]] = [None] * len(stages)
    progress = Progress(stages, jobs, prefix)
    waiting = list(range(len(stages)))
    running: Dict = {}  # future -> position of its stage
    failure: Optional[BaseException] = None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while running or (waiting and failure is None):
            if failure is None:
                ready = [i for i in waiting
                         if all(results[d] is not None for d in stages[i].after)]
                for i in ready[:jobs - len(running)]:
                    waiting.remove(i)
                    progress.stage_started(i)
                    running[pool.submit(stages[i].run)] = i
                if not running:
                    raise ValueError("stages wait on each other: "
                                     f"{[stages[i].name for i in waiting]}")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                i = running.pop(future)
                try:
                    results[i] = future.result()
                except Exception as e:  # noqa: BLE001  (raised below, once the others end)
                    failure = failure or e
                    progress.stage_failed(i)
                else:
                    progress.stage_finished(i)
    if failure is not None:
        raise failure
    return results
