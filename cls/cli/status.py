"""`cls status [--job ID]`: the running trials of the SLURM sweeps started from here, with their latest
metrics. Trials come from each job's Ray dashboard (its REST API, with the job's token), metrics from the
results store. Jobs are found in $CLS_JOBS_DIR (default ~/.cls/jobs) while their cluster is up.

`cls status --sweep NAME [--results ROOT]`: which job holds which trial of the sweep, and for how long, from
the store's leases (ROOT/leases), whatever machine or job runs it."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="running trials of the SLURM sweeps, with their latest metrics",
                       description=__doc__)
    p.add_argument("--job", type=int, help="only this SLURM job")
    p.add_argument("--sweep", metavar="NAME", help="the trials of this sweep that jobs hold now (the store's leases)")
    p.add_argument("--results", metavar="ROOT", help="the results store (default: $CLS_RESULTS or ./results)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.sweep:
        return show_leases(args.results, args.sweep)
    from cluster.status import format_status, jobs_dir, running_jobs, running_trials

    jobs = running_jobs(args.job)
    if not jobs:
        which = f"job {args.job}" if args.job is not None else "any job"
        print(f"no running cluster for {which} in {jobs_dir()} (a job's entry exists while its Ray cluster is up)")
        return 1 if args.job is not None else 0
    status = 0
    for info in jobs:
        try:
            print(format_status(info, running_trials(info)))
        except OSError as e:  # the job was killed before it could remove its entry, or its head is down
            print(f"job {info['job_id']}: its dashboard {info['dashboard']} does not answer ({e}); if the job has "
                  f"ended (squeue -j {info['job_id']}), remove {jobs_dir() / str(info['job_id'])}")
            status = 1
    return status


def show_leases(results: str | None, sweep: str) -> int:
    from cls.results.leases import leases
    from cls.results.store import default_root

    root = results or default_root()
    held = leases(root, sweep)
    if held.empty:
        print(f"sweep {sweep}: no trial is held by a job now (store {root})")
        return 0
    print(f"sweep {sweep}: {len(held)} trial(s) held (store {root})")
    for row in held.itertuples():
        state = "EXPIRED, free to take over" if row.expired else f"renewed {row.age_s:.0f}s ago"
        print(f"  {row.trial_id}  job {row.job} on {row.host} (pid {row.pid})  held {row.held_s:.0f}s  {state}")
    return 0
