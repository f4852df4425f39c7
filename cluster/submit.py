"""`cls submit`: a sweep as a SLURM job through submitit, for those who prefer Python to sbatch.

The job runs the same bootstrap as the scripts in slurm/ (`cluster.ray_slurm.Job`): a Ray cluster on the
allocation, `cls sweep` on it, a save and requeue on the time-limit warning. Without SLURM (no `sbatch` on
PATH), or with `local=True`, submitit's local executor runs `cls sweep` on a local Ray cluster instead.

With `array=N` it submits a SLURM job array of N tasks (submitit's batch): each task is an allocation of its
own with its own Ray cluster, and they share the sweep's trials through the store's leases (cls.sweep.driver).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# SLURM signals the batch shell this long before the time limit; the sweep then saves and the job requeues.
WARNING_S = 300


@dataclass
class SweepJob:
    """What runs inside the job (pickled by submitit): the sweep command, with or without SLURM."""

    command: list[str]

    def __call__(self) -> int:
        if "SLURM_JOB_ID" in os.environ:
            from cluster.ray_slurm import Job

            return Job(self.command).run()
        return subprocess.run(self.command).returncode


def submit(sweep: str, overrides: list[str], *, nodes: int = 1, gpus_per_node: int = 0, cpus_per_node: int | None = None,
           time_min: int = 60, partition: str | None = None, folder: str | os.PathLike | None = None,
           local: bool = False, array: int = 1) -> list:
    """Submit the sweep as `array` jobs (a SLURM array when more than one) and return the submitit jobs
    (`job.result()` is each one's exit status)."""
    import submitit

    path = Path(sweep)
    if not path.is_file():
        raise FileNotFoundError(f"no sweep file {sweep}; the sweeps are in sweeps/, e.g. sweeps/quickstart.yaml")
    # The whole sweep is checked here, before it waits in a queue: a typo fails now, with its line.
    from cls.sweep import expand, load_sweep

    expand(load_sweep(path, overrides))
    command = [sys.executable, "-m", "cls", "sweep", str(path.absolute()), *overrides]
    runs = Path(os.environ.get("CLS_RUNS", "runs"))
    # Its own folder per submission: SLURM job ids restart when a cluster's state is wiped.
    folder = Path(folder or runs / "submit" / f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}").absolute()
    if local or shutil.which("sbatch") is None:
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=time_min)
    else:
        # `exec`: python becomes the batch shell, so SLURM's B:USR1 warning reaches the bootstrap, which saves
        # the sweep and requeues the job (see cluster.ray_slurm). The bootstrap starts its own srun steps.
        executor = submitit.SlurmExecutor(folder=folder, python=f"exec {sys.executable}")
        executor.update_parameters(
            job_name=f"cls-{path.stem}", ntasks_per_node=1, time=time_min, use_srun=False,
            **({"gpus_per_node": gpus_per_node} if gpus_per_node else {}),
            **({"cpus_per_task": cpus_per_node} if cpus_per_node else {}),
            **({"partition": partition} if partition else {}),
            # `nodes` through additional_parameters: submitit would wait for a result from a task per node,
            # but only the batch step runs the function (the Ray nodes are the bootstrap's own steps).
            additional_parameters={"nodes": nodes, "requeue": True, "signal": f"B:USR1@{WARNING_S}"})
    if array == 1:
        return [executor.submit(SweepJob(command))]
    with executor.batch():  # one sbatch --array; the local executor starts N processes
        jobs = [executor.submit(SweepJob(command)) for _ in range(array)]
    return jobs
