"""Classification metrics, from torchmetrics: those seed 001 §2.2 defines (confusion matrix, accuracy,
precision, recall, ROC curve and AUC) plus macro F1, the harmonic mean of precision and recall, which seed 001
does not define (its §2.2 has no F1) and we add because seed 003's and many readers' tables use it. Under torch.distributed, `compute()` gathers every rank's state first, so the numbers are
those of the whole evaluation set, not of one shard.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


def class_probabilities(outputs: Tensor | tuple[Tensor, ...]) -> Tensor:
    """(B, K) class probabilities from a model's output: logits (B, K), one binary logit (B,) (seed 002's
    sigmoid classifier, mapped to [1 - p, p]), or several stages' logits (averaged, seed 003 §3.5)."""
    if isinstance(outputs, tuple):
        outputs = torch.stack(outputs).mean(0)
    outputs = outputs.float()
    if outputs.dim() == 1:
        p = torch.sigmoid(outputs)
        return torch.stack([1 - p, p], dim=1)
    return torch.softmax(outputs, dim=1)


class ClassificationMetrics:
    """Accumulates one epoch of predictions; `compute()` returns flat floats plus the confusion matrix.

    Precision, recall, F1 and ROC-AUC are macro averages (ROC-AUC one-vs-rest; for two classes that equals
    the binary AUC). Top-5 accuracy only where there are more than 5 classes. `auroc_thresholds` bins the
    ROC curve (constant memory) instead of keeping every score: use it for very large evaluation sets.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", auroc_thresholds: int | None = None) -> None:
        if num_classes < 2:
            raise ValueError(f"classification needs at least 2 classes, got {num_classes}")
        k = num_classes
        metrics = {
            "top1": MulticlassAccuracy(k, top_k=1, average="micro"),
            "precision": MulticlassPrecision(k, average="macro"),
            "recall": MulticlassRecall(k, average="macro"),
            "f1": MulticlassF1Score(k, average="macro"),
            "auroc": MulticlassAUROC(k, average="macro", thresholds=auroc_thresholds),
        }
        if k > 5:
            metrics["top5"] = MulticlassAccuracy(k, top_k=5, average="micro")
        self.collection = MetricCollection(metrics).to(device)
        self.confusion = MulticlassConfusionMatrix(k).to(device)
        self.loss = MeanMetric().to(device)
        self.num_classes = k

    def update(self, outputs: Tensor | tuple[Tensor, ...], labels: Tensor, loss: Tensor | None = None) -> None:
        probs = class_probabilities(outputs)
        self.collection.update(probs, labels)
        self.confusion.update(probs, labels)
        if loss is not None:
            self.loss.update(loss.detach().float(), weight=labels.numel())

    def compute(self) -> tuple[dict[str, float], Tensor]:
        """({metric: value}, confusion matrix (K, K) with rows = true class), over every rank's samples."""
        values = {name: float(v) for name, v in self.collection.compute().items()}
        if self.loss.update_called:
            values["loss"] = float(self.loss.compute())
        return values, self.confusion.compute().cpu()

    def reset(self) -> None:
        self.collection.reset()
        self.confusion.reset()
        self.loss.reset()
