"""Paired statistics of Table 1: every row against the standard fine-tune (the fair control) run
by run, with the paired t interval of the mean gain."""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .methods import CONTROL
from .runs import Row, Run, run_name

# Student's t quantile t_{0.975, df} (two-sided 95 %): scipy.stats.t.ppf(0.975, df) rounded up
# to 3 decimals, for df 1-30, 40, 60, 120 (scipy is not a pgdet dependency). Between tabulated df
# the smaller df's (larger) value is used and beyond 120 the df = 120 one (1.980, not the normal
# 1.960), so an interval is never narrower than the exact one and at most 1.1 % wider.
T_975 = {
    1: 12.707, 2: 4.303, 3: 3.183, 4: 2.777, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.307, 9: 2.263,
    10: 2.229, 11: 2.201, 12: 2.179, 13: 2.161, 14: 2.145, 15: 2.132, 16: 2.120, 17: 2.110,
    18: 2.101, 19: 2.094, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
    26: 2.056, 27: 2.052, 28: 2.049, 29: 2.046, 30: 2.043, 40: 2.022, 60: 2.001, 120: 1.980,
}


def t_quantile_975(df: int) -> float:
    """t_{0.975, df} from :data:`T_975`: the value of the largest tabulated df not above `df`."""
    return T_975[max(d for d in T_975 if d <= df)]


def paired_t_interval(gains: Sequence[float]) -> Optional[Tuple[float, float]]:
    """95 % confidence interval of the mean of n paired gains: mean ± t_{0.975, n-1}·sd/√n with
    the sample sd; None for fewer than 2 gains (no spread to measure)."""
    n = len(gains)
    if n < 2:
        return None
    half_width = t_quantile_975(n - 1) * np.std(gains, ddof=1) / np.sqrt(n)
    return float(np.mean(gains) - half_width), float(np.mean(gains) + half_width)


def _same_pair(run: Run, control_run: Run) -> bool:
    """A fine-tune pairs with the control run of its baseline and seed (same data order); a
    baseline (no seed) with every control run fine-tuned from it."""
    return run.baseline == control_run.baseline and run.seed in (None, control_run.seed)


@dataclass
class Comparison:
    """A row against the control with the same NMS, pair by pair (see :func:`_same_pair`)."""

    pairs: List[Tuple[Run, List[Run]]]  # each run of the row with its control runs
    unpaired: List[str]  # why some runs of either side have no partner; empty when all pair
    bootstrap: Optional[Tuple[float, float]] = None  # see add_image_bootstrap

    def gains(self) -> np.ndarray:
        """Per pair: the run's AP minus its control runs' (mean) AP."""
        return np.array([run.metrics["AP"] - np.mean([c.metrics["AP"] for c in controls])
                         for run, controls in self.pairs])

    def interval(self) -> Optional[Tuple[float, float]]:
        """The paired t interval of the mean gain; None unless every run pairs."""
        return None if self.unpaired else paired_t_interval(self.gains())


def pair_with_control(row: Row, control: Row) -> Comparison:
    """Pair the runs of `row` with those of the control; name the runs left without a partner
    (e.g. a seed that one side has not run) instead of comparing unequal sets of runs."""
    pairs = [(run, [c for c in control.runs if _same_pair(run, c)]) for run in row.runs]
    unpaired = [f"no {control.method} run for {run_name(run) or 'the baseline'}"
                for run, partners in pairs if not partners]
    unpaired += [f"no {row.method} run for {run_name(c)}" for c in control.runs
                 if not any(_same_pair(run, c) for run in row.runs)]
    return Comparison([(run, partners) for run, partners in pairs if partners], unpaired)


def compare_with_control(rows: Sequence[Row]) -> Dict[Tuple[str, str], Comparison]:
    """{(method, NMS): its pairing with the control of the same NMS} for every other row."""
    control = {r.nms: r for r in rows if r.method == CONTROL}
    return {(r.method, r.nms): pair_with_control(r, control[r.nms])
            for r in rows if r.method != CONTROL}
