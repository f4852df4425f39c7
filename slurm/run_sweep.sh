#!/usr/bin/env bash
# The body shared by the sweep_*.sh batch scripts: `run_sweep.sh DEFAULT_SWEEP.yaml [SWEEP.yaml] [overrides...]`.
# A first argument ending in .yaml replaces the default sweep file; the rest go to `cls sweep` as overrides.
# Python is the repository's .venv when there is one (bash .ci/install makes it), else CLS_PYTHON or python3.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
[ -f pyproject.toml ] && [ -d sweeps ] || {
    echo "run_sweep.sh: submit from the cls repository (it has no sweeps/ in $PWD): cd cls && sbatch slurm/..." >&2
    exit 2
}
python=${CLS_PYTHON:-python3}
[ -z "${CLS_PYTHON:-}" ] && [ -x .venv/bin/python ] && python=.venv/bin/python
sweep=$1; shift
if [[ ${1:-} == *.yaml ]]; then sweep=$1; shift; fi
# Before any Ray node starts: a missing file is the commonest mistake (cls sweep checks the rest).
[ -f "$sweep" ] || { echo "run_sweep.sh: no sweep file $sweep in $PWD; the sweeps are in sweeps/" >&2; exit 2; }
# exec: the Ray bootstrap becomes the batch shell, so SLURM's B:USR1 warning and SIGTERM reach it directly.
exec "$python" -m cluster.ray_slurm job -- "$python" -m cls sweep "$sweep" "$@"
