"""`build_loader`: batches of a prepared dataset for one rank, from DALI or from torch, with one contract.

A loader yields `(images, labels)`: float32 (B, 3, H, W) normalised images and int64 (B,) labels on its device.
Both backends take their batches from the same `ShardSampler`, so for one seed and epoch they yield the same
samples in the same order on every rank; only the random augmentations differ.

Sharding (what DDP training and evaluation rely on). Each epoch orders the N samples (train: a permutation drawn
from `(seed, epoch)`, identical on every rank; eval: file order) and gives rank r the contiguous shard
`order[N*r//W : N*(r+1)//W]` (W = world size; shards differ in size by at most one), cut into batches of
`batch_size` with a smaller last batch.

- TRAIN: every rank yields the same number of batches, none empty, and no sample twice in an epoch. Shards
  differ in batch count only when the smaller shards, of m = N // W samples, fill their batches exactly
  (m % batch_size == 0) and N % W != 0; then the last sample of each larger shard is dropped, N % W < W samples
  in all (0 whenever W divides N), different ones each epoch since the permutation changes. That is the least
  any sharding can drop while every batch but the last step's is full. N < W raises: not every rank could
  get a sample.
- EVAL: every sample is yielded exactly once across the ranks, nothing dropped or padded; shards of m and m + 1
  samples may differ by one batch, so evaluation must reduce its metrics once at the end, not per step. A rank
  whose shard is empty (N < W) yields no batch; no rank ever yields an empty one.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from cls.data.layout import FAMILIES, KINDS, Manifest, read_manifest
from cls.data.transforms import TransformConfig, transform_config

BACKENDS = ("dali", "torch")


class ShardSampler:
    """This rank's batches of sample indices for the current epoch, by the rules in the module docstring."""

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, *, train: bool,
                 seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if train and num_samples < world_size:
            raise ValueError(f"{num_samples} training samples cannot give each of {world_size} ranks a batch")
        self.total, self.batch_size, self.rank, self.world_size = num_samples, batch_size, rank, world_size
        self.train, self.seed, self.epoch = train, seed, 0
        sizes = [num_samples * (r + 1) // world_size - num_samples * r // world_size for r in range(world_size)]
        # Train: a shard of m + 1 samples takes one batch more than the m-sample shards exactly when m fills its
        # batches; capping every shard at the m-shards' batches times batch_size drops that one sample.
        cap = batch_size * math.ceil(min(sizes) / batch_size) if train else num_samples
        self._start = num_samples * rank // world_size
        self.num_samples = min(sizes[rank], cap)  # samples this rank yields per epoch
        self.dropped = num_samples - sum(min(size, cap) for size in sizes)  # samples no rank yields per epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def augmentation_seed(self) -> int:
        """Seed of the random augmentations: follows the loader's seed and differs per rank."""
        return int(np.random.SeedSequence((self.seed, self.rank)).generate_state(1)[0] >> 1)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def indices(self) -> np.ndarray:
        """This rank's sample indices of the current epoch, in the order they are yielded."""
        if self.train:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(self.total)
        else:
            order = np.arange(self.total)
        return order[self._start : self._start + self.num_samples]

    def batches(self) -> list[np.ndarray]:
        """The current epoch's batches of indices (int64 arrays), none empty."""
        indices = self.indices()
        return [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        return (batch.tolist() for batch in self.batches())


class Loader(ABC):
    """Iterable over `(images, labels)` batches of one split for one rank; see the module docstring."""

    def __init__(self, root: Path, manifest: Manifest, split: str, sampler: ShardSampler, transforms: TransformConfig,
                 device: torch.device):
        self.root, self.manifest, self.split = root, manifest, split
        self.sampler, self.transforms, self.device = sampler, transforms, device

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch."""
        return self.sampler.num_samples

    @property
    def train(self) -> bool:
        return self.sampler.train

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (training): the order depends only on the seed and `epoch`."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches this rank yields per epoch."""
        return len(self.sampler)

    def _check_count(self, found: int) -> None:
        if found != self.sampler.total:
            raise ValueError(f"{self.root}: split {self.split!r} has {found} samples, its manifest says "
                             f"{self.sampler.total}; prepare it again with `cls data prepare`")

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_loader(
    root: str | Path,
    split: str,
    batch_size: int,
    *,
    name: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    backend: str = "dali",
    device: str | torch.device | None = None,
    train: bool | None = None,
    transforms: TransformConfig | None = None,
    seed: int = 0,
    num_workers: int = 2,
) -> Loader:
    """A loader over `split` of the prepared dataset at `root` for `rank` of `world_size`.

    Under DDP, `rank` and `world_size` are the global ones and `device` is this process's GPU (cuda:LOCAL_RANK);
    it defaults to CUDA when there is one, and DALI then decodes on that GPU. `train` (default: split ==
    "train") picks random augmentation, a fresh order each epoch and the train sharding; `transforms` defaults
    to the manifest's family; `num_workers` is DALI's thread count or the torch DataLoader's worker processes.
    One pass at a time: starting a new pass ends the one before.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown loader backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    root = Path(root)
    manifest = read_manifest(root, name)
    if manifest.kind not in KINDS or manifest.family not in FAMILIES:
        raise ValueError(f"{root}: manifest has kind {manifest.kind!r} / family {manifest.family!r}; "
                         f"this cls reads kinds {KINDS} and families {FAMILIES}")
    if split not in manifest.splits:
        raise ValueError(f"{root} ({manifest.name}) has no split {split!r}; its splits: {', '.join(manifest.splits)}")
    train = split == "train" if train is None else train
    transforms = transforms or transform_config(manifest.family)
    device = torch.device(device) if device is not None else default_device()
    sampler = ShardSampler(manifest.splits[split].count, batch_size, rank, world_size, train=train, seed=seed)
    if backend == "dali":
        try:
            from cls.data.dali import DaliLoader
        except ImportError as err:
            raise ImportError(f"backend='dali' needs NVIDIA DALI ({err}); install it with pip install -e '.[dali]' "
                              "or use backend='torch'") from err
        return DaliLoader(root, manifest, split, sampler, transforms, device, num_threads=max(1, num_workers))
    from cls.data.torch_loader import TorchLoader

    return TorchLoader(root, manifest, split, sampler, transforms, device, num_workers=num_workers)
