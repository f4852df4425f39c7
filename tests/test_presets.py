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


SEED_000 = ["dnffm_cifar10", "dnffm_cifar100", "dnffm_svhn", "baseline_cifar10", "baseline_cifar100", "baseline_svhn"]


def _printed_config(capsys, *overrides: str) -> dict:
    import yaml

    from cls.cli import main

    assert main(["train", *overrides, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("experiment", SEED_000)
def test_seed_000_presets_print_pretrained_weights(capsys, experiment):
    """§3.1: each feature extractor comes from "pretraining and Fine Tune"."""
    model = _printed_config(capsys, f"experiment={experiment}")["model"]
    assert model["pretrained"] is True and model["small_input"] == "cifar_stem"


def test_table_2_presets_print_the_papers_input_handling_and_no_online_augmentation(capsys):
    for experiment in ("vgg16_catsdogs", "vgg16_catsdogs_style"):
        data = _printed_config(capsys, f"experiment={experiment}")["data"]
        assert data["transforms"]["augment"] is False  # §5: nothing is processed during training
        assert (data["family"], data["transforms"]["size"], data["transforms"]["resize"]) == ("fine_grained", 224, 224)
        assert data["per_class"] == 5000 and data["batch_size"] == 20  # §4.3


def test_no_online_augmentation_gives_training_the_evaluation_transforms():
    from cls.data.torch_loader import build_transform
    from cls.data.transforms import transform_config

    torch = pytest.importorskip("torch")
    image = torch.randint(0, 256, (3, 300, 260), dtype=torch.uint8)
    paper = transform_config("fine_grained", size=224, resize=224, augment=False)
    evaluated = build_transform(paper, train=False)(image)
    for seed in range(3):
        torch.manual_seed(seed)
        assert torch.equal(build_transform(paper, train=True)(image), evaluated)
    online = transform_config("fine_grained", size=224, resize=256)
    torch.manual_seed(0)
    assert not torch.equal(build_transform(online, train=True)(image), build_transform(online, train=False)(image))


def test_the_dnffm_preset_loads_both_backbones_from_the_local_torch_cache(tmp_path, monkeypatch):
    """A cache of torchvision's file names and key layout (DenseNet's legacy 'norm.1' keys): nothing downloads."""
    import torch
    import torchvision

    from cls.models.weights import cache_path, resolve_weights
    from cls.train.loop import model_from_config

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    resnet, densenet = torchvision.models.resnet50(), torchvision.models.densenet121()
    legacy = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in densenet.state_dict().items()}
    for arch, state in (("resnet50", resnet.state_dict()), ("densenet121", legacy)):
        path = cache_path(resolve_weights(arch, True))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
    model_cfg = to_container(compose_config(["experiment=dnffm_cifar10"]))["model"]
    model = model_from_config({**model_cfg, "num_classes": 10})
    assert torch.equal(model.backbone1.features.layer4[2].conv3.weight, resnet.layer4[2].conv3.weight)
    got = model.backbone2.features.features.denseblock4.denselayer16.norm1.weight
    assert torch.equal(got, densenet.features.denseblock4.denselayer16.norm1.weight)
    assert model.backbone1.features.conv1.kernel_size == (3, 3)  # cifar_stem: a new stem, as the preset says


def test_a_dataset_that_is_not_the_papers_subset_fails_before_training(tmp_path):
    from cls.train.run import ensure_data
    from prepared_fixtures import write_jpeg_dataset

    root = tmp_path / "cats_vs_dogs"
    write_jpeg_dataset(root, {"train": 2, "val": 2, "test": 2}, num_classes=2, name="cats_vs_dogs")
    cfg = to_container(compose_config(["experiment=vgg16_catsdogs", f"data.root={root}"]))
    with pytest.raises(ValueError, match=r"prepared with per_class=None but data.per_class=5000: .*per_class=5000"):
        ensure_data(cfg)
    ensure_data(to_container(compose_config(["experiment=vgg16_catsdogs", f"data.root={root}", "data.per_class=null"])))


def test_an_expansion_in_the_other_split_order_fails_before_training(tmp_path):
    from cls.data.augment import expand_dataset
    from cls.train.run import ensure_data
    from prepared_fixtures import write_jpeg_dataset

    src = tmp_path / "cats_vs_dogs"
    write_jpeg_dataset(src, {"train": 4, "val": 2, "test": 2}, num_classes=2, name="cats_vs_dogs")
    base = ["experiment=vgg16_catsdogs_pan_noise", "data.per_class=null"]
    for order in ("paper", "clean"):
        root = tmp_path / order / "cats_vs_dogs-pan_noise"
        expand_dataset(src, root, "pan+noise", split_order=order)
        cfg = to_container(compose_config([*base, f"data.root={root}", f"data.split_order={order}"]))
        ensure_data(cfg)  # the order it was expanded in
        other = "clean" if order == "paper" else "paper"
        cfg = to_container(compose_config([*base, f"data.root={root}", f"data.split_order={other}"]))
        with pytest.raises(ValueError, match=f"expanded with split order '{order}' but data.split_order='{other}'"):
            ensure_data(cfg)
    cfg = to_container(compose_config(["experiment=vgg16_catsdogs_style"]))
    assert cfg["data"]["split_order"] == "paper" and cfg["data"]["root"].endswith("/paper/cats_vs_dogs-style")
