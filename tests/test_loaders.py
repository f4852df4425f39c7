"""Loaders: DALI and torch agree on evaluation pixels, and both keep the sharding contract of cls.data.loader."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cls.data.layout import DatasetNotPrepared, read_file_list
from cls.data.loader import ShardSampler, build_loader
from cls.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformConfig, transform_config
from prepared_fixtures import write_array_dataset, write_jpeg_dataset

# DALI runs on any machine (CPU pipelines need no GPU): a missing install is a failure, not a skip.
# The test command's install (.ci/run) includes the `dali` extra.
BACKENDS = ["torch", "dali"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Prepared fixtures; in "*_ids" datasets every sample is its own class, so a label names the sample."""
    base = tmp_path_factory.mktemp("prepared")
    roots = {name: base / name for name in ("array", "jpeg", "array_ids", "jpeg_ids", "jpeg_small")}
    write_array_dataset(roots["array"], {"train": 12, "val": 17}, num_classes=3)
    write_jpeg_dataset(roots["jpeg"], {"train": 12, "val": 17}, num_classes=3)
    splits = {"train": 17, "val": 17, "even": 16, "odd": 19, "tiny": 2}
    write_array_dataset(roots["array_ids"], splits, num_classes=None, seed=1)
    write_jpeg_dataset(roots["jpeg_ids"], {"train": 17, "val": 17}, num_classes=None, seed=1, sides=(40, 72))
    # Sides around 32 px: centre crops that pad as well as crops that cut.
    write_jpeg_dataset(roots["jpeg_small"], {"train": 12, "val": 12}, num_classes=None, family="32px", sides=(21, 44),
                       seed=2)
    return roots


def epoch(loader) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """All of one pass: images, labels and the batch sizes."""
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels), [len(y) for y in labels]


def pixels(images: torch.Tensor, config: TransformConfig) -> torch.Tensor:
    """Normalised images back in 0..255 units."""
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    return (images * std + mean) * 255


# --- the sampler that both backends share ------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("batch_size", [1, 2, 4, 5])
def test_train_shards_are_disjoint_equal_in_batches_and_drop_at_most_world_size_minus_one(world_size, batch_size):
    for n in range(world_size, 60):
        ranks = [ShardSampler(n, batch_size, r, world_size, train=True, seed=3) for r in range(world_size)]
        batches = [s.batches() for s in ranks]
        assert len({len(b) for b in batches}) == 1 and all(len(s) == len(b) for s, b in zip(ranks, batches))
        assert all(len(batch) >= 1 for b in batches for batch in b)
        seen = np.concatenate([np.concatenate(b) for b in batches])
        assert len(seen) == len(set(seen.tolist())) == n - ranks[0].dropped
        assert ranks[0].dropped < world_size and (n % world_size or ranks[0].dropped == 0)
        # The documented case: only when the smaller shards fill their batches exactly.
        m = n // world_size
        assert ranks[0].dropped == (n % world_size if m % batch_size == 0 else 0)
        assert sum(s.num_samples for s in ranks) == len(seen)


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_eval_shards_cover_every_sample_once_in_file_order(world_size):
    for n in range(0, 40):
        ranks = [ShardSampler(n, 4, r, world_size, train=False) for r in range(world_size)]
        batches = [b for s in ranks for b in s.batches()]
        assert all(len(b) >= 1 for b in batches)
        assert [i for b in batches for i in b.tolist()] == list(range(n))
        assert {len(s) for s in ranks} <= {math.ceil(n // world_size / 4), math.ceil(-(-n // world_size) / 4)}


def test_the_order_depends_only_on_seed_and_epoch():
    a, b = ShardSampler(100, 8, train=True, seed=5), ShardSampler(100, 8, train=True, seed=5)
    a.set_epoch(3)
    b.set_epoch(1)
    b.set_epoch(3)
    assert np.array_equal(a.indices(), b.indices())
    b.set_epoch(4)
    assert not np.array_equal(a.indices(), b.indices())
    assert not np.array_equal(a.indices(), ShardSampler(100, 8, train=True, seed=6).indices())


def test_sampler_rejects_what_it_cannot_shard():
    with pytest.raises(ValueError, match="rank"):
        ShardSampler(10, 2, 2, 2, train=True)
    with pytest.raises(ValueError, match="cannot give each of 4 ranks"):
        ShardSampler(3, 2, 0, 4, train=True)
    assert len(ShardSampler(3, 2, 0, 4, train=False)) == 0  # eval: an empty shard (rank 0 of 4 for 3) yields nothing


# --- pixels: DALI (CPU) against torchvision ----------------------------------------------------------------

# (dataset, family, bound on the mean |difference| in 0..255 units). Decoding is bit-exact in both backends;
# what is left is the uint8 rounding of the two bilinear resizes, at most 1 grey level (measured mean 0.16-0.18).
PIXEL_CASES = [
    ("array", "32px", 1e-3),  # no resize: equal up to float rounding
    ("jpeg_small", "32px", 1e-3),  # centre crops that cut and that pad
    ("jpeg", "imagenet", 0.25),
    ("jpeg", "fine_grained", 0.25),
    ("array", "imagenet", 0.25),  # 32 px arrays upsampled, as the DNFFM "upsample" option feeds them
]


@pytest.mark.parametrize("dataset,family,mean_bound", PIXEL_CASES)
def test_dali_and_torch_give_the_same_eval_pixels(data, dataset, family, mean_bound):
    config = transform_config(family)
    runs = {b: epoch(build_loader(data[dataset], "val", 4, backend=b, transforms=config, num_workers=0))
            for b in ("dali", "torch")}
    (dali_images, dali_labels, _), (torch_images, torch_labels, _) = runs["dali"], runs["torch"]
    assert torch.equal(dali_labels, torch_labels)
    assert dali_images.shape == torch_images.shape == (len(dali_labels), 3, config.size, config.size)
    diff = (pixels(dali_images, config) - pixels(torch_images, config)).abs()
    assert diff.mean() < mean_bound
    assert diff.max() < (1.01 if mean_bound > 1e-3 else 1e-3)


# --- the loader contract, for both backends -----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dataset", ["array_ids", "jpeg_ids"])
def test_train_epochs_over_two_ranks(data, backend, dataset):
    """N=17, batch 4, 2 ranks: shards of 8 and 9 samples; 8 fills two batches, so one sample is dropped."""
    loaders = [build_loader(data[dataset], "train", 4, rank=r, world_size=2, backend=backend, seed=7,
                            transforms=transform_config("32px" if dataset == "array_ids" else "imagenet", size=32),
                            num_workers=0) for r in range(2)]
    orders = []
    for e in range(2):
        for loader in loaders:
            loader.set_epoch(e)
        runs = [epoch(loader) for loader in loaders]
        assert [len(loader) for loader in loaders] == [len(run[2]) for run in runs] == [2, 2]
        assert all(min(run[2]) >= 1 for run in runs)
        labels = torch.cat([run[1] for run in runs]).tolist()
        assert len(labels) == len(set(labels)) == 17 - 1 == sum(loader.num_samples for loader in loaders)
        orders.append(labels)
    assert orders[0] != orders[1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("split,expected_dropped", [("even", 0), ("train", 1), ("odd", 0)])
def test_train_drops_only_the_documented_samples(data, backend, split, expected_dropped):
    loaders = [build_loader(data["array_ids"], split, 4, rank=r, world_size=2, backend=backend, train=True,
                            num_workers=0) for r in range(2)]
    n = loaders[0].sampler.total
    labels = torch.cat([epoch(loader)[1] for loader in loaders]).tolist()
    assert len(labels) == len(set(labels)) == n - expected_dropped == n - loaders[0].sampler.dropped
    assert len(loaders[0]) == len(loaders[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("split,world_size", [("even", 2), ("val", 2), ("odd", 2), ("val", 3), ("tiny", 3)])
def test_eval_yields_every_sample_exactly_once(data, backend, split, world_size):
    loaders = [build_loader(data["array_ids"], split, 4, rank=r, world_size=world_size, backend=backend,
                            num_workers=0) for r in range(world_size)]
    batches = [list(loader) for loader in loaders]  # with 2 samples on 3 ranks, rank 0 yields none
    n = loaders[0].sampler.total
    # File order, rank after rank.
    assert [int(y) for rank in batches for _, labels in rank for y in labels] == list(range(n))
    assert all(len(labels) >= 1 for rank in batches for _, labels in rank)
    assert [len(rank) for rank in batches] == [len(loader) for loader in loaders]
    assert sum(loader.num_samples for loader in loaders) == n


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_follow_the_file_list_and_the_labels_array(data, backend):
    for dataset in ("jpeg", "array"):
        expected = (
            [label for _, label in read_file_list(data[dataset], "val")]
            if dataset == "jpeg"
            else np.load(data[dataset] / "val_labels.npy").tolist()
        )
        loaders = [build_loader(data[dataset], "val", 4, rank=r, world_size=2, backend=backend, num_workers=0,
                                transforms=transform_config("32px")) for r in range(2)]
        assert torch.cat([epoch(loader)[1] for loader in loaders]).tolist() == expected
        assert loaders[0].classes == ["class_0000", "class_0001", "class_0002"]


def test_both_backends_yield_the_same_training_order(data):
    runs = {}
    for backend in ("dali", "torch"):
        loader = build_loader(data["jpeg_ids"], "train", 4, rank=1, world_size=2, backend=backend, seed=11,
                              transforms=transform_config("imagenet", size=32), num_workers=0)
        loader.set_epoch(2)
        runs[backend] = epoch(loader)[1]
    assert torch.equal(runs["dali"], runs["torch"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dataset", ["jpeg", "array"])
@pytest.mark.parametrize("family,size", [("32px", 32), ("imagenet", 224), ("fine_grained", 448)])
def test_output_shapes_and_dtypes(data, backend, dataset, family, size):
    for split, train in (("train", True), ("val", False)):
        loader = build_loader(data[dataset], split, 5, backend=backend, transforms=transform_config(family),
                              num_workers=0)
        images, labels = next(iter(loader))
        assert images.shape == (5, 3, size, size) and images.dtype == torch.float32 and images.is_contiguous()
        assert labels.shape == (5,) and labels.dtype == torch.int64
        assert images.device == labels.device == torch.device("cpu")
        assert loader.train is train
        # Normalised: a uint8 pixel maps into [-mean/std, (1-mean)/std].
        low = min(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
        high = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
        assert low - 1e-4 <= images.min() and images.max() <= high + 1e-4


def source_images(root: Path, split: str) -> list[np.ndarray]:
    """The split's images as (H, W, 3) uint8, decoded by Pillow (bit-exact with both loaders' decoders)."""
    if (root / f"{split}_images.npy").exists():
        return list(np.load(root / f"{split}_images.npy"))
    return [np.asarray(Image.open(root / rel).convert("RGB")) for rel, _ in read_file_list(root, split)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dataset,hflip", [("array_ids", True), ("array_ids", False), ("jpeg_small", True)])
def test_32px_training_crops_are_zero_padded_shifts_and_flips(data, backend, dataset, hflip):
    """Each output is a 32 px window of its source image zero-padded by 4, maybe mirrored; sources under 24 px
    lie inside the window (torchvision's pad_if_needed)."""
    root, p = data[dataset], 4
    sources = [image.astype(np.float32) for image in source_images(root, "train")]  # sample i has label i
    config = transform_config("32px", hflip=hflip)
    loader = build_loader(root, "train", 17, backend=backend, transforms=config, num_workers=0)
    starts, flips = [], 0
    for e in range(6):
        loader.set_epoch(e)
        images, labels, _ = epoch(loader)
        for image, label in zip(pixels(images, config).permute(0, 2, 3, 1).numpy(), labels.tolist()):
            source = sources[label]
            h, w = source.shape[:2]
            padded = np.pad(source, ((40, 40), (40, 40), (0, 0)))  # windows start at -40 at the most
            match = [
                (y, x, flip)  # start relative to the unpadded source
                for y in range(min(-p, h + p - 32), max(-p, h + p - 32) + 1)
                for x in range(min(-p, w + p - 32), max(-p, w + p - 32) + 1)
                for flip in (False, True)
                if np.abs(padded[40 + y : 72 + y, 40 + x : 72 + x][:, ::-1 if flip else 1] - image).max() < 0.01
            ]
            assert match, "not a window of its zero-padded source image"
            starts.append(match[0][:2])
            flips += all(m[2] for m in match)
    if dataset == "array_ids":  # 32 px sources: 9 x 9 offsets, 102 draws reach every edge
        assert {y for y, _ in starts} == {x for _, x in starts} == set(range(-4, 5))
    assert (flips > len(starts) // 5) if hflip else flips == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("workers", [0, 2])
def test_a_pass_left_early_does_not_leak_into_the_next(data, backend, workers):
    loader = build_loader(data["array_ids"], "train", 4, backend=backend, num_workers=workers)
    loader.set_epoch(1)
    full = epoch(loader)[1]
    first = next(iter(loader))[1]
    assert torch.equal(first, full[:4])
    assert torch.equal(epoch(loader)[1], full)


@pytest.mark.parametrize("backend", BACKENDS)
def test_workers_see_set_epoch(data, backend):
    loader = build_loader(data["jpeg_ids"], "train", 4, backend=backend, num_workers=2,
                          transforms=transform_config("imagenet", size=32))
    orders = []
    for e in (0, 1, 0):
        loader.set_epoch(e)
        orders.append(epoch(loader)[1].tolist())
    assert orders[0] == orders[2] != orders[1] and sorted(orders[0]) == list(range(17))


# --- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_missing_root_names_the_prepare_command(tmp_path, backend):
    with pytest.raises(DatasetNotPrepared, match="cls data prepare cifar10"):
        build_loader(tmp_path / "nowhere", "train", 4, name="cifar10", backend=backend)
    (tmp_path / "half").mkdir()
    with pytest.raises(DatasetNotPrepared, match="manifest.json is missing.*cls data prepare"):
        build_loader(tmp_path / "half", "train", 4, backend=backend)


def test_bad_arguments_raise_value_errors(data):
    with pytest.raises(ValueError, match="no split 'test'; its splits: train, val"):
        build_loader(data["array"], "test", 4, backend="torch")
    with pytest.raises(ValueError, match="unknown loader backend 'tf'; choose one of dali, torch"):
        build_loader(data["array"], "train", 4, backend="tf")
    with pytest.raises(ValueError, match="need 0 <= rank < world_size"):
        build_loader(data["array"], "train", 4, rank=2, world_size=2, backend="torch")
    with pytest.raises(ValueError, match="batch_size"):
        build_loader(data["array"], "train", 0, backend="torch")
    with pytest.raises(ValueError, match="holds dataset 'fixture_array', not 'cifar10'"):
        build_loader(data["array"], "train", 4, name="cifar10", backend="torch")


def test_dali_backend_without_dali_says_how_to_get_it(data, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import nvidia.dali now raises ImportError
    monkeypatch.delitem(sys.modules, "cls.data.dali", raising=False)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[dali\]' or use backend='torch'"):
        build_loader(data["array"], "train", 4, backend="dali")


def test_transform_configs_have_the_papers_defaults_and_reject_unknowns():
    assert transform_config("32px") == TransformConfig("32px", size=32, padding=4)
    assert (transform_config("imagenet").size, transform_config("imagenet").resize) == (224, 256)
    assert (transform_config("fine_grained").size, transform_config("fine_grained").resize) == (448, 550)
    assert transform_config("imagenet").scale == (0.08, 1.0) and transform_config("imagenet").ratio == (3 / 4, 4 / 3)
    assert transform_config("32px", hflip=False).hflip is False
    with pytest.raises(ValueError, match="unknown transform family 'cifar'"):
        transform_config("cifar")
    with pytest.raises(ValueError, match="no field 'flip'"):
        transform_config("32px", flip=False)
    with pytest.raises(ValueError, match="resize must be >= size"):
        transform_config("fine_grained", resize=400)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_dali_decodes_on_the_gpu_like_the_cpu(data):
    config = transform_config("imagenet")
    gpu = epoch(build_loader(data["jpeg"], "val", 4, backend="dali", device="cuda", transforms=config))
    cpu = epoch(build_loader(data["jpeg"], "val", 4, backend="dali", device="cpu", transforms=config))
    assert gpu[0].is_cuda and gpu[1].is_cuda
    assert torch.equal(gpu[1].cpu(), cpu[1])
    # nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's by a few grey levels.
    assert (pixels(gpu[0].cpu(), config) - pixels(cpu[0], config)).abs().mean() < 2.0
