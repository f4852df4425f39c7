"""Tiny prepared datasets in the layout of `cls.data.layout`, written from scikit-image's sample photos.

Sample `i` of a split has label `i % num_classes`; with `num_classes=None` every sample is its own class,
so a label names the sample and tests can check coverage and duplicates from labels alone.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

from cls.data.layout import Manifest, SplitInfo, array_paths, sha256_file, write_manifest

PHOTOS = ("astronaut", "chelsea", "coffee")  # 512x512, 300x451, 400x600 RGB


def _photos() -> list[np.ndarray]:
    return [getattr(skdata, name)() for name in PHOTOS]


def _random_crop(rng: np.random.Generator, photos: list[np.ndarray], h: int, w: int) -> np.ndarray:
    """An (h, w, 3) uint8 window of a random photo, resized when the photo is smaller than the window."""
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    ch, cw = min(h, ph), min(w, pw)
    y, x = rng.integers(ph - ch + 1), rng.integers(pw - cw + 1)
    window = photo[y : y + ch, x : x + cw]
    if (ch, cw) != (h, w):
        window = np.asarray(Image.fromarray(window).resize((w, h), Image.BILINEAR))
    return np.ascontiguousarray(window)


def _labels(n: int, num_classes: int | None) -> np.ndarray:
    return np.arange(n, dtype=np.int64) if num_classes is None else np.arange(n, dtype=np.int64) % num_classes


def _class_names(splits: dict[str, int], num_classes: int | None) -> list[str]:
    count = max(splits.values()) if num_classes is None else num_classes
    return [f"class_{c:04d}" for c in range(count)]


def write_array_dataset(
    root: str | Path,
    splits: dict[str, int],
    num_classes: int | None = 3,
    *,
    name: str = "fixture_array",
    family: str = "32px",
    side: int = 32,
    seed: int = 0,
) -> Manifest:
    """An array-kind dataset: `{split}_images.npy` (N, side, side, 3) uint8 and `{split}_labels.npy`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = _photos()
    info, checksums = {}, {}
    for split, n in splits.items():
        # Crops of 2-6x the output side, shrunk: varied content at the scale of CIFAR's objects.
        images = np.zeros((n, side, side, 3), np.uint8)
        for i, s in enumerate(rng.integers(2 * side, 6 * side, size=n)):
            images[i] = np.asarray(Image.fromarray(_random_crop(rng, photos, s, s)).resize((side, side), Image.BILINEAR))
        labels = _labels(n, num_classes)
        image_path, label_path = array_paths(root, split)
        np.save(image_path, images)
        np.save(label_path, labels)
        for path in (image_path, label_path):
            checksums[path.name] = sha256_file(path)
        info[split] = SplitInfo(count=n, per_class=_per_class(labels, splits, num_classes))
    manifest = Manifest(
        name=name, kind="array", family=family, classes=_class_names(splits, num_classes), splits=info,
        checksums=checksums, source={"fixture": "skimage.data " + ",".join(PHOTOS), "seed": seed},
    )
    write_manifest(root, manifest)
    return manifest


def write_jpeg_dataset(
    root: str | Path,
    splits: dict[str, int],
    num_classes: int | None = 3,
    *,
    name: str = "fixture_jpeg",
    family: str = "imagenet",
    sides: tuple[int, int] = (48, 160),
    shape: tuple[int, int] | None = None,
    seed: int = 0,
    quality: int = 90,
) -> Manifest:
    """A jpeg-kind dataset: real JPEG files and `{split}.txt`; each image is `shape` (h, w) if given, else both
    sides are drawn from `sides`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    photos = _photos()
    info, checksums = {}, {}
    for split, n in splits.items():
        labels = _labels(n, num_classes)
        lines = []
        for i, label in enumerate(labels):
            h, w = shape or rng.integers(sides[0], sides[1] + 1, size=2)
            rel = f"images/{split}/{label:04d}/{split}_{i:05d}.jpg"
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            Image.fromarray(_random_crop(rng, photos, int(h), int(w))).save(buffer, "JPEG", quality=quality)
            path.write_bytes(buffer.getvalue())
            checksums[rel] = sha256_file(path)
            lines.append(f"{rel} {label}\n")
        (root / f"{split}.txt").write_text("".join(lines))
        checksums[f"{split}.txt"] = sha256_file(root / f"{split}.txt")
        info[split] = SplitInfo(count=n, per_class=_per_class(labels, splits, num_classes))
    manifest = Manifest(
        name=name, kind="jpeg", family=family, classes=_class_names(splits, num_classes), splits=info,
        checksums=checksums, source={"fixture": "skimage.data " + ",".join(PHOTOS), "seed": seed},
    )
    write_manifest(root, manifest)
    return manifest


def _per_class(labels: np.ndarray, splits: dict[str, int], num_classes: int | None) -> list[int]:
    return np.bincount(labels, minlength=len(_class_names(splits, num_classes))).tolist()


FINE_GRAINED = ("cub200", "stanford_cars", "fgvc_aircraft")


def write_dataset_for(data: dict, root: Path, train: int = 4, evaluate: int = 2) -> None:
    """A tiny dataset of the kind and name a resolved `data` config expects, at `root`: arrays for the
    32-px datasets, JPEGs (of the config's transform family) for the others."""
    splits = {data["train_split"]: train, data["eval_split"]: evaluate}
    if data["name"] in ("cifar10", "cifar100", "svhn", "digits"):
        write_array_dataset(root, splits, num_classes=10, name=data["name"])
    else:
        family = "fine_grained" if data["name"] in FINE_GRAINED else "imagenet"
        write_jpeg_dataset(root, splits, num_classes=2, name=data["name"], family=family)
