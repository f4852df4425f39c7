"""Epoch time of one training run under Ray Train (2 workers, gloo) against plain `torchrun` DDP: the same
`cls.train.loop.fit`, model, data and threads, so the ratio is what Ray adds.

    python bench/train_overhead.py [--epochs 6] [--rounds 2] [--backend dali]

Runs alternate (Ray, torchrun, Ray, torchrun, ...). Per run: the median epoch time over epochs 2..N (the first
epoch pays one-off warm-up), and the fixed cost (wall time of the command minus its epochs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(kind: str, overrides: list[str], run_dir: Path) -> dict:
    if kind == "ray":
        command = [sys.executable, "-m", "cls", "train", *overrides]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "cls.train.sessions", *overrides]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    epochs = [json.loads(p.read_text()) for p in sorted((run_dir / "epochs").glob("epoch_*.json"))]
    steady = epochs[1:]
    return {
        "epoch_s": statistics.median(e["epoch_seconds"] for e in steady),
        "train_s": statistics.median(e["train_seconds"] for e in steady),
        "fixed_s": wall - sum(e["epoch_seconds"] for e in epochs),
        "eval_top1": epochs[-1]["eval_top1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backend", default="dali")
    parser.add_argument("--model", default="shufflenet_v2_x0_5")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cls-bench-"))
    results: dict[str, list[dict]] = {"ray": [], "torchrun": []}
    for r in range(args.rounds):
        for kind in ("ray", "torchrun"):
            name = f"{kind}{r}"
            overrides = [f"model={args.model}", "model.small_input=cifar_stem", f"data.backend={args.backend}",
                         f"data.root={work / 'data' / 'digits'}", f"trainer.storage={work / 'runs'}",
                         f"trainer.name={name}", f"trainer.epochs={args.epochs}", "trainer.workers=2",
                         "trainer.cpus_per_worker=1", "data.num_workers=1"]
            results[kind].append(run(kind, overrides, work / "runs" / name))
            print(kind, r, results[kind][-1], flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in results.items()}
    print(f"\n| launcher | epoch s (median) | train s | fixed cost s | eval top-1 |\n|---|---|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v['epoch_s']:.2f} | {v['train_s']:.2f} | {v['fixed_s']:.1f} | {v['eval_top1']:.3f} |")
    print(f"\nRay / torchrun epoch time: {med['ray']['epoch_s'] / med['torchrun']['epoch_s']:.3f} "
          f"(train only: {med['ray']['train_s'] / med['torchrun']['train_s']:.3f})")


if __name__ == "__main__":
    main()
