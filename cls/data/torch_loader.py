"""The torch backend: Dataset classes for both kinds, torchvision v2 transforms and a DataLoader.

The fallback where DALI is not installed, and the baseline DALI is measured against (bench/data_loaders.py).
Batches come from the `ShardSampler` that the DALI backend uses too, as the DataLoader's batch sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cls.data.layout import Manifest, array_paths, read_file_list
from cls.data.loader import Loader, ShardSampler
from cls.data.transforms import TransformConfig, centre_offset, shorter_side_size

Transform = Callable[[torch.Tensor], torch.Tensor]


class ShorterSideResize:
    """Resize a (C, H, W) uint8 image so its shorter side is `size`, by `transforms.shorter_side_size`."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return F.resize(image, list(shorter_side_size(image.shape[-2], image.shape[-1], self.size)), antialias=True)


class CentreCrop:
    """Centre `size` x `size` crop with `transforms.centre_offset` (zero-padded where the image is smaller)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        return F.crop(image, centre_offset(h, self.size), centre_offset(w, self.size), self.size, self.size)


def build_transform(config: TransformConfig, train: bool) -> Transform:
    """`config` as torchvision v2 transforms: (3, H, W) uint8 image -> (3, size, size) float32, normalised."""
    size = config.size
    train = train and config.augment  # augment=False: training takes the evaluation transforms
    steps: list[Transform]
    if config.family == "32px":
        steps = [v2.RandomCrop(size, padding=config.padding, pad_if_needed=True)] if train else [CentreCrop(size)]
    elif config.family == "imagenet":
        if train:
            steps = [v2.RandomResizedCrop(size, scale=config.scale, ratio=config.ratio, antialias=True)]
        else:
            steps = [ShorterSideResize(config.resize), CentreCrop(size)]  # type: ignore[arg-type]
    else:  # fine_grained
        square = v2.Resize((config.resize, config.resize), antialias=True)  # type: ignore[arg-type]
        steps = [square, v2.RandomCrop(size)] if train else [square, CentreCrop(size)]
    if train and config.hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(config.mean), list(config.std))]
    return v2.Compose(steps)


class ArrayDataset(Dataset):
    """Samples of an array-kind split: the (N, H, W, 3) uint8 images, memory-mapped, as (3, H, W) tensors."""

    def __init__(self, root: Path, split: str, transform: Transform):
        self.images_path, labels_path = array_paths(root, split)
        self.labels = np.load(labels_path)
        self.transform = transform
        self._images: np.ndarray | None = None

    @property
    def images(self) -> np.ndarray:
        # Opened on first use so that each worker maps the file itself instead of unpickling a copy of it.
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        return self._images

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1)
        return self.transform(image), int(self.labels[i])


class JpegDataset(Dataset):
    """Samples of a jpeg-kind split, in `{split}.txt` order, decoded to RGB by Pillow."""

    def __init__(self, root: Path, split: str, transform: Transform):
        pairs = read_file_list(root, split)
        self.paths = [str(root / rel) for rel, _ in pairs]
        self.labels = np.array([label for _, label in pairs], dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        # Pillow's libjpeg-turbo decode is bit-exact with DALI's CPU decoder; torchvision.io's decode_jpeg is ~15%
        # faster but deprecated since torchvision 0.29. The transforms then run on the uint8 tensor.
        with Image.open(self.paths[i]) as file:
            image = F.pil_to_tensor(file.convert("RGB"))
        return self.transform(image), int(self.labels[i])


class TorchLoader(Loader):
    def __init__(self, root: Path, manifest: Manifest, split: str, sampler: ShardSampler, transforms: TransformConfig,
                 device: torch.device, *, num_workers: int):
        super().__init__(root, manifest, split, sampler, transforms, device)
        dataset_class = ArrayDataset if manifest.kind == "array" else JpegDataset
        self.dataset = dataset_class(root, split, build_transform(transforms, sampler.train))
        self._check_count(len(self.dataset))
        generator = torch.Generator().manual_seed(sampler.augmentation_seed)  # seeds the workers' random transforms
        self.loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,  # iterated in this process, so set_epoch reaches persistent workers too
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
            generator=generator,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
