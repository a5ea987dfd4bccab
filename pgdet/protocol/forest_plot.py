"""Table 1's gains as a forest plot: one line per row of the table, its paired ΔAP against the
standard fine-tune (the control) with the 95 % paired-t interval, the test-image bootstrap
interval where one was computed, and every pair's own gain, so that a reader sees at a glance
which rows clear 0 and by how much the seeds and the test images move them.

Drawn from table1.json's numbers (``vs_control`` of each row) on a bare ``matplotlib.figure.
Figure`` (Agg canvas, no pyplot), as pgdet/engine/figures.py draws its pictures.
"""
import os
import textwrap
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .methods import CONTROL
from .report import _signed

Interval = Tuple[float, float]
# vertical place of each mark in its row's band (rows are 1 apart; y grows downwards)
PAIRS_OFFSET, BOOTSTRAP_OFFSET = -0.24, 0.24
CI_COLOUR, BOOTSTRAP_COLOUR, PAIRS_COLOUR = "tab:blue", "tab:orange", "0.35"
LABEL_WIDTH = 30  # characters of a row label per line


class ForestRow(NamedTuple):
    """One line of the plot: a table row's gain over the control, as table1.json holds it."""

    label: str  # "method, NMS"
    mean: Optional[float]  # mean paired gain; None when nothing paired
    ci95: Optional[Interval]  # paired-t interval; None for one pair or unpaired runs
    bootstrap95: Optional[Interval]  # test-image bootstrap interval, when computed
    points: Tuple[float, ...]  # every pair's gain, in the table's order of the runs
    unpaired: Tuple[str, ...]  # why runs have no partner (then no gain is shown)


def forest_rows(raw: dict) -> List[ForestRow]:
    """The rows of table1.json (`raw`) other than the control, in the table's order."""
    rows = []
    for row in raw["rows"]:
        pairing = row["vs_control"]
        if pairing is None:  # the control itself: the line at 0
            continue
        ci, bootstrap = pairing["ci95"], pairing.get("bootstrap95")
        rows.append(ForestRow(
            f"{row['method']}, {row['nms']}",
            None if pairing["unpaired"] else pairing["mean_gain"],
            tuple(ci) if ci else None, tuple(bootstrap) if bootstrap else None,
            tuple(p["gain"] for p in pairing["pairs"]), tuple(pairing["unpaired"])))
    return rows


def _summary(row: ForestRow) -> str:
    """The numbers beside a row, formatted as table1.md prints them."""
    if row.unpaired or row.mean is None:
        return "not paired (see the table)"
    text = _signed(row.mean)
    text += f" [{_signed(row.ci95[0])}, {_signed(row.ci95[1])}]" if row.ci95 else (
        f" ({len(row.points)} pair, no CI)")
    if row.bootstrap95:
        text += f"\nbootstrap [{_signed(row.bootstrap95[0])}, {_signed(row.bootstrap95[1])}]"
    return text


def _label(row: ForestRow) -> str:
    """The row's method, wrapped, over its NMS ("greedy NMS", "soft-NMS")."""
    method, nms = row.label.rsplit(", ", 1)
    return f"{textwrap.fill(method, LABEL_WIDTH)}\n{nms if 'NMS' in nms else nms + ' NMS'}"


def _x_limits(rows: Sequence[ForestRow]) -> Interval:
    """Around 0 and every number drawn (an unpaired row's gains are not), with a margin."""
    values = [0.0]
    for row in rows:
        values += [] if row.unpaired else list(row.points)
        values += list(row.ci95 or ()) + list(row.bootstrap95 or ())
    values = [v for v in values if np.isfinite(v)]
    low, high = min(values), max(values)
    margin = 0.08 * (high - low) if high > low else 0.5
    return low - margin, high + margin


def forest_plot_figure(rows: Sequence[ForestRow], title: str) -> Figure:
    """The forest plot of `rows`, top to bottom in their order. Each mark carries a gid
    ("mean|", "ci95|", "bootstrap95|", "pairs|" + label) naming what it draws."""
    fig = Figure(figsize=(9, 1.6 + 0.85 * max(len(rows), 1)), layout="constrained")
    ax = fig.subplots()
    ax.axvline(0, color="0.2", linestyle="--", linewidth=1)
    for y, row in enumerate(rows):
        if row.points and not row.unpaired:
            offsets = np.linspace(-0.06, 0.06, len(row.points)) if len(row.points) > 1 else [0]
            ax.plot(row.points, y + PAIRS_OFFSET + np.asarray(offsets), linestyle="none",
                    marker="o", markersize=5, markerfacecolor="none", color=PAIRS_COLOUR,
                    gid="pairs|" + row.label)
        if row.ci95:
            ax.plot(row.ci95, (y, y), color=CI_COLOUR, linewidth=3, marker="|", markersize=14,
                    markeredgewidth=2, gid="ci95|" + row.label)
        if row.bootstrap95:
            ax.plot(row.bootstrap95, (y + BOOTSTRAP_OFFSET,) * 2, color=BOOTSTRAP_COLOUR,
                    linewidth=1.8, marker="|", markersize=10, markeredgewidth=1.8,
                    gid="bootstrap95|" + row.label)
        if row.mean is not None:
            ax.plot([row.mean], [y], marker="D", markersize=8, color=CI_COLOUR,
                    markeredgecolor="white", zorder=3, gid="mean|" + row.label)
        else:
            ax.text(0, y, "  not paired", va="center", ha="left", color="0.3")
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(*_x_limits(rows))
    ax.set_yticks(range(len(rows)), [_label(row) for row in rows], fontsize=10)
    summary = ax.secondary_yaxis("right")
    summary.set_yticks(range(len(rows)), [_summary(row) for row in rows], fontsize=9)
    summary.tick_params(length=0)
    ax.annotate("ΔAP [95 % CI]", (1, 1), xycoords="axes fraction", xytext=(8, 4),
                textcoords="offset points", ha="left", va="bottom", fontsize=9,
                fontweight="bold")
    ax.set_xlabel(f"ΔAP (AP points) against the {CONTROL}, paired by seed")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=11)
    handles = [
        Line2D([], [], color=CI_COLOUR, marker="D", linewidth=3, label="mean, 95 % paired-t CI"),
        Line2D([], [], color=BOOTSTRAP_COLOUR, linewidth=1.8, marker="|", markersize=10,
               label="95 % test-image bootstrap"),
        Line2D([], [], color=PAIRS_COLOUR, marker="o", markerfacecolor="none", linestyle="none",
               label="one pair (seed)"),
        Line2D([], [], color="0.2", linestyle="--", label=f"0: {CONTROL}"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=9, frameon=False)
    return fig


def draw_forest_plot(raw: dict, path: str, dpi: int = 110) -> None:
    """Write the forest plot of table1.json (`raw`) as a PNG at `path`."""
    title = f"Paired gain over the {CONTROL} on {raw['test_dataset']}"
    fig = forest_plot_figure(forest_rows(raw), title)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.15)  # labels off the edges
