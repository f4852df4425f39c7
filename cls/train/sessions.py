"""The two ways a training run is hosted: a Ray Train worker (`RaySession`, the only place worker code
touches Ray) and the current process (`LocalSession`: one rank, for smoke runs and debugging)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cls.data.augment import default_mode

from .checkpoint import CHECKPOINT_FILE


class LocalSession:
    """One process, no process group. Checkpoints are kept in RUN_DIR/checkpoints/epoch_XXXX/."""

    rank, world_size, local_rank = 0, 1, 0

    def __init__(self, run_dir: str | os.PathLike, device: str | None = None) -> None:
        self.checkpoints = Path(run_dir) / "checkpoints"
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.reports: list[dict[str, Any]] = []

    @property
    def device(self) -> torch.device:
        return self._device

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self.checkpoints.glob("epoch_*") if (p / CHECKPOINT_FILE).is_file())
        return done[-1] if done else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.reports.append(metrics)
        if checkpoint_dir is not None:
            target = self.checkpoints / f"epoch_{metrics['epoch']:04d}"
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            # copyfile, not copy2, and the directory's mode reset: the source is a 0700 temporary directory,
            # and the run's checkpoints take the modes the user's umask gives, as its other files do.
            shutil.copytree(checkpoint_dir, partial, copy_function=shutil.copyfile)
            default_mode(partial)
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)  # a checkpoint directory is complete or absent


class RaySession:
    """Inside `TorchTrainer`'s train_loop_per_worker: rank and device from Ray Train, DDP via prepare_model,
    checkpoints persisted by ray.train.report to the run's storage."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.local_rank = ctx.get_local_rank()

    @property
    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        # DDP over the process group Ray set up (gloo on CPUs, NCCL on GPUs); a no-op for one worker.
        return ray.train.torch.prepare_model(model)

    def latest_checkpoint(self) -> Path | None:
        import pyarrow.fs
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):  # local or shared storage: read in place
            return Path(checkpoint.path)
        # Not Checkpoint.to_directory() without a path: every worker on a node shares its temporary directory,
        # and a worker that arrives after the first download finished downloads again over the files the
        # first is reading (seen here as a corrupt checkpoint zip after a worker was replaced).
        return Path(checkpoint.to_directory(tempfile.mkdtemp(prefix=f"cls-resume-rank{self.rank}-")))

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


class TorchrunSession(LocalSession):
    """Under `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK in the environment): plain DDP over gloo or NCCL, without
    Ray. The same `fit` runs here as on Ray Train, which makes it the baseline of Ray's overhead
    (bench/train_overhead.py). Rank 0 keeps the checkpoints, as LocalSession does."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        import torch.distributed as dist

        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ["LOCAL_RANK"])
        gpu = torch.cuda.is_available()
        super().__init__(run_dir, f"cuda:{self.local_rank}" if gpu else "cpu")
        if gpu:
            torch.cuda.set_device(self.local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if gpu else "gloo")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        ids = [self.local_rank] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def latest_checkpoint(self) -> Path | None:
        import torch.distributed as dist

        # Every rank must resume from the same epoch: rank 0 decides and tells the others.
        found = [super().latest_checkpoint() if self.rank == 0 else None]
        dist.broadcast_object_list(found, src=0)
        return found[0]

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if self.rank == 0:
            super().report(metrics, checkpoint_dir)


def torchrun_main(argv: list[str] | None = None) -> None:
    """`torchrun --nproc-per-node N -m cls.train.sessions [overrides]`: one run under plain DDP."""
    import sys

    from cls.cli.train import resolve

    import torch.distributed as dist

    from .loop import fit
    from .run import absolute_paths, ensure_data, run_dir

    cfg = absolute_paths(resolve(list(sys.argv[1:] if argv is None else argv)))
    directory = run_dir(cfg)
    if os.environ.get("RANK") == "0":
        ensure_data(cfg)  # one rank prepares `digits`; the others wait for it at the barrier
    session = TorchrunSession(directory)
    dist.barrier()
    try:
        fit(cfg, session, directory)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    torchrun_main()
