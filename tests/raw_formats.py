"""Tiny datasets in each publisher's real on-disk format (pickles, MATLAB files, annotation text files, JPEGs),
so the readers of `cls.data.sources` are tested against the files they meet, not against our own layout.

Every writer returns what it wrote (labels, class names, file paths) for the tests to compare against.
Image `k` of a dataset is a flat colour derived from `k`, so a test can tell images apart after decoding.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image


def colour(k: int) -> tuple[int, int, int]:
    return (37 * k % 256, 91 * k % 256, 53 * k % 256)


def jpeg_bytes(k: int, size: tuple[int, int] = (24, 20), **save: object) -> bytes:
    """A `size` (width, height) JPEG of colour(k)."""
    buf = io.BytesIO()
    Image.new("RGB", size, colour(k)).save(buf, "JPEG", quality=95, **save)
    return buf.getvalue()


def write_jpeg(path: Path, k: int, size: tuple[int, int] = (24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(k, size))
    return path


def write_truncated_jpeg(path: Path, k: int = 0) -> Path:
    """A JPEG cut off in its entropy-coded data (noise makes that most of the file), as an interrupted
    download leaves it: headers intact, so it opens, but its pixels do not all decode."""
    noise = np.random.default_rng(k).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def write_text_as_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<html>404 Not Found</html>\n")
    return path


# --- CIFAR: python pickles of dicts with bytes keys (Python 2 str), data rows of R, G, B planes ------------


def _cifar_pickle(obj: dict) -> bytes:
    # Protocol 2, as the published files; numpy 2 names its reconstructor numpy._core, the files numpy.core.
    return pickle.dumps(obj, protocol=2).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _cifar_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> the publishers' (N, 3072) rows: the 1024 reds, then greens, then blues."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def write_cifar10(root: Path, n_per_class: int = 2, n_test_per_class: int = 1, seed: int = 0) -> dict:
    """root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(
        _cifar_pickle({b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in names], b"num_vis": 3072})
    )
    out = {"classes": names}
    for split, per_class, files in [
        ("train", n_per_class, [f"data_batch_{i}" for i in range(1, 6)]),
        ("test", n_test_per_class, ["test_batch"]),
    ]:
        labels = rng.permutation(np.repeat(np.arange(10), per_class))
        images = _cifar_images(rng, len(labels))
        for i, (idx, file) in enumerate(zip(np.array_split(np.arange(len(labels)), len(files)), files)):
            batch = {
                b"batch_label": f"{split} batch {i + 1} of {len(files)}".encode(),
                b"labels": labels[idx].tolist(),  # a list of ints in the published files
                b"data": _cifar_rows(images[idx]),
                b"filenames": [f"img_{j}.png".encode() for j in idx],
            }
            (folder / file).write_bytes(_cifar_pickle(batch))
        out[split] = (images, labels)
    return out


def write_cifar100(root: Path, n_per_class: int = 1, n_test_per_class: int = 1, seed: int = 0) -> dict:
    """root/cifar-100-python/{train, test, meta}, fine and coarse labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    fine = [f"fine_{i:02d}" for i in range(100)]
    coarse = [f"coarse_{i}".encode() for i in range(20)]
    (folder / "meta").write_bytes(
        _cifar_pickle({b"fine_label_names": [n.encode() for n in fine], b"coarse_label_names": coarse})
    )
    out = {"classes": fine}
    for split, per_class in [("train", n_per_class), ("test", n_test_per_class)]:
        labels = rng.permutation(np.repeat(np.arange(100), per_class))
        images = _cifar_images(rng, len(labels))
        entry = {
            b"filenames": [f"img_{j}.png".encode() for j in range(len(labels))],
            b"batch_label": f"{split} batch".encode(),
            b"fine_labels": labels.tolist(),
            b"coarse_labels": (labels // 5).tolist(),
            b"data": _cifar_rows(images),
        }
        (folder / split).write_bytes(_cifar_pickle(entry))
        out[split] = (images, labels)
    return out


# --- SVHN format 2: MATLAB v5 files, X (32, 32, 3, N) uint8, y (N, 1) double with 10 for the digit 0 ------


def write_svhn_mat(root: Path, n_train: int = 12, n_test: int = 6, n_extra: int = 0, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in [("train", n_train), ("test", n_test), ("extra", n_extra)]:
        if not n:
            continue
        digits = np.arange(n) % 10  # every digit, 0 included
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        y = np.where(digits == 0, 10, digits).astype(np.float64).reshape(n, 1)
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": np.moveaxis(images, 0, -1), "y": y})
        out[split] = (images, digits)
    return out


# --- CUB-200-2011 -------------------------------------------------------------------------------------


def write_cub(root: Path, n_classes: int = 3, n_per_class: int = 4) -> dict:
    """root/CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, images/}.
    Odd image ids are training images, as the file's 1/0 flags allow any mix."""
    folder = root / "CUB_200_2011"
    classes = [f"{c + 1:03d}.Bird_{c}" for c in range(n_classes)]
    images, labels, splits, out = [], [], [], {"classes": classes, "train": [], "test": []}
    image_id = 0
    for c, name in enumerate(classes):
        for i in range(n_per_class):
            image_id += 1
            rel = f"{name}/Bird_{c}_{i:04d}_{image_id}.jpg"
            write_jpeg(folder / "images" / rel, image_id)
            is_train = image_id % 2
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            splits.append(f"{image_id} {is_train}")
            out["train" if is_train else "test"].append((folder / "images" / rel, c))
    (folder / "classes.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(classes)))
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "train_test_split.txt").write_text("\n".join(splits) + "\n")
    return out


# --- Stanford Cars devkit: MATLAB struct arrays ---------------------------------------------------------

_CAR_FIELDS = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]


def _car_annotations(samples: list[tuple[str, int]], with_class: bool = True) -> np.ndarray:
    """A 1xN MATLAB struct array as in cars_train_annos.mat (uint8 class, 1-based)."""
    fields = _CAR_FIELDS if with_class else [f for f in _CAR_FIELDS if f[0] != "class"]
    annos = np.empty((1, len(samples)), dtype=fields)
    for i, (fname, label) in enumerate(samples):
        box = (np.uint16(1), np.uint16(2), np.uint16(20), np.uint16(18))
        annos[0, i] = (*box, np.uint8(label + 1), fname) if with_class else (*box, fname)
    return annos


def write_stanford_cars(
    root: Path, n_classes: int = 3, n_per_class: int = 2, test_annos_in: str = "root"
) -> dict:
    """root/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, devkit/cars_test_annos.mat (no labels),
    cars_test_annos_withlabels.mat (in root or devkit/), cars_train/, cars_test/}."""
    classes = [f"Maker Model {c} Sedan 20{10 + c}" for c in range(n_classes)]
    classes[-1] = "Ram C/V Cargo Van Minivan 2012"  # a real name with a slash
    devkit = root / "devkit"
    devkit.mkdir(parents=True)
    scipy.io.savemat(devkit / "cars_meta.mat", {"class_names": np.array(classes, dtype=object).reshape(1, -1)})
    out = {"classes": classes}
    for split in ("train", "test"):
        samples = [(f"{i + 1:05d}.jpg", i % n_classes) for i in range(n_classes * n_per_class)]
        for i, (fname, _) in enumerate(samples):
            write_jpeg(root / f"cars_{split}" / fname, i + (100 if split == "test" else 0))
        annos = _car_annotations(samples)
        if split == "train":
            scipy.io.savemat(devkit / "cars_train_annos.mat", {"annotations": annos})
        else:
            scipy.io.savemat(devkit / "cars_test_annos.mat", {"annotations": _car_annotations(samples, False)})
            where = root if test_annos_in == "root" else devkit
            scipy.io.savemat(where / "cars_test_annos_withlabels.mat", {"annotations": annos})
        out[split] = [(root / f"cars_{split}" / f, label) for f, label in samples]
    return out


# --- FGVC-Aircraft 2013b --------------------------------------------------------------------------------

AIRCRAFT_BANNER_PX = 20
AIRCRAFT_VARIANTS = ["707-320", "A300B4", "Cessna 172", "F/A-18", "DHC-1"]  # spaces and slashes, as the real ones


def write_fgvc_aircraft(root: Path, variants: list[str] = AIRCRAFT_VARIANTS, n_per_split: int = 2) -> dict:
    """root/fgvc-aircraft-2013b/data/{variants.txt, images_variant_{train,val,trainval,test}.txt, images/ID.jpg}.
    Images are 40x(30+20): colour(k) above a white 20-px banner, as the real images' copyright strip."""
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("".join(f"{v}\n" for v in variants))
    out = {"classes": list(variants)}
    k = 0
    for split in ("train", "val", "test"):
        lines, out[split] = [], []
        for label, variant in enumerate(variants):
            for _ in range(n_per_split):
                k += 1
                image_id = f"{1000000 + k * 7:07d}"
                image = Image.new("RGB", (40, 30 + AIRCRAFT_BANNER_PX), "white")
                image.paste(colour(k), (0, 0, 40, 30))
                image.save(data / "images" / f"{image_id}.jpg", quality=95)
                lines.append(f"{image_id} {variant}\n")
                out[split].append((data / "images" / f"{image_id}.jpg", label))
        (data / f"images_variant_{split}.txt").write_text("".join(lines))
    trainval = (data / "images_variant_train.txt").read_text() + (data / "images_variant_val.txt").read_text()
    (data / "images_variant_trainval.txt").write_text(trainval)
    return out


# --- Kaggle Dogs vs. Cats and class-per-folder trees ------------------------------------------------------


def write_cats_vs_dogs(root: Path, n_per_class: int = 10) -> dict:
    """root/train/{cat,dog}.N.jpg as Kaggle's train.zip unpacks, plus its unlabelled test1/."""
    out = {"classes": ["cat", "dog"], "files": []}
    for label, animal in enumerate(("cat", "dog")):
        for i in range(n_per_class):
            out["files"].append((write_jpeg(root / "train" / f"{animal}.{i}.jpg", 2 * i + label), label))
    write_jpeg(root / "test1" / "1.jpg", 999)
    return out


def write_folder_tree(root: Path, counts: dict[str, int], start: int = 0) -> list[tuple[Path, int]]:
    """root/CLASS/img_N.jpg with counts[CLASS] images per class; labels follow the sorted class names."""
    written = []
    for label, name in enumerate(sorted(counts)):
        for i in range(counts[name]):
            written.append((write_jpeg(root / name / f"img_{i}.jpg", start + 10 * label + i), label))
    return written
