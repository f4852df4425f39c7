"""`cls.data.sources`: every dataset read from tiny copies of its publishers' real files (tests/raw_formats.py)."""

import pickle
import urllib.error

import numpy as np
import pytest
from raw_formats import (
    AIRCRAFT_BANNER_PX,
    write_cats_vs_dogs,
    write_cifar10,
    write_cifar100,
    write_cub,
    write_fgvc_aircraft,
    write_folder_tree,
    write_jpeg,
    write_stanford_cars,
    write_svhn_mat,
)

from cls.data.sources import (
    DownloadFailed,
    SourceNotFound,
    _unpickle,
    list_sources,
    open_source,
    source_options,
    stratified_split,
)

PREPARE_HINT = "cls data prepare"


def test_registry_knows_every_dataset_and_lists_them_for_an_unknown_name():
    expected = {"cifar10", "cifar100", "svhn", "digits", "cub200", "stanford_cars", "fgvc_aircraft"}
    assert set(list_sources()) == expected | {"cats_vs_dogs", "folder"}
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'; known datasets: cats_vs_dogs, cifar10, cifar100"):
        open_source("cifar11", "/nowhere")


def test_unknown_option_lists_the_options_the_dataset_has(tmp_path):
    with pytest.raises(ValueError, match=r"no option 'crop'; its options are: crop_banner=True"):
        open_source("fgvc_aircraft", tmp_path, crop=True)
    assert source_options("cats_vs_dogs") == {"seed": 0, "ratios": (0.6, 0.2, 0.2), "per_class": None}


@pytest.mark.parametrize("inner", [False, True])
def test_cifar10_pixels_labels_and_names(tmp_path, inner):
    written = write_cifar10(tmp_path, n_per_class=3, n_test_per_class=2)
    src = tmp_path / "cifar-10-batches-py" if inner else tmp_path
    source = open_source("cifar10", src)
    assert (source.kind, source.family, source.splits) == ("array", "32px", ("train", "test"))
    assert source.classes[:3] == ["airplane", "automobile", "bird"] and len(source.classes) == 10
    for split, n in [("train", 30), ("test", 20)]:
        data = source.read(split)
        images, labels = written[split]
        assert data.images.shape == (n, 32, 32, 3) and data.images.dtype == np.uint8
        assert data.labels.dtype == np.int64
        np.testing.assert_array_equal(data.images, images)  # rows of R, G, B planes became HWC pixels
        np.testing.assert_array_equal(data.labels, labels)


def test_cifar100_uses_the_fine_labels(tmp_path):
    written = write_cifar100(tmp_path, n_per_class=1, n_test_per_class=1)
    source = open_source("cifar100", tmp_path)
    assert source.classes == written["classes"] and len(source.classes) == 100
    data = source.read("train")
    np.testing.assert_array_equal(data.labels, written["train"][1])
    assert data.labels.max() == 99  # not the 20 coarse labels
    np.testing.assert_array_equal(data.images, written["train"][0])


def test_cifar_reader_refuses_a_pickle_that_would_run_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Exploit()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"should not reference (__builtin__|builtins)\.print"):
        _unpickle(path)


def test_cifar_missing_batch_names_the_file_and_the_command(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(SourceNotFound) as e:
        open_source("cifar10", tmp_path)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_3") in str(e.value)
    assert "cls data prepare cifar10 --src DOWNLOADED_DIR --out OUT_DIR" in str(e.value)
    assert "--download" in str(e.value)  # torchvision can fetch CIFAR


def test_svhn_maps_label_10_to_digit_0_and_reorders_matlab_axes(tmp_path):
    written = write_svhn_mat(tmp_path, n_train=20, n_test=10, n_extra=5)
    source = open_source("svhn", tmp_path)
    assert source.splits == ("train", "test") and source.classes == [str(d) for d in range(10)]
    data = source.read("train")
    assert data.images.shape == (20, 32, 32, 3) and data.images.flags.c_contiguous
    np.testing.assert_array_equal(data.images, written["train"][0])
    np.testing.assert_array_equal(data.labels, written["train"][1])
    assert set(data.labels.tolist()) == set(range(10))  # 10 is gone, 0 is there
    extra = open_source("svhn", tmp_path, extra=True)
    assert extra.splits == ("train", "test", "extra") and len(extra.read("extra").labels) == 5


def test_svhn_extra_missing_names_the_file(tmp_path):
    write_svhn_mat(tmp_path)
    with pytest.raises(SourceNotFound, match="extra_32x32.mat is missing"):
        open_source("svhn", tmp_path, extra=True)


def test_digits_are_32px_rgb_uint8_split_80_20_stratified_and_seeded():
    source = open_source("digits", None)
    train, test = source.read("train"), source.read("test")
    assert train.images.shape[1:] == (32, 32, 3) and train.images.dtype == np.uint8
    assert len(train.labels) + len(test.labels) == 1797
    assert len(test.labels) == pytest.approx(0.2 * 1797, abs=10)
    assert (train.images[..., 0] == train.images[..., 2]).all()  # grey replicated to RGB
    assert train.images.max() == 255 and train.images.min() == 0  # 0..16 rescaled to 0..255
    per_class_test = np.bincount(test.labels, minlength=10) / np.bincount(np.r_[train.labels, test.labels])
    assert np.allclose(per_class_test, 0.2, atol=0.01)  # stratified: every class 80/20
    same, other = open_source("digits", None, seed=0).read("test"), open_source("digits", None, seed=1).read("test")
    np.testing.assert_array_equal(same.images, test.images)
    assert not np.array_equal(other.images, test.images)


def test_digits_upsampling_keeps_the_8x8_picture():
    from sklearn.datasets import load_digits

    whole = open_source("digits", None, ratios=[1, 0])
    assert whole.splits == ("train",)  # a zero proportion leaves the split out
    images = whole.read("train").images[..., 0].astype(float)  # all 1,797, in scikit-learn's order
    # each 4x4 block of the bilinear upsampling averages close to its source pixel (not shifted, not flipped)
    blocks = images.reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4))
    small = load_digits().images * 255 / 16
    assert np.corrcoef(blocks.ravel(), small.ravel())[0, 1] > 0.95
    assert np.abs(blocks - small).mean() < 20


def test_digits_take_no_src(tmp_path):
    with pytest.raises(ValueError, match="leave out --src"):
        open_source("digits", tmp_path)


@pytest.mark.parametrize("inner", [False, True])
def test_cub_official_split_labels_and_names(tmp_path, inner):
    written = write_cub(tmp_path, n_classes=3, n_per_class=4)
    source = open_source("cub200", tmp_path / "CUB_200_2011" if inner else tmp_path)
    assert (source.kind, source.family) == ("jpeg", "fine_grained")
    assert source.classes == ["001.Bird_0", "002.Bird_1", "003.Bird_2"]
    for split in ("train", "test"):
        assert [(s.path, s.label) for s in source.read(split)] == written[split]
    assert len(source.read("train")) == 6 and {s.label for s in source.read("test")} == {0, 1, 2}


@pytest.mark.parametrize("missing", ["image_class_labels.txt", "train_test_split.txt", "classes.txt", "images.txt"])
def test_cub_missing_annotation_file_is_named_with_the_command(tmp_path, missing):
    write_cub(tmp_path)
    (tmp_path / "CUB_200_2011" / missing).unlink()
    with pytest.raises(FileNotFoundError) as e:
        open_source("cub200", tmp_path)
    message = str(e.value)
    assert f"{tmp_path / 'CUB_200_2011' / missing} is missing" in message
    assert "cls data prepare cub200 --src DOWNLOADED_DIR --out OUT_DIR" in message
    assert "vision.caltech.edu" in message  # where to get it


def test_missing_root_is_named_with_the_command(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        open_source("stanford_cars", tmp_path / "no_such_dir")
    assert f"{tmp_path / 'no_such_dir'} is missing" in str(e.value)
    assert "cls data prepare stanford_cars --src" in str(e.value)


def test_cub_annotation_files_that_disagree_are_reported(tmp_path):
    write_cub(tmp_path)
    labels = tmp_path / "CUB_200_2011" / "image_class_labels.txt"
    labels.write_text("\n".join(labels.read_text().splitlines()[:-1]) + "\n")  # drop the last image's label
    with pytest.raises(ValueError, match="has no line for image id 12"):
        open_source("cub200", tmp_path)


@pytest.mark.parametrize("test_annos_in", ["root", "devkit"])
def test_stanford_cars_devkit_mat_files(tmp_path, test_annos_in):
    written = write_stanford_cars(tmp_path, n_classes=3, n_per_class=2, test_annos_in=test_annos_in)
    source = open_source("stanford_cars", tmp_path)
    assert source.classes == written["classes"] and source.classes[-1] == "Ram C/V Cargo Van Minivan 2012"
    for split in ("train", "test"):
        samples = source.read(split)
        assert [(s.path, s.label) for s in samples] == written[split]
        assert all(isinstance(s.label, int) for s in samples)


def test_stanford_cars_with_one_image_and_one_class(tmp_path):
    # squeeze_me makes one-element struct arrays and cells 0-d: the reader must not iterate over their fields
    write_stanford_cars(tmp_path, n_classes=1, n_per_class=1)
    source = open_source("stanford_cars", tmp_path)
    assert source.classes == ["Ram C/V Cargo Van Minivan 2012"]
    assert [(s.path.name, s.label) for s in source.read("test")] == [("00001.jpg", 0)]


def test_stanford_cars_without_labelled_test_annotations_says_which_file(tmp_path):
    write_stanford_cars(tmp_path)
    (tmp_path / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(SourceNotFound) as e:
        open_source("stanford_cars", tmp_path)
    assert f"{tmp_path / 'cars_test_annos_withlabels.mat'} is missing" in str(e.value)
    assert str(tmp_path / "devkit" / "cars_test_annos_withlabels.mat") in str(e.value)


@pytest.mark.parametrize("where", ["root", "archive", "data"])
def test_fgvc_aircraft_variants_with_spaces_and_its_splits(tmp_path, where):
    written = write_fgvc_aircraft(tmp_path, n_per_split=2)
    archive = tmp_path / "fgvc-aircraft-2013b"
    source = open_source("fgvc_aircraft", {"root": tmp_path, "archive": archive, "data": archive / "data"}[where])
    assert source.classes == ["707-320", "A300B4", "Cessna 172", "F/A-18", "DHC-1"]
    assert source.splits == ("train", "val", "trainval", "test")
    written["trainval"] = written["train"] + written["val"]  # what seed 003 trains on
    for split in source.splits:
        samples = source.read(split)
        assert [(s.path, s.label) for s in samples] == written[split]
        assert {s.crop_bottom for s in samples} == {AIRCRAFT_BANNER_PX}
    assert {s.crop_bottom for s in open_source("fgvc_aircraft", tmp_path, crop_banner=False).read("test")} == {0}


def test_fgvc_aircraft_unknown_variant_is_reported(tmp_path):
    write_fgvc_aircraft(tmp_path)
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    (data / "images_variant_val.txt").write_text("1234567 Boeing 999\n")
    with pytest.raises(ValueError, match="variant 'Boeing 999' of image 1234567 is not in variants.txt"):
        open_source("fgvc_aircraft", tmp_path).read("val")


def _split_paths(source):
    return {split: [s.path for s in source.read(split)] for split in source.splits}


@pytest.mark.parametrize("inner", [False, True])
def test_cats_vs_dogs_split_6_2_2_stratified(tmp_path, inner):
    written = write_cats_vs_dogs(tmp_path, n_per_class=10)
    source = open_source("cats_vs_dogs", tmp_path / "train" if inner else tmp_path)
    assert source.classes == ["cat", "dog"] and source.splits == ("train", "val", "test")
    sizes = {split: np.bincount([s.label for s in source.read(split)], minlength=2).tolist() for split in source.splits}
    assert sizes == {"train": [6, 6], "val": [2, 2], "test": [2, 2]}
    everything = [p for paths in _split_paths(source).values() for p in paths]
    assert sorted(everything) == sorted(p for p, _ in written["files"])  # disjoint, complete, test1/ left out
    labels = {p: label for p, label in written["files"]}
    assert all(s.label == labels[s.path] for split in source.splits for s in source.read(split))


def test_cats_vs_dogs_split_is_fixed_by_the_seed(tmp_path):
    write_cats_vs_dogs(tmp_path, n_per_class=10)
    first = _split_paths(open_source("cats_vs_dogs", tmp_path, seed=7))
    assert _split_paths(open_source("cats_vs_dogs", tmp_path, seed=7)) == first
    assert _split_paths(open_source("cats_vs_dogs", tmp_path, seed=8)) != first


def test_cats_vs_dogs_per_class_subset_and_pet_images_layout(tmp_path):
    write_cats_vs_dogs(tmp_path, n_per_class=10)
    subset = open_source("cats_vs_dogs", tmp_path, per_class=5)
    assert sum(len(subset.read(s)) for s in subset.splits) == 10
    with pytest.raises(ValueError, match="per_class=50 but class 0 has only 10 images"):
        open_source("cats_vs_dogs", tmp_path, per_class=50)
    # Microsoft's PetImages/Cat, PetImages/Dog
    write_folder_tree(tmp_path / "ms" / "PetImages", {"Cat": 5, "Dog": 5})
    pets = open_source("cats_vs_dogs", tmp_path / "ms")
    assert sum(len(pets.read(s)) for s in pets.splits) == 10
    assert {s.label for s in pets.read("train") if s.path.parent.name == "Dog"} == {1}


def test_cats_vs_dogs_without_images_says_what_it_looked_for(tmp_path):
    with pytest.raises(SourceNotFound, match=r"no cat\.N\.jpg / dog\.N\.jpg"):
        open_source("cats_vs_dogs", tmp_path)


def test_folder_with_split_folders_keeps_them(tmp_path):
    write_folder_tree(tmp_path / "train", {"b_class": 3, "a_class": 2})
    write_folder_tree(tmp_path / "val", {"a_class": 1})  # a class missing from val is fine
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "train" / "a_class" / "notes.txt").write_text("not an image")
    source = open_source("folder", tmp_path)
    assert source.classes == ["a_class", "b_class"] and source.splits == ("train", "val")
    assert sorted(s.label for s in source.read("train")) == [0, 0, 1, 1, 1]
    assert [s.label for s in source.read("val")] == [0]
    with pytest.raises(ValueError, match="seed and ratios do not apply"):
        open_source("folder", tmp_path, seed=3)


def test_folder_without_split_folders_is_split_seeded_and_stratified(tmp_path):
    write_folder_tree(tmp_path, {"x": 10, "y": 5})
    source = open_source("folder", tmp_path)
    counts = {s: np.bincount([x.label for x in source.read(s)], minlength=2).tolist() for s in source.splits}
    assert counts == {"train": [6, 3], "val": [2, 1], "test": [2, 1]}
    two = open_source("folder", tmp_path, ratios=[0.8, 0.2], seed=1)
    assert two.splits == ("train", "test") and two.options == {"seed": 1, "ratios": [0.8, 0.2], "family": "imagenet"}
    assert _split_paths(two) != _split_paths(open_source("folder", tmp_path, ratios=[0.8, 0.2], seed=2))
    assert open_source("folder", tmp_path, family="32px").family == "32px"
    with pytest.raises(ValueError, match="family must be one of"):
        open_source("folder", tmp_path, family="tiny")


def test_folder_without_class_folders_is_reported(tmp_path):
    write_jpeg(tmp_path / "loose.jpg", 0)
    with pytest.raises(SourceNotFound, match="no class folders"):
        open_source("folder", tmp_path)


def test_stratified_split_proportions_add_up_per_class():
    labels = np.repeat([0, 1, 2], [10, 7, 1])
    parts = stratified_split(labels, [0.6, 0.2, 0.2], seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(18))  # every index exactly once
    assert [np.bincount(labels[p], minlength=3).tolist() for p in parts] == [[6, 4, 1], [2, 2, 0], [2, 1, 0]]
    with pytest.raises(ValueError, match="non-negative proportions"):
        stratified_split(labels, [0.5, -0.5, 1.0], seed=0)


def test_a_dataset_without_a_downloader_says_where_to_get_it(tmp_path):
    from cls.data.sources import get_source

    with pytest.raises(ValueError, match=r"torchvision cannot download cub200: get it from https://www\.vision"):
        get_source("cub200").download(tmp_path)
    with pytest.raises(ValueError, match="torchvision cannot download stanford_cars"):
        get_source("stanford_cars").download(tmp_path)


def test_a_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    from cls.data.sources import get_source

    with pytest.raises(DownloadFailed) as e:
        get_source("cifar10").download(tmp_path)
    assert "could not download cifar10 with torchvision (URLError" in str(e.value)
    assert "cls data prepare cifar10 --src DOWNLOADED_DIR" in str(e.value)
