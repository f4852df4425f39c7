"""`cls gradcam`: heat maps of trained checkpoints as PNG, one or two checkpoints side by side."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cls.cli import main
from cls.explain import find_checkpoint, gradcam, load_run, read_image
from cls.train.config import compose_config, to_container
from cls.train.loop import fit
from cls.train.sessions import LocalSession
from prepared_fixtures import write_array_dataset, write_jpeg_dataset


def trained_run(tmp_path, name: str, *overrides: str):
    run_dir = tmp_path / "runs" / name
    cfg = to_container(compose_config([f"trainer.storage={tmp_path / 'runs'}", f"trainer.name={name}", "trainer.epochs=1",
                                       "trainer.max_steps=2", "data.batch_size=4", "data.num_workers=1", *overrides]))
    fit(cfg, LocalSession(run_dir, device="cpu"), run_dir)
    return run_dir


@pytest.fixture
def digits_like(tmp_path):
    root = tmp_path / "digits"
    write_array_dataset(root, {"train": 8, "test": 4}, num_classes=3, name="digits")
    return root


def write_images(tmp_path, n=2, size=(40, 36)):
    paths = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_two_checkpoints_side_by_side(tmp_path, digits_like):
    common = ["model=shufflenet_v2_x0_5", "model.small_input=cifar_stem", f"data.root={digits_like}"]
    a = trained_run(tmp_path, "a", *common)
    b = trained_run(tmp_path, "b", *common, "seed=1")
    images = write_images(tmp_path)
    assert main(["gradcam", str(a), str(b), "--images", *map(str, images), "--out", str(tmp_path / "cams")]) == 0
    for image in images:
        png = tmp_path / "cams" / f"{image.stem}_gradcam.png"
        with Image.open(png) as figure:
            one = main(["gradcam", str(a), "--images", str(image), "--out", str(tmp_path / "single")])
            with Image.open(tmp_path / "single" / png.name) as single:
                assert figure.width > single.width  # three panels against two
    assert one == 0


def test_cams_are_maps_in_unit_range_of_the_models_prediction(tmp_path, digits_like):
    run_dir = trained_run(tmp_path, "r", "model=resnet50", "model.small_input=cifar_stem", f"data.root={digits_like}")
    assert find_checkpoint(run_dir).name == "checkpoint.pt"
    shutil.rmtree(digits_like)  # a checkpoint alone explains itself: the training data may be elsewhere
    run = load_run(run_dir)
    images = [read_image(p) for p in write_images(tmp_path, 3)]
    results = gradcam(run, images)
    for r in results:
        assert r["cam"].shape == (32, 32) and 0 <= r["cam"].min() and r["cam"].max() <= 1
        assert r["image"].shape == (32, 32, 3) and r["class"] in run.classes and 0 < r["prob"] <= 1
    with torch.no_grad():
        batch = torch.stack([torch.nn.functional.interpolate(i[None].float(), size=(32, 32))[0] for i in images])
    assert len(results) == len(batch)


def test_binary_classifier_and_fine_grained_model(tmp_path):
    jpeg = tmp_path / "cats_vs_dogs"
    write_jpeg_dataset(jpeg, {"train": 4, "test": 2}, num_classes=2, name="cats_vs_dogs")
    vgg = trained_run(tmp_path, "vgg", "experiment=vgg16_catsdogs", "model.pretrained=false", "model.hidden=8",
                      f"data.root={jpeg}")
    images = write_images(tmp_path, 1, size=(64, 80))
    assert main(["gradcam", str(vgg), "--images", str(images[0]), "--out", str(tmp_path / "vgg")]) == 0
    fine = tmp_path / "cub200"
    write_jpeg_dataset(fine, {"train": 2, "test": 2}, num_classes=2, name="cub200", family="fine_grained")
    fg = trained_run(tmp_path, "fg", "experiment=maea_cub200", "model.pretrained=false", f"data.root={fine}",
                     "data.batch_size=2", "data.transforms.size=64", "data.transforms.resize=72")
    result = gradcam(load_run(fg), [read_image(images[0])])[0]
    assert result["cam"].shape == (64, 64)


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["gradcam", str(tmp_path), "--images", "x.png", "--out", str(tmp_path / "o")]) == 2
    assert "no such image: x.png" in capsys.readouterr().err
    image = write_images(tmp_path, 1)[0]
    assert main(["gradcam", str(tmp_path), "--images", str(image), "--out", str(tmp_path / "o")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
