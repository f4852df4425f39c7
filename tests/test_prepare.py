"""`cls.data.prepare` and `cls data`: the prepared layout, quarantine, idempotence, atomicity and clear refusals."""

import hashlib
import io
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from raw_formats import (
    AIRCRAFT_BANNER_PX,
    write_cats_vs_dogs,
    write_cifar10,
    write_cub,
    write_fgvc_aircraft,
    write_folder_tree,
    write_jpeg,
    write_text_as_jpeg,
    write_truncated_jpeg,
)

import cls.data.prepare as prep
from cls.cli import main
from cls.data.layout import MANIFEST, array_paths, read_file_list, read_manifest, sha256_file
from cls.data.prepare import IMAGE_CHECKSUMS, prepare, verify


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file and directory under `root`: its mtime and (for files) its sha256."""
    out = {".": (root.stat().st_mtime_ns, "")}
    for path in sorted(root.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path.relative_to(root))] = (path.stat().st_mtime_ns, digest)
    return out


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name) and p != out)


# --- array kind ---------------------------------------------------------------------------------------


def test_digits_prepare_is_fast_and_writes_the_array_layout(tmp_path):
    import sklearn.datasets  # noqa: F401  (the import, once per process, is not the prepare's time)

    start = time.perf_counter()
    manifest = prepare("digits", None, tmp_path / "digits")
    assert time.perf_counter() - start < 2.0
    root = tmp_path / "digits"
    assert (manifest.name, manifest.kind, manifest.family) == ("digits", "array", "32px")
    assert manifest.classes == [str(d) for d in range(10)]
    total = 0
    for split in ("train", "test"):
        images_path, labels_path = array_paths(root, split)
        images, labels = np.load(images_path), np.load(labels_path)
        assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3) and labels.dtype == np.int64
        assert manifest.splits[split].count == len(labels)
        assert manifest.splits[split].per_class == np.bincount(labels, minlength=10).tolist()
        assert manifest.checksums[images_path.name] == sha256_file(images_path)
        total += len(labels)
    assert total == 1797
    assert read_manifest(root, "digits") == manifest  # what a loader reads back
    assert manifest.source["options"] == {"seed": 0, "ratios": [0.8, 0.2]}
    assert siblings(root) == []  # no partial directory left behind


def test_cifar10_arrays_hold_the_publishers_pixels(tmp_path):
    written = write_cifar10(tmp_path / "raw", n_per_class=2, n_test_per_class=1)
    manifest = prepare("cifar10", tmp_path / "raw", tmp_path / "out")
    images, labels = (np.load(p) for p in array_paths(tmp_path / "out", "train"))
    np.testing.assert_array_equal(images, written["train"][0])
    np.testing.assert_array_equal(labels, written["train"][1])
    assert manifest.splits["test"].per_class == [1] * 10
    assert manifest.source["src"] == str((tmp_path / "raw").resolve())
    assert manifest.source["root"] == str((tmp_path / "raw" / "cifar-10-batches-py").resolve())


def test_seed_does_not_apply_to_a_dataset_with_its_own_splits(tmp_path):
    write_cifar10(tmp_path / "raw")
    with pytest.raises(ValueError, match="cifar10 ships with its publishers' splits: --seed does not apply"):
        prepare("cifar10", tmp_path / "raw", tmp_path / "out", seed=1)
    assert not (tmp_path / "out").exists()


def test_prepare_refuses_to_write_into_its_source(tmp_path):
    write_cats_vs_dogs(tmp_path / "raw")
    with pytest.raises(ValueError, match="overlap"):
        prepare("cats_vs_dogs", tmp_path / "raw", tmp_path / "raw" / "prepared")


# --- jpeg kind ----------------------------------------------------------------------------------------


def test_cub_jpeg_tree_file_lists_and_hardlinks(tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "CHUNK", 4)  # several chunks per split: the order must survive them
    written = write_cub(tmp_path / "raw", n_classes=3, n_per_class=4)
    out = tmp_path / "cub"
    manifest = prepare("cub200", tmp_path / "raw", out)
    assert manifest.splits["train"].count == 6 and manifest.splits["test"].count == 6
    for split in ("train", "test"):
        pairs = read_file_list(out, split)
        assert [label for _, label in pairs] == [label for _, label in written[split]]
        for (rel, label), (source_path, _) in zip(pairs, written[split]):
            assert rel.startswith(f"images/{split}/{label:04d}/") and " " not in rel
            assert (out / rel).read_bytes() == source_path.read_bytes()  # the original bytes
            assert (out / rel).stat().st_ino == source_path.stat().st_ino  # hard-linked, no second copy
        assert manifest.checksums[f"{split}.txt"] == sha256_file(out / f"{split}.txt")
    lines = (out / IMAGE_CHECKSUMS).read_text().splitlines()
    assert len(lines) == 12
    digest, rel = lines[0].split("  ")
    assert digest == sha256_file(out / rel)  # the `sha256sum -c` format
    assert verify(out) == []


def test_copy_instead_of_link(tmp_path):
    written = write_cub(tmp_path / "raw")
    manifest = prepare("cub200", tmp_path / "raw", tmp_path / "cub", link=False)
    rel, _ = read_file_list(tmp_path / "cub", "train")[0]
    assert (tmp_path / "cub" / rel).stat().st_ino != written["train"][0][0].stat().st_ino
    assert manifest.splits["train"].count == len(written["train"])


def test_fgvc_aircraft_banner_is_cropped_by_default(tmp_path):
    write_fgvc_aircraft(tmp_path / "raw", n_per_split=1)
    cropped = prepare("fgvc_aircraft", tmp_path / "raw", tmp_path / "cropped")
    assert set(cropped.splits) == {"train", "val", "trainval", "test"} and cropped.splits["val"].count == 5
    assert cropped.splits["trainval"].count == cropped.splits["train"].count + cropped.splits["val"].count
    rel, _ = read_file_list(tmp_path / "cropped", "train")[0]
    with Image.open(tmp_path / "cropped" / rel) as image:
        assert image.format == "JPEG" and image.size == (40, 30)
        assert np.asarray(image.convert("RGB"))[-1].mean() < 250  # the white banner is gone
    kept = prepare("fgvc_aircraft", tmp_path / "raw", tmp_path / "kept", crop_banner=False)
    assert kept.source["options"] == {"crop_banner": False}
    rel, _ = read_file_list(tmp_path / "kept", "train")[0]
    with Image.open(tmp_path / "kept" / rel) as image:
        assert image.size == (40, 30 + AIRCRAFT_BANNER_PX)


def test_names_are_sanitised_and_unique_and_formats_kept_or_reencoded(tmp_path):
    src = tmp_path / "raw"
    write_jpeg(src / "train" / "tabby cats" / "my cat (1).jpg", 1)
    write_jpeg(src / "train" / "tabby cats" / "my_cat_1_.jpg", 2)  # sanitises to the same name as the first
    Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(src / "train" / "tabby cats" / "alpha.png")
    Image.new("RGB", (8, 8), (9, 9, 9)).save(src / "train" / "tabby cats" / "bitmap.bmp")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (5, 5, 5)).save(buf, "PNG")
    (src / "train" / "tabby cats" / "png_named.jpg").write_bytes(buf.getvalue())
    prepare("folder", src, tmp_path / "out")
    rels = sorted(rel for rel, _ in read_file_list(tmp_path / "out", "train"))
    assert rels == [
        "images/train/0000/alpha.png",
        "images/train/0000/bitmap.png",  # BMP re-encoded as PNG
        "images/train/0000/my_cat_1_-1.jpg",
        "images/train/0000/my_cat_1_.jpg",
        "images/train/0000/png_named.png",  # the suffix follows the content
    ]
    with Image.open(tmp_path / "out" / "images/train/0000/bitmap.png") as image:
        assert image.format == "PNG" and image.getpixel((0, 0)) == (9, 9, 9)
    kept = (tmp_path / "out" / "images/train/0000/alpha.png").read_bytes()
    assert kept == (src / "train" / "tabby cats" / "alpha.png").read_bytes()


# --- quarantine ---------------------------------------------------------------------------------------


@pytest.fixture
def tree_with_bad_files(tmp_path):
    src = tmp_path / "raw"
    write_folder_tree(src / "train", {"cat": 3, "dog": 3})
    truncated = write_truncated_jpeg(src / "train" / "cat" / "truncated.jpg")
    text = write_text_as_jpeg(src / "train" / "dog" / "page.jpg")
    return src, truncated, text


def test_bad_files_are_quarantined_listed_and_the_run_goes_on(tree_with_bad_files, tmp_path, caplog):
    src, truncated, text = tree_with_bad_files
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (truncated, text)}
    with caplog.at_level(logging.WARNING, logger="cls"):
        manifest = prepare("folder", src, tmp_path / "out")
    out = tmp_path / "out"
    assert manifest.splits["train"].count == 6 and manifest.splits["train"].per_class == [3, 3]
    bad = {q["path"]: q for q in manifest.quarantined}
    assert set(bad) == {str(truncated), str(text)}
    assert "image file is truncated" in bad[str(truncated)]["reason"]
    assert "cannot identify image file" in bad[str(text)]["reason"]
    for path in (truncated, text):
        assert (out / bad[str(path)]["copy"]).read_bytes() == before[path][1]  # a copy in quarantine/
        assert (path.stat().st_mtime_ns, path.read_bytes()) == before[path]  # the source untouched
        assert f"quarantined {path}" in caplog.text
    assert "truncated.jpg" not in (out / "train.txt").read_text()
    assert read_manifest(out).quarantined == manifest.quarantined


def test_truncation_anywhere_in_a_jpeg_is_caught(tmp_path):
    noise = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=90, progressive=True)
    whole = buf.getvalue()
    src = tmp_path / "raw" / "only"
    write_jpeg(src / "good.jpg", 0)
    cuts = [2, 10, len(whole) // 2]
    for cut in cuts:
        (src / f"cut_{cut}.jpg").write_bytes(whole[:-cut])
    manifest = prepare("folder", tmp_path / "raw", tmp_path / "out", ratios=[1, 0, 0])
    assert manifest.splits["train"].count == 1
    assert sorted(Path(q["path"]).name for q in manifest.quarantined) == sorted(f"cut_{c}.jpg" for c in cuts)


def test_a_png_cut_short_is_caught_even_when_its_rows_decode(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, "PNG")
    src = tmp_path / "raw" / "only"
    src.mkdir(parents=True)
    (src / "cut.png").write_bytes(buf.getvalue()[:-12])  # IEND gone: PIL's load() alone accepts this
    write_jpeg(src / "good.jpg", 0)
    manifest = prepare("folder", tmp_path / "raw", tmp_path / "out", ratios=[1, 0, 0])
    assert [Path(q["path"]).name for q in manifest.quarantined] == ["cut.png"]


def test_an_annotated_file_missing_from_disk_is_quarantined_without_a_copy(tmp_path):
    written = write_cub(tmp_path / "raw")
    gone = written["test"][0][0]
    gone.unlink()
    manifest = prepare("cub200", tmp_path / "raw", tmp_path / "out")
    assert manifest.quarantined == [{"path": str(gone), "reason": manifest.quarantined[0]["reason"], "split": "test"}]
    assert manifest.quarantined[0]["reason"].startswith("missing")
    assert manifest.splits["test"].count == len(written["test"]) - 1


def test_cli_reports_quarantined_files(tree_with_bad_files, tmp_path, capsys):
    src, truncated, text = tree_with_bad_files
    assert main(["data", "prepare", "folder", "--src", str(src), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "quarantined: 2 file(s)" in out
    assert f"{truncated}: does not decode: OSError: image file is truncated" in out
    assert str(text) in out


# --- idempotence, refusals, atomicity ------------------------------------------------------------------


def test_running_prepare_twice_changes_nothing(tree_with_bad_files, tmp_path, caplog):
    src, _, _ = tree_with_bad_files
    out = tmp_path / "out"
    first = prepare("folder", src, out)
    before = snapshot(out)
    with caplog.at_level(logging.INFO, logger="cls"):
        second = prepare("folder", src, out)
    assert "nothing to do" in caplog.text
    assert second == first
    assert snapshot(out) == before  # no file rewritten, not even touched
    assert siblings(out) == []


def test_a_different_dataset_is_refused_and_the_existing_one_left_intact(tmp_path):
    out = tmp_path / "out"
    prepare("digits", None, out)
    before = snapshot(out)
    write_cats_vs_dogs(tmp_path / "raw")
    with pytest.raises(ValueError, match="already holds digits prepared from its embedded copy.*--force"):
        prepare("cats_vs_dogs", tmp_path / "raw", out)
    with pytest.raises(ValueError, match="already holds digits"):
        prepare("digits", None, out, seed=1)  # the same dataset with other options is another dataset
    assert snapshot(out) == before and siblings(out) == []


def test_force_replaces_a_prepared_dataset(tmp_path):
    out = tmp_path / "out"
    prepare("digits", None, out)
    manifest = prepare("digits", None, out, seed=1, force=True)
    assert read_manifest(out) == manifest and manifest.source["options"]["seed"] == 1
    assert siblings(out) == []  # the old prepared copy is gone, nothing else was there


def test_a_users_directory_is_refused_and_with_force_moved_aside_not_deleted(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("irreplaceable")
    with pytest.raises(ValueError, match=f"{out} exists and is not a prepared dataset"):
        prepare("digits", None, out)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    prepare("digits", None, out, force=True)
    [aside] = siblings(out)
    assert aside.startswith("out.old-") and (tmp_path / aside / "thesis.tex").read_text() == "irreplaceable"
    assert read_manifest(out).name == "digits"


def test_an_empty_directory_is_used(tmp_path):
    (tmp_path / "out").mkdir()
    assert prepare("digits", None, tmp_path / "out").name == "digits"


def test_an_interrupted_jpeg_prepare_leaves_nothing_behind(tree_with_bad_files, tmp_path, monkeypatch):
    src, _, _ = tree_with_bad_files
    real, calls = prep._write_image, []

    def dies_midway(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C, or a node going down, in the middle of the images
        return real(*args, **kwargs)

    monkeypatch.setattr(prep, "_write_image", dies_midway)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare("folder", src, out, workers=1)
    assert len(calls) >= 4
    assert not out.exists() and siblings(out) == []  # no manifest, no half dataset, no partial directory


def test_an_interrupted_rebuild_keeps_the_previous_dataset(tmp_path, monkeypatch):
    out = tmp_path / "out"
    prepare("digits", None, out)
    before = snapshot(out)
    real = prep._write_arrays

    def dies_on_test(data, root, split):
        if split == "test":
            raise OSError(28, "No space left on device")
        return real(data, root, split)

    monkeypatch.setattr(prep, "_write_arrays", dies_on_test)
    with pytest.raises(OSError, match="No space left"):
        prepare("digits", None, out, seed=5, force=True)
    assert snapshot(out) == before and siblings(out) == []


def test_the_manifest_is_readable_by_others_on_a_shared_file_system(tmp_path):
    old = os.umask(0o022)
    try:
        prepare("digits", None, tmp_path / "out")
    finally:
        os.umask(old)
    assert (tmp_path / "out" / MANIFEST).stat().st_mode & 0o044 == 0o044
    assert (tmp_path / "out").stat().st_mode & 0o055 == 0o055


# --- errors and the CLI --------------------------------------------------------------------------------


def test_missing_source_errors_name_the_path_and_the_command(tmp_path, capsys):
    assert main(["data", "prepare", "cub200", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nowhere'} is missing" in err and "cls data prepare cub200 --src" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    write_cub(tmp_path / "raw")
    (tmp_path / "raw" / "CUB_200_2011" / "train_test_split.txt").unlink()
    assert main(["data", "prepare", "cub200", "--src", str(tmp_path / "raw"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'raw' / 'CUB_200_2011' / 'train_test_split.txt'} is missing" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["data", "prepare", "imagenet22k", "--out", "X"], "unknown dataset 'imagenet22k'; known datasets: cats_"),
        (["data", "prepare", "cub200", "--out", "X", "--download", "--src", "Y"], "torchvision cannot download cub200"),
        (["data", "prepare", "cub200", "--out", "X"], "cub200 needs --src"),
        (["data", "prepare", "svhn", "--out", "X", "--src", "Y", "extras=true"], "has no option 'extras'"),
        (["data", "info", "NOT_A_DATASET"], "dataset root NOT_A_DATASET does not exist"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_prepare_digits_then_info_and_verify(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["data", "prepare", "digits", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    manifest = read_manifest(out)
    assert f"digits at {out}: array kind, 32px transforms, 10 classes" in printed
    assert f"train  {manifest.splits['train'].count:8d} images" in printed
    assert main(["data", "prepare", "digits", "--out", str(out)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["data", "info", str(out), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert f"test   {manifest.splits['test'].count:8d} images" in printed and "every checksum matches" in printed
    assert printed.index("  train ") < printed.index("  test ")  # the usual order, not the JSON's sorted keys
    np.save(out / "test_labels.npy", np.zeros(3, dtype=np.int64))  # tamper
    assert main(["data", "info", str(out), "--verify"]) == 1
    assert "test_labels.npy: checksum differs" in capsys.readouterr().out


def test_verify_finds_a_changed_image(tmp_path):
    write_cats_vs_dogs(tmp_path / "raw", n_per_class=5)
    prepare("cats_vs_dogs", tmp_path / "raw", tmp_path / "out", link=False)
    rel, _ = read_file_list(tmp_path / "out", "val")[0]
    (tmp_path / "out" / rel).write_bytes(b"changed")
    assert verify(tmp_path / "out") == [f"{rel}: checksum differs"]


def test_cli_passes_dataset_options_and_seed(tmp_path, capsys):
    write_cats_vs_dogs(tmp_path / "raw", n_per_class=10)
    src, out = str(tmp_path / "raw"), str(tmp_path / "out")
    assert main(["data", "prepare", "cats_vs_dogs", "per_class=5", "--src", src, "--out", out, "--seed", "4"]) == 0
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["source"]["options"] == {"seed": 4, "ratios": [0.6, 0.2, 0.2], "per_class": 5}
    assert sum(s["count"] for s in manifest["splits"].values()) == 10
