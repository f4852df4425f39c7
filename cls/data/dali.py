"""The DALI backend: one pipeline per dataset kind, fed by the `ShardSampler` through `fn.external_source`.

Both kinds read through an external source, jpeg files as paths that `fn.io.file.read` opens and arrays as
memory-mapped uint8 batches, because that is what lets both backends meet the loader contract exactly (cls.data.loader):
`fn.readers.file` shuffles by an epoch counter of its own (so `set_epoch`, and a resumed run, cannot pick an
epoch's order), pads shards with repeated samples and gives uneven shards uneven batch counts. Here every
batch is exactly one the sampler planned: no padding to trim, no empty batch, the same on every rank. It runs as
fast as the reader with the same operators (docs/benchmarks.md).

One check picks the device: with a CUDA `device` the jpeg decoder runs "mixed" (nvJPEG, on the GPU) and the
pipeline is bound to that GPU; otherwise everything runs on the CPU with `device_id=None`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import nvidia.dali.math as dmath
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.backend import TensorGPU, TensorListCPU, TensorListGPU
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import Pipeline

from cls.data.layout import Manifest, array_paths, read_file_list
from cls.data.loader import Loader, ShardSampler
from cls.data.transforms import TransformConfig, shorter_side_size

Batch = tuple[np.ndarray | list[np.ndarray], np.ndarray]


class BatchSource:
    """The external source's callback: the batches the sampler planned for the current pass, then StopIteration."""

    def __init__(self, fetch: Callable[[np.ndarray], Batch]):
        self.fetch = fetch
        self.batches: list[np.ndarray] = []

    def __call__(self, info: types.BatchInfo) -> Batch:
        if info.iteration >= len(self.batches):
            raise StopIteration
        return self.fetch(self.batches[info.iteration])


class ArrayBatches:
    """(B, H + 2p, W + 2p, 3) uint8 images of a batch of indices from the memory-mapped split, with their labels.

    `padding` p zero-pads the whole batch in one numpy call, so the random crop after it is a crop position of
    crop_mirror_normalize: per-sample DALI operators cost more than 32-px images do.
    """

    def __init__(self, root: Path, split: str, padding: int = 0):
        images_path, labels_path = array_paths(root, split)
        self.images = np.load(images_path, mmap_mode="r")
        self.labels = np.load(labels_path)
        self.padding = padding

    @property
    def extent(self) -> tuple[int, int]:
        """(height, width) of every image served."""
        return self.images.shape[1] + 2 * self.padding, self.images.shape[2] + 2 * self.padding

    def __call__(self, indices: np.ndarray) -> Batch:
        images = self.images[indices]  # fancy indexing copies out of the map
        if self.padding:
            p = self.padding
            images = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        return images, self.labels[indices]


class JpegBatches:
    """The file paths (UTF-8 bytes, for fn.io.file.read) of a batch of indices of a jpeg split, with their labels."""

    def __init__(self, root: Path, split: str):
        pairs = read_file_list(root, split)
        self.paths = [str(root.resolve() / rel) for rel, _ in pairs]
        self.labels = np.array([label for _, label in pairs], dtype=np.int64)

    def __call__(self, indices: np.ndarray) -> Batch:
        return [np.frombuffer(self.paths[i].encode(), dtype=np.uint8) for i in indices], self.labels[indices]


def _uniform_position(margin: int) -> DataNode | float:
    """A crop position for crop_mirror_normalize whose start, round(position * margin), is uniform between 0 and
    `margin` (the image's extent minus the window's; negative where the window is larger)."""
    # Positions k / |margin| are exact after the product; fn.random.uniform with an integer dtype would round
    # and can overshoot its range.
    steps = abs(margin)
    return fn.random.uniform(values=[k / steps for k in range(steps + 1)]) if steps else 0.5


def _random_start(extent: DataNode, window: int, padding: int) -> DataNode:
    """A uniform integer start, relative to the unpadded image, of a `window` in the image zero-padded by
    `padding`: in [-padding, extent + padding - window], or [extent + padding - window, -padding] where the
    padded image is the smaller (torchvision's pad_if_needed). Per sample, int32."""
    margin = extent + 2 * padding - window
    positions = dmath.abs(margin) + 1
    start = dmath.min(dmath.floor(fn.random.uniform(range=[0.0, 1.0]) * positions), positions - 1)
    return fn.cast(dmath.min(margin, 0) - padding + start, dtype=types.INT32)


def _normalize(images: DataNode, config: TransformConfig, train: bool,
               position: tuple[DataNode | float, DataNode | float] = (0.5, 0.5)) -> DataNode:
    """`size` crop at `position` (y, x) in [0, 1] (default centred; a no-op where the image has that size),
    flip, (x / 255 - mean) / std, CHW float32."""
    mirror = fn.random.coin_flip(probability=0.5) if train and config.hflip else 0
    return fn.crop_mirror_normalize(
        images,
        crop=(config.size, config.size),
        crop_pos_y=position[0],
        crop_pos_x=position[1],
        out_of_bounds_policy="pad",
        # Fill values are output values: these are a zero pixel after normalisation, as torchvision pads.
        fill_values=[-m / s for m, s in zip(config.mean, config.std)],
        mirror=mirror,
        mean=[255 * m for m in config.mean],
        std=[255 * s for s in config.std],
        dtype=types.FLOAT,
        output_layout="CHW",
    )


def _augment(images: DataNode, config: TransformConfig, train: bool, extent: tuple[int, int] | None) -> DataNode:
    """The family's transforms (cls.data.transforms) on decoded HWC uint8 images.

    `extent` is the (height, width) every image has (arrays, 32px-train ones already padded by `ArrayBatches`),
    or None for per-sample sizes (decoded files).
    """
    size = config.size
    if config.family == "32px":
        if train and extent is not None:
            position = (_uniform_position(extent[0] - size), _uniform_position(extent[1] - size))
            return _normalize(images, config, train, position)
        if train:
            shape = images.shape()  # (H, W, C) per sample, on the CPU wherever the images are
            start = fn.stack(*(_random_start(shape[axis], size, config.padding) for axis in (0, 1)))
            images = fn.slice(images, start=start, shape=[size, size], axis_names="HW", out_of_bounds_policy="pad",
                              fill_values=0)
        return _normalize(images, config, train)
    if config.family == "imagenet":
        if train:
            images = fn.random_resized_crop(images, size=(size, size), random_area=list(config.scale),
                                            random_aspect_ratio=list(config.ratio), antialias=True)
        elif extent is not None:
            height, width = shorter_side_size(*extent, config.resize)  # type: ignore[arg-type]
            images = fn.resize(images, resize_y=height, resize_x=width, antialias=True)
        else:
            # transforms.shorter_side_size in integer operators, per sample; DALI's resize_shorter would round.
            shape = images.shape()
            height, width = shape[0], shape[1]
            shorter = dmath.min(height, width)
            images = fn.resize(images, resize_y=fn.cast(config.resize * height // shorter, dtype=types.FLOAT),
                               resize_x=fn.cast(config.resize * width // shorter, dtype=types.FLOAT), antialias=True)
        return _normalize(images, config, train)
    # fine_grained: every image is resize x resize after the first step.
    images = fn.resize(images, resize_x=config.resize, resize_y=config.resize, antialias=True)
    margin = config.resize - size  # type: ignore[operator]
    position = (_uniform_position(margin), _uniform_position(margin)) if train else (0.5, 0.5)
    return _normalize(images, config, train, position)


@pipeline_def
def jpeg_pipeline(source: BatchSource, config: TransformConfig, train: bool, decoder: str):
    """File paths and labels from `source` -> (B, 3, size, size) float32 images, (B,) int64 labels."""
    train = train and config.augment  # augment=False: training takes the evaluation transforms
    paths, labels = fn.external_source(source=source, num_outputs=2, batch=True, batch_info=True,
                                       dtype=[types.UINT8, types.INT64], ndim=[1, 0])
    # DALI's threads read the files: reading them in the Python callback cost 15% of the throughput on 2 cores.
    # Plain reads beat mmap for files of this size.
    jpegs = fn.io.file.read(paths, dont_use_mmap=True)
    if config.family == "imagenet" and train:
        # Decode only the random window (libjpeg-turbo / nvJPEG ROI decoding): the cheapest random resized crop.
        images = fn.decoders.image_random_crop(jpegs, device=decoder, output_type=types.RGB,
                                               random_area=list(config.scale), random_aspect_ratio=list(config.ratio))
        images = fn.resize(images, resize_x=config.size, resize_y=config.size, antialias=True)
        return _normalize(images, config, train), labels
    return _augment(fn.decoders.image(jpegs, device=decoder, output_type=types.RGB), config, train, None), labels


@pipeline_def
def array_pipeline(source: BatchSource, config: TransformConfig, train: bool, gpu: bool, extent: tuple[int, int]):
    """(B, H, W, 3) uint8 batches and labels from `source` -> (B, 3, size, size) float32 images, (B,) labels."""
    train = train and config.augment
    images, labels = fn.external_source(source=source, num_outputs=2, batch=True, batch_info=True,
                                        dtype=[types.UINT8, types.INT64], ndim=[3, 0], layout=["HWC", ""])
    return _augment(images.gpu() if gpu else images, config, train, extent), labels


class DaliLoader(Loader):
    def __init__(self, root: Path, manifest: Manifest, split: str, sampler: ShardSampler, transforms: TransformConfig,
                 device: torch.device, *, num_threads: int):
        super().__init__(root, manifest, split, sampler, transforms, device)
        fetch: ArrayBatches | JpegBatches
        if manifest.kind == "array":
            padded = transforms.family == "32px" and sampler.train and transforms.augment
            fetch = ArrayBatches(root, split, padding=transforms.padding if padded else 0)
        else:
            fetch = JpegBatches(root, split)
        self._check_count(len(fetch.labels))
        self.fetch, self.source = fetch, BatchSource(fetch)
        self.num_threads = num_threads
        self._pipe: Pipeline | None = None  # built on first use: building starts DALI's threads
        self._pass_open = False  # a pass was started and not run to its end

    def pipeline(self) -> Pipeline:
        if self._pipe is None:
            gpu = self.device.type == "cuda"
            index = self.device.index
            device_id = (torch.cuda.current_device() if index is None else index) if gpu else None
            options = dict(
                batch_size=self.sampler.batch_size,
                num_threads=self.num_threads,
                device_id=device_id,
                seed=self.sampler.augmentation_seed,
                # The dynamic executor reference-counts its outputs, so they can be handed to torch without a copy.
                exec_dynamic=True,
            )
            if self.manifest.kind == "jpeg":
                pipe = jpeg_pipeline(self.source, self.transforms, self.train, "mixed" if gpu else "cpu", **options)
            else:
                pipe = array_pipeline(self.source, self.transforms, self.train, gpu, self.fetch.extent, **options)
            pipe.build()
            self._pipe = pipe
        return self._pipe

    def _to_torch(self, batch: TensorListCPU | TensorListGPU) -> torch.Tensor:
        tensor = batch.as_tensor()  # outputs are dense: every sample has the same shape
        if isinstance(tensor, TensorGPU):
            with torch.cuda.device(self.device):
                return torch.from_dlpack(tensor)
        return torch.from_dlpack(tensor)

    def _close_pass(self, pipe: Pipeline) -> None:
        """End a pass its consumer left early: stop the source, drop what DALI already prefetched, rewind."""
        self.source.batches = []
        while True:
            try:
                pipe.run()
            except StopIteration:
                break
        pipe.reset()
        self._pass_open = False

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        pipe = self.pipeline()
        if self._pass_open:
            self._close_pass(pipe)
        self.source.batches = self.sampler.batches()
        self._pass_open = True
        while True:
            try:
                images, labels = pipe.run()
            except StopIteration:
                break
            yield self._to_torch(images), self._to_torch(labels).to(self.device, non_blocking=True)
        pipe.reset()
        self._pass_open = False
