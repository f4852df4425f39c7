"""Grad-CAM heat maps of trained checkpoints over images (seed 003 §5, seed 002 §4.1), side by side when
two checkpoints are compared. Uses the grad-cam library; images go through the run's own evaluation
transforms, so the map is of what the model saw."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from cls.data.stylize import find_target_layer
from cls.data.torch_loader import build_transform
from cls.models.finegrained import FineGrainedResNet
from cls.train.checkpoint import CHECKPOINT_FILE, load_checkpoint
from cls.train.loop import data_transforms, model_from_config


@dataclass
class LoadedRun:
    name: str  # what the figure calls it
    model: nn.Module
    config: dict[str, Any]
    classes: list[str]


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, a checkpoint directory, or a run directory (its newest checkpoint)."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / CHECKPOINT_FILE).is_file():
        return path / CHECKPOINT_FILE
    # Ray Train keeps checkpoint_<timestamp>/ in the run directory, an in-process run checkpoints/epoch_*/.
    found = sorted(path.glob(f"checkpoint_*/{CHECKPOINT_FILE}")) + sorted(path.glob(f"checkpoints/epoch_*/{CHECKPOINT_FILE}"))
    if not found:
        raise FileNotFoundError(f"no checkpoint at {path} (expected a {CHECKPOINT_FILE}, or a run directory holding one)")
    return max(found, key=lambda p: p.stat().st_mtime)


def load_run(path: str | os.PathLike, device: torch.device | str = "cpu") -> LoadedRun:
    file = find_checkpoint(path)
    state = load_checkpoint(file, map_location=device)
    config = state["config"]
    model_cfg = {**config["model"]}
    if "pretrained" in model_cfg:
        model_cfg["pretrained"] = False  # the checkpoint's weights replace ImageNet's: nothing to fetch
    model = model_from_config(model_cfg)
    model.load_state_dict(state["model"])
    classes = config["data"].get("classes") or [str(i) for i in range(model_cfg.get("num_classes") or 0)]
    return LoadedRun(str(path), model.to(device).eval(), config, classes)


def default_target_layer(model: nn.Module, example: Tensor) -> nn.Module:
    """The module whose output Grad-CAM weighs. For seed 003's network, the features MA attends to (layer3's
    output): EA runs the later stages twice, and Grad-CAM keeps one activation per layer."""
    if isinstance(model, FineGrainedResNet):
        return model.trunk
    return model.get_submodule(find_target_layer(model, example))


def _transforms(config: dict[str, Any]):
    """The run's evaluation transform, and the same without normalisation (for display)."""
    tc = data_transforms(config["data"])
    return build_transform(tc, train=False), build_transform(replace(tc, mean=(0.0,) * 3, std=(1.0,) * 3), train=False)


def gradcam(run: LoadedRun, images: Sequence[Tensor], layer: str | None = None) -> list[dict[str, Any]]:
    """For uint8 (3, H, W) images: {"cam": (h, w) in [0, 1], "image": (h, w, 3) float in [0, 1], "class",
    "prob"} with the CAM of the predicted class."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget, ClassifierOutputTarget

    from cls.train.metrics import class_probabilities

    normalise, show = _transforms(run.config)
    device = next(run.model.parameters()).device
    batch = torch.stack([normalise(img) for img in images]).to(device)
    target = run.model.get_submodule(layer) if layer else default_target_layer(run.model, batch[:1])
    with torch.no_grad():
        outputs = run.model(batch)
    probs = class_probabilities(outputs)
    predicted = probs.argmax(1).tolist()
    binary = outputs.dim() == 1  # one sigmoid logit (seed 002's classifier)
    targets = [BinaryClassifierOutputTarget(c) if binary else ClassifierOutputTarget(c) for c in predicted]
    batch.requires_grad_(True)  # frozen bases (vgg16_transfer) still need a gradient path to the layer
    cam = GradCAM(model=run.model, target_layers=[target])
    try:
        maps = cam(input_tensor=batch, targets=targets)
    finally:
        cam.activations_and_grads.release()
    return [
        {
            "cam": maps[i],
            "image": show(img).permute(1, 2, 0).clamp(0, 1).numpy(),
            "class": run.classes[c] if c < len(run.classes) else str(c),
            "prob": float(probs[i, c]),
        }
        for i, (img, c) in enumerate(zip(images, predicted))
    ]


def read_image(path: str | os.PathLike) -> Tensor:
    with Image.open(path) as image:
        return TF.pil_to_tensor(image.convert("RGB"))


def write_figures(
    checkpoints: Sequence[str | os.PathLike],
    image_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    layer: str | None = None,
    device: str = "cpu",
) -> list[Path]:
    """One PNG per image: the image, then each checkpoint's Grad-CAM overlay with its prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if not 1 <= len(checkpoints) <= 2:
        raise ValueError(f"give one checkpoint, or two to compare; got {len(checkpoints)}")
    missing = [str(p) for p in image_paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such image: {', '.join(missing)}")
    runs = [load_run(c, device) for c in checkpoints]
    images = [read_image(p) for p in image_paths]
    results = [gradcam(run, images, layer) for run in runs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, path in enumerate(image_paths):
        fig, axes = plt.subplots(1, 1 + len(runs), figsize=(3.2 * (1 + len(runs)), 3.8), squeeze=False)
        axes[0, 0].imshow(results[0][i]["image"])
        axes[0, 0].set_title(Path(path).name, fontsize=9)
        for j, (run, result) in enumerate(zip(runs, results), start=1):
            r = result[i]
            axes[0, j].imshow(show_cam_on_image(r["image"].astype(np.float32), r["cam"], use_rgb=True))
            axes[0, j].set_title(f"{Path(run.name).name}\n{r['class']} ({r['prob']:.0%})", fontsize=9)
        for ax in axes[0]:
            ax.axis("off")
        fig.tight_layout()
        target = out / f"{Path(path).stem}_gradcam.png"
        fig.savefig(target, dpi=100)
        plt.close(fig)
        written.append(target)
    return written
