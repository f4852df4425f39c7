"""Every experiment preset composes with its paper's settings and runs one training step on the CPU, on a
tiny dataset of the kind and name it expects."""

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cls.train.config import compose_config, to_container
from cls.train.loop import fit, read_epochs
from cls.train.sessions import LocalSession
from prepared_fixtures import write_dataset_for

# From this file's place, not the working directory: run from elsewhere, a relative glob collects nothing
# and the parametrised tests then cannot fail (test_the_preset_list_is_not_empty guards it).
EXPERIMENTS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "cls" / "configs" / "experiment").glob("*.yaml"))


def test_the_preset_list_is_not_empty():
    assert len(EXPERIMENTS) >= 10, EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_preset_runs_one_step(tmp_path, experiment):
    data = to_container(compose_config([f"experiment={experiment}"]))["data"]
    root = tmp_path / data["name"]
    write_dataset_for(data, root)
    overrides = [f"experiment={experiment}", f"data.root={root}", "trainer.epochs=1", "trainer.max_steps=1",
                 "data.batch_size=2", "data.num_workers=1", f"trainer.storage={tmp_path / 'runs'}", "trainer.nan_check_every=1"]
    model = to_container(compose_config([f"experiment={experiment}"]))["model"]
    if "pretrained" in model:
        overrides.append("model.pretrained=false")  # nothing downloads in tests
    if experiment == "style_network":
        style = tmp_path / "style.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(style)
        overrides += [f"style.image={style}", "style.pretrained_vgg=false"]
    cfg = to_container(compose_config(overrides))
    run_dir = tmp_path / "runs" / experiment
    metrics = fit(cfg, LocalSession(run_dir, device="cpu"), run_dir)
    assert metrics["epoch"] == 0 and metrics["train_steps"] == 1 and math.isfinite(metrics["train_loss"])
    assert [e["epoch"] for e in read_epochs(run_dir)] == [0]
    assert (run_dir / "checkpoints" / "epoch_0000" / "checkpoint.pt").is_file()
