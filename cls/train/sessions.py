"""The two ways a training run is hosted: a Ray Train worker (`RaySession`, the only place worker code
touches Ray) and the current process (`LocalSession`: one rank, for smoke runs and debugging)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn


class LocalSession:
    """One process, no process group. (Checkpoints, in RUN_DIR/checkpoints/epoch_XXXX/, are the loop's.)"""

    rank, world_size, local_rank = 0, 1, 0

    def __init__(self, run_dir: str | os.PathLike, device: str | None = None) -> None:
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.reports: list[dict[str, Any]] = []

    @property
    def device(self) -> torch.device:
        return self._device

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def report(self, metrics: dict[str, Any]) -> None:
        self.reports.append(metrics)


class RaySession:
    """Inside `TorchTrainer`'s train_loop_per_worker: rank and device from Ray Train, DDP via prepare_model,
    metrics to Ray by ray.train.report. Checkpoints are not handed to Ray: rank 0 writes them into the run
    directory (on the storage every worker sees), where the loop prunes them and resumes from the newest
    that loads; Ray's own checkpoint index could neither skip a damaged checkpoint nor start again once a
    directory it lists was removed (CheckpointManagerInitializationError)."""

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

    def report(self, metrics: dict[str, Any]) -> None:
        import ray.train

        ray.train.report(metrics)


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

    def report(self, metrics: dict[str, Any]) -> None:
        if self.rank == 0:
            super().report(metrics)


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
