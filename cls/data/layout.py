"""The loader-ready layout that `cls data prepare` writes and every loader reads.

One directory per prepared dataset:

    ROOT/manifest.json                 what is here (see `Manifest`); written last, atomically
    kind "array" (32-px sets: CIFAR-10/100, SVHN, digits):
    ROOT/{split}_images.npy            uint8, (N, H, W, 3), RGB
    ROOT/{split}_labels.npy            int64, (N,)
    kind "jpeg" (everything else):
    ROOT/images/{split}/{class:04d}/{name}.{jpg,png}   JPEG and PNG keep their bytes; other formats become PNG
    ROOT/{split}.txt                   one "images/{split}/{class:04d}/{name} LABEL" line per sample,
                                       paths relative to ROOT, no spaces (DALI's file_list format)
    ROOT/images.sha256                 per-image checksums, `sha256sum -c` format
    ROOT/quarantine/{split}/...        copies of source files that failed to decode, never loaded; each is
                                       listed in the manifest (path, reason, split, copy)

The manifest is the commit point: a directory without one is not a prepared dataset, so an
interrupted `prepare` never leaves something a loader would read.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
IMAGE_CHECKSUMS = "images.sha256"  # `sha256sum -c images.sha256` checks every image of a jpeg-kind dataset
LAYOUT_VERSION = 1
KINDS = ("array", "jpeg")
# Default transform family per dataset kind of paper: 32-px sets (seed 000), ImageNet-style 224 px
# (seed 002), fine-grained 550 -> 448 (seed 003).
FAMILIES = ("32px", "imagenet", "fine_grained")


class DatasetNotPrepared(FileNotFoundError):
    """A loader was pointed at something that is not a prepared dataset; the message says how to make one."""


@dataclass
class SplitInfo:
    count: int
    per_class: list[int]  # samples per class index


@dataclass
class Manifest:
    name: str  # registry name of the dataset (cifar10, cub200, ...)
    kind: str  # "array" or "jpeg"
    family: str  # default transform family
    classes: list[str]  # class names; the label is the index
    splits: dict[str, SplitInfo]
    checksums: dict[str, str] = field(default_factory=dict)  # relative path -> sha256, for the files above
    quarantined: list[dict[str, str]] = field(default_factory=list)  # {"path": source path, "reason": ...}
    source: dict[str, Any] = field(default_factory=dict)  # where it came from (src dir, seed, style, ...)
    version: int = LAYOUT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)  # unsorted: splits keep their train, val, test order

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        d = json.loads(text)
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise DatasetNotPrepared(
                f"manifest has keys this cls does not know ({', '.join(unknown)}): it was written by a newer cls"
            )
        d["splits"] = {k: SplitInfo(**v) for k, v in d["splits"].items()}
        return cls(**d)


def prepare_command(name: str, root: str | os.PathLike) -> str:
    """The command that makes `root` a prepared copy of dataset `name`, for error messages."""
    src = "" if name == "digits" else " --src DOWNLOADED_DIR"
    return f"cls data prepare {name}{src} --out {root}"


def read_manifest(root: str | os.PathLike, name: str | None = None) -> Manifest:
    """The manifest of prepared dataset `root`; raises `DatasetNotPrepared` naming the fix."""
    root = Path(root)
    what = name or "NAME"
    if not root.is_dir():
        raise DatasetNotPrepared(
            f"dataset root {root} does not exist. Prepare it with: {prepare_command(what, root)}"
        )
    path = root / MANIFEST
    if not path.is_file():
        raise DatasetNotPrepared(
            f"{root} is not a prepared dataset ({MANIFEST} is missing; an interrupted prepare leaves none). "
            f"Prepare it with: {prepare_command(what, root)}"
        )
    manifest = Manifest.from_json(path.read_text())
    if manifest.version != LAYOUT_VERSION:
        raise DatasetNotPrepared(
            f"{root} was prepared with layout version {manifest.version}, this cls reads {LAYOUT_VERSION}. "
            f"Prepare it again with: {prepare_command(manifest.name, root)}"
        )
    if name is not None and manifest.name != name:
        raise ValueError(f"{root} holds dataset {manifest.name!r}, not {name!r}")
    return manifest


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A plain exclusive open (not mkstemp, which makes files 0600) leaves the file as readable as the umask
    # allows: results on shared storage are read by other users.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_manifest(root: str | os.PathLike, manifest: Manifest) -> None:
    write_atomic(Path(root) / MANIFEST, manifest.to_json().encode())


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_image_checksums(root: str | os.PathLike, image_sums: list[tuple[str, str]]) -> str:
    """Write ROOT/images.sha256 from (relative path, sha256) pairs; returns the file's own sha256."""
    path = Path(root) / IMAGE_CHECKSUMS
    path.write_text("".join(f"{digest}  {rel}\n" for rel, digest in image_sums))
    return sha256_file(path)


def read_file_list(root: str | os.PathLike, split: str) -> list[tuple[str, int]]:
    """(path relative to root, label) pairs of a jpeg-kind split, in file order."""
    root = Path(root)
    path = root / f"{split}.txt"
    if not path.is_file():
        raise DatasetNotPrepared(f"{root} has no split {split!r} ({path.name} is missing)")
    pairs = []
    for line in path.read_text().splitlines():
        if line.strip():
            rel, label = line.rsplit(" ", 1)
            pairs.append((rel, int(label)))
    return pairs


def array_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    root = Path(root)
    return root / f"{split}_images.npy", root / f"{split}_labels.npy"
