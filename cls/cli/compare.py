"""`cls compare SWEEP --axis COLUMN [--baseline VALUE] [--metric M] [--by COLUMNS]`: does one axis of a sweep
change a metric? Each value of the axis against the baseline, trials paired on the other axes and the seed:
mean difference, 95% CIs (t and paired bootstrap), paired t-test and Wilcoxon p-values with Holm's correction,
and a verdict; with too few seeds, how many would be needed. Trials without a partner are listed."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="paired comparison of one axis of a sweep over seeds", description=__doc__)
    p.add_argument("sweep", metavar="SWEEP", help="the sweep's name in the results store")
    p.add_argument("--axis", required=True, help="the column to compare, e.g. model.cbam (or axis.model.cbam)")
    p.add_argument("--baseline", help="the value the others are compared with (default: false, else the smallest)")
    p.add_argument("--metric", default="final_eval_top1",
                   help="a trials column or epoch metric (eval_top1 = final_eval_top1; default final_eval_top1)")
    p.add_argument("--by", help="comma-separated columns: one comparison per group of them")
    p.add_argument("--root", help="the results store (default: $CLS_RESULTS or ./results)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cls.results import load
    from cls.results.compare import compare
    from cls.results.store import default_root

    root = args.root or default_root()
    trials = load(root, "trials", sweep=args.sweep)
    if trials.empty:
        known = sorted(load(root, "trials")["sweep"].unique())
        raise ValueError(f"no trials of sweep {args.sweep!r} in the store at {root}; sweeps there: {known or 'none'}")
    result = compare(trials, args.axis, baseline=args.baseline, metric=args.metric,
                     by=args.by.split(",") if args.by else None)
    print(result.format())
    return 0
