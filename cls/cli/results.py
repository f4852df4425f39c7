"""`cls results [--sweep NAME] [--by COLUMNS] [--metric NAME]`: the aggregated table of a sweep (mean ± std
over seeds of each configuration's final and best metric), from the Parquet results store."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="print a sweep's aggregated results", description=__doc__)
    p.add_argument("--root", help="the results store (default: $CLS_RESULTS or ./results)")
    p.add_argument("--sweep", help="one sweep (default: every sweep in the store, one table each)")
    p.add_argument("--by", help="comma-separated columns to group by (default: the sweep's axes but the seed)")
    p.add_argument("--metric", default="eval_top1", help="an epoch metric (default: eval_top1)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cls.results import format_summary, load, summary
    from cls.results.store import default_root

    root = args.root or default_root()
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
