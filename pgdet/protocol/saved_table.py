"""table1.json read back into the rows and pairings that report.py wrote it from, so that the
table and its pictures can be drawn again from a results folder alone (without the runs'
weights, predictions or logs)."""
import json
import os
from typing import Dict, List, Optional, Tuple

from .methods import CONTROL
from .report import PAPER
from .runs import Row, Run
from .stats import Comparison


class SavedTableError(ValueError):
    """A results folder without a readable table1.json."""


def load_table1(output: str) -> dict:
    """The raw table1.json of the results folder `output`."""
    path = os.path.join(output, "table1.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise SavedTableError(f"{path} does not exist: give the output folder of a finished "
                              "pgdet-table1 run") from None
    except json.JSONDecodeError as e:
        raise SavedTableError(f"{path} is not valid JSON ({e})") from None


def saved_rows(raw: dict) -> List[Row]:
    """The table's rows, each with its runs and their metrics as the table used them."""
    return [Row(r["method"], r["nms"], [Run(**run) for run in r["runs"]]) for r in raw["rows"]]


def saved_comparisons(raw: dict, rows: List[Row]) -> Dict[Tuple[str, str], Comparison]:
    """{(method, NMS): its pairing with the control} as saved: each pair's run and control runs
    found by their folders among the rows' runs, so that the gains are recomputed from the same
    metrics."""
    control = {row.nms: {run.output_dir: run for run in row.runs}
               for row in rows if row.method == CONTROL}
    comparisons = {}
    for row, saved in zip(rows, raw["rows"]):
        pairing = saved["vs_control"]
        if pairing is None:
            continue
        runs = {run.output_dir: run for run in row.runs}
        pairs = [(runs[p["run"]], [control[row.nms][c] for c in p["control_runs"]])
                 for p in pairing["pairs"]]
        bootstrap = pairing.get("bootstrap95")
        comparisons[row.method, row.nms] = Comparison(
            pairs, list(pairing["unpaired"]), tuple(bootstrap) if bootstrap else None)
    return comparisons


def saved_paper_column(raw: dict) -> Optional[str]:
    """The --paper-column of the run; for a table1.json written before it was saved, the paper
    table whose numbers the rows carry (None when no row carries any)."""
    if "paper_column" in raw:
        return raw["paper_column"]
    carried = {(r["method"], r["nms"]): tuple(r["paper"].values())
               for r in raw["rows"] if r["paper"]}
    return next((name for name, table in PAPER.items() if carried and all(
        table.get(key) == values for key, values in carried.items())), None)
