"""`cls report SWEEP [--root RESULTS_ROOT] [--out DIR] [--metric NAME] [--watch [--interval S]]`: a sweep of
the results store as report.md and a self-contained report.html (its configurations over seeds, the paired
comparison of each axis, the seed papers' tables beside ours, loss curves); prints their paths. With
--watch, rewrites them as the sweep's epochs land, so the page can stay open during a sweep."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="markdown and HTML report of a sweep, against the papers' tables", description=__doc__)
    p.add_argument("sweep", metavar="SWEEP", help="the sweep's name in the results store")
    p.add_argument("--root", type=Path, help="the results store (default: $CLS_RESULTS, else ./results)")
    p.add_argument("--out", type=Path, help="where report.md and its plots go (default: reports/SWEEP)")
    p.add_argument("--metric", help="trials column to rank configurations by (default: best_eval_top1)")
    p.add_argument("--watch", action="store_true",
                   help="keep rewriting the report (atomically) as the sweep's epochs land, until Ctrl-C")
    p.add_argument("--interval", type=float, default=5.0, metavar="S",
                   help="with --watch: seconds between looks at the store (default 5)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cls.results.report import write_report  # pandas, pyarrow and matplotlib load only when reporting
    from cls.results.store import default_root

    # Defaults resolved here, not in add_parser, so that $CLS_RESULTS is read when the command runs.
    root = args.root or Path(default_root())
    out = args.out or Path("reports") / args.sweep
    if args.watch:
        from cls.results.report import watch

        if args.interval <= 0:
            raise ValueError(f"--interval must be a positive number of seconds, got {args.interval:g}")
        print(f"watching sweep {args.sweep!r} in {root}: {out / 'report.html'} is rewritten as epochs land "
              f"(Ctrl-C to stop)", flush=True)
        stamp = lambda path: print(f"{datetime.datetime.now():%H:%M:%S} rewrote {path.with_name('report.html')}",  # noqa: E731
                                   flush=True)
        try:
            watch(root, args.sweep, out, metric=args.metric, interval=args.interval, on_write=stamp)
        except KeyboardInterrupt:
            print("stopped watching", flush=True)
        return 0
    path = write_report(root, args.sweep, out, metric=args.metric)
    print(path)
    print(path.with_name("report.html"))
    return 0
