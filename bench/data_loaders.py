"""Training-loader throughput, DALI (CPU) against torch loaders at equal workers, as rows for docs/benchmarks.md.

    python bench/data_loaders.py [--rounds 7] [--workers 2] [--jpegs 512] [--arrays 8192] [--epochs 2]

Two temporary prepared datasets are written from scikit-image's sample photos (the tests' fixtures):
`--jpegs` JPEG files of 500x375 px (224 px training transforms: random resized crop + flip, batch 64), and
`--arrays` 32x32 images (pad 4 + random 32 crop + flip, batch 256). Each run is `--epochs` full epochs of one
loader after a warm-up epoch, timed from its third batch (see `measure`) (a loader row named "not in cls" runs the DALI backend's operators from
`fn.readers.file`, to price the external source); the runs alternate (A, B, C, A, B, C, ...) for `--rounds` rounds so that load from
elsewhere on the machine hits every loader alike. The table gives the median and range of images/s, each
loader's ratio to its baseline as the median of the per-round ratios, and the median CPU time per image of the
whole process tree (workers included), which load from elsewhere does not change.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from torch.utils.data import DataLoader

from cls.data.layout import array_paths
from cls.data.loader import ShardSampler, build_loader
from cls.data.transforms import IMAGENET_MEAN, IMAGENET_STD

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from prepared_fixtures import write_array_dataset, write_jpeg_dataset  # noqa: E402


Results = dict[str, list[tuple[float, float]]]  # loader -> (images/s, CPU ms/image) per round


class VectorisedArrays:
    """The 32 px training transforms on whole batches of tensors in this process: one gather per batch.

    Same sampler and the same pad-4 / random-crop / flip / normalise as the loaders, with no per-sample Python.
    """

    def __init__(self, root: Path, batch_size: int, padding: int = 4, size: int = 32):
        images_path, labels_path = array_paths(root, "train")
        self.images, self.labels = np.load(images_path, mmap_mode="r"), np.load(labels_path)
        self.sampler = ShardSampler(len(self.labels), batch_size, train=True)
        self.padding, self.size = padding, size
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
        self.generator = torch.Generator().manual_seed(0)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        p, s = self.padding, self.size
        for indices in self.sampler.batches():
            batch = torch.from_numpy(self.images[indices]).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
            b, _, h, w = batch.shape
            padded = torch.nn.functional.pad(batch, (p, p, p, p))
            dy = torch.randint(0, h + 2 * p - s + 1, (b, 1), generator=self.generator)
            dx = torch.randint(0, w + 2 * p - s + 1, (b, 1), generator=self.generator)
            flip = torch.rand(b, 1, generator=self.generator) < 0.5
            steps = torch.arange(s)
            rows = dy + steps
            cols = torch.where(flip, dx + s - 1 - steps, dx + steps)
            crops = padded[torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None],
                           rows[:, None, :, None], cols[:, None, None, :]]
            yield (crops.float() - self.mean) / self.std, torch.from_numpy(self.labels[indices])


class DaliFileReader:
    """The same DALI operators as the cls DALI backend fed by `fn.readers.file` instead of the external source:
    not used by cls (it cannot meet the loader contract), measured to show what the external source costs."""

    def __init__(self, root: Path, batch_size: int, threads: int):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        from cls.data.dali import _normalize
        from cls.data.transforms import transform_config

        config = transform_config("imagenet")

        @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=None, exec_dynamic=True)
        def pipeline():
            jpegs, labels = fn.readers.file(file_root=str(root), file_list=str(root / "train.txt"), name="Reader",
                                            shuffle_after_epoch=True, pad_last_batch=True)
            images = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB,
                                                   random_area=list(config.scale),
                                                   random_aspect_ratio=list(config.ratio))
            images = fn.resize(images, resize_x=config.size, resize_y=config.size, antialias=True)
            return _normalize(images, config, True), labels

        self.iterator = DALIGenericIterator(pipeline(), ["images", "labels"], reader_name="Reader",
                                            last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for (batch,) in self.iterator:
            yield batch["images"], batch["labels"]


def torchvision_imagefolder(root: Path, batch_size: int, workers: int) -> DataLoader:
    """The classic baseline: ImageFolder + PIL transforms + DataLoader (torchvision's reference recipe)."""
    transform = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = torchvision.datasets.ImageFolder(str(root / "images" / "train"), transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0)


def cls_loader(root: Path, batch_size: int, backend: str, workers: int) -> Iterable:
    return build_loader(root, "train", batch_size, backend=backend, num_workers=workers, device="cpu")


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live descendants (DataLoader workers), from /proc.

    CPU time per image does not depend on what else runs on the machine, unlike images per second.
    """
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
        todo += parents.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def measure(loader: Iterable, epochs: int, first_epoch: int, skip: int = 2) -> tuple[float, float]:
    """(images per second, CPU milliseconds per image) over `epochs` epochs, from the `skip`-th batch on.

    A DALI pipeline fed by a reader keeps computing its next `prefetch_queue_depth` (2) batches after an epoch
    ends, outside the timed window and during the next loader's; skipping each run's first 2 batches and
    letting the machine settle afterwards keeps that head start out of every row.
    """
    count, batches = 0, 0
    for epoch in range(first_epoch, first_epoch + epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for images, _ in loader:
            batches += 1
            if batches == skip:
                cpu, start = tree_cpu_seconds(), time.perf_counter()
            elif batches > skip:
                count += len(images)
    speed, cpu_ms = count / (time.perf_counter() - start), (tree_cpu_seconds() - cpu) / count * 1e3
    time.sleep(0.5)
    return speed, cpu_ms


def alternate(loaders: dict[str, Iterable], rounds: int, epochs: int) -> Results:
    for loader in loaders.values():
        measure(loader, 1, 0)  # warm-up: DALI builds, worker processes start, files enter the page cache
    results: Results = {name: [] for name in loaders}
    for r in range(rounds):
        for name, loader in loaders.items():
            results[name].append(measure(loader, epochs, 1 + r * epochs))
        print(f"  round {r + 1}: " + ", ".join(f"{n} {v[-1][0]:.0f}" for n, v in results.items()), file=sys.stderr)
    return results


def rows(data: str, batch: int, workers: int, results: Results, baseline: str) -> list[str]:
    """Markdown rows; loaders named "in-process" run in the main process without workers."""
    out = []
    for name, values in results.items():
        used = "–" if "in-process" in name else str(workers)
        speed, cpu = [v for v, _ in values], statistics.median(c for _, c in values)
        ratio = statistics.median(v / b for v, (b, _) in zip(speed, results[baseline]))
        out.append(f"| {data} | {name} | {used} | {batch} | {statistics.median(speed):,.0f} | "
                   f"{min(speed):,.0f}–{max(speed):,.0f} | {ratio:.2f} | {cpu:.3f} |")
    return out


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())
    return (f"{model}, {os.cpu_count()} cores, CPU only; load average {os.getloadavg()[0]:.2f} at the start; "
            f"torch {torch.__version__}, torchvision {torchvision.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per timed run")
    parser.add_argument("--workers", type=int, default=2, help="DALI threads = DataLoader worker processes")
    parser.add_argument("--jpegs", type=int, default=512)
    parser.add_argument("--arrays", type=int, default=8192)
    args = parser.parse_args()
    import nvidia.dali

    w = args.workers
    print(f"{machine()}, DALI {nvidia.dali.__version__}\n")
    table = ["| data | loader | workers | batch | img/s (median) | range | × baseline | CPU ms/img |",
             "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        jpeg_root, array_root = Path(tmp) / "jpeg", Path(tmp) / "array"
        write_jpeg_dataset(jpeg_root, {"train": args.jpegs}, num_classes=2, shape=(375, 500))
        write_array_dataset(array_root, {"train": args.arrays}, num_classes=10)

        print(f"JPEG, {args.jpegs} files of 500x375, 224 px training transforms, batch 64", file=sys.stderr)
        baseline = "torchvision ImageFolder + PIL"
        jpeg: dict[str, Iterable] = {
            baseline: torchvision_imagefolder(jpeg_root, 64, w),
            "cls torch backend (PIL decode, v2 tensor transforms)": cls_loader(jpeg_root, 64, "torch", w),
            "cls DALI backend (CPU)": cls_loader(jpeg_root, 64, "dali", w),
            "DALI fn.readers.file, same operators (not in cls)": DaliFileReader(jpeg_root, 64, w),
        }
        table += rows("JPEG 500x375 → 224", 64, w, alternate(jpeg, args.rounds, args.epochs), baseline)
        del jpeg

        print(f"arrays, {args.arrays} images of 32x32, pad-crop-flip, batch 256", file=sys.stderr)
        baseline = f"vectorised torch, whole batches (in-process, {torch.get_num_threads()} threads)"
        arrays: dict[str, Iterable] = {
            baseline: VectorisedArrays(array_root, 256),
            "cls torch backend (per-sample v2)": cls_loader(array_root, 256, "torch", w),
            "cls DALI backend (CPU, external_source)": cls_loader(array_root, 256, "dali", w),
        }
        results = alternate(arrays, args.rounds, args.epochs)
        table += rows("arrays 32x32", 256, w, results, baseline)
    print("\n".join(table))
    print(f"\n`python bench/data_loaders.py --rounds {args.rounds} --epochs {args.epochs} --workers {w} "
          f"--jpegs {args.jpegs} --arrays {args.arrays}`")


if __name__ == "__main__":
    main()
