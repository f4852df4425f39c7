"""`cls results [--sweep NAME] [--by COLUMNS] [--metric NAME]`: the aggregated table of a sweep (mean ± std
over seeds of each configuration's final and best metric), from the Parquet results store."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="print a sweep's aggregated results", description=__doc__)
    p.add_argument("--root", help="the results store (default: $CLS_RESULTS or ./results)")
    p.add_argument("--sweep", help="one sweep (default: every sweep in the store, one table each)")
    p.add_argument("--by", help="comma-separated columns to group by (default: the sweep's axes but the seed)")
    p.add_argument("--metric", default="eval_top1", help="an epoch metric (default: eval_top1)")
    p.add_argument("--check", action="store_true",
                   help="list damaged files and columns of more than one type, and what to do; exit 1 if any")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cls.results import format_summary, load, summary
    from cls.results.store import default_root

    root = args.root or default_root()
    if args.check:
        from cls.results.read import check_store
        from cls.results.store import data_files

        found = check_store(root)
        for problem in found:
            print(problem)
        files = sum(len(data_files(Path(root) / t)) for t in ("epochs", "trials"))
        print(f"store at {root}: {files} files, {len(found)} problem(s)" +
              ("" if found else ": every file reads and every column has one type"))
        return 1 if found else 0
    trials = load(root, "trials", sweep=args.sweep)
    if trials.empty:
        where = f"sweep {args.sweep!r} in " if args.sweep else ""
        known = sorted(load(root, "trials")["sweep"].unique())
        raise ValueError(f"no trials for {where}the store at {root}; sweeps there: {known or 'none'}")
    by = args.by.split(",") if args.by else None
    for name, rows in trials.groupby("sweep", sort=True):
        counts = ", ".join(f"{n} {s}" for s, n in rows["status"].value_counts().sort_index().items())
        print(f"sweep {name}: {len(rows)} trials ({counts})")
        if rows["status"].isin(["finished", "stopped"]).any():
            print(format_summary(summary(rows, args.metric, by), args.metric))
        print()
    return 0
