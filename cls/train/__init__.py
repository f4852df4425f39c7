"""Training: `train_one_epoch` / `evaluate` (engine), metrics, checkpoints, Hydra configs, and the Ray Train
driver (`run.train`) whose workers call `loop.fit`."""

from .checkpoint import CHECKPOINT_KEYS, load_checkpoint, save_checkpoint
from .engine import evaluate, train_one_epoch
from .metrics import ClassificationMetrics

__all__ = ["CHECKPOINT_KEYS", "ClassificationMetrics", "evaluate", "load_checkpoint", "save_checkpoint", "train_one_epoch"]
