"""Every model of the seeds, built by name. Pure torch/torchvision: no Ray, DALI, Hydra or pyarrow here."""

from . import backbones, dnffm, finegrained, style, transfer  # noqa: F401  (registers the builders)
from .backbones import BACKBONES, Backbone
from .losses import multi_stage_cross_entropy
from .registry import build_model, list_models, model_options, register_model
from .weights import PretrainedWeightsMissing

__all__ = [
    "BACKBONES",
    "Backbone",
    "PretrainedWeightsMissing",
    "build_model",
    "list_models",
    "model_options",
    "multi_stage_cross_entropy",
    "register_model",
]
