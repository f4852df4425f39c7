"""The fixed cost of one sweep trial: what `cls sweep` spends per trial besides training, from a sweep of
trivial trials (one training step each), split into Train's share and Tune's.

    python bench/trial_overhead.py [--trials 6] [--rounds 2]

Each round runs two sweeps, alternating, each in a fresh process and local Ray cluster (2 CPUs):
  ours   cls sweep as shipped;
  stock  the same sweep with Ray's defaults where we changed them: the stock TorchTrainer (its Ray Data
         callback), the preemption watcher on, the controller's environment not matched to the job's, and
         no trial actor reuse.
Per sweep, timed in the driver after `ray.init` (measured apart):
  per trial   (sweep wall time - time inside epochs) / trials
  Train share (sum of trial spans - time inside epochs) / trials; a span runs from Tune's on_trial_start
              to on_trial_complete: building the Train run, its workers, process group, teardown
  Tune share  (sweep wall time - sum of trial spans) / trials: the trial actor, scheduling, bookkeeping
Trial 1 starts the pooled worker processes and imports; it is reported apart and left out of the means.
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

SWEEP = """# trivial trials: one step of a small network on digits
overrides: [model=shufflenet_v2_x0_5, model.small_input=cifar_stem, trainer.epochs=1, trainer.max_steps=1,
            data.backend=torch]
axes:
  seed: {{grid: {seeds}}}
resources: {{workers: 2, cpus_per_worker: 1, max_concurrent: 1}}
"""


def one_sweep(mode: str, trials: int, work: Path) -> dict:
    """Runs in a child process: one sweep of `trials` trivial trials, timed."""
    import os

    if mode == "stock":
        import ray.train.torch
        from ray import tune

        import cls.sweep.driver as driver
        import cls.train.run as run

        run._trainer_class = lambda: ray.train.torch.TorchTrainer
        for key in ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC"):
            run.RAY_ENV.pop(key)
        stock_config = tune.TuneConfig
        driver.tune.TuneConfig = lambda **kw: stock_config(**{**kw, "reuse_actors": False})

    from cls.results import load
    from cls.sweep import expand, load_sweep
    from cls.sweep.driver import prepare_trials, run_sweep
    from cls.train.run import connect_ray, ensure_data

    os.environ.update(CLS_DATA_ROOT=str(work / "data"), CLS_RUNS=str(work / "runs"), CLS_RESULTS=str(work / "results"))
    path = work / "trivial.yaml"
    path.write_text(SWEEP.format(seeds=list(range(trials))))
    sweep = load_sweep(path)
    specs = prepare_trials(sweep, expand(sweep))
    ensure_data(specs[0].config)
    started = time.perf_counter()
    connect_ray()
    init_s = time.perf_counter() - started
    outcome = run_sweep(sweep, specs, out=sys.stderr)  # (the callback holding `out` is pickled by Tune)
    ended = time.time()
    assert not outcome.unfinished and not outcome.failed, outcome
    rows = load(work / "results", "trials", sweep=sweep.name).sort_values("started_at")
    inside = load(work / "results", "epochs", sweep=sweep.name).set_index("trial_id").loc[rows["trial_id"],
                                                                                         "epoch_seconds"].to_numpy()
    spans, starts = rows["wall_s"].to_numpy(), rows["started_at"].to_numpy()
    rest = ended - (starts[0] + spans[0])  # from the end of trial 1 to the end of the sweep
    return {
        "mode": mode, "init_s": init_s, "first_trial_span_s": float(spans[0]),
        "per_trial_s": float((rest - inside[1:].sum()) / (trials - 1)),
        "train_share_s": float((spans[1:] - inside[1:]).mean()),
        "tune_share_s": float((rest - spans[1:].sum()) / (trials - 1)),
        "inside_epochs_s": float(inside.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_sweep(args.child[0], args.trials, Path(args.child[1]))))
        return

    runs: dict[str, list[dict]] = {"ours": [], "stock": []}
    for _ in range(args.rounds):
        for mode in ("ours", "stock"):
            with tempfile.TemporaryDirectory(prefix=f"trial-overhead-{mode}-") as work:
                out = subprocess.run([sys.executable, __file__, "--trials", str(args.trials), "--child", mode, work],
                                     check=True, capture_output=True, text=True).stdout
                result = json.loads(out.strip().splitlines()[-1])
                runs[mode].append(result)
                print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}),
                      flush=True)
    print(f"\nmedians over {args.rounds} rounds of {args.trials} trials (trial 1 apart):")
    print(f"{'':8} {'per trial':>10} {'Train':>8} {'Tune':>8} {'trial 1':>8} {'ray.init':>9}")
    for mode, results in runs.items():
        median = {k: statistics.median(r[k] for r in results) for k in results[0] if k != "mode"}
        print(f"{mode:8} {median['per_trial_s']:>9.1f}s {median['train_share_s']:>7.1f}s "
              f"{median['tune_share_s']:>7.1f}s {median['first_trial_span_s']:>7.1f}s {median['init_s']:>8.1f}s")
    ours, stock = (statistics.median(r["per_trial_s"] for r in runs[m]) for m in ("ours", "stock"))
    print(f"ours / stock per-trial fixed cost: {ours / stock:.2f}")


if __name__ == "__main__":
    main()
