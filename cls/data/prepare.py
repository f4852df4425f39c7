"""`prepare`: a dataset in its publishers' layout (`cls.data.sources`) -> the loader-ready layout of
`cls.data.layout`, checked, atomic and idempotent.

- Every image file is decoded once. One that is missing, truncated, corrupt or not an image is copied
  to `quarantine/` and listed in the manifest with the reason; the run goes on.
- JPEG and PNG keep their bytes (hard-linked where the file system allows); anything else PIL reads
  is re-encoded as PNG, so DALI and PIL decode every file the same way.
- The dataset is built in a sibling `OUT.partial-XXXX` and renamed to `OUT` when complete, manifest
  included: an interrupted run leaves nothing a loader would read.
- `OUT` already holding the same dataset (name, source, options) is left untouched; anything else
  there is refused unless `force`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageFile

from .layout import (
    IMAGE_CHECKSUMS,
    LAYOUT_VERSION,
    MANIFEST,
    DatasetNotPrepared,
    Manifest,
    SplitInfo,
    array_paths,
    read_manifest,
    sha256_file,
    write_image_checksums,
)
from .sources import ArraySplit, FileSample, Source, get_source, open_source, source_options

logger = logging.getLogger(__name__)

QUARANTINE = "quarantine"
KEPT_FORMATS = {"JPEG": ".jpg", "PNG": ".png"}  # written byte for byte; DALI and PIL decode both
PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}  # what PNG stores without a conversion
CHUNK = 4096  # images handed to the decoding threads at a time
REENCODED_JPEG_QUALITY = 95  # FGVC-Aircraft with the banner cropped: visually lossless, far smaller than PNG


def prepare(
    name: str,
    src: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    seed: int | None = None,
    download: bool = False,
    force: bool = False,
    link: bool = True,
    workers: int | None = None,
    **options: Any,
) -> Manifest:
    """Write dataset `name`, read from its download `src`, to `out` in the prepared layout; returns its manifest.

    `seed` (the source's default when None) drives the split of datasets that ship without one (digits,
    cats_vs_dogs, folder); `options` are the dataset's own (`cls.data.sources.source_options(name)`).
    `download` fetches the dataset into `src` with torchvision first. `link` hard-links kept images
    instead of copying them; `workers` threads decode images (default: ThreadPoolExecutor's).

    Whether `out` already holds this dataset is decided by name, `src` and options, not by re-reading
    `src`: after changing the files in `src`, prepare again with `force`.
    """
    if seed is not None:
        if "seed" not in source_options(name):
            raise ValueError(f"{name} ships with its publishers' splits: --seed does not apply")
        options["seed"] = seed
    src_path = None if src is None else Path(src).resolve()
    out = Path(out).absolute()
    if download:
        get_source(name).download(src_path, **options)
    source = open_source(name, src_path, **options)  # fails here, before anything is written, on a bad --src
    if src_path is not None and (out.resolve().is_relative_to(src_path) or src_path.is_relative_to(out.resolve())):
        raise ValueError(f"--out {out} and --src {src_path} overlap: prepare must not write into its own input")

    record = {
        "src": None if src_path is None else str(src_path),
        "root": None if source.root is None else str(source.root),
        "options": _jsonable(source.options),
        "homepage": source.homepage,
    }
    existing = _check_out(out, name, record, force)
    if existing is not None:
        logger.info("%s already holds %s prepared from the same source and options: nothing to do", out, name)
        return existing

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = _sibling(out, "partial")
    partial.mkdir()
    try:
        manifest = _build(source, partial, record, link=link, workers=workers)
        # Last: the manifest is the commit point (layout.py). No need for write_atomic inside the private
        # partial directory, whose mkstemp file would keep mode 0600 and hide the manifest from other users.
        (partial / MANIFEST).write_text(manifest.to_json())
        _commit(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if manifest.quarantined:  # each was logged as a warning when it was met
        logger.info(
            "quarantined %d file(s) that are missing or do not decode; copies in %s, reasons in %s",
            len(manifest.quarantined), out / QUARANTINE, out / MANIFEST,
        )
    return manifest


def verify(root: str | os.PathLike) -> list[str]:
    """What no longer matches the manifest's checksums in prepared dataset `root` (empty: all intact)."""
    root = Path(root)
    manifest = read_manifest(root)
    problems = []
    for rel, digest in manifest.checksums.items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(path) != digest:
            problems.append(f"{rel}: checksum differs")
        elif rel == IMAGE_CHECKSUMS:
            for line in path.read_text().splitlines():
                digest, rel_image = line.split("  ", 1)
                image = root / rel_image
                if not image.is_file():
                    problems.append(f"{rel_image}: missing")
                elif sha256_file(image) != digest:
                    problems.append(f"{rel_image}: checksum differs")
    return problems


# --- building -------------------------------------------------------------------------------------


def _build(source: Source, root: Path, record: dict[str, Any], *, link: bool, workers: int | None) -> Manifest:
    splits, checksums, quarantined, image_sums = {}, {}, [], []
    n_classes = len(source.classes)
    for split in source.splits:
        data = source.read(split)
        if source.kind == "array":
            labels, files = _write_arrays(data, root, split)
        else:
            labels, files, bad, sums = _write_images(data, root, split, link=link, workers=workers)
            quarantined += bad
            image_sums += sums
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise ValueError(f"{source.name} {split}: labels outside 0..{n_classes - 1}; the annotations are broken")
        splits[split] = SplitInfo(count=int(labels.size), per_class=np.bincount(labels, minlength=n_classes).tolist())
        checksums.update({f: sha256_file(root / f) for f in files})
        logger.info("%s %s: %d images", source.name, split, labels.size)
    if source.kind == "jpeg":
        checksums[IMAGE_CHECKSUMS] = write_image_checksums(root, image_sums)
    return Manifest(
        name=source.name,
        kind=source.kind,
        family=source.family,
        classes=list(source.classes),
        splits=splits,
        checksums=checksums,
        quarantined=quarantined,
        source=record,
    )


def _write_arrays(data: ArraySplit, root: Path, split: str) -> tuple[np.ndarray, list[str]]:
    images, labels = np.asarray(data.images), np.asarray(data.labels, dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
        raise ValueError(f"{split}: expected uint8 (N, H, W, 3) images and N labels, got {images.shape} {images.dtype}")
    image_path, label_path = array_paths(root, split)
    np.save(image_path, np.ascontiguousarray(images))  # C order, so loaders can memory-map it
    np.save(label_path, labels)
    return labels, [image_path.name, label_path.name]


class _Rejected(Exception):
    """A source file that cannot become a sample: it goes to quarantine with this reason."""


@dataclass
class _Written:
    rel: str | None  # path relative to the dataset root; None when quarantined
    digest: str | None
    reason: str | None


def _write_images(
    samples: list[FileSample], root: Path, split: str, *, link: bool, workers: int | None
) -> tuple[np.ndarray, list[str], list[dict[str, str]], list[tuple[str, str]]]:
    """Write one split's images and `{split}.txt`; returns labels, written files, quarantined, (rel, sha256)."""
    # Names are fixed before the parallel part, so the result does not depend on thread timing.
    names = _UniqueNames()
    stems = [f"images/{split}/{s.label:04d}/{names.take(f'{s.label:04d}', s.path.stem)}" for s in samples]
    written: list[_Written] = []
    with _strict_decoding(), ThreadPoolExecutor(workers) as pool:  # PIL decodes with the GIL released
        # map() submits everything at once: in chunks, ImageNet's 1.28 M pending futures never pile up
        for i in range(0, len(samples), CHUNK):
            chunk = zip(samples[i : i + CHUNK], stems[i : i + CHUNK])
            written += pool.map(lambda job: _write_image(job[0], root, job[1], link), chunk)
    lines, labels, quarantined, sums = [], [], [], []
    quarantine_names = _UniqueNames()
    for sample, w in zip(samples, written):
        if w.rel is None:
            entry = {"path": str(sample.path), "reason": w.reason, "split": split}
            if sample.path.is_file():
                copy = f"{QUARANTINE}/{split}/{quarantine_names.take(split, sample.path.name)}"
                (root / copy).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(sample.path, root / copy)  # a copy: the source is never touched
                entry["copy"] = copy
            quarantined.append(entry)
            logger.warning("quarantined %s: %s", sample.path, w.reason)
            continue
        lines.append(f"{w.rel} {sample.label}\n")
        labels.append(sample.label)
        sums.append((w.rel, w.digest))
    (root / f"{split}.txt").write_text("".join(lines))
    return np.array(labels, dtype=np.int64), [f"{split}.txt"], quarantined, sums


def _write_image(sample: FileSample, root: Path, stem: str, link: bool) -> _Written:
    try:
        data, image = _decode(sample)
    except _Rejected as e:
        return _Written(None, None, str(e))
    original = data
    if sample.crop_bottom:
        if image.height <= sample.crop_bottom:
            reason = f"{image.height} px high: nothing is left after cropping {sample.crop_bottom} px"
            return _Written(None, None, reason)
        image = image.crop((0, 0, image.width, image.height - sample.crop_bottom))
        data, suffix = _encode(image, "JPEG"), ".jpg"
    elif image.format in KEPT_FORMATS:
        suffix = KEPT_FORMATS[image.format]
    else:
        data, suffix = _encode(image, "PNG"), ".png"
    dest = root / (stem + suffix)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not (link and data is original and _hardlink(sample.path, dest, data)):
        dest.write_bytes(data)
    return _Written(dest.relative_to(root).as_posix(), hashlib.sha256(data).hexdigest(), None)


def _decode(sample: FileSample) -> tuple[bytes, Image.Image]:
    """The file's bytes and its fully decoded image; `_Rejected` says why a file is not a usable image."""
    try:
        data = sample.path.read_bytes()
    except FileNotFoundError:
        raise _Rejected("missing: listed by the dataset's annotations but not on disk") from None
    except OSError as e:
        raise _Rejected(f"unreadable: {e}") from None
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            # Rows can all decode from a PNG cut short; verify() reads to IEND and checks every chunk's CRC.
            Image.open(io.BytesIO(data)).verify()
        image = Image.open(io.BytesIO(data))
        image.load()  # with LOAD_TRUNCATED_IMAGES off, a JPEG cut short raises "image file is truncated"
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ... on bad files
        raise _Rejected(f"does not decode: {type(e).__name__}: {e}") from None
    return data, image


def _encode(image: Image.Image, fmt: str) -> bytes:
    modes = {"RGB", "L"} if fmt == "JPEG" else PNG_MODES
    if image.mode not in modes:
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, fmt, **({"quality": REENCODED_JPEG_QUALITY} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _hardlink(src: Path, dest: Path, data: bytes) -> bool:
    """Hard-link `src` at `dest` if it still holds `data`; False where links are not possible (another
    file system, no support) and the caller writes a copy."""
    try:
        os.link(src, dest)
    except OSError:
        return False
    if dest.stat().st_size != len(data):  # changed since we decoded it: write what was checked instead
        dest.unlink()
        return False
    return True


@contextmanager
def _strict_decoding() -> Iterator[None]:
    """PIL's process-wide switch off while preparing: a truncated image must raise, never load half-grey."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


class _UniqueNames:
    """File names without spaces or other characters a file list or a shell would trip on, unique per folder
    (compared case-insensitively, for file systems that fold case)."""

    def __init__(self) -> None:
        self._taken: set[tuple[str, str]] = set()

    def take(self, folder: str, name: str) -> str:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".") or "image"
        candidate, n = base, 1
        while (folder, candidate.lower()) in self._taken:
            candidate, n = f"{base}-{n}", n + 1
        self._taken.add((folder, candidate.lower()))
        return candidate


# --- the output directory -------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """`value` as it reads back from the manifest (tuples become lists), so options compare equal."""
    return json.loads(json.dumps(value))


def _check_out(out: Path, name: str, record: dict[str, Any], force: bool) -> Manifest | None:
    """The manifest at `out` when it holds this very dataset (and not `force`), None when `out` is free to
    (re)build; raises when `out` holds anything else and not `force`."""
    if not out.exists() or _is_empty_dir(out):
        return None
    try:
        existing = read_manifest(out)
    except DatasetNotPrepared:
        what = f"{out} exists and is not a prepared dataset ({MANIFEST} is missing)"
    except (ValueError, TypeError, KeyError) as e:  # a manifest that does not parse: not ours to reuse
        what = f"{out} holds a {MANIFEST} that does not parse ({type(e).__name__}: {e})"
    else:
        if _same(existing, name, record) and not force:
            return existing
        src = existing.source.get("src") or "its embedded copy"
        what = f"{out} already holds {existing.name} prepared from {src} with options {existing.source.get('options')}"
    if force:
        return None
    raise ValueError(
        f"{what}; refusing to write {name} there. Choose another --out, or pass --force "
        f"(it replaces a prepared dataset; anything else is moved aside, never deleted)"
    )


def _same(existing: Manifest, name: str, record: dict[str, Any]) -> bool:
    return (
        existing.name == name
        and existing.version == LAYOUT_VERSION
        and existing.source.get("src") == record["src"]
        and existing.source.get("options") == record["options"]
    )


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _sibling(out: Path, tag: str) -> Path:
    while True:
        path = out.with_name(f"{out.name}.{tag}-{secrets.token_hex(4)}")
        if not path.exists():
            return path


def _commit(partial: Path, out: Path) -> None:
    """Move the finished `partial` to `out`. Whatever was at `out` (only with force) is moved aside first;
    an old prepared dataset is then deleted, anything else the user had is kept and its new place logged."""
    if not out.exists() or _is_empty_dir(out):
        os.replace(partial, out)  # replaces an empty directory in one step
        return
    aside = _sibling(out, "old")
    os.rename(out, aside)
    try:
        os.rename(partial, out)
    except BaseException:
        os.rename(aside, out)  # put back what was there
        raise
    if (aside / MANIFEST).is_file():
        try:
            shutil.rmtree(aside)
        except OSError as e:  # the new dataset is in place; a leftover old copy is not worth failing for
            logger.warning("could not delete the replaced dataset at %s: %s", aside, e)
    else:
        logger.warning("moved what was at %s to %s", out, aside)
