"""Table 1 as one self-contained web page, <output>/report.html: the forest plot of the paired
gains (forest_plot.py, also saved as figures/forest_plot.png), the table with the cells of
table1.md, the training curves and Figure 3, every picture embedded as a base64 PNG so that the
file can be mailed or opened anywhere without its folder.

Drawn from table1.json alone, so that an existing results folder can be rendered again:

    python -m pgdet.protocol.html_report <output folder of pgdet-table1>
"""
import argparse
import base64
import html
import os
import sys
from typing import List

from .forest_plot import draw_forest_plot
from .methods import CONTROL
from .report import table1_cells
from .saved_table import (
    SavedTableError, load_table1, saved_comparisons, saved_paper_column, saved_rows,
)

FIGURES = (  # (file in <output>/figures, heading, caption)
    ("forest_plot.png", f"Gain over the {CONTROL}",
     "Diamond and thick line: mean paired ΔAP and its 95 % paired-t confidence interval over the "
     "seeds; thin line: 95 % interval of a test-image bootstrap (how far the choice of test "
     "images alone moves the gain); circles: each pair's own gain. A row whose interval lies "
     "right of the dashed line gains over the control."),
    ("training_curves.png", "Training curves",
     "Losses, the reward r' of the NMS result, the sampled rewards and the mean PG loss weight of "
     "every fine-tuning run (mean over seeds, min-max band)."),
    ("figure3_detections.png", "Detections (paper Figure 3)",
     "Ground truth (top row) and the detections with score > 0.5 of the first baseline, the "
     "first standard fine-tune and the first PG γ=1 run, where they ran."),
)
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
th { background: #f0f0f0; }
tr.control td { background: #f7f7f7; font-style: italic; }
img { max-width: 100%; }
code { background: #f4f4f4; padding: 0 0.2em; }
.caption { color: #555; max-width: 60em; }
"""


def embedded_png(path: str) -> str:
    """The PNG at `path` as a data: URI."""
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def _table_html(raw: dict) -> str:
    """The table of table1.md (the same cells, report.table1_cells) as HTML."""
    rows = saved_rows(raw)
    head, lines = table1_cells(rows, saved_comparisons(raw, rows), saved_paper_column(raw))
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for cells in lines:
        css = ' class="control"' if cells[0] == CONTROL else ""
        out.append(f"<tr{css}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def _setup_html(raw: dict) -> List[str]:
    """What was run: the configs, seeds, overrides and each method's overrides."""
    def code(items) -> str:
        return f"<code>{html.escape(' '.join(map(str, items)))}</code>" if items else "none"

    baselines = raw.get("baseline_seeds")
    out = [
        "<ul>",
        f"<li>baseline config <code>{html.escape(raw['baseline_config'])}</code>, overrides "
        f"{code(raw['baseline_opts'])}</li>",
        f"<li>fine-tune config <code>{html.escape(raw['finetune_config'])}</code>, overrides "
        f"{code(raw['finetune_opts'])}</li>",
        f"<li>fine-tune seeds {code(raw['seeds'])}"
        + (f", from each baseline seed {code(baselines)}" if baselines else "") + "</li>",
        f"<li>overrides for every stage: {code(raw['opts'])}</li>",
    ]
    out += [f"<li><i>{html.escape(label)}</i>: {code(method['opts'])}</li>"
            for label, method in raw["methods"].items()]
    return out + ["</ul>"]


def report_html(raw: dict, figures: str) -> str:
    """The page for table1.json (`raw`), with the pictures found in the folder `figures`."""
    title = f"Table 1 on {raw['test_dataset']}"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for name, heading, caption in FIGURES:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        path = os.path.join(figures, name)
        if os.path.isfile(path):
            parts.append(f'<img src="{embedded_png(path)}" alt="{html.escape(heading)}">')
            parts.append(f'<p class="caption">{html.escape(caption)}</p>')
        else:
            parts.append(f"<p>figures/{name} was not drawn.</p>")
        if name == "forest_plot.png":
            parts += ["<h2>Table 1</h2>", _table_html(raw),
                      '<p class="caption">COCO bbox AP (%), mean ± sample standard deviation over '
                      "the runs; table1.md explains every column, table1.json holds every raw "
                      "number.</p>", "<h3>Runs</h3>", *_setup_html(raw)]
    return "\n".join(parts + ["</body></html>", ""])


def write_html_report(output: str) -> str:
    """Draw <output>/figures/forest_plot.png and write <output>/report.html from
    <output>/table1.json; return the report's path."""
    raw = load_table1(output)
    figures = os.path.join(output, "figures")
    draw_forest_plot(raw, os.path.join(figures, "forest_plot.png"))
    path = os.path.join(output, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(report_html(raw, figures))
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pgdet.protocol.html_report",
        description="Render report.html (and figures/forest_plot.png) again from the table1.json "
        "of a pgdet-table1 output folder.")
    parser.add_argument("output", help="the --output folder of pgdet-table1")
    args = parser.parse_args(argv)
    try:
        path = write_html_report(args.output)
    except SavedTableError as e:
        sys.exit(f"error: {e}")
    print(f"[table1] report written to {path}", flush=True)


if __name__ == "__main__":
    main()
