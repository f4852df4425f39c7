"""Several jobs, one sweep, on real local Ray clusters: trials claimed through the store's leases, a sweep
grown by a seed."""

import os
import signal
import subprocess

import pytest

from cls.results import load
from test_sweep_ray import raw_rows, run_sweep, sweep_command

pytestmark = pytest.mark.slow

TINY = """overrides: [model=shufflenet_v2_x0_5, model.small_input=cifar_stem, trainer.epochs={epochs},
            data.backend=torch, data.batch_size=32, trainer.max_steps=5]
axes:
  optim.lr: {{grid: {lrs}}}
  seed: {{grid: {seeds}}}
metric: eval_top1
mode: max
{scheduler}
resources: {{workers: 1, cpus_per_worker: 1, max_concurrent: 1}}
"""


def write_sweep(path, name="claims", epochs=1, lrs="[0.05]", seeds="[0, 1, 2]", scheduler=""):
    path.write_text(f"name: {name}\n" + TINY.format(epochs=epochs, lrs=lrs, seeds=seeds, scheduler=scheduler))
    return path


def test_three_jobs_started_together_run_every_trial_once_and_a_new_seed_runs_alone(tmp_path):
    sweep = write_sweep(tmp_path / "claims.yaml")
    command, env = sweep_command(tmp_path, sweep)
    drivers = [subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True) for _ in range(3)]
    try:
        outs = [d.communicate(timeout=1500)[0] for d in drivers]
    finally:
        for d in drivers:
            if d.poll() is None:
                os.killpg(d.pid, signal.SIGKILL)
    for d, out in zip(drivers, outs):
        assert d.returncode == 0, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
    results = tmp_path / "results"
    trials, epochs = raw_rows(results, "trials"), raw_rows(results, "epochs")
    assert len(trials) == 3 and trials["trial_id"].is_unique
    assert (trials["status"] == "finished").all() and (trials["attempts"] == 1).all()
    assert len(epochs) == 3 and not epochs.duplicated(["trial_id", "epoch"]).any()
    for trial_id in trials["trial_id"]:  # one checkpoint series: one run directory, trained once
        assert len(list((tmp_path / "runs" / trial_id / "checkpoints").glob("*"))) >= 1
    started = sum(out.count(" started: ") for out in outs)
    assert started == 3, outs
    assert not list((results / "leases").rglob("trial-*.parquet"))  # every lease released

    # Grow the sweep: a fourth seed runs alone, the three finished trials are untouched.
    before = trials.set_index("trial_id")["written_at"]
    grown = run_sweep(tmp_path, write_sweep(tmp_path / "claims.yaml", seeds="[0, 1, 2, 3]"))
    assert grown.returncode == 0, grown.stdout[-3000:] + grown.stderr[-3000:]
    assert "3 finished earlier, 1 to run" in grown.stdout
    after = load(results, "trials", sweep="claims").set_index("trial_id")
    assert len(after) == 4 and (after["attempts"] == 1).all()
    assert after.loc[before.index, "written_at"].tolist() == before.tolist()

