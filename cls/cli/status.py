"""`cls status [--job ID]`: the running trials of the SLURM sweeps started from here, with their latest
metrics. Trials come from each job's Ray dashboard (its REST API, with the job's token), metrics from the
results store. Jobs are found in $CLS_JOBS_DIR (default ~/.cls/jobs) while their cluster is up."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="running trials of the SLURM sweeps, with their latest metrics",
                       description=__doc__)
    p.add_argument("--job", type=int, help="only this SLURM job")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
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
