"""The same training run under plain torchrun DDP (the baseline of bench/train_overhead.py)."""

import subprocess
import sys

import pytest

from cls.data.layout import read_manifest
from cls.train.loop import read_epochs

pytestmark = pytest.mark.slow


def test_torchrun_two_ranks(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "cls.train.sessions", "model=shufflenet_v2_x0_5", "model.small_input=cifar_stem",
               f"data.root={tmp_path / 'digits'}", f"trainer.storage={tmp_path / 'runs'}", "trainer.name=t",
               "trainer.epochs=2", "trainer.cpus_per_worker=1", "data.backend=torch"]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    epochs = read_epochs(tmp_path / "runs" / "t")
    assert [e["epoch"] for e in epochs] == [0, 1]
    test_split = read_manifest(tmp_path / "digits").splits["test"].count
    assert all(e["eval_images"] == test_split for e in epochs)  # both ranks' shards, each image once
    assert (tmp_path / "runs" / "t" / "checkpoints" / "epoch_0001" / "checkpoint.pt").is_file()
