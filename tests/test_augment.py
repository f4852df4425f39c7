"""Seed 002 Table 2's traditional augmentations, and the offline expansion that writes them as a new prepared
dataset: train = originals + copies, val/test carried over byte for byte."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from cls.cli import main
from cls.data.augment import (
    IMAGE_CHECKSUMS,
    OPERATIONS,
    TABLE_2_POLICIES,
    AugmentConfig,
    augment_image,
    expand_dataset,
    parse_policy,
)
from cls.data.layout import Manifest, SplitInfo, read_file_list, read_manifest, sha256_file, write_manifest

CLASSES = ["cat", "dog"]
COUNTS = {"train": 3, "val": 2, "test": 2}


def make_prepared(root: Path, size: tuple[int, int] = (38, 50)) -> Path:
    """A tiny prepared jpeg dataset (layout.py): 2 classes, COUNTS images per class and split, H x W = size.

    Cats are crops of skimage's chelsea, dogs of its astronaut photo (any two distinct photos do)."""
    photos = [skdata.chelsea(), skdata.astronaut()]
    h, w = size
    splits, checksums = {}, {}
    for split, n in COUNTS.items():
        lines = []
        for label, photo in enumerate(photos):
            for i in range(n):
                top, left = 20 * i + 40 * list(COUNTS).index(split), 15 * i
                crop = photo[top : top + 4 * h, left : left + 4 * w]
                rel = f"images/{split}/{label:04d}/{CLASSES[label]}_{split}_{i}.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(crop).resize((w, h)).save(root / rel, quality=90)
                checksums[rel] = sha256_file(root / rel)
                lines.append(f"{rel} {label}\n")
        (root / f"{split}.txt").write_text("".join(lines))
        splits[split] = SplitInfo(count=len(lines), per_class=[n, n])
    manifest = Manifest(
        name="catsdogs", kind="jpeg", family="imagenet", classes=CLASSES, splits=splits, checksums=checksums,
        source={"made_by": "tests"},
    )  # fmt: skip
    write_manifest(root, manifest)
    return root


def image_digests(root: Path) -> dict[str, str]:
    """path -> sha256 from the dataset's images.sha256 (`sha256sum -c` format)."""
    lines = (root / IMAGE_CHECKSUMS).read_text().splitlines()
    return {rel: digest for digest, rel in (line.split("  ", 1) for line in lines)}


@pytest.fixture
def image() -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(skdata.chelsea()[::8, ::8])).permute(2, 0, 1).contiguous()


ALL_POLICIES = [*OPERATIONS, *TABLE_2_POLICIES]


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_each_policy_keeps_the_size_changes_the_image_and_is_seeded(image, policy):
    out = augment_image(image, policy, seed=7)
    assert out.dtype == torch.uint8 and out.shape == image.shape
    assert (out.int() - image.int()).abs().float().mean() > 1.0  # visibly different, not a re-quantisation
    assert torch.equal(out, augment_image(image, policy, seed=7))
    assert not torch.equal(out, augment_image(image, policy, seed=8))


def test_augmentation_leaves_the_global_rng_alone(image):
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    augment_image(image, "pan+noise", seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_magnitudes_are_config_values(image):
    still = AugmentConfig(pan=0.0, rotate=0.0, noise_sigma=0.0, crop_scale=(1.0, 1.0))
    for policy in ALL_POLICIES:  # every magnitude at zero: every policy is the identity
        assert torch.equal(augment_image(image, policy, seed=5, config=still), image), policy
    noise = augment_image(image, "noise", seed=5, config=AugmentConfig(noise_sigma=0.2)).float() - image.float()
    interior = (image > 60) & (image < 195)  # away from clipping at 0 and 255
    assert 0.2 * 255 * 0.8 < noise[interior].std() < 0.2 * 255 * 1.2


def test_pan_is_a_translation_within_the_configured_range():
    # A single bright pixel in the middle of a 40x40 image: pan moves it by at most 10% = 4 px.
    img = torch.zeros(3, 40, 40, dtype=torch.uint8)
    img[:, 20, 20] = 255
    for seed in range(20):
        out = augment_image(img, "pan", seed=seed)
        ys, xs = torch.nonzero(out[0] == 255, as_tuple=True)
        assert len(ys) == 1 and abs(ys.item() - 20) <= 4 and abs(xs.item() - 20) <= 4


def test_unknown_or_repeated_policy_is_an_error_listing_the_valid_ones():
    with pytest.raises(ValueError, match="pan, crop, rotate, noise.*pan\\+crop"):
        parse_policy("pan+blur")
    with pytest.raises(ValueError, match="repeats"):
        parse_policy("crop+crop")
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.9, 0.5))


def test_expand_dataset_adds_copies_to_train_only(tmp_path):
    src = make_prepared(tmp_path / "src")
    out = tmp_path / "out"
    manifest = expand_dataset(src, out, "pan+noise", copies=2, seed=3)

    assert manifest == read_manifest(out)
    n_train = COUNTS["train"] * len(CLASSES)
    assert manifest.splits["train"].count == n_train * 3
    assert manifest.splits["train"].per_class == [COUNTS["train"] * 3] * 2
    train = read_file_list(out, "train")
    original = dict(read_file_list(src, "train"))
    copies = [(rel, label) for rel, label in train if rel not in original]
    assert len(copies) == n_train * 2
    for rel, label in copies:  # "x__pan-noise{k}.jpg" beside its original, with its label
        base = rel.split("__")[0] + ".jpg"
        assert original[base] == label and rel.startswith("images/train/")
        with Image.open(out / rel) as im, Image.open(src / base) as orig:
            assert im.size == orig.size
            assert np.abs(np.asarray(im, float) - np.asarray(orig, float)).mean() > 1
    for rel, _ in read_file_list(src, "train"):
        assert (out / rel).read_bytes() == (src / rel).read_bytes()

    for split in ("val", "test"):
        assert read_file_list(out, split) == read_file_list(src, split)
        for rel, _ in read_file_list(out, split):
            assert (out / rel).read_bytes() == (src / rel).read_bytes()
            assert not rel.startswith("images/train/")
        assert manifest.splits[split].count == COUNTS[split] * 2
    eval_names = {Path(rel).stem for s in ("val", "test") for rel, _ in read_file_list(out, s)}
    assert not any(Path(rel).stem.split("__")[0] in eval_names for rel, _ in train)

    assert set(manifest.checksums) == {"train.txt", "val.txt", "test.txt", IMAGE_CHECKSUMS}
    for rel, digest in manifest.checksums.items():
        assert sha256_file(out / rel) == digest
    digests = image_digests(out)
    assert set(digests) == {rel for s in COUNTS for rel, _ in read_file_list(out, s)}
    assert all(sha256_file(out / rel) == digest for rel, digest in digests.items())
    assert manifest.source["method"] == "augment" and manifest.source["policy"] == "pan+noise"
    assert manifest.source["copies"] == 2 and manifest.source["seed"] == 3
    assert manifest.source["expanded_from"] == str(src.resolve())
    assert manifest.source["parent"] == {"made_by": "tests"}
    assert manifest.source["config"]["pan"] == 0.1
    assert manifest.name == "catsdogs" and manifest.classes == CLASSES
    assert not list(tmp_path.glob(".out.*"))  # the temp sibling was renamed away
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask  # not mkdtemp's 0700: other users can read it
    assert ((out / "manifest.json").stat().st_mode & 0o777) == 0o666 & ~umask


def test_expansion_is_reproducible_for_a_seed(tmp_path):
    src = make_prepared(tmp_path / "src")

    def digests(name: str, seed: int) -> dict[str, str]:
        expand_dataset(src, tmp_path / name, "crop+rotate", seed=seed)
        return image_digests(tmp_path / name)

    a, b, c = digests("a", 1), digests("b", 1), digests("c", 2)
    new = [rel for rel in a if "__" in rel]
    assert len(new) == 6 and all(a[r] == b[r] for r in new)
    assert all(a[r] != c[r] for r in new)


def test_existing_output_is_reused_when_identical_and_never_overwritten(tmp_path):
    src = make_prepared(tmp_path / "src")
    out = tmp_path / "out"
    first = expand_dataset(src, out, "pan", seed=0)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert expand_dataset(src, out, "pan", seed=0) == first  # the same expansion: nothing is rewritten
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="different prepared dataset"):
        expand_dataset(src, out, "pan", seed=1)
    assert read_manifest(out).source["seed"] == 0
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        expand_dataset(src, tmp_path / "junk", "pan")
    with pytest.raises(ValueError, match="is the source"):
        expand_dataset(src, src, "pan")
    (tmp_path / "empty").mkdir()
    assert expand_dataset(src, tmp_path / "empty", "noise").splits["train"].count == 12


def test_expansion_needs_a_jpeg_dataset_and_a_copy(tmp_path):
    src = make_prepared(tmp_path / "src")
    with pytest.raises(ValueError, match="copies must be at least 1"):
        expand_dataset(src, tmp_path / "out", "pan", copies=0)
    manifest = read_manifest(src)
    manifest.kind = "array"
    write_manifest(tmp_path / "arrays", manifest)
    with pytest.raises(ValueError, match="'array' dataset; offline expansion writes JPEG datasets only"):
        expand_dataset(tmp_path / "arrays", tmp_path / "out", "pan")
    assert not (tmp_path / "out").exists()


def test_a_failed_expansion_leaves_nothing(tmp_path, monkeypatch):
    src = make_prepared(tmp_path / "src")
    import cls.data.augment as augment

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(augment, "encode", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        expand_dataset(src, tmp_path / "out", "pan")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_cli_augment_end_to_end(tmp_path, capsys):
    src = make_prepared(tmp_path / "src")
    out = tmp_path / "out"
    argv = ["augment", str(src), "--policy", "rotate+noise", "--copies", "1", "--out", str(out), "--rotate", "30"]
    assert main(argv) == 0
    assert "train 12, val 4, test 4" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["policy"] == "rotate+noise" and manifest["source"]["config"]["rotate"] == 30.0

    assert main(["augment", str(src), "--policy", "blur", "--out", str(tmp_path / "x")]) == 2
    assert "unknown augmentation policy 'blur'" in capsys.readouterr().err
    assert main([*argv[:-2], "--rotate", "10"]) == 2  # same --out, different config
    assert "already holds a different prepared dataset" in capsys.readouterr().err


def _generated(root: Path, split: str) -> int:
    """Generated images in a split's file list (copies are named "x__{tag}.jpg")."""
    return sum("__" in rel for rel, _ in read_file_list(root, split))


def test_split_order_paper_puts_expanded_images_in_val_and_test_and_clean_never_does(tmp_path):
    src = make_prepared(tmp_path / "src")
    paper = expand_dataset(src, tmp_path / "paper", "pan+noise", split_order="paper")
    clean = expand_dataset(src, tmp_path / "clean", "pan+noise", split_order="clean")
    originals = {s: 2 * n for s, n in COUNTS.items()}  # two classes
    total = sum(originals.values())

    # paper (seed 002 §4.3): all 14 images expanded to 28, the 14 copies split 6:2:2 as the originals are
    assert paper.source["split_order"] == "paper"
    assert paper.source["generated"]["val"] > 0 and paper.source["generated"]["test"] > 0
    assert sum(paper.source["generated"].values()) == total
    for split in COUNTS:
        assert paper.splits[split].count == originals[split] + paper.source["generated"][split]
        assert _generated(tmp_path / "paper", split) == paper.source["generated"][split]
        assert all(rel.startswith(f"images/{split}/") for rel, _ in read_file_list(tmp_path / "paper", split))
    assert paper.source["generated"]["train"] > paper.source["generated"]["val"]

    # clean: split first, expand train only; val and test are the source's lists, untouched
    assert clean.source["split_order"] == "clean"
    assert clean.source["generated"] == {"train": originals["train"], "val": 0, "test": 0}
    assert (_generated(tmp_path / "clean", "val"), _generated(tmp_path / "clean", "test")) == (0, 0)
    for split in ("val", "test"):
        assert (tmp_path / "clean" / f"{split}.txt").read_bytes() == (src / f"{split}.txt").read_bytes()
    assert clean.splits["train"].count == 2 * originals["train"]

    # every listed image has its digest, and a second run of either order reuses what is there
    for root in (tmp_path / "paper", tmp_path / "clean"):
        listed = {rel for s in COUNTS for rel, _ in read_file_list(root, s)}
        assert set(image_digests(root)) == listed and all((root / rel).is_file() for rel in listed)
    assert expand_dataset(src, tmp_path / "paper", "pan+noise", split_order="paper") == paper
    with pytest.raises(ValueError, match="split_order must be one of"):
        expand_dataset(src, tmp_path / "x", "noise", split_order="shuffled")
