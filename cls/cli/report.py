"""`cls report SWEEP [--root RESULTS_ROOT] [--out DIR] [--metric NAME]`: a sweep of the results store as
report.md (its configurations over seeds, beside the seed papers' tables) with loss curves and a bar chart
per reproduced paper table; prints the path of report.md."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="markdown report of a sweep, against the papers' tables", description=__doc__)
    p.add_argument("sweep", metavar="SWEEP", help="the sweep's name in the results store")
    p.add_argument("--root", type=Path, help="the results store (default: $CLS_RESULTS, else ./results)")
    p.add_argument("--out", type=Path, help="where report.md and its plots go (default: reports/SWEEP)")
    p.add_argument("--metric", help="trials column to rank configurations by (default: best_eval_top1)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cls.results.report import write_report  # pandas, pyarrow and matplotlib load only when reporting
    from cls.results.store import default_root

    # Defaults resolved here, not in add_parser, so that $CLS_RESULTS is read when the command runs.
    root = args.root or Path(default_root())
    path = write_report(root, args.sweep, args.out or Path("reports") / args.sweep, metric=args.metric)
    print(path)
    print(path.with_name("report.html"))
    return 0
