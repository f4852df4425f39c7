"""Ray Train runs on a real local Ray cluster: learning, restart and resume, a killed worker replaced."""

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from cls.data.layout import read_manifest
from cls.results import load
from cls.train.checkpoint import load_checkpoint, state_digest
from cls.train.config import compose_config, to_container
from cls.train.loop import read_epochs, read_resumes
from polling import wait_for

pytestmark = pytest.mark.slow

# A small registered model that learns digits in a few epochs on 2 CPU cores.
SMALL = ["model=shufflenet_v2_x0_5", "model.small_input=cifar_stem", "optim.lr=0.05", "trainer.workers=2",
         "trainer.cpus_per_worker=1", "trainer.nan_check_every=1"]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    from cls.train.run import connect_ray

    connect_ray(num_cpus=2)  # as `cls train` starts its local cluster
    yield
    ray.shutdown()


def config(tmp_path: Path, *overrides: str) -> dict:
    return to_container(compose_config([*SMALL, f"data.root={tmp_path / 'data' / 'digits'}",
                                        f"trainer.storage={tmp_path / 'runs'}", *overrides]))


def test_two_workers_learn_digits_to_90_percent(tmp_path, ray_cluster):
    # Through DALI, the default loader. The torch loader's shards are tested in test_loaders, and it trains
    # under Ray in test_sweep_ray's ASHA test and test_claims (data.backend=torch): a second 8-epoch run here
    # cost CI a minute and showed nothing more.
    from cls.train.run import train

    result = train(config(tmp_path, "data.backend=dali", "trainer.epochs=8"))
    epochs = read_epochs(result.run_dir)
    assert [e["epoch"] for e in epochs] == list(range(8))
    test_split = read_manifest(tmp_path / "data" / "digits").splits["test"].count
    assert all(e["eval_images"] == test_split for e in epochs)  # every test image once, across both workers
    assert result.metrics["eval_top1"] >= 0.90, epochs[-1]
    assert (result.run_dir / "confusion" / "epoch_0007.csv").is_file()


def _cli(tmp_path: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "cls", "train", *SMALL, f"data.root={tmp_path / 'data' / 'digits'}",
            f"trainer.storage={tmp_path / 'runs'}", "data.backend=torch", *overrides]


def _checkpoint_epochs(run_dir: Path) -> list[int]:
    """Epochs of the checkpoints rank 0 has written into the run dir (each whole, through a rename)."""
    epochs = []
    for path in run_dir.glob("checkpoints/epoch_*/checkpoint.pt"):
        try:
            epochs.append(load_checkpoint(path)["epoch"])
        except (RuntimeError, EOFError):
            continue
    return sorted(epochs)


def test_a_killed_run_started_again_continues_with_the_same_optimizer_state(tmp_path):
    # Every checkpoint kept, to compare the resumed optimizer state with the one it was saved with.
    command = _cli(tmp_path, "trainer.epochs=4", "trainer.name=restart", "trainer.keep_checkpoints=4")
    run_dir = tmp_path / "runs" / "restart"
    driver = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: 1 in _checkpoint_epochs(run_dir), 300, "the checkpoint of epoch 2")
        time.sleep(1.0)  # Train V2 registers a checkpoint at its next poll (0.2 s here)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
        driver.wait()
    before = {e["epoch"]: e for e in read_epochs(run_dir)}
    assert 2 not in before or 3 not in before, "the run finished before it was killed"

    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=600)
    epochs = read_epochs(run_dir)
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]
    resumes = read_resumes(run_dir)
    assert len(resumes) == 1
    start = resumes[0]["start_epoch"]
    assert start >= 2  # epoch 3 (index 2) at the earliest: nothing before the last checkpoint is redone
    for e in range(start):
        assert epochs[e] == before[e]  # finished epochs were not run again
    resumed_from = run_dir / "checkpoints" / f"epoch_{start - 1:04d}" / "checkpoint.pt"
    assert resumes[0]["optimizer_digest"] == state_digest(load_checkpoint(resumed_from)["optimizer"])


def test_a_killed_worker_is_replaced_and_every_epoch_is_recorded_once(tmp_path, ray_cluster):
    from cls.train.run import train

    cfg = config(tmp_path, "data.backend=torch", "trainer.epochs=5", "trainer.max_failures=1", "trainer.name=faulty")
    run_dir = tmp_path / "runs" / "faulty"
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=train(cfg)), daemon=True)
    thread.start()
    pid_file = run_dir / "workers" / "rank1.pid"
    wait_for(lambda: (run_dir / "epochs" / "epoch_0001.json").is_file() and pid_file.is_file(), 300, "epoch 2")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    thread.join(600)
    assert "result" in outcome, "the run did not finish after its worker was killed"
    epochs = read_epochs(run_dir)
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3, 4]
    assert len(read_resumes(run_dir)) == 1  # the replacement workers resumed from a checkpoint
    assert outcome["result"].metrics["epoch"] == 4


def test_a_nan_loss_fails_the_run_naming_the_step(tmp_path, ray_cluster, capsys):
    from cls.cli import main

    argv = ["train", *SMALL, f"data.root={tmp_path / 'data' / 'digits'}", f"trainer.storage={tmp_path / 'runs'}",
            "data.backend=torch", "trainer.epochs=1", "optim.lr=1e30", "trainer.name=nan"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert re.search(r"cls train: training failed: .*loss is (nan|inf) at epoch 0, step \d+", err, re.S), err[-2000:]
    (row,) = load(os.environ["CLS_RESULTS"], "trials", sweep="train").to_dict("records")
    assert row["trial_id"] == "nan" and row["status"] == "failed" and "loss is" in row["error"]


def test_the_readme_command_from_a_fresh_directory(tmp_path):
    """`cls train experiment=dnffm_digits` with the relative defaults (data/digits, runs/): the driver prepares
    the data where the user stands, and the workers, which run elsewhere, still find it."""
    env = {k: v for k, v in os.environ.items() if k not in ("CLS_DATA_ROOT", "CLS_RUNS", "CLS_RESULTS", "RAY_ADDRESS")}
    result = subprocess.run([sys.executable, "-m", "cls", "train", "experiment=dnffm_digits", "trainer.epochs=1"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "data" / "digits" / "manifest.json").is_file()
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert [e["epoch"] for e in read_epochs(run_dir)] == [0]
    assert f"run: {run_dir}" in result.stdout
    # ... and the run is in the results store under ./results, as the one trial of sweep "train".
    (row,) = load(tmp_path / "results", "trials").to_dict("records")
    assert (row["sweep"], row["trial_id"], row["status"], row["epochs_done"]) == ("train", run_dir.name, "finished", 1)
    assert row["final_eval_top1"] == read_epochs(run_dir)[0]["eval_top1"]
    assert load(tmp_path / "results", "epochs")["epoch"].tolist() == [0]


def test_rows_are_closed_on_every_exit_and_ray_starts_over_a_removed_checkpoint(tmp_path, ray_cluster, monkeypatch,
                                                                               capsys):
    """Issue 11, case 2: a run directory whose Ray checkpoint index lists a removed checkpoint (what Ray Train
    kept before) made Ray refuse to start; rows stayed "running"; a finished row flipped to "failed"."""
    import ray.train
    from ray.train import Checkpoint, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    import cls.train.run as run_module
    from cls.train.run import train

    def legacy(config):  # Ray keeping a checkpoint, as cls did before
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            ray.train.report({"x": 1}, checkpoint=Checkpoint.from_directory(d))

    runs = tmp_path / "runs"
    TorchTrainer(legacy, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                 run_config=RunConfig(storage_path=str(runs), name="legacy")).fit()
    (gone,) = [p for p in (runs / "legacy").glob("checkpoint_*") if p.is_dir()]
    shutil.rmtree(gone)

    cfg = config(tmp_path, "data.backend=torch", "trainer.epochs=1", "trainer.max_steps=2", "trainer.name=legacy")
    results = os.environ["CLS_RESULTS"]
    train(cfg)  # Ray starts (the stale index is dropped) and the run trains from scratch
    row = load(results, "trials", sweep="train").set_index("trial_id").loc["legacy"]
    assert row["status"] == "finished" and row["epochs_done"] == 1

    # A finished run run again: nothing to do, and its row stays finished.
    capsys.readouterr()
    assert train(cfg).metrics["epoch"] == 0
    assert "finished earlier" in capsys.readouterr().out
    assert load(results, "trials", sweep="train").set_index("trial_id").loc["legacy", "status"] == "finished"

    # An interrupted run (Ctrl-C in the driver) and one that fails outside the workers close their rows.
    for error, status in ((KeyboardInterrupt, "interrupted"), (RuntimeError, "failed")):
        class Stopping(run_module._trainer_class()):
            def fit(self):
                raise error("stopped here")

        monkeypatch.setattr(run_module, "_trainer_class", lambda placement_group_cleaner=True: Stopping)
        with pytest.raises(error):
            train(config(tmp_path, "data.backend=torch", "trainer.epochs=2", f"trainer.name={status}"))
        row = load(results, "trials", sweep="train").set_index("trial_id").loc[status]
        assert row["status"] == status
        assert status == "interrupted" or "RuntimeError: stopped here" in row["error"]


def test_one_and_two_workers_take_the_same_global_batch_and_steps(tmp_path, ray_cluster):
    """data.batch_size is the global batch: 1 worker takes it whole, 2 take half each, and either way an epoch
    is the same number of optimizer steps at the same lr (read back from the results store)."""
    from cls.train.run import train

    for workers in (1, 2):
        train(config(tmp_path, "data.backend=torch", "trainer.epochs=1", f"trainer.workers={workers}",
                     "data.batch_size=64", f"trainer.name=workers{workers}"))
    epochs = load(os.environ["CLS_RESULTS"], "epochs", sweep="train").set_index("trial_id")
    one, two = epochs.loc["workers1"], epochs.loc["workers2"]
    train_images = read_manifest(tmp_path / "data" / "digits").splits["train"].count
    assert one["global_batch"] == two["global_batch"] == 64
    assert one["steps"] == two["steps"] == -(-train_images // 64)  # ceil: the last step takes the rest
    assert one["lr"] == two["lr"]
    assert one["train_images"] == two["train_images"] == train_images
