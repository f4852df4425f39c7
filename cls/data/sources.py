"""Datasets by name, each read from the layout its publishers ship (`cls data prepare` turns them into
the layout of `cls.data.layout`).

A source checks its files and reads its class names when it is opened, so a missing download fails
before anything is written; `read(split)` then gives a split's pixels ("array" kind: 32-px sets) or its
image files ("jpeg" kind: everything else), never decoding a JPEG itself: `prepare` does that, once.
"""

from __future__ import annotations

import inspect
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
from PIL import Image

from .layout import FAMILIES, prepare_command

# torchvision's ImageFolder extensions: what DALI and PIL both decode. Other files in a tree are not samples.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class SourceNotFound(FileNotFoundError):
    """A dataset's download is missing or incomplete; the message names the missing path and the fix."""


class DownloadFailed(SourceNotFound):
    """`--download` could not fetch a dataset (no internet, a moved URL); the message says what to do instead."""


@dataclass(frozen=True)
class FileSample:
    path: Path  # the publisher's image file
    label: int
    crop_bottom: int = 0  # pixel rows to cut off the bottom before writing (FGVC-Aircraft's copyright banner)


@dataclass(frozen=True)
class ArraySplit:
    images: np.ndarray  # uint8, (N, H, W, 3), RGB
    labels: np.ndarray  # int64, (N,)


class Source:
    """A dataset in its publishers' layout. Subclasses set `root`, `splits`, `classes` and `options` in
    `__init__` (keyword-only arguments are the dataset's options) and return one split in `read`."""

    name: ClassVar[str]
    kind: ClassVar[str]  # "array" or "jpeg" (cls.data.layout.KINDS)
    family: str  # default transform family (cls.data.layout.FAMILIES)
    homepage: ClassVar[str]  # where the publishers ship it, for error messages
    downloadable: ClassVar[bool] = False  # torchvision can fetch it (`cls data prepare --download`)

    root: Path | None  # the directory actually read (src or the publisher's folder inside it)
    splits: tuple[str, ...]
    classes: list[str]
    options: dict[str, Any]  # the options in effect, defaults filled in; recorded in the manifest

    def read(self, split: str) -> ArraySplit | list[FileSample]:
        raise NotImplementedError

    @classmethod
    def download(cls, src: Path | None, **options: Any) -> None:
        raise ValueError(
            f"torchvision cannot download {cls.name}: get it from {cls.homepage}, unpack it under a directory "
            f"and run without --download: {prepare_command(cls.name, 'OUT_DIR')}"
        )

    # helpers for subclasses

    @classmethod
    def _missing(cls, path: Path, what: str) -> SourceNotFound:
        fetch = " (or add --download: torchvision fetches it)" if cls.downloadable else ""
        return SourceNotFound(
            f"{cls.name}: {path} is missing ({what}). Get {cls.name} from {cls.homepage}{fetch}, "
            f"unpack it and run: {prepare_command(cls.name, 'OUT_DIR')}"
        )

    @classmethod
    def _root(cls, src: Path | None, *inner: str) -> Path:
        """`src` or the first of the publisher's folders `inner` inside it: users point at either."""
        if src is None:
            raise ValueError(f"{cls.name} needs --src: the directory holding its download ({cls.homepage})")
        src = Path(src)
        if not src.is_dir():
            raise cls._missing(src, "the directory given as --src")
        return next((src / d for d in inner if (src / d).is_dir()), src)

    @classmethod
    def _require(cls, path: Path, what: str) -> Path:
        if not path.exists():
            raise cls._missing(path, what)
        return path

    def _split_of(self, split: str) -> str:
        if split not in self.splits:
            raise ValueError(f"{self.name} has no split {split!r}; its splits are: {', '.join(self.splits)}")
        return split


_SOURCES: dict[str, type[Source]] = {}


def register_source(cls: type[Source]) -> type[Source]:
    if cls.name in _SOURCES:
        raise ValueError(f"dataset {cls.name!r} is registered twice")
    _SOURCES[cls.name] = cls
    return cls


def list_sources() -> list[str]:
    return sorted(_SOURCES)


def get_source(name: str) -> type[Source]:
    try:
        return _SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(list_sources())}") from None


def source_options(name: str) -> dict[str, Any]:
    """Dataset `name`'s options and their defaults."""
    params = inspect.signature(get_source(name).__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def open_source(name: str, src: str | os.PathLike | None, **options: Any) -> Source:
    """Dataset `name` read from `src` (its download); an option it does not have raises with those it has."""
    known = source_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        have = ", ".join(f"{k}={v!r}" for k, v in known.items()) or "none"
        raise ValueError(f"dataset {name!r} has no option {', '.join(map(repr, unknown))}; its options are: {have}")
    return get_source(name)(None if src is None else Path(src), **options)


def stratified_split(
    labels: np.ndarray, ratios: Sequence[float], seed: int, *, per_class: int | None = None
) -> list[np.ndarray]:
    """Indices of each split, sorted: every class is shuffled (seeded) and cut in proportions `ratios`.

    Cutting each class at the rounded cumulative proportions keeps every split stratified and makes the
    parts add up to the class. `per_class` first keeps a random subset of that many images per class
    (seed 002 §4.3 uses 5,000 of Kaggle's 12,500 per class)."""
    ratios = _check_ratios(ratios)
    rng = np.random.default_rng(seed)
    cuts = np.cumsum(ratios)[:-1]
    parts: list[list[np.ndarray]] = [[] for _ in ratios]
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if per_class is not None and per_class > len(members):
            raise ValueError(f"per_class={per_class} but class {c} has only {len(members)} images")
        members = rng.permutation(members)[:per_class]
        for part, chunk in zip(parts, np.split(members, np.round(cuts * len(members)).astype(int))):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def _check_ratios(ratios: Sequence[float]) -> np.ndarray:
    r = np.asarray(ratios, dtype=float)
    if r.ndim != 1 or len(r) < 2 or (r < 0).any() or r.sum() <= 0:
        raise ValueError(f"ratios must be two or more non-negative proportions, e.g. [0.6, 0.2, 0.2]; got {ratios!r}")
    return r / r.sum()


def _split_by(
    splits: tuple[str, ...], labels: np.ndarray, ratios: Sequence[float], seed: int, **kw: Any
) -> dict[str, np.ndarray]:
    """{split: indices} for a seeded stratified split; splits whose proportion is 0 are left out."""
    if len(ratios) != len(splits):
        raise ValueError(f"ratios must give {len(splits)} proportions ({'/'.join(splits)}); got {list(ratios)}")
    parts = stratified_split(labels, ratios, seed, **kw)
    return {s: idx for s, idx, r in zip(splits, parts, ratios) if r > 0}


def _read_table(path: Path) -> list[tuple[str, str]]:
    """Lines "KEY VALUE" of a publisher's annotation file; VALUE may contain spaces (FGVC-Aircraft)."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            key, sep, value = line.strip().partition(" ")
            if not sep:
                raise ValueError(f"{path}:{n}: expected 'ID VALUE', got {line!r}")
            rows.append((key, value.strip()))
    return rows


def _lookup(table: dict[str, str], key: str, path: Path) -> str:
    try:
        return table[key]
    except KeyError:
        raise ValueError(f"{path} has no line for image id {key}: the annotation files disagree") from None


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR batches hold numpy arrays, lists and strings only: refuse any other global a pickle could call."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # what the published files (numpy 1.x) name
        ("numpy._core.multiarray", "_reconstruct"),  # what numpy 2 writes
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"a CIFAR batch should not reference {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[bytes, Any]:
    # Python 2 pickles: encoding="bytes" keeps their str keys as bytes (b"data", b"labels"), as the
    # publishers' own loading recipe does.
    with open(path, "rb") as f:
        return _CifarUnpickler(f, encoding="bytes").load()


class _Cifar(Source):
    kind = "array"
    family = "32px"
    downloadable = True
    folder: ClassVar[str]
    meta: ClassVar[tuple[str, bytes]]  # (file, key of the class names)
    label_key: ClassVar[bytes]
    batches: ClassVar[dict[str, tuple[str, ...]]]
    torchvision_class: ClassVar[str]

    def __init__(self, src: Path | None) -> None:
        self.root = self._root(src, self.folder)
        for f in (self.meta[0], *(b for files in self.batches.values() for b in files)):
            self._require(self.root / f, f"one of the python pickle files of {self.folder}/")
        meta_file, key = self.meta
        self.classes = [n.decode() for n in _unpickle(self.root / meta_file)[key]]
        self.splits = tuple(self.batches)
        self.options = {}

    def read(self, split: str) -> ArraySplit:
        batches = [_unpickle(self.root / f) for f in self.batches[self._split_of(split)]]
        data = np.concatenate([b[b"data"] for b in batches])
        # each row is the 32x32 R plane, then G, then B
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.concatenate([np.asarray(b[self.label_key], dtype=np.int64) for b in batches])
        return ArraySplit(np.ascontiguousarray(images), labels)

    @classmethod
    def download(cls, src: Path | None, **options: Any) -> None:
        _torchvision_download(cls.name, src, lambda d: getattr(d, cls.torchvision_class)(src, download=True))


@register_source
class Cifar10(_Cifar):
    name = "cifar10"
    homepage = "https://www.cs.toronto.edu/~kriz/cifar.html (cifar-10-python.tar.gz)"
    folder = "cifar-10-batches-py"
    meta = ("batches.meta", b"label_names")
    label_key = b"labels"
    batches = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
    torchvision_class = "CIFAR10"


@register_source
class Cifar100(_Cifar):
    name = "cifar100"
    homepage = "https://www.cs.toronto.edu/~kriz/cifar.html (cifar-100-python.tar.gz)"
    folder = "cifar-100-python"
    meta = ("meta", b"fine_label_names")
    label_key = b"fine_labels"  # the 100 classes; b"coarse_labels" are the 20 superclasses
    batches = {"train": ("train",), "test": ("test",)}
    torchvision_class = "CIFAR100"


@register_source
class SVHN(Source):
    """The cropped-digits format (train_32x32.mat, ...); `extra=True` adds the 531,131 easier images as
    split "extra" (train on train+extra to follow the SVHN paper's setting)."""

    name = "svhn"
    kind = "array"
    family = "32px"
    homepage = "http://ufldl.stanford.edu/housenumbers/ (format 2: train_32x32.mat, test_32x32.mat)"
    downloadable = True

    def __init__(self, src: Path | None, *, extra: bool = False) -> None:
        self.root = self._root(src, "svhn")
        self.splits = ("train", "test", "extra") if extra else ("train", "test")
        for split in self.splits:
            self._require(self.root / f"{split}_32x32.mat", f"SVHN's {split} split in format 2")
        self.classes = [str(d) for d in range(10)]
        self.options = {"extra": extra}

    def read(self, split: str) -> ArraySplit:
        from scipy.io import loadmat

        mat = loadmat(self.root / f"{self._split_of(split)}_32x32.mat")
        images = np.ascontiguousarray(np.moveaxis(mat["X"], -1, 0))  # MATLAB's (32, 32, 3, N) -> (N, 32, 32, 3)
        labels = mat["y"].astype(np.int64).ravel()
        labels[labels == 10] = 0  # SVHN labels the digit 0 as 10
        return ArraySplit(images, labels)

    @classmethod
    def download(cls, src: Path | None, *, extra: bool = False) -> None:
        splits = ("train", "test", "extra") if extra else ("train", "test")
        _torchvision_download(cls.name, src, lambda d: [d.SVHN(src, split=s, download=True) for s in splits])


@register_source
class Digits(Source):
    """scikit-learn's 1,797 8x8 digits (values 0..16) as 32x32 RGB uint8: the embedded dataset for the
    quickstart and the tests, with no download. Seeded stratified train/test split."""

    name = "digits"
    kind = "array"
    family = "32px"
    homepage = "scikit-learn (sklearn.datasets.load_digits, inside the wheel)"

    def __init__(self, src: Path | None, *, seed: int = 0, ratios: Sequence[float] = (0.8, 0.2)) -> None:
        if src is not None:
            raise ValueError("digits ships inside scikit-learn: leave out --src")
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.root = None
        self.classes = [str(d) for d in digits.target_names]
        self.options = {"seed": seed, "ratios": list(ratios)}
        self._images = _to_rgb32(digits.images)
        self._parts = _split_by(("train", "test"), digits.target, ratios, seed)
        self._labels = digits.target.astype(np.int64)
        self.splits = tuple(self._parts)

    def read(self, split: str) -> ArraySplit:
        idx = self._parts[self._split_of(split)]
        return ArraySplit(self._images[idx], self._labels[idx])

    @classmethod
    def download(cls, src: Path | None, **options: Any) -> None:
        pass  # inside scikit-learn's wheel: nothing to fetch


def _to_rgb32(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) values 0..16 -> (N, 32, 32, 3) uint8: rescaled to 0..255, bilinear 4x, grey to RGB."""
    scaled = images.astype(np.float32) * (255 / 16)
    up = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.Resampling.BILINEAR)) for im in scaled])
    grey = np.clip(np.rint(up), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


@register_source
class CUB200(Source):
    """CUB-200-2011 with its official train/test split (5,994 / 5,794 images)."""

    name = "cub200"
    kind = "jpeg"
    family = "fine_grained"
    homepage = "https://www.vision.caltech.edu/datasets/cub_200_2011/ (CUB_200_2011.tgz)"

    def __init__(self, src: Path | None) -> None:
        self.root = self._root(src, "CUB_200_2011")
        files = {
            f: self._require(self.root / f, "an annotation file of CUB_200_2011/")
            for f in ("classes.txt", "images.txt", "image_class_labels.txt", "train_test_split.txt")
        }
        self._require(self.root / "images", "CUB's image folder")
        self.classes = [name for _, name in sorted((int(i), name) for i, name in _read_table(files["classes.txt"]))]
        labels = dict(_read_table(files["image_class_labels.txt"]))
        is_train = dict(_read_table(files["train_test_split.txt"]))
        self._samples: dict[str, list[FileSample]] = {"train": [], "test": []}
        for image_id, rel in _read_table(files["images.txt"]):
            label = int(_lookup(labels, image_id, files["image_class_labels.txt"])) - 1  # 1-based
            split = "train" if _lookup(is_train, image_id, files["train_test_split.txt"]) == "1" else "test"
            self._samples[split].append(FileSample(self.root / "images" / rel, label))
        self.splits = ("train", "test")
        self.options = {}

    def read(self, split: str) -> list[FileSample]:
        return self._samples[self._split_of(split)]


@register_source
class StanfordCars(Source):
    """Stanford Cars from the official devkit (8,144 train / 8,041 test images, 196 classes). The test labels
    ship separately as cars_test_annos_withlabels.mat; the devkit's cars_test_annos.mat has none."""

    name = "stanford_cars"
    kind = "jpeg"
    family = "fine_grained"
    homepage = (
        "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (car_devkit.tgz, cars_train.tgz, cars_test.tgz, "
        "cars_test_annos_withlabels.mat; the original URL is gone, mirrors exist)"
    )
    TEST_ANNOS = "cars_test_annos_withlabels.mat"

    def __init__(self, src: Path | None) -> None:
        self.root = self._root(src, "stanford_cars")  # torchvision's layout puts it under stanford_cars/
        devkit = self.root / "devkit"
        meta = self._require(devkit / "cars_meta.mat", "the devkit's class names")
        self._annotations = {"train": self._require(devkit / "cars_train_annos.mat", "the devkit's train labels")}
        candidates = [self.root / self.TEST_ANNOS, devkit / self.TEST_ANNOS]
        test = next((p for p in candidates if p.exists()), None)
        if test is None:
            raise self._missing(candidates[0], f"the labelled test annotations; {candidates[1]} also serves")
        self._annotations["test"] = test
        self._images = {s: self._require(self.root / f"cars_{s}", f"the {s} images") for s in ("train", "test")}
        from scipy.io import loadmat

        self.classes = [str(n) for n in np.atleast_1d(loadmat(meta, squeeze_me=True)["class_names"])]
        self.splits = ("train", "test")
        self.options = {}

    def read(self, split: str) -> list[FileSample]:
        from scipy.io import loadmat

        path = self._annotations[self._split_of(split)]
        # squeeze_me turns the 1xN struct array into a 1-D record array (0-d for one image: atleast_1d)
        annotations = np.atleast_1d(loadmat(path, squeeze_me=True)["annotations"])
        if "class" not in (annotations.dtype.names or ()):
            raise ValueError(f"{path} has no 'class' field: the test labels are in {self.TEST_ANNOS}")
        return [
            FileSample(self._images[split] / str(fname), int(label) - 1)  # 1-based
            for fname, label in zip(annotations["fname"], annotations["class"])
        ]


@register_source
class FGVCAircraft(Source):
    """FGVC-Aircraft 2013b at the variant level (100 classes), splits train / val / test (3,334 / 3,333 /
    3,333) and trainval = train + val (6,667), on which seed 003 Table 1 trains; it tests on test (3,333).

    Every image ends in a 20-px-high copyright banner. `crop_banner` (default) cuts it off, as is common
    practice, so that a classifier cannot learn from the photographers' credits; torchvision keeps it."""

    name = "fgvc_aircraft"
    kind = "jpeg"
    family = "fine_grained"
    homepage = "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ (fgvc-aircraft-2013b.tar.gz)"
    downloadable = True
    BANNER_PX = 20

    def __init__(self, src: Path | None, *, crop_banner: bool = True) -> None:
        root = self._root(src, "fgvc-aircraft-2013b", "data")
        self.root = root / "data" if root.name == "fgvc-aircraft-2013b" else root
        variants = self._require(self.root / "variants.txt", "the class names")
        self.classes = [line.strip() for line in variants.read_text().splitlines() if line.strip()]
        self.splits = ("train", "val", "trainval", "test")
        self._lists = {
            s: self._require(self.root / f"images_variant_{s}.txt", f"the {s} split") for s in ("train", "val", "test")
        }
        self.options = {"crop_banner": crop_banner}

    def read(self, split: str) -> list[FileSample]:
        if self._split_of(split) == "trainval":  # as images_variant_trainval.txt: train, then val
            return self.read("train") + self.read("val")
        path = self._lists[split]
        index = {name: i for i, name in enumerate(self.classes)}
        crop = self.BANNER_PX if self.options["crop_banner"] else 0
        samples = []
        for image_id, variant in _read_table(path):
            if variant not in index:
                raise ValueError(f"{path}: variant {variant!r} of image {image_id} is not in variants.txt")
            samples.append(FileSample(self.root / "images" / f"{image_id}.jpg", index[variant], crop))
        return samples

    @classmethod
    def download(cls, src: Path | None, **options: Any) -> None:
        _torchvision_download(cls.name, src, lambda d: d.FGVCAircraft(src, download=True))


_KAGGLE_NAME = re.compile(r"(cat|dog)\.\d+\.jpe?g", re.IGNORECASE)


@register_source
class CatsVsDogs(Source):
    """Kaggle's Dogs vs. Cats (train/cat.N.jpg, train/dog.N.jpg; also Microsoft's PetImages/Cat, PetImages/Dog),
    split train/val/test 6:2:2, stratified and seeded, as seed 002 §4.3. `per_class=5000` keeps the paper's
    subset of 5,000 images per class."""

    name = "cats_vs_dogs"
    kind = "jpeg"
    family = "imagenet"
    homepage = "https://www.kaggle.com/c/dogs-vs-cats/data (train.zip)"

    def __init__(
        self,
        src: Path | None,
        *,
        seed: int = 0,
        ratios: Sequence[float] = (0.6, 0.2, 0.2),
        per_class: int | None = None,
    ) -> None:
        root = self._root(src)
        self.classes = ["cat", "dog"]  # Kaggle's submission labels: 1 = dog
        found = self._kaggle(root) or self._kaggle(root / "train") or self._pet_images(root)
        if found is None:
            raise self._missing(
                root / "train" / "cat.0.jpg",
                f"no cat.N.jpg / dog.N.jpg in {root} or {root / 'train'}, and no Cat/ and Dog/ folders in "
                f"{root} or {root / 'PetImages'}",
            )
        self.root, samples = found
        labels = np.array([s.label for s in samples])
        parts = _split_by(("train", "val", "test"), labels, ratios, seed, per_class=per_class)
        self._samples = {split: [samples[i] for i in idx] for split, idx in parts.items()}
        self.splits = tuple(parts)
        self.options = {"seed": seed, "ratios": list(ratios), "per_class": per_class}

    def _kaggle(self, folder: Path) -> tuple[Path, list[FileSample]] | None:
        if not folder.is_dir():
            return None
        names = sorted(e.name for e in os.scandir(folder) if _KAGGLE_NAME.fullmatch(e.name))
        samples = [FileSample(folder / n, self.classes.index(n.split(".")[0].lower())) for n in names]
        return (folder, samples) if samples else None

    def _pet_images(self, root: Path) -> tuple[Path, list[FileSample]] | None:
        from torchvision.datasets.folder import make_dataset

        for folder in (root / "PetImages", root):
            if (folder / "Cat").is_dir() and (folder / "Dog").is_dir():
                pairs = make_dataset(folder, {"Cat": 0, "Dog": 1}, extensions=IMG_EXTENSIONS, allow_empty=True)
                return folder, [FileSample(Path(p), label) for p, label in pairs]
        return None

    def read(self, split: str) -> list[FileSample]:
        return self._samples[self._split_of(split)]


@register_source
class Folder(Source):
    """Any class-per-folder tree (ImageFolder). With train/ (and val/, test/) inside src those are the splits;
    otherwise the images are split seeded and stratified in `ratios` (train/val/test, default 6:2:2; two
    proportions give train/test). Class names are the sorted folder names; hidden folders are skipped."""

    name = "folder"
    kind = "jpeg"
    family = "imagenet"  # the `family` option
    homepage = "your own class-per-folder tree (SRC/CLASS/IMAGE or SRC/{train,val,test}/CLASS/IMAGE)"
    SPLIT_DIRS = ("train", "val", "test")

    def __init__(
        self,
        src: Path | None,
        *,
        seed: int | None = None,
        ratios: Sequence[float] | None = None,
        family: str = "imagenet",
    ) -> None:
        from torchvision.datasets.folder import make_dataset

        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        self.family = family
        self.root = root = self._root(src)
        split_dirs = [s for s in self.SPLIT_DIRS if (root / s).is_dir()]
        # A tree that ships its splits keeps them; `seed` and `ratios` would be silently ignored there.
        if split_dirs and (seed is not None or ratios is not None):
            raise ValueError(f"{root} has its own splits ({', '.join(split_dirs)}/): seed and ratios do not apply")
        self.classes = sorted({d for top in (split_dirs or ["."]) for d in _subdirs(root / top)})
        if not self.classes:
            raise self._missing(root / "CLASS_NAME", "no class folders in --src")
        index = {c: i for i, c in enumerate(self.classes)}

        def samples(top: Path) -> list[FileSample]:
            pairs = make_dataset(top, index, extensions=IMG_EXTENSIONS, allow_empty=True)
            return [FileSample(Path(p), label) for p, label in pairs]

        if split_dirs:
            self._samples = {s: samples(root / s) for s in split_dirs}
            self.options = {"family": family}
        else:
            seed = 0 if seed is None else seed
            ratios = list(ratios or (0.6, 0.2, 0.2))
            everything = samples(root)
            splits = self.SPLIT_DIRS if len(ratios) == 3 else ("train", "test")
            parts = _split_by(splits, np.array([s.label for s in everything]), ratios, seed)
            self._samples = {s: [everything[i] for i in idx] for s, idx in parts.items()}
            self.options = {"seed": seed, "ratios": ratios, "family": family}
        self.splits = tuple(self._samples)

    def read(self, split: str) -> list[FileSample]:
        return self._samples[self._split_of(split)]


def _subdirs(path: Path) -> list[str]:
    return [e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")]


def _torchvision_download(name: str, src: Path | None, fetch: Callable[[Any], Any]) -> None:
    """Run a torchvision downloader; a failure (offline node, moved URL) becomes one clear `DownloadFailed`."""
    import torchvision.datasets

    if src is None:
        raise ValueError(f"--download needs --src: the directory to download {name} into")
    try:
        fetch(torchvision.datasets)
    except Exception as e:  # urllib, tarfile and torchvision's own checks each raise their own kind
        src = get_source(name)
        raise DownloadFailed(
            f"could not download {name} with torchvision ({type(e).__name__}: {e}). On a machine with internet, "
            f"or by hand from {src.homepage}, put it in a directory and run: {prepare_command(name, 'OUT_DIR')}"
        ) from e
