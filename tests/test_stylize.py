"""Seed 002's style-transfer augmentation: training a style network (§2-3), styled copies of the train split
with a style per class (§4.3), and the Grad-CAM score that chooses the styles (§4.1). Random VGG-19 and tiny
images throughout: nothing is downloaded."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torch import nn

from cls.cli import main
from cls.data.layout import Manifest, SplitInfo, read_file_list, read_manifest, sha256_file, write_manifest
from cls.data.stylize import (
    best_styles,
    find_target_layer,
    gradcam_style_scores,
    load_style_network,
    read_style_checkpoint,
    stylize_batch,
    stylize_dataset,
    stylize_images,
    train_style_network,
)
from cls.models import build_model
from cls.models.weights import cache_path, resolve_weights

CLASSES = ["cat", "dog"]
COUNTS = {"train": 3, "val": 2, "test": 2}
H, W = 38, 50  # not multiples of 4: styling must pad and crop back


def photo_crop(split: str, label: int, i: int) -> np.ndarray:
    """Cats from skimage's chelsea, dogs from its astronaut: distinct, real-looking content."""
    photo = [skdata.chelsea(), skdata.astronaut()][label]
    top, left = 20 * i + 40 * list(COUNTS).index(split), 15 * i
    return np.asarray(Image.fromarray(photo[top : top + 4 * H, left : left + 4 * W]).resize((W, H)))


def make_prepared(root: Path, paint: Callable[[str, int, int], np.ndarray] = photo_crop) -> Path:
    """A tiny prepared jpeg dataset (cls.data.layout): classes cat/dog, COUNTS images per class and split."""
    splits, checksums = {}, {}
    for split, n in COUNTS.items():
        lines = []
        for label, name in enumerate(CLASSES):
            for i in range(n):
                rel = f"images/{split}/{label:04d}/{name}_{split}_{i}.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(paint(split, label, i)).save(root / rel, quality=95)
                checksums[rel] = sha256_file(root / rel)
                lines.append(f"{rel} {label}\n")
        (root / f"{split}.txt").write_text("".join(lines))
        splits[split] = SplitInfo(count=len(lines), per_class=[n] * len(CLASSES))
    manifest = Manifest("catsdogs", "jpeg", "imagenet", CLASSES, splits, checksums, source={"made_by": "tests"})
    write_manifest(root, manifest)
    return root


def save_style(path: Path, seed: int) -> Path:
    """A random-init style network in train_style_network's checkpoint format (fast; training is tested apart)."""
    torch.manual_seed(seed)
    net = build_model("style_transformer", channels=8, residual_blocks=1)
    config = {"channels": 8, "residual_blocks": 1}
    torch.save({"model": net.state_dict(), "config": config, "style_image": f"s{seed}.png"}, path)
    return path


def read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)


@pytest.fixture
def src(tmp_path) -> Path:
    return make_prepared(tmp_path / "src")


@pytest.fixture
def style_image(tmp_path) -> Path:
    path = tmp_path / "coffee.png"
    Image.fromarray(skdata.coffee()[::4, ::4]).save(path)
    return path


# --- training (§2-3) -------------------------------------------------------------------------------------


def test_train_style_network_runs_and_writes_a_loadable_checkpoint(src, style_image, tmp_path):
    out = tmp_path / "styles" / "coffee.pt"
    terms = train_style_network(
        src / "images" / "train", style_image, out,
        size=32, batch_size=2, steps=6, channels=8, residual_blocks=1, pretrained_vgg=False, seed=0,
    )  # fmt: skip
    assert set(terms) == {"loss", "content", "style", "tv", "initial_loss"}
    assert all(math.isfinite(v) for v in terms.values())
    assert terms["loss"] < terms["initial_loss"]  # Adam at lr 1e-3 makes progress even on a random VGG

    ckpt = torch.load(out, weights_only=True)
    assert set(ckpt) == {"model", "config", "style_image", "final"}
    assert ckpt["style_image"] == str(style_image.resolve())
    cfg = ckpt["config"]
    assert cfg["size"] == 32 and cfg["batch_size"] == 2 and cfg["steps"] == 6 and cfg["pretrained_vgg"] is False
    assert cfg["num_content_images"] == COUNTS["train"] * 2
    assert cfg["style_layers"] == ["conv1_2", "conv2_2", "conv3_3", "conv4_3"]
    assert ckpt["final"]["loss"] == pytest.approx(terms["loss"])
    net = load_style_network(out)
    assert not net.training
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ckpt["model"].values()))
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, no leftovers


def test_a_style_network_trained_by_cls_train_loads_too(tmp_path):
    torch.manual_seed(0)
    net = build_model("style_transformer", channels=8, residual_blocks=2)
    config = {"task": "style", "model": {"name": "style_transformer", "channels": 8, "residual_blocks": 2},
              "style": {"image": "wave.png"}}  # fmt: skip
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": net.state_dict(), "optimizer": None, "scheduler": None, "scaler": None, "epoch": 0,
                "config": config}, path)  # fmt: skip
    state, options, image = read_style_checkpoint(path)
    assert options == {"channels": 8, "residual_blocks": 2} and image == "wave.png"
    loaded = load_style_network(path)
    x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(stylize_batch(loaded, x), stylize_batch(net.eval(), x))
    config["model"]["name"] = "vgg16"
    torch.save({"model": {}, "config": config}, path)
    with pytest.raises(ValueError, match="'vgg16' model, not a style_transformer"):
        load_style_network(path)


def test_training_rejects_sizes_the_network_cannot_keep_and_empty_folders(src, style_image, tmp_path):
    with pytest.raises(ValueError, match="multiple of 4"):
        train_style_network(src, style_image, tmp_path / "x.pt", size=30, steps=1, pretrained_vgg=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        train_style_network(tmp_path / "empty", style_image, tmp_path / "x.pt", size=32, steps=1, pretrained_vgg=False)
    assert not (tmp_path / "x.pt").exists()


# --- applying a style (§4.3) -----------------------------------------------------------------------------


def test_styling_keeps_sizes_and_a_batch_equals_one_by_one(tmp_path):
    net = load_style_network(save_style(tmp_path / "s.pt", 0))
    images = torch.randint(0, 256, (3, 3, H, W), dtype=torch.uint8)
    batch = stylize_batch(net, images)
    assert batch.shape == images.shape and batch.dtype == torch.uint8
    assert (batch.int() - images.int()).abs().float().mean() > 5  # it does change the images
    one_by_one = torch.stack([stylize_batch(net, images[i : i + 1])[0] for i in range(3)])
    assert (batch.int() - one_by_one.int()).abs().max() <= 1  # instance norm: a batch styles like single images
    mixed = [torch.randint(0, 256, (3, 30, 41), dtype=torch.uint8), images[0]]
    assert [y.shape for y in stylize_images(net, mixed, size=32)] == [(3, 30, 41), (3, H, W)]
    with pytest.raises(ValueError, match="share one size"):
        stylize_images(net, mixed)


def test_stylize_dataset_styles_each_class_with_its_own_style_in_train_only(src, tmp_path):
    wave, abstract = save_style(tmp_path / "wave.pt", 1), save_style(tmp_path / "abstract.pt", 2)
    out = tmp_path / "styled"
    manifest = stylize_dataset(src, out, {"cat": wave, "dog": abstract}, batch_size=2)

    assert manifest == read_manifest(out)
    assert manifest.splits["train"].count == COUNTS["train"] * 2 * 2
    assert manifest.splits["train"].per_class == [COUNTS["train"] * 2] * 2
    original = dict(read_file_list(src, "train"))
    styled = [(rel, label) for rel, label in read_file_list(out, "train") if rel not in original]
    assert len(styled) == len(original)
    nets = {"wave": load_style_network(wave), "abstract": load_style_network(abstract)}
    for rel, label in styled:
        base, tag = rel[: -len(".jpg")].split("__")
        assert original[base + ".jpg"] == label
        assert tag == ("style-wave" if CLASSES[label] == "cat" else "style-abstract")
        orig = read(src / (base + ".jpg"))
        copy = read(out / rel)
        assert copy.shape == orig.shape
        # The copy is its class's style applied to the original (up to JPEG), not the other class's style.
        own, other = (nets["wave"], nets["abstract"]) if label == 0 else (nets["abstract"], nets["wave"])
        as_tensor = torch.from_numpy(orig.astype(np.uint8)).permute(2, 0, 1)[None]
        expect = stylize_batch(own, as_tensor)[0].permute(1, 2, 0).numpy()
        wrong = stylize_batch(other, as_tensor)[0].permute(1, 2, 0).numpy()
        assert np.abs(copy - expect).mean() < 0.5 * np.abs(copy - wrong).mean()  # JPEG blurs random-net noise

    for split in ("val", "test"):  # never styled, byte for byte the source's
        assert read_file_list(out, split) == read_file_list(src, split)
        assert all((out / rel).read_bytes() == (src / rel).read_bytes() for rel, _ in read_file_list(out, split))
        assert not list((out / "images" / split).rglob("*__*"))
    source = manifest.source
    assert source["method"] == "style" and source["expanded_from"] == str(src.resolve())
    assert source["styles"]["cat"]["checkpoint"] == str(wave.resolve())
    assert source["styles"]["dog"]["checkpoint"] == str(abstract.resolve())
    assert source["styles"]["dog"]["sha256"] == sha256_file(abstract)
    assert source["styles"]["dog"]["style_image"] == "s2.png"


def test_one_style_for_all_a_fixed_size_and_a_fraction(src, tmp_path):
    wave = save_style(tmp_path / "wave.pt", 1)
    manifest = stylize_dataset(src, tmp_path / "out", wave, size=32, fraction=0.5, seed=4)
    assert manifest.splits["train"].per_class == [3 + 2, 3 + 2]  # 0.5 x 3 rounds up to 2 per class
    assert set(manifest.source["styles"]) == {"cat", "dog"} and manifest.source["size"] == 32
    for rel, _ in read_file_list(tmp_path / "out", "train"):
        assert read(tmp_path / "out" / rel).shape == (H, W, 3)  # styled at 32x32, resized back
    again = stylize_dataset(src, tmp_path / "again", wave, size=32, fraction=0.5, seed=4)
    other = stylize_dataset(src, tmp_path / "other", wave, size=32, fraction=0.5, seed=5)
    assert read_file_list(tmp_path / "again", "train") == read_file_list(tmp_path / "out", "train")
    assert read_file_list(tmp_path / "other", "train") != read_file_list(tmp_path / "out", "train")
    assert again.checksums == manifest.checksums


def test_stylize_dataset_checks_its_inputs(src, tmp_path):
    wave = save_style(tmp_path / "wave.pt", 1)
    with pytest.raises(ValueError, match="no class 'horse'.*cat, dog"):
        stylize_dataset(src, tmp_path / "out", {"horse": wave})
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        stylize_dataset(src, tmp_path / "out", {"cat": tmp_path / "missing.pt"})
    stylize_dataset(src, tmp_path / "out", {"cat": wave})
    with pytest.raises(FileExistsError, match="different prepared dataset"):
        stylize_dataset(src, tmp_path / "out", {"dog": wave})
    assert read_manifest(tmp_path / "out").splits["train"].per_class == [6, 3]  # classes left out: no copies


# --- choosing styles with Grad-CAM (§4.1) ----------------------------------------------------------------


def half_red(split: str, label: int, i: int) -> np.ndarray:
    """Left half red, right half black: a map that follows the red channel covers exactly half the image."""
    image = np.zeros((H, W, 3), np.uint8)
    image[:, : W // 2, 0] = 255
    return image


class RedEvidence(nn.Module):
    """Logits [mean(red), -mean(red)] (or the one logit mean(red)): Grad-CAM's map is known in closed form.

    For the red class the gradient weight of the red feature is positive, so the map is the red channel
    (covering the left half); for the other class it is negative and ReLU leaves an empty map (score 0).
    """

    def __init__(self, binary: bool = False) -> None:
        super().__init__()
        self.binary = binary
        self.red = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.red.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.red(x).mean((1, 2, 3))
        return m if self.binary else torch.stack([m, -m], 1)


@pytest.mark.parametrize("binary", [False, True])
def test_gradcam_score_is_the_covered_fraction_for_the_true_class(tmp_path, binary):
    root = make_prepared(tmp_path / "red", paint=half_red)
    model = RedEvidence(binary)
    rows = gradcam_style_scores(model, model.red, root, {}, size=32, mean=None, std=None)
    by_class = {r["class"]: r for r in rows}
    assert set(by_class) == {"cat", "dog"} and all(r["style"] == "none" and r["n"] == 2 for r in rows)
    # One-logit model: class 1 (dog) is the logit's class, so the red evidence now belongs to dog.
    red, other = ("dog", "cat") if binary else ("cat", "dog")
    assert by_class[red]["score"] == pytest.approx(0.5, abs=0.07)
    assert by_class[other]["score"] == 0.0
    p = torch.sigmoid(torch.tensor(0.5)).item() if binary else torch.softmax(torch.tensor([0.5, -0.5]), 0)[0].item()
    assert by_class[red]["prob"] == pytest.approx(p, abs=0.01)
    assert by_class[other]["prob"] == pytest.approx(1 - p, abs=0.01)
    assert model.training and all(q.grad is None for q in model.parameters())  # mode restored, no gradients left


def test_gradcam_rows_cover_every_style_and_class_and_pick_the_best(src, tmp_path):
    torch.manual_seed(0)
    classifier = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    )  # fmt: skip
    styles = {"wave": save_style(tmp_path / "wave.pt", 1), "abstract": save_style(tmp_path / "abstract.pt", 2)}
    rows = gradcam_style_scores(classifier, None, src, styles, split="val", max_per_class=1, size=32)
    assert {(r["style"], r["class"]) for r in rows} == {(s, c) for s in ("none", "wave", "abstract") for c in CLASSES}
    assert all(0 <= r["score"] <= 1 and 0 <= r["prob"] <= 1 and r["n"] == 1 for r in rows)
    assert [r["class"] for r in rows] == ["cat"] * 3 + ["dog"] * 3
    for c in CLASSES:
        scores = [r["score"] for r in rows if r["class"] == c]
        assert scores == sorted(scores, reverse=True)
    best = best_styles(rows)
    assert set(best) == set(CLASSES) and set(best.values()) <= {"wave", "abstract"}
    for c, s in best.items():
        assert max(r["score"] for r in rows if r["class"] == c and r["style"] != "none") == next(
            r["score"] for r in rows if r["class"] == c and r["style"] == s
        )
    with pytest.raises(ValueError, match="reserved"):
        gradcam_style_scores(classifier, None, src, {"none": styles["wave"]})


def test_best_styles_by_score_then_probability():
    rows = [
        {"style": "none", "class": "cat", "score": 0.9, "prob": 0.9, "n": 1},
        {"style": "wave", "class": "cat", "score": 0.6, "prob": 0.5, "n": 1},
        {"style": "abstract", "class": "cat", "score": 0.6, "prob": 0.7, "n": 1},
        {"style": "wave", "class": "dog", "score": 0.8, "prob": 0.1, "n": 1},
        {"style": "abstract", "class": "dog", "score": 0.2, "prob": 0.9, "n": 1},
    ]
    assert best_styles(rows) == {"cat": "abstract", "dog": "wave"}
    assert best_styles(rows, include_none=True)["cat"] == "none"


def test_default_target_layer_is_the_final_feature_map():
    vgg = build_model("vgg16_transfer", pretrained=False, hidden=8)
    assert find_target_layer(vgg, torch.rand(1, 3, 64, 64)) == "features.29"  # the ReLU after conv5_3
    resnet = build_model("resnet50", num_classes=2)
    name = find_target_layer(resnet, torch.rand(1, 3, 64, 64))
    assert resnet.get_submodule(name)(torch.rand(1, 3, 64, 64)).shape[1] == 2048


# --- the command line ------------------------------------------------------------------------------------


def test_cli_train_apply_score_end_to_end(src, style_image, tmp_path, capsys):
    styles = tmp_path / "styles"
    for name, seed in (("wave", "0"), ("abstract", "1")):
        argv = ["stylize", "train", "--content", str(src / "images" / "train"), "--style", str(style_image),
                "--out", str(styles / f"{name}.pt"), "--steps", "2", "--size", "32", "--batch-size", "2",
                "--channels", "8", "--seed", seed, "--random-vgg"]  # fmt: skip
        assert main(argv) == 0
        assert "2 steps, loss" in capsys.readouterr().out
    assert load_style_network(styles / "wave.pt").net[0][1].out_channels == 8

    out = tmp_path / "styled"
    argv = ["stylize", "apply", str(src), "--out", str(out), "--style", f"cat={styles / 'wave.pt'}",
            "--style", f"dog={styles / 'abstract.pt'}"]  # fmt: skip
    assert main(argv) == 0
    assert "cat: wave.pt, dog: abstract.pt" in capsys.readouterr().out
    assert read_manifest(out).splits["train"].count == 12
    assert main(["stylize", "apply", str(src), "--out", str(tmp_path / "one"), "--style", str(styles / "wave.pt")]) == 0
    assert set(read_manifest(tmp_path / "one").source["styles"]) == {"cat", "dog"}
    capsys.readouterr()

    torch.manual_seed(0)
    classifier = build_model("vgg16_transfer", pretrained=False, hidden=8)
    # A `cls train` run directory: fixed-key checkpoint whose config names the model and its options.
    trained = {"name": "vgg16_transfer", "hidden": 8, "dropout": 0.5, "pretrained": True, "freeze_base": True}
    (tmp_path / "run").mkdir()
    data = {"classes": ["cat", "dog"], "transforms": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    torch.save({"model": classifier.state_dict(), "optimizer": None, "epoch": 3,
                "config": {"model": trained, "data": data}}, tmp_path / "run" / "checkpoint.pt")  # fmt: skip
    styles_args = ["--style", f"wave={styles / 'wave.pt'}", "--style", f"abstract={styles / 'abstract.pt'}"]
    argv = ["stylize", "score", str(src), "--weights", str(tmp_path / "run"), *styles_args, "--size", "64"]
    assert main(argv) == 0  # no --classifier, no hidden=8, no ImageNet weights: all from the checkpoint
    printed = capsys.readouterr().out
    assert "vgg16_transfer: Grad-CAM coverage" in printed and "best style per class: cat -> " in printed
    assert "normalised with mean (0.5, 0.5, 0.5), std (0.25, 0.25, 0.25)" in printed  # as it was trained
    for word in ("none", "wave", "abstract", "cat", "dog"):
        assert word in printed

    # cls train writes every TransformConfig field, None where the family's default was kept
    data["transforms"] = {"mean": None, "std": None, "size": None}
    torch.save({"model": classifier.state_dict(), "optimizer": None, "epoch": 3,
                "config": {"model": trained, "data": data}}, tmp_path / "run" / "checkpoint.pt")  # fmt: skip
    assert main(argv) == 0
    assert "normalised with mean (0.485, 0.456, 0.406)" in capsys.readouterr().out

    torch.save(classifier.state_dict(), tmp_path / "plain.pt")  # a bare state dict names no model
    plain = ["stylize", "score", str(src), "--weights", str(tmp_path / "plain.pt"), *styles_args, "--size", "64"]
    assert main(plain) == 2
    assert "pass --classifier NAME" in capsys.readouterr().err
    assert main([*plain, "--classifier", "vgg16_transfer", "hidden=8"]) == 0
    assert "mean (0.485, 0.456, 0.406)" in capsys.readouterr().out  # no run config: ImageNet's
    assert main([*plain, "--classifier", "vgg16_transfer", "hidden=16"]) == 2  # weights and options disagree
    err = capsys.readouterr().err
    assert "does not fit vgg16_transfer" in err
    assert "shape mismatch(es) (file vs model), e.g. classifier.1.weight: (8, 25088) vs (16, 25088)" in err
    assert main([*argv[:5], "--style", "wave"]) == 2
    assert "NAME=CKPT" in capsys.readouterr().err
    data["classes"] = ["dog", "cat"]  # trained with the labels the other way round
    torch.save({"model": classifier.state_dict(), "config": {"model": trained, "data": data}},
               tmp_path / "run" / "checkpoint.pt")  # fmt: skip
    assert main(argv) == 2
    assert "trained on classes ['dog', 'cat']" in capsys.readouterr().err


def test_cli_train_without_cached_vgg19_says_so_in_one_line(src, style_image, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    argv = ["stylize", "train", "--content", str(src), "--style", str(style_image), "--out", str(tmp_path / "s.pt")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    expected = cache_path(resolve_weights("vgg19", True))
    assert expected.name.startswith("vgg19-") and str(expected) in err
    assert err.count("\n") == 1 and err.startswith("cls stylize: error:") and "--random-vgg" in err
    assert not (tmp_path / "s.pt").exists() and not expected.exists()
