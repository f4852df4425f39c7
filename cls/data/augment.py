"""Traditional augmentation of seed 002 (Zheng et al.), §4 and Table 2, as offline dataset expansion.

Seed 002 §4.3 expands the cats-and-dogs data offline and trains on the result, so augmentation here writes a
NEW prepared dataset (`cls.data.layout`, kind "jpeg"), in one of two split orders (`SPLIT_ORDERS`):

- "paper", what §4.3 does: the 10,000 images are expanded to 20,000 and the enhanced set is then split 6:2:2,
  "the enhanced data is also based on the ratio of 6:2:2". Every image of the source (all of its splits) gets
  `copies` augmented copies; the originals keep the source's own 6:2:2 split and the copies are split 6:2:2
  (stratified, seeded) on their own, so augmented images reach validation and test, and a copy may be tested
  while its original is trained on.
- "clean", the sound protocol: the source is split first and only its train split is expanded (6,000 ->
  12,000; 16,000 in all); val and test are carried over unchanged and never augmented.

Either way the files are hard links (or copies across file systems) of the source's plus the new images, and
manifest.source records `split_order` and how many generated images each split holds (`generated`).

Policies are Table 2's operations: "pan" (random translation), "crop" (random crop resized back to the
original size), "rotate" and "noise" (additive Gaussian), and any "+"-joined sequence of them, applied in
the order written ("pan+crop", "crop+rotate", "rotate+noise", "pan+noise" are Table 2's rows). The paper
gives no magnitudes: they are `AugmentConfig` fields.

`expand_prepared` is the shared writer: `cls.data.stylize` expands datasets through it too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import numpy as np

from .sources import stratified_split
from .layout import (
    IMAGE_CHECKSUMS,
    MANIFEST,
    DatasetNotPrepared,
    Manifest,
    SplitInfo,
    read_file_list,
    read_manifest,
    sha256_file,
    write_manifest,
    write_image_checksums,
)

OPERATIONS = ("pan", "crop", "rotate", "noise")
# Per-image digests ("DIGEST  PATH" lines), the name and format `cls data prepare` uses for jpeg datasets.
# The traditional rows of seed 002 Table 2 ("Crop + rotate" is listed twice there; one policy here).
TABLE_2_POLICIES = ("pan+crop", "crop+rotate", "rotate+noise", "pan+noise")


@dataclass(frozen=True)
class AugmentConfig:
    """Magnitudes of the Table 2 operations (seed 002 gives none; these are common choices).

    pan: largest shift as a fraction of width and height (±10%).
    crop_scale: range of the crop's area as a fraction of the image's (0.7-1.0); the crop keeps the image's
        aspect ratio times a factor drawn log-uniformly from `crop_ratio` (1-1: no distortion when resized back).
    rotate: largest rotation in degrees (±15°), about the centre, size kept (corners filled).
    noise_sigma: standard deviation of the additive Gaussian noise as a fraction of the 0-255 range (0.05).
    fill: 0-255 grey value of the pixels that pan and rotate uncover (0: black, torchvision's default).
    jpeg_quality: quality of the written JPEGs (95: re-encoding should not add visible artefacts).
    """

    pan: float = 0.10
    crop_scale: tuple[float, float] = (0.7, 1.0)
    crop_ratio: tuple[float, float] = (1.0, 1.0)
    rotate: float = 15.0
    noise_sigma: float = 0.05
    fill: int = 0
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        # Tuples from JSON/argparse arrive as lists; the dataclass is frozen, hence object.__setattr__.
        object.__setattr__(self, "crop_scale", tuple(self.crop_scale))
        object.__setattr__(self, "crop_ratio", tuple(self.crop_ratio))
        lo, hi = self.crop_scale
        problems = []
        if not 0 <= self.pan < 1:
            problems.append(f"pan must be in [0, 1), got {self.pan}")
        if not 0 < lo <= hi <= 1:
            problems.append(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            problems.append(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        if not 0 <= self.rotate <= 180:
            problems.append(f"rotate must be in [0, 180] degrees, got {self.rotate}")
        if self.noise_sigma < 0:
            problems.append(f"noise_sigma must be >= 0, got {self.noise_sigma}")
        if not 0 <= self.fill <= 255:
            problems.append(f"fill must be a 0-255 grey value, got {self.fill}")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if problems:
            raise ValueError("; ".join(problems))


def parse_policy(policy: str) -> tuple[str, ...]:
    """"pan+noise" -> ("pan", "noise"); an unknown or repeated operation raises, listing the valid ones."""
    ops = tuple(p.strip() for p in policy.split("+"))
    unknown = [p for p in ops if p not in OPERATIONS]
    if unknown or not policy.strip():
        raise ValueError(
            f"unknown augmentation policy {policy!r}: the operations are {', '.join(OPERATIONS)}, "
            f"alone or joined with '+' (seed 002 Table 2: {', '.join(TABLE_2_POLICIES)})"
        )
    if len(set(ops)) != len(ops):
        raise ValueError(f"policy {policy!r} repeats an operation; use each of {', '.join(OPERATIONS)} at most once")
    return ops


def build_transform(policy: str, height: int, width: int, config: AugmentConfig | None = None) -> v2.Compose:
    """The policy's operations, in order, for uint8 (3, H, W) tensors of size `height` x `width`."""
    cfg = config or AugmentConfig()
    ops: list[v2.Transform] = []
    for op in parse_policy(policy):
        if op == "pan":
            ops.append(v2.RandomAffine(degrees=0, translate=(cfg.pan, cfg.pan), fill=cfg.fill))
        elif op == "crop":
            aspect = width / height  # RandomResizedCrop's ratio is w/h: keep the image's own, times the jitter
            ratio = (aspect * cfg.crop_ratio[0], aspect * cfg.crop_ratio[1])
            ops.append(v2.RandomResizedCrop((height, width), scale=cfg.crop_scale, ratio=ratio, antialias=True))
        elif op == "rotate":
            ops.append(
                v2.RandomRotation(cfg.rotate, interpolation=v2.InterpolationMode.BILINEAR, fill=cfg.fill)
            )
        else:  # "noise": torchvision adds σ·255 to uint8 images and clips to 0-255
            ops.append(v2.GaussianNoise(sigma=cfg.noise_sigma, clip=True))
    return v2.Compose(ops)


def image_seed(seed: int, key: str, copy: int) -> int:
    """A seed for one augmented copy, from the run's seed, the image's path and the copy index.

    Hashing (not a running RNG) makes each copy independent of the order and number of the others, so a
    run is reproducible image by image.
    """
    digest = hashlib.sha256(f"{seed}\0{key}\0{copy}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def augment_image(
    image: Tensor, policy: str, seed: int, config: AugmentConfig | None = None
) -> Tensor:
    """One augmented copy of a uint8 (3, H, W) image; the same seed gives the same copy."""
    if image.dtype != torch.uint8 or image.dim() != 3:
        raise ValueError(f"augment_image takes a uint8 (3, H, W) tensor, got {image.dtype} {tuple(image.shape)}")
    transform = build_transform(policy, image.shape[-2], image.shape[-1], config)
    # v2 transforms draw from the global RNG: fork it so seeding here leaves the caller's stream untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)


def read_rgb(path: str | os.PathLike) -> Tensor:
    """An image file as a uint8 (3, H, W) RGB tensor.

    PIL, not torchvision.io: torchvision 0.29 deprecates its image codecs (for TorchCodec, not installed)."""
    with Image.open(path) as im:
        return TF.pil_to_tensor(im.convert("RGB"))


def encode(image: Tensor, quality: int) -> bytes:
    """A uint8 (3, H, W) RGB tensor as JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------
# The shared writer: a prepared jpeg dataset + generated train images -> a new prepared jpeg dataset.

# (path relative to the new root, label, encoded JPEG) for each generated training image.
NewImage = tuple[str, int, bytes]
# Gets the source root and its train (path, label) pairs; yields the images to add to train.
Generator = Callable[[Path, list[tuple[str, int]]], Iterable[NewImage]]


def copy_name(rel: str, tag: str) -> str:
    """Where the copy `tag` of train image `rel` goes: beside it, "name__tag.jpg" (no spaces: DALI lists)."""
    p = Path(rel)
    name = f"{p.stem}__{tag}.jpg"
    if any(c.isspace() for c in name):
        raise ValueError(f"copy name {name!r} has whitespace, which the {{split}}.txt lists cannot hold")
    return (p.parent / name).as_posix()


def _normalised(source: dict[str, Any]) -> Any:
    """`source` as it reads back from manifest.json (tuples become lists), for comparison."""
    return json.loads(json.dumps(source, sort_keys=True))


def default_mode(path: Path) -> None:
    """Give `path` the mode a plain open()/mkdir() would. mkdtemp makes 0700 directories (and mkstemp 0600
    files), which would hide a dataset or checkpoint from the machine's other users."""
    mask = os.umask(0)  # the only way to read the umask; set straight back
    os.umask(mask)
    path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Carry a file over unchanged: a hard link where possible (no disk), a byte copy otherwise."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def check_output(src_root: Path, out_root: Path, source: dict[str, Any]) -> Manifest | None:
    """None when `out_root` may be written; its manifest when it already holds this very expansion.

    Raises when it holds anything else: an expansion is never written over a different directory.
    """
    if out_root.resolve() == src_root.resolve():
        raise ValueError(f"the output {out_root} is the source dataset; choose another --out")
    if not out_root.exists():
        return None
    if not out_root.is_dir():
        raise FileExistsError(f"{out_root} exists and is not a directory; choose another --out")
    if not any(out_root.iterdir()):
        return None
    if (out_root / MANIFEST).is_file():
        try:
            existing = read_manifest(out_root)
        except (DatasetNotPrepared, ValueError, TypeError, KeyError) as e:
            raise FileExistsError(f"{out_root} holds a {MANIFEST} this cls cannot read ({e}); choose another --out")
        # `generated` (the counts the write found) is an outcome, not part of what was asked for.
        if {k: v for k, v in existing.source.items() if k != "generated"} == _normalised(source):
            return existing
        raise FileExistsError(
            f"{out_root} already holds a different prepared dataset (source {existing.source.get('method', '?')} "
            f"of {existing.source.get('expanded_from', '?')}); remove it or choose another --out"
        )
    raise FileExistsError(f"{out_root} exists and is not empty; remove it or choose another --out")


SPLIT_ORDERS = ("paper", "clean")
PAPER_RATIOS = (0.6, 0.2, 0.2)  # seed 002 §4.3: train, val, test


def check_split_order(split_order: str) -> str:
    if split_order not in SPLIT_ORDERS:
        raise ValueError(f"split_order must be one of {SPLIT_ORDERS} (paper: expand then split 6:2:2, seed 002 "
                         f"§4.3; clean: split then expand train only), got {split_order!r}")
    return split_order


def expand_prepared(
    src_root: str | os.PathLike,
    out_root: str | os.PathLike,
    generate: Generator,
    source: dict[str, Any],
    *,
    src_manifest: Manifest | None = None,
    split_order: str = "clean",
    seed: int = 0,
) -> Manifest:
    """Write `out_root`: `src_root` with the images `generate` yields added, in `split_order` (module docstring):
    "clean" adds them to train only and `generate` sees the train images; "paper" has `generate` see every
    split's images and splits what it yields 6:2:2 (stratified by class, seeded by `seed`).

    Every split's files are carried over unchanged; generated images are named by `generate` (their own names,
    under images/train/ for "clean"; "paper" moves each into the images/{split}/ of the split it lands in). The tree is built in a hidden sibling directory, its manifest written last, and the
    directory renamed into place, so `out_root` is a complete prepared dataset or absent. `source` goes
    into manifest.source (with the source dataset's own provenance under "parent"); if `out_root` already
    holds a dataset made with the same `source`, it is returned as it is.
    """
    src_root, out_root = Path(src_root), Path(out_root)
    src = src_manifest or read_manifest(src_root)
    if src.kind != "jpeg":
        raise ValueError(f"{src_root} is a {src.kind!r} dataset; offline expansion writes JPEG datasets only")
    if "train" not in src.splits:
        raise ValueError(f"{src_root} has no train split (splits: {', '.join(src.splits)})")
    check_split_order(split_order)
    paper = split_order == "paper"
    if paper and not {"train", "val", "test"} <= set(src.splits):
        raise ValueError(f"split_order=paper splits the expanded set into train/val/test 6:2:2; {src_root} has splits "
                         f"{', '.join(src.splits)} (prepare it with its 6:2:2 split, or use split_order=clean)")
    # As it reads back from manifest.json (tuples as lists), so the returned manifest equals the written one.
    source = {**source, "split_order": split_order, **({"split_seed": seed} if paper else {})}
    source = _normalised({**source, "expanded_from": str(src_root.resolve()), "parent": src.source})
    existing = check_output(src_root, out_root, source)
    if existing is not None:
        return existing

    out_root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_root.parent, prefix=f".{out_root.name}.", suffix=".tmp"))
    try:
        default_mode(tmp)
        splits, checksums, image_sums = {}, {}, []
        lists = {split: read_file_list(src_root, split) for split in src.splits}
        taken = {rel for pairs in lists.values() for rel, _ in pairs}
        for pairs in lists.values():
            for rel, _ in pairs:
                _link_or_copy(src_root / rel, tmp / rel)

        def write_generated(pairs: list[tuple[str, int]], prefix: str) -> list[tuple[str, int, str]]:
            """Write what `generate` yields for `pairs`: (rel, label, sha256) of each new image."""
            made = []
            for rel, label, data in generate(src_root, list(pairs)):
                if rel in taken or not rel.startswith(prefix):
                    raise ValueError(f"generated image {rel!r} is outside {prefix} or reuses a name")
                if not 0 <= label < len(src.classes):
                    raise ValueError(f"generated image {rel!r} has label {label}, not a class index")
                taken.add(rel)
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(data)
                made.append((rel, label, hashlib.sha256(data).hexdigest()))
            return made

        generated: dict[str, int] = {split: 0 for split in src.splits}
        if paper:
            # §4.3: expand everything, then split the enhanced images 6:2:2 as the originals are.
            made = write_generated([p for pairs in lists.values() for p in pairs], "images/")
            parts = stratified_split(np.array([label for _, label, _ in made], dtype=np.int64), PAPER_RATIOS, seed)
            for split, indices in zip(("train", "val", "test"), parts):
                for i in indices:
                    rel, label, digest = made[i]
                    dest = f"images/{split}/{rel.split('/', 2)[2]}"
                    if dest != rel:
                        if dest in taken:
                            raise ValueError(f"generated image {rel!r} would replace {dest!r} in split {split}")
                        (tmp / dest).parent.mkdir(parents=True, exist_ok=True)
                        os.rename(tmp / rel, tmp / dest)
                        taken.discard(rel)
                        taken.add(dest)
                    lists[split].append((dest, label))
                    image_sums.append((dest, digest))
                generated[split] = len(indices)
        else:
            made = write_generated(lists["train"], "images/train/")
            lists["train"] += [(rel, label) for rel, label, _ in made]
            image_sums += [(rel, digest) for rel, _, digest in made]
            generated["train"] = len(made)
        source = {**source, "generated": generated}
        for split in src.splits:
            pairs = lists[split]
            image_sums += [(rel, sha256_file(tmp / rel)) for rel, _ in read_file_list(src_root, split)]
            (tmp / f"{split}.txt").write_text("".join(f"{rel} {label}\n" for rel, label in pairs))
            checksums[f"{split}.txt"] = sha256_file(tmp / f"{split}.txt")
            per_class = [0] * len(src.classes)
            for _, label in pairs:
                per_class[label] += 1
            splits[split] = SplitInfo(count=len(pairs), per_class=per_class)
        # Image digests in one `sha256sum -c`-able file, as `cls data prepare` writes them; the manifest
        # checksums the file lists and that file.
        checksums[IMAGE_CHECKSUMS] = write_image_checksums(tmp, image_sums)
        manifest = Manifest(
            name=src.name,  # the same dataset, expanded: loaders that check the name still accept it
            kind="jpeg",
            family=src.family,
            classes=list(src.classes),
            splits=splits,
            checksums=checksums,
            source=source,
        )
        write_manifest(tmp, manifest)  # the commit point of the layout: written last
        default_mode(tmp / MANIFEST)
        if out_root.exists():
            out_root.rmdir()  # check_output let through an empty directory only
        os.rename(tmp, out_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# ---------------------------------------------------------------------------------------------------------


def expand_dataset(
    src_root: str | os.PathLike,
    out_root: str | os.PathLike,
    policy: str,
    copies: int = 1,
    seed: int = 0,
    *,
    config: AugmentConfig | None = None,
    progress: bool = False,
    split_order: str = "clean",
) -> Manifest:
    """Seed 002 §4.3's traditional expansion: `copies` augmented copies of images under `policy`.

    "clean" (default): the new train split has original * (1 + copies) images; val and test are the source's,
    unchanged. "paper": every image gets its copies and the copies are split 6:2:2 (see `expand_prepared`).
    Copy k of image "x.jpg" is "x__{policy with '+' as '-'}{k}.jpg", seeded by (seed, its path, k).
    """
    parse_policy(policy)  # fail before touching any file
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    cfg = config or AugmentConfig()
    tag = policy.replace("+", "-")

    def generate(root: Path, train: list[tuple[str, int]]) -> Iterator[NewImage]:
        from tqdm import tqdm

        for rel, label in tqdm(train, desc=f"augment {policy}", unit="img", disable=not progress):
            image = read_rgb(root / rel)
            for k in range(1, copies + 1):
                out = augment_image(image, policy, image_seed(seed, rel, k), cfg)
                yield copy_name(rel, f"{tag}{k}"), label, encode(out, cfg.jpeg_quality)

    source = {"method": "augment", "policy": policy, "copies": copies, "seed": seed, "config": asdict(cfg)}
    return expand_prepared(src_root, out_root, generate, source, split_order=split_order, seed=seed)


def split_counts(manifest: Manifest) -> dict[str, int]:
    """Images per split, train, val and test first (manifest.json keeps its keys sorted)."""
    order = {"train": 0, "val": 1, "test": 2}
    return {s: manifest.splits[s].count for s in sorted(manifest.splits, key=lambda s: (order.get(s, 3), s))}


__all__ = [
    "OPERATIONS",
    "SPLIT_ORDERS",
    "check_split_order",
    "TABLE_2_POLICIES",
    "IMAGE_CHECKSUMS",
    "AugmentConfig",
    "augment_image",
    "build_transform",
    "check_output",
    "copy_name",
    "encode",
    "expand_dataset",
    "expand_prepared",
    "image_seed",
    "parse_policy",
    "read_rgb",
    "split_counts",
]
