"""`cls sweep SWEEP.yaml [overrides]`: run an ablation sweep on Ray Tune, each trial a Ray Train run, every
epoch into the results store. Running the same command again continues an interrupted sweep: finished
trials are skipped, unfinished ones resume from their checkpoints; failed ones are retried only with
--rerun-failed. Values added to an axis (more seeds) run only the new trials.

Several `cls sweep` of one file against one store (or a SLURM job array of it) share its trials: each
trial is leased in the store by the job that runs it (ROOT/leases), and a job ends when every trial is done.

Overrides: `sweep.KEY=VALUE` changes the sweep file (sweep.resources.max_concurrent=2, sweep.samples=3);
anything else is a Hydra override for every trial (trainer.epochs=1)."""

from __future__ import annotations

import argparse
import sys

from cluster.local import add_insecure_flag, check_auth_mode


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="run an ablation sweep (Ray Tune of Ray Train runs)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", metavar="SWEEP.yaml", help="a sweep file, e.g. sweeps/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help="e.g. trainer.epochs=1 sweep.resources.max_concurrent=2")
    p.add_argument("--results", metavar="ROOT", help="the results store (default: $CLS_RESULTS or ./results)")
    p.add_argument("--list", action="store_true", help="print the trials the sweep expands to and exit")
    p.add_argument("--rerun-failed", action="store_true",
                   help="run the trials that failed in an earlier run again (finished ones are never rerun)")
    add_insecure_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cls.results import format_summary, load, summary
    from cls.results.compare import Comparison, compare_axes
    from cls.sweep import expand, load_sweep

    if not args.list:
        check_auth_mode(args.insecure_no_auth)  # before anything starts
    sweep = load_sweep(args.sweep, args.overrides)
    trials = expand(sweep)
    if args.list:
        for trial in trials:
            print(trial.trial_id, " ".join(f"{k}={v}" for k, v in trial.axes.items()))
        print(f"{len(trials)} trials")
        return 0

    from cls.sweep.driver import prepare_trials, run_sweep

    from cls.preflight import check_trials

    trials = prepare_trials(sweep, trials, args.results)
    check_trials(t.config for t in trials)  # paths and datasets of every trial, before Ray starts
    outcome = run_sweep(sweep, trials, rerun_failed=args.rerun_failed, insecure_no_auth=args.insecure_no_auth)
    root = trials[0].config["results"]["root"]
    rows = load(root, "trials", sweep=sweep.name)
    rows = rows[rows["trial_id"].isin(outcome.statuses)]
    if "status" in rows and rows["status"].isin(["finished", "stopped"]).any():
        print()
        print(format_summary(summary(rows, sweep.metric), sweep.metric))
        # The answer to the sweep's question: each axis against its baseline, paired over seeds (cls compare).
        for axis, result in compare_axes(rows, f"final_{sweep.metric}").items():
            print()
            print(result.format() if isinstance(result, Comparison) else f"cls compare {axis}: {result}")
    print(f"\nRead it with pandas:  pandas.read_parquet({str(root) + '/trials'!r}, "
          f"filters=[('sweep', '==', {sweep.name!r})])")
    if outcome.interrupted:
        print(f"cls sweep: interrupted with {len(outcome.unfinished)} of {outcome.total} trials unfinished; "
              f"run the same command to continue", file=sys.stderr)
        return 130
    if outcome.failed:
        print(f"cls sweep: {len(outcome.failed)} trials failed: {', '.join(outcome.failed)}; their rows hold the "
              f"error; `cls sweep {args.sweep} --rerun-failed` retries them", file=sys.stderr)
        return 1
    return 0
