"""Read speed of the results store at sweep scale: 10,000 trials x 100 epochs (1M epoch rows).

    python bench/results_store.py [--trials 10000] [--epochs 100] [--repeats 5]

Builds the store in a temp directory the way trials leave it (one live file per trial and table, written
in bulk with pyarrow, same schema as `ResultsWriter`), times `compact`, then times (median of --repeats)
reading + aggregating: the last epoch's eval_top1 of every trial, joined to its config from `trials`, mean /
std / count per (model.name, optim.lr) over seeds. Once with plain `pandas.read_parquet`, once with
`cls.results.load`, and once uncompacted (one file per trial) for contrast.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cls.results import aggregate, compact, load
from cls.results.store import live_file

SWEEP = "bench"
METRICS = ["train_loss", "train_top1", "eval_loss", "eval_top1", "eval_f1", "eval_auroc", "lr", "images_per_s",
           "epoch_seconds"]
MODELS, LRS = ["resnet18", "resnet50", "dnffm", "vit_s"], [0.1, 0.03, 0.01]


def build(root: Path, trials: int, epochs: int) -> None:
    rng = np.random.default_rng(0)
    now = time.time_ns()
    for t in range(trials):
        tid = f"t{t:05d}"
        cols = {"trial_id": [tid] * epochs, "epoch": np.arange(epochs, dtype=np.int64)}
        cols.update({m: rng.random(epochs) for m in METRICS})
        cols["written_at"] = np.full(epochs, now, dtype=np.int64)
        path = live_file(root, "epochs", SWEEP, tid)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path)
        row = {"trial_id": tid, "model.name": MODELS[t % 4], "optim.lr": LRS[(t // 4) % 3], "seed": t // 12,
               "status": "finished", "final_eval_top1": float(cols["eval_top1"][-1]), "written_at": now}
        path = live_file(root, "trials", SWEEP, tid)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([row]), path)


def last_epoch_by_config(epochs: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    last = epochs.loc[epochs.groupby("trial_id", sort=False)["epoch"].idxmax(), ["trial_id", "eval_top1"]]
    joined = last.merge(trials[["trial_id", "model.name", "optim.lr"]], on="trial_id")
    return aggregate(joined, ["model.name", "optim.lr"], "eval_top1")


def timed(fn, repeats: int) -> tuple[float, pd.DataFrame]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cls-results-bench-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        build(root, args.trials, args.epochs)
        build_s = time.perf_counter() - start

        def plain() -> pd.DataFrame:
            return last_epoch_by_config(pd.read_parquet(root / "epochs"), pd.read_parquet(root / "trials"))

        def via_load() -> pd.DataFrame:
            return last_epoch_by_config(load(root, "epochs"), load(root, "trials"))

        rows = [("uncompacted, plain pandas.read_parquet", *timed(plain, min(args.repeats, 3)))]
        start = time.perf_counter()
        compact(root, SWEEP)
        compact_s = time.perf_counter() - start
        rows += [("compacted, plain pandas.read_parquet", *timed(plain, args.repeats)),
                 ("compacted, cls.results.load", *timed(via_load, args.repeats))]
        pd.testing.assert_frame_equal(rows[1][2], rows[2][2])  # both paths agree
        assert len(load(root, "epochs")) == args.trials * args.epochs

    print(f"{args.trials} trials x {args.epochs} epochs = {args.trials * args.epochs} epoch rows; "
          f"build {build_s:.1f} s, compact {compact_s:.1f} s\n")
    print("| read + last-epoch group-by (median) | seconds |")
    print("|---|---|")
    for name, seconds, _ in rows:
        print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
