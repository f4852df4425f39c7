"""Checkpoints with fixed keys (torchvision / dinov2 style): a restarted run, a requeued job and a replaced
worker all resume through `load_checkpoint` + `restore`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cls.data.augment import default_mode

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "config")
CHECKPOINT_FILE = "checkpoint.pt"


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP (and torch.compile), so state dicts carry no 'module.' prefixes."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    scaler: Any | None,
    epoch: int,
    config: dict[str, Any],
) -> Path:
    """Write the training state after `epoch` (0-based) atomically: a crash mid-write leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "config": config,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        default_mode(Path(tmp))  # mkstemp's 0600 -> what the umask gives, as any other file of the run
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint`; a directory means its checkpoint.pt."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    # The resolved config is plain data; weights_only keeps unpickling from running code.
    state = torch.load(path, map_location=map_location, weights_only=True)
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path} is not a cls checkpoint: it lacks {missing} (keys: {sorted(state)})")
    return state


def state_digest(state: Any) -> str:
    """sha256 over the tensors and numbers of a (nested) state dict, in key order: equal digests mean the
    same optimizer state, wherever it was loaded."""
    h = hashlib.sha256()

    def visit(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            h.update(obj.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            for key in sorted(obj, key=str):
                h.update(str(key).encode())
                visit(obj[key])
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item)
        else:
            h.update(repr(obj).encode())

    visit(state)
    return h.hexdigest()


def restore(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
) -> int:
    """Load `state` into the given objects; returns the epoch to start from."""
    unwrap(model).load_state_dict(state["model"])
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
        if obj is not None and state[key] is not None:
            obj.load_state_dict(state[key])
    return int(state["epoch"]) + 1


class Checkpoints:
    """A run's checkpoints: RUN_DIR/checkpoints/epoch_NNNN/{checkpoint.pt, meta.json}, written by rank 0.

    Kept: the last `keep` epochs and the best epoch by `metric` (`mode` min or max: the sweep's metric), so
    a 200-epoch run holds at most keep + 1 checkpoints instead of 200. Resuming takes the newest checkpoint
    that loads; one that does not (truncated, unreadable) is moved aside to RUN_DIR/checkpoints/damaged-*
    and named, and a run none of whose checkpoints loads starts over, saying so. Checkpoints that Ray Train
    kept in RUN_DIR/checkpoint_* (runs started before these) are resumed from too, after ours."""

    def __init__(self, run_dir: str | os.PathLike, keep: int = 2, metric: str = "eval_top1", mode: str = "max"):
        if keep < 1:
            raise ValueError(f"trainer.keep_checkpoints must be at least 1, got {keep}")
        self.run_dir, self.root = Path(run_dir), Path(run_dir) / "checkpoints"
        self.keep, self.metric, self.mode = keep, metric, mode

    def save(self, epoch: int, metrics: dict[str, Any], **state: Any) -> Path:
        """Write epoch `epoch`'s checkpoint (`state`: save_checkpoint's keyword arguments) whole through a
        rename, then prune; returns its directory."""
        target = self.root / f"epoch_{epoch:04d}"
        partial = self.root / f".epoch_{epoch:04d}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        save_checkpoint(partial / CHECKPOINT_FILE, epoch=epoch, **state)
        value = metrics.get(self.metric)
        (partial / "meta.json").write_text(json.dumps({"epoch": epoch, self.metric: value}))
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)  # a checkpoint directory is complete or absent
        self.prune()
        return target

    def ours(self) -> list[Path]:
        """Our checkpoint directories, oldest epoch first."""
        return sorted(p for p in self.root.glob("epoch_*") if (p / CHECKPOINT_FILE).is_file())

    def candidates(self) -> list[Path]:
        """Every checkpoint to resume from, newest first: ours by epoch, then Ray's (by their timestamped names)."""
        ray = sorted((p for p in self.run_dir.glob("checkpoint_*") if (p / CHECKPOINT_FILE).is_file()), reverse=True)
        return self.ours()[::-1] + ray

    def prune(self) -> list[Path]:
        """Delete all but the last `keep` and the best by `metric`; returns what it deleted."""
        ours = self.ours()
        kept = set(ours[-self.keep:])
        scored = [(v, p) for p in ours if isinstance(v := _meta(p).get(self.metric), (int, float)) and v == v]
        if scored:
            best = (max if self.mode == "max" else min)(scored, key=lambda vp: (vp[0], vp[1].name))
            kept.add(best[1])
        gone = [p for p in ours if p not in kept]
        for p in gone:
            shutil.rmtree(p, ignore_errors=True)
        return gone

    def resume(self, rank: int = 0, map_location: str | torch.device = "cpu"
               ) -> tuple[Path | None, dict[str, Any] | None, list[tuple[Path, str]]]:
        """(directory, state) of the newest checkpoint that loads, or (None, None); and the (directory, why)
        of each newer one skipped. Rank 0 moves the skipped ones aside (every rank skips the same ones)."""
        skipped: list[tuple[Path, str]] = []
        for path in self.candidates():
            try:
                return path, load_checkpoint(path, map_location), skipped
            except FileNotFoundError:
                continue  # moved aside by rank 0 meanwhile: it was damaged
            except Exception as e:  # noqa: BLE001 - whatever torch.load meets in a broken file
                skipped.append((path, " ".join(f"{type(e).__name__}: {e}".split())[:300]))
                if rank == 0:
                    aside = self.root / f"damaged-{path.name}"
                    shutil.rmtree(aside, ignore_errors=True)
                    aside.parent.mkdir(parents=True, exist_ok=True)
                    with contextlib.suppress(OSError):
                        path.rename(aside)
        return None, None, skipped


def _meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return {}


def drop_stale_ray_snapshot(run_dir: str | os.PathLike) -> bool:
    """Remove Ray Train's checkpoint index of `run_dir` when it lists a checkpoint directory that is gone (a
    damaged one moved aside or deleted): Ray then refuses to start the run at all
    (CheckpointManagerInitializationError). cls resumes from its own checkpoints, so nothing is lost."""
    path = Path(run_dir) / "checkpoint_manager_snapshot.json"
    try:
        snapshot = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return True
    names = set(re.findall(r"checkpoint_[0-9][0-9A-Za-z_.:-]*", json.dumps(snapshot)))
    if any(not (Path(run_dir) / n).is_dir() for n in names):
        path.unlink(missing_ok=True)
        return True
    return False
