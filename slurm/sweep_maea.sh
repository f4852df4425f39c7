#!/usr/bin/env bash
# MA/EA ablation (seed 003: hybrid attention, attention erasure, stem pool; Tables 3-4) as a Ray Tune sweep over a Ray cluster on this job's nodes.
#   sbatch slurm/sweep_maea.sh                          # sweeps/maea_ablation.yaml, every trial
#   sbatch slurm/sweep_maea.sh trainer.epochs=5         # overrides go to `cls sweep`
#   sbatch slurm/sweep_maea.sh sweeps/quickstart.yaml   # a sweep file first replaces the default
# Submit from the repository root. Edit the #SBATCH lines for your cluster (partition, nodes, GPUs, CPUs, time):
# Ray is given what SLURM allocates. 300 s before the time limit the sweep saves and the job requeues itself;
# the requeued job continues the sweep (finished trials are not rerun). Progress: the log, `cls status`, the
# dashboard (the log prints the ssh -L command), `cls results --sweep NAME`.
#SBATCH --job-name=cls-maea
##SBATCH --partition=gpu
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
exec bash "${SLURM_SUBMIT_DIR:-.}/slurm/run_sweep.sh" sweeps/maea_ablation.yaml "$@"
