"""Running `cls` on SLURM: a Ray cluster on a job's allocation (`cluster.ray_slurm`), the submitit launcher
behind `cls submit` (`cluster.submit`), `cls status` (`cluster.status`), and a throw-away local SLURM for
development and tests (`cluster/dev/slurm.sh`)."""
