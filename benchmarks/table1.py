"""The paper's Table 1 (CVAE vs CVAE/GAN) from trained models and their ``ebsd-keras evaluate`` reports (issue 14).

Each ``--row NAME=MODEL[@REPORT]`` is one model: BCE, BCE gap, mean absolute pixel deviation and pixels within 15 %
are measured here on the first ``--n`` patterns of the test split (deterministic path z = 0,
``benchmarks/field_generator.py``'s ``fidelity``); DI and refined DI (degrees) are read from the evaluate report
when one is given. Rows named ``"<group> s<seed>"`` are also summarised per group as mean ± std over seeds, so
seed noise is visible next to the difference between groups.

Example::

    python benchmarks/table1.py --data data/ni20-clahe-tfr --n 1000 \\
        --row "CVAE=runs/field-clahe.keras@runs/eval-cvae/report.json" \\
        --row "CVAE/GAN s0=runs/gan-s0/model.keras@runs/eval-gan-s0/report.json" ... -o runs/table1.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from field_generator import fidelity  # noqa: E402

COLUMNS = [
    ("bce_mean", "BCE", "{:.4f}"),
    ("bce_gap_mean", "BCE gap", "{:.4f}"),
    ("pixel_deviation_mean", "pixel deviation", "{:.4f}"),
    ("within_15pct_mean", "pixels within 15 %", "{:.4f}"),
    ("di_deg", "DI (deg)", "{:.3f}"),
    ("refined_deg", "refined DI (deg)", "{:.4f}"),
]


def _row(name: str, spec: str, data: str, n: int) -> dict:
    model, _, report = spec.partition("@")
    row = {"name": name, "model": model, **fidelity(model, data, n)}
    if report:
        with open(report) as fh:
            rep = json.load(fh)
        label = next(k for k in rep["indexing"] if k != "true")
        row["di_deg"] = rep["indexing"][label]["di_error_deg"]["mean"]
        row["refined_deg"] = rep["indexing"][label]["refined_error_deg"]["mean"]
        row["true_refined_deg"] = rep["indexing"]["true"]["refined_error_deg"]["mean"]
        row["report_n"] = rep["config"]["n"]
    return row


def _fmt(value, pattern):
    return "—" if value is None else pattern.format(value)


def table(rows: list[dict]) -> str:
    """Markdown: one line per model, then mean ± std per seed group."""
    head = "| model | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(_fmt(r.get(k), p) for k, _, p in COLUMNS) + " |")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        m = re.fullmatch(r"(.*) s\d+", r["name"])
        if m:
            groups.setdefault(m.group(1), []).append(r)
    for g, members in groups.items():
        cells = []
        for k, _, p in COLUMNS:
            vals = [r[k] for r in members if r.get(k) is not None]
            cells.append("—" if not vals else f"{p.format(np.mean(vals))} ± {p.format(np.std(vals))}")
        lines.append(f"| **{g}** (mean ± std, {len(members)} seeds) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="TFRecord directory with a test split")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--row", action="append", required=True, metavar="NAME=MODEL[@REPORT]")
    parser.add_argument("-o", "--output", help="markdown file (also printed); a .json beside it holds the rows")
    args = parser.parse_args(argv)
    rows = [_row(*r.split("=", 1), args.data, args.n) for r in args.row]
    text = table(rows)
    print(text)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)
        with open(os.path.splitext(args.output)[0] + ".json", "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
