"""The training configuration: Hydra groups that mirror the code (`model/`, `data/`, `optim/`, `trainer/`)
plus `experiment/` presets that hold only what differs (lightning-hydra-template).

Schemas are dataclasses and every `model/<name>` node is generated from the model builder's signature, so
each option of each model can be overridden, and a misspelt key anywhere fails at composition time
(OmegaConf struct mode) instead of being silently ignored.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from cls.models import list_models, model_options
from cls.models.registry import get_entry

CONFIG_MODULE = "cls.configs"


@dataclass
class TransformOverrides:
    """Fields of `cls.data.transforms.TransformConfig` to change from the family's defaults; None keeps them.
    Typed here so that `data.transforms.size=64` works and `data.transforms.sise=64` fails."""

    size: int | None = None
    resize: int | None = None
    padding: int | None = None
    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] | None = None
    hflip: bool | None = None
    augment: bool | None = None  # online augmentation in training; false: the evaluation transforms
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


@dataclass
class DataConfig:
    name: str = "digits"
    root: str = "${oc.env:CLS_DATA_ROOT,data}/${.name}"  # a prepared dataset (cls data prepare)
    backend: str = "dali"  # dali | torch
    # The global batch of one optimizer step, as the papers state it: each of the run's trainer.workers ranks
    # takes batch_size / workers (it must divide), so the steps per epoch and the lr's meaning do not depend
    # on the allocation. Every epoch row records it (`global_batch`) and the steps it took (`steps`).
    batch_size: int = 64
    eval_batch_size: int | None = None  # global too (default: batch_size); each rank takes its ceil share
    num_workers: int = 2  # loader threads/processes per worker
    train_split: str = "train"
    eval_split: str = "test"
    family: str | None = None  # transform family; default: the dataset's
    # The split of a dataset that ships without one (digits, cats_vs_dogs, folder): a value of its own, not
    # the trial's `seed`, so every seed of a configuration is tested on the same test set. Part of the trial
    # id; the prepared manifest records it (source.options.seed) and a dataset split otherwise is refused.
    split_seed: int = 0
    transforms: TransformOverrides = field(default_factory=TransformOverrides)
    # The per-class subset the prepared dataset must hold (its `per_class` prepare option, for expanded copies
    # that of the dataset they were expanded from); checked before Ray starts. None: whatever was prepared.
    per_class: int | None = None
    # Seed 002's split order of an expanded dataset (cls augment / cls stylize apply --split-order): "paper"
    # expands, then splits 6:2:2 (§4.3: expanded images reach val and test), "clean" splits, then expands train
    # only. Checked before Ray starts against how the dataset at `root` was expanded. None: not checked.
    split_order: str | None = None


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.0
    step_epochs: int = 30  # step scheduler: decay every step_epochs
    step_gamma: float = 0.1


@dataclass
class TrainerConfig:
    epochs: int = 10
    workers: int = 2  # Ray Train workers = DDP ranks
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0
    amp: bool = True  # bf16 autocast (GPU only)
    channels_last: bool = True  # (GPU only)
    loss: str = "cross_entropy"  # cross_entropy | bce | perceptual
    label_smoothing: float = 0.0
    max_failures: int = 0  # dead workers survived per run; each resumes from the last checkpoint
    storage: str = "${oc.env:CLS_RUNS,runs}"  # where runs live; shared storage on a cluster
    name: str | None = None  # run name; default: derived from the resolved config, so a rerun resumes
    nan_check_every: int = 10  # steps between loss checks (one device sync each)
    max_steps: int | None = None  # per epoch; for smoke runs
    threads_per_worker: int | None = None  # torch intra-op threads; default: cpus_per_worker
    progress: bool | None = None  # a line per epoch; default: when stdout is a terminal
    keep_checkpoints: int = 2  # the last N epochs' checkpoints are kept, and the best by checkpoint_metric
    checkpoint_metric: str = "eval_top1"  # `cls sweep` sets it (and the mode) to the sweep's metric
    checkpoint_mode: str = "max"  # max | min


@dataclass
class StyleConfig:
    """The style network's training (seed 002 §3): one style image, VGG-19 perceptual loss. The layers are our
    choice among those §3.1 tries (it names no best set; see cls/models/style.py for how VGG-19 names map)."""

    image: str | None = None  # the style image
    content_layers: tuple[str, ...] = ("conv3_3",)
    style_layers: tuple[str, ...] = ("conv1_2", "conv2_2", "conv3_3", "conv4_3")
    content_weight: float = 1.0
    style_weight: float = 1e5
    tv_weight: float = 0.0
    pretrained_vgg: bool = True


@dataclass
class ResultsConfig:
    """Where the run's rows go in the Parquet results store (cls/results/): rank 0 writes one `epochs` row per
    epoch, the driver one `trials` row per run. Where results are written does not change the run's name."""

    root: str = "${oc.env:CLS_RESULTS,results}"  # the store; shared storage on a cluster
    sweep: str = "train"  # the store's partition; `cls sweep` sets it to the sweep's name


@dataclass
class TrainConfig:
    """The top level of `train.yaml`: typed, so `seed=abc` fails at composition like any other bad value.
    The groups are typed by their own nodes (above, and `_model_node`)."""

    task: str = "classification"  # classification | style (the style network of seed 002)
    seed: int = 0  # weights, data order and augmentation; not the dataset's split (data.split_seed)
    model: Any = None
    data: Any = None
    optim: Any = None
    trainer: Any = None
    style: Any = None
    results: Any = None


_OMEGACONF_TYPES = (int, float, bool, str)


def _model_node(name: str) -> type:
    """A dataclass of model `name`'s options, typed from its builder's annotations, so a value of the wrong
    type (model.tau=abc) fails at composition like any other key. Annotations OmegaConf cannot check
    (unions such as `bool | str`, tuples) stay untyped."""
    hints = typing.get_type_hints(get_entry(name).builder)
    fields: list[tuple[str, Any, Any]] = [("name", str, field(default=name))]
    for key, default in model_options(name).items():
        kind = hints.get(key, Any)
        optional = typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)
        inner = [a for a in typing.get_args(kind) if a is not type(None)] if optional else [kind]
        kind = inner[0] if len(inner) == 1 and inner[0] in _OMEGACONF_TYPES else Any
        if key == "num_classes":
            default, optional = None, True  # taken from the dataset's manifest unless set
        if isinstance(default, (list, tuple)):
            spec = field(default_factory=lambda value=list(default): list(value))
        else:
            spec = field(default=default)
        fields.append((key, typing.Optional[kind] if optional or default is None else kind, spec))
    return make_dataclass(f"{name}_model_config", fields)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_train", node=TrainConfig)
    cs.store(group="data", name="base_data", node=DataConfig)
    cs.store(group="optim", name="base_optim", node=OptimConfig)
    cs.store(group="trainer", name="base_trainer", node=TrainerConfig)
    cs.store(name="base_style", group="style", node=StyleConfig)
    cs.store(name="base_results", group="results", node=ResultsConfig)
    for name in list_models():
        cs.store(group="model", name=name, node=_model_node(name))


def compose_config(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """The composed, validated config for `overrides` (Hydra syntax: experiment=..., model.tau=0.5)."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides or []))
    OmegaConf.set_struct(cfg, True)
    return cfg


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The fully resolved config as plain data: saved in every checkpoint and results row."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
