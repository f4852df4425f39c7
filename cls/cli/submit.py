"""`cls submit SWEEP.yaml --nodes N --gpus-per-node G [overrides]`: run a sweep as a SLURM job through submitit.

The job starts a Ray cluster on its nodes (cluster/ray_slurm.py, as the scripts in slurm/ do), runs
`cls sweep` on it and stops it; before the time limit it saves and requeues itself, and the requeued job
continues. Without SLURM (no sbatch), or with --local, the sweep runs here on a local Ray cluster.
By default this waits and exits with the sweep's status; --no-wait prints the job id and returns.
--array N submits N jobs (a SLURM job array) that share the sweep's trials: each takes the trials no
other job holds, until every trial is done."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="run a sweep as a SLURM job (submitit)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", metavar="SWEEP.yaml")
    p.add_argument("overrides", nargs="*", help="as for `cls sweep`")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--cpus-per-node", type=int, help="CPUs per node (default: SLURM's default)")
    p.add_argument("--time", type=int, default=60, metavar="MINUTES", help="time limit (default 60)")
    p.add_argument("--partition")
    p.add_argument("--folder", help="submitit's folder for this job (default runs/submit/SWEEP-TIME)")
    p.add_argument("--local", action="store_true", help="run here with submitit's local executor")
    p.add_argument("--array", type=int, default=1, metavar="N",
                   help="N jobs sharing the sweep's trials (a SLURM job array; default 1)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cluster.submit import submit

    for flag in ("nodes", "time", "array"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.gpus_per_node < 0:
        raise ValueError(f"--gpus-per-node must be 0 or more, got {args.gpus_per_node}")
    jobs = submit(args.sweep, args.overrides, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                  cpus_per_node=args.cpus_per_node, time_min=args.time, partition=args.partition,
                  folder=args.folder, local=args.local, array=args.array)
    for job in jobs:
        print(f"submitted job {job.job_id}; its log: {job.paths.stdout}", flush=True)
    if args.no_wait:
        return 0
    statuses = []
    for job in jobs:
        statuses.append(job.result())
        print(f"job {job.job_id} finished: the sweep exited with {statuses[-1]}; log {job.paths.stdout}")
    return max(statuses, key=lambda s: s != 0)  # the first non-zero status, else 0
