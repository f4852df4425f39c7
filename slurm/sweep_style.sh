#!/usr/bin/env bash
# Style-transfer augmentation (seed 002: VGG-16 with and without stylized images; Table 2) as a Ray Tune sweep over a Ray cluster on this job's nodes.
#   sbatch slurm/sweep_style.sh                          # sweeps/style_aug.yaml, every trial
#   sbatch slurm/sweep_style.sh trainer.epochs=5         # overrides go to `cls sweep`
#   sbatch slurm/sweep_style.sh sweeps/quickstart.yaml   # a sweep file first replaces the default
# Submit from the repository root. Edit the #SBATCH lines for your cluster (partition, nodes, GPUs, CPUs, time):
# Ray is given what SLURM allocates. 300 s before the time limit the sweep saves and the job requeues itself;
# the requeued job continues the sweep (finished trials are not rerun). Progress: the log, `cls status`, the
# dashboard (the log prints the ssh -L command), `cls results --sweep NAME`.
#SBATCH --job-name=cls-style
##SBATCH --partition=gpu
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=3
#SBATCH --cpus-per-task=24
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
exec bash "${SLURM_SUBMIT_DIR:-.}/slurm/run_sweep.sh" sweeps/style_aug.yaml "$@"
