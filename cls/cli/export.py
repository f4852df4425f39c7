"""`cls export SWEEP [--tensorboard DIR] [--mlflow URI] [--root RESULTS_ROOT]`: every trial of a sweep, its
config and every epoch's metrics, into TensorBoard event files (DIR/SWEEP/TRIAL_ID) and/or an MLflow tracking
store (a local sqlite:///path.db works offline; the experiment is named after the sweep). Needs the optional
extra: pip install 'cls[export]'."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="export a sweep to TensorBoard and/or MLflow", description=__doc__)
    p.add_argument("sweep", metavar="SWEEP", help="the sweep's name in the results store")
    p.add_argument("--tensorboard", metavar="DIR", help="write TensorBoard runs under DIR/SWEEP/")
    p.add_argument("--mlflow", metavar="URI", help="an MLflow tracking URI, e.g. sqlite:///mlflow.db")
    p.add_argument("--root", help="the results store (default: $CLS_RESULTS or ./results)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cls.results.export import to_mlflow, to_tensorboard
    from cls.results.store import default_root

    if not (args.tensorboard or args.mlflow):
        raise ValueError("say where to: --tensorboard DIR and/or --mlflow URI (e.g. sqlite:///mlflow.db)")
    root = args.root or default_root()
    if args.tensorboard:
        runs = to_tensorboard(root, args.sweep, args.tensorboard)
        print(f"TensorBoard: {len(runs)} runs under {runs[0].parent}  (tensorboard --logdir {args.tensorboard})")
    if args.mlflow:
        runs = to_mlflow(root, args.sweep, args.mlflow)
        print(f"MLflow: {len(runs)} runs in experiment {args.sweep!r} at {args.mlflow}  "
              f"(mlflow ui --backend-store-uri {args.mlflow})")
    return 0
