"""One training run: `fit(config, session)`. Everything but the process group and the reporting channel
lives here, so the same code runs under Ray Train (`cls.train.ray_worker`) and in-process (`LocalSession`).

Each epoch rank 0 writes, atomically, into the run directory:
    epochs/epoch_{E:04d}.json      the epoch's metrics (idempotent: a re-run epoch overwrites its file)
    confusion/epoch_{E:04d}.csv    the evaluation confusion matrix (rows: true class)
and the epoch's row into the results store (`cfg["results"]`, trial id = the run directory's name), then
its checkpoint (fixed keys) into checkpoints/epoch_{E:04d}/, keeping the last `trainer.keep_checkpoints`
and the best by `trainer.checkpoint_metric` (see checkpoint.Checkpoints).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Protocol

import numpy as np
import torch
from torch import nn

from cls.data.layout import read_manifest, write_atomic
from cls.models import build_model

from .checkpoint import Checkpoints, restore, state_digest
from .engine import LossFn, binary_cross_entropy_loss, cross_entropy_loss, evaluate, train_one_epoch
from .metrics import ClassificationMetrics
from .run import worker_batch


class Session(Protocol):
    """What a training run needs from whatever launched it."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def device(self) -> torch.device: ...

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def report(self, metrics: dict[str, Any]) -> None:
        """Publish an epoch's metrics; every rank calls it once per epoch. (Checkpoints are the run
        directory's, written by rank 0: `Checkpoints`.)"""


@dataclass
class RunPaths:
    root: Path

    @property
    def epochs(self) -> Path:
        return self.root / "epochs"

    @property
    def confusion(self) -> Path:
        return self.root / "confusion"

    def epoch_file(self, epoch: int) -> Path:
        return self.epochs / f"epoch_{epoch:04d}.json"


def read_resumes(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """One record per time the run resumed from a checkpoint (restart, requeue, replaced worker)."""
    path = Path(run_dir) / "resumes.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def read_epochs(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch metrics a run has written so far, in epoch order."""
    return [json.loads(p.read_text()) for p in sorted(RunPaths(Path(run_dir)).epochs.glob("epoch_*.json"))]


def build_optimizer(cfg: dict[str, Any], params) -> torch.optim.Optimizer:
    name = cfg["name"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"],
                               weight_decay=cfg["weight_decay"])
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"])
    raise ValueError(f"optim.name must be sgd or adamw, got {name!r}")


def build_scheduler(cfg: dict[str, Any], optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int):
    """A per-step LambdaLR: linear warm-up, then cosine / step decay / constant."""
    warmup = int(cfg["warmup_epochs"] * steps_per_epoch)
    total = max(epochs * steps_per_epoch, 1)
    kind = cfg["scheduler"]
    if kind not in ("cosine", "step", "constant"):
        raise ValueError(f"optim.scheduler must be cosine, step or constant, got {kind!r}")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / max(total - warmup, 1)))
        if kind == "step":
            return cfg["step_gamma"] ** (step // max(cfg["step_epochs"] * steps_per_epoch, 1))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_loss(cfg: dict[str, Any], device: torch.device) -> tuple[LossFn, bool]:
    """(loss function, whether the task is classification)."""
    trainer = cfg["trainer"]
    kind = trainer["loss"]
    if kind == "cross_entropy":
        return cross_entropy_loss(trainer["label_smoothing"]), True
    if kind == "bce":
        return binary_cross_entropy_loss(), True
    if kind == "perceptual":
        from .style import perceptual_loss

        transforms = data_transforms(cfg["data"])
        return perceptual_loss(cfg["style"], device, transforms.mean, transforms.std), False
    raise ValueError(f"trainer.loss must be cross_entropy, bce or perceptual, got {kind!r}")


def autocast_for(device: torch.device, enabled: bool) -> Callable[[], ContextManager]:
    """bf16 autocast on GPUs (no loss scaler needed, unlike fp16); plain fp32 on CPUs."""
    if enabled and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _limit(loader, max_steps: int | None):
    if max_steps is None:
        return loader
    return (batch for i, batch in zip(range(max_steps), loader))


def fit(cfg: dict[str, Any], session: Session, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Train `cfg` (a resolved config, see config.py) from its last checkpoint, if any, to the last epoch.
    Returns the last epoch's metrics."""
    from cls.data.loader import build_loader  # the data stack (DALI) loads only in training processes

    trainer, data = cfg["trainer"], cfg["data"]
    paths = RunPaths(Path(run_dir))
    device = session.device
    torch.manual_seed(cfg["seed"] + session.rank)
    threads = trainer["threads_per_worker"] or max(1, int(trainer["cpus_per_worker"]))
    if device.type == "cpu":
        torch.set_num_threads(threads)

    loader_args = dict(
        name=data["name"], rank=session.rank, world_size=session.world_size, backend=data["backend"],
        device=device.type, seed=cfg["seed"], num_workers=data["num_workers"],
        transforms=data_transforms(data),
    )
    # data.batch_size is the global batch of one optimizer step; each rank loads its share (run.worker_batch).
    batch = worker_batch(data["batch_size"], session.world_size)
    global_batch = batch * session.world_size
    eval_batch = -(-(data["eval_batch_size"] or data["batch_size"]) // session.world_size)
    train_loader = build_loader(data["root"], data["train_split"], batch, train=True, **loader_args)
    eval_loader = build_loader(data["root"], data["eval_split"], eval_batch, train=False, **loader_args)
    classes = list(train_loader.classes)

    # What the run resolved at start (the class count and names from the manifest) is part of the config
    # saved with every checkpoint, so a checkpoint alone rebuilds its model (cls gradcam).
    # ... and the transform family, so evaluation transforms are known without the dataset at hand.
    cfg = {**cfg, "data": {**data, "classes": classes, "family": loader_args["transforms"].family},
           "model": dict(cfg["model"])}
    if cfg["model"].get("num_classes", 0) is None:
        cfg["model"]["num_classes"] = len(classes)
    model = model_from_config(cfg["model"]).to(device)
    channels_last = trainer["channels_last"] and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = session.prepare_model(model)

    loss_fn, classification = build_loss(cfg, device)
    steps = len(train_loader) if trainer["max_steps"] is None else min(len(train_loader), trainer["max_steps"])
    optimizer = build_optimizer(cfg["optim"], [p for p in model.parameters() if p.requires_grad])
    scheduler = build_scheduler(cfg["optim"], optimizer, steps, trainer["epochs"])
    autocast = autocast_for(device, trainer["amp"])
    metrics = ClassificationMetrics(len(classes), device) if classification else None

    start_epoch = 0
    checkpoints = Checkpoints(paths.root, keep=trainer["keep_checkpoints"], metric=trainer["checkpoint_metric"],
                              mode=trainer["checkpoint_mode"])
    resume_dir, state, skipped = checkpoints.resume(rank=session.rank)
    if session.rank == 0:
        _say_resume(paths.root.name, resume_dir, skipped)
    if resume_dir is not None:
        start_epoch = restore(state, model, optimizer, scheduler)
        if session.rank == 0:  # a record of every resume: where from, and which optimizer state
            record = {"start_epoch": start_epoch, "checkpoint": str(resume_dir),
                      "skipped": [[str(p), why] for p, why in skipped],
                      "optimizer_digest": state_digest(optimizer.state_dict()), "time": time.time()}
            paths.root.mkdir(parents=True, exist_ok=True)
            with open(paths.root / "resumes.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    store = _results_writer(cfg, paths) if session.rank == 0 else None
    if store is not None and start_epoch > 0:
        # The epochs done before this resume belong to the store too: a killed run may have died between its
        # JSON and its row, and the same trial run under another sweep name resumes with nothing left to run.
        store.write_epochs([e for e in read_epochs(paths.root) if e["epoch"] < start_epoch])

    last: dict[str, Any] = {}
    for epoch in range(start_epoch, trainer["epochs"]):
        started = time.perf_counter()
        train_loader.set_epoch(epoch)
        train = train_one_epoch(
            model, _limit(train_loader, trainer["max_steps"]), optimizer, loss_fn, device=device, epoch=epoch,
            scheduler=scheduler, autocast=autocast, channels_last=channels_last, classification=classification,
            nan_check_every=trainer["nan_check_every"],
        )
        evaluated, confusion = evaluate(
            model, _limit(eval_loader, trainer["max_steps"]), loss_fn, metrics, device=device, autocast=autocast,
            channels_last=channels_last,
        )
        last = {
            "epoch": epoch,
            **{f"train_{k}": v for k, v in train.items()},
            **{f"eval_{k}": v for k, v in evaluated.items()},
            "lr": train["lr"],
            "global_batch": global_batch,  # images per optimizer step, over all ranks
            "steps": train["steps"],  # optimizer steps this epoch (every rank takes the same number)
            "images_per_s": train["images_per_s"],
            "epoch_seconds": time.perf_counter() - started,
        }
        if session.rank == 0:  # only rank 0 writes files
            write_atomic(paths.epoch_file(epoch), json.dumps(last, sort_keys=True).encode())
            if store is not None:
                store.write_epoch(epoch, last)
            if confusion is not None:
                _write_confusion(paths.confusion / f"epoch_{epoch:04d}.csv", confusion, classes)
            checkpoints.save(epoch, last, model=model, optimizer=optimizer, scheduler=scheduler, scaler=None,
                             config=cfg)
            if trainer.get("progress"):
                print(progress_line(last, trainer["epochs"], classification), flush=True)
        session.report(last)
    return last


def _say_resume(run: str, resumed: Path | None, skipped: list[tuple[Path, str]]) -> None:
    for path, why in skipped:
        print(f"{run}: checkpoint {path} does not load ({why}); moved aside to "
              f"{path.parent if path.parent.name == 'checkpoints' else path.parent / 'checkpoints'}/damaged-{path.name}",
              flush=True)
    if resumed is not None and skipped:
        print(f"{run}: resuming from the newest checkpoint that loads, {resumed}", flush=True)
    elif skipped:
        print(f"{run}: none of its checkpoints loads: starting over from epoch 1", flush=True)


def _results_writer(cfg: dict[str, Any], paths: RunPaths):
    from cls.results import ResultsWriter

    results = cfg.get("results")
    return ResultsWriter(results["root"], results["sweep"], paths.root.name) if results else None


def model_from_config(model_cfg: dict[str, Any]) -> nn.Module:
    options = dict(model_cfg)
    return build_model(options.pop("name"), **options)


def data_transforms(data: dict[str, Any]):
    """The loader's TransformConfig: the configured family (or the dataset's) with `data.transforms` applied."""
    from cls.data.transforms import transform_config

    family = data["family"] or read_manifest(data["root"], data["name"]).family
    return transform_config(family, **{k: v for k, v in data["transforms"].items() if v is not None})


def _write_confusion(path: Path, confusion: torch.Tensor, classes: list[str]) -> None:
    lines = ["true\\predicted," + ",".join(classes)]
    lines += [f"{c}," + ",".join(str(int(v)) for v in row) for c, row in zip(classes, confusion.tolist())]
    write_atomic(path, ("\n".join(lines) + "\n").encode())


def progress_line(m: dict[str, Any], epochs: int, classification: bool) -> str:
    acc = f"  acc {m['train_top1']:.1%} / {m['eval_top1']:.1%}" if classification else ""
    return (
        f"epoch {m['epoch'] + 1}/{epochs}  loss {m['train_loss']:.4f} / {m['eval_loss']:.4f}{acc}"
        f"  {m['images_per_s']:.0f} img/s  {m['epoch_seconds']:.1f} s"
    )


def confusion_matrix(run_dir: str | os.PathLike, epoch: int) -> np.ndarray:
    """The saved confusion matrix of `epoch` (rows: true class, columns: predicted)."""
    path = RunPaths(Path(run_dir)).confusion / f"epoch_{epoch:04d}.csv"
    return np.loadtxt(path, delimiter=",", skiprows=1, usecols=None, dtype=str)[:, 1:].astype(np.int64)
