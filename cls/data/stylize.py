"""Fast-style-transfer augmentation of seed 002 (Zheng et al.): train a style network (§2-3), choose a style
per class with Grad-CAM (§4.1), and expand a prepared dataset with styled copies of its train images (§4.3).

- `train_style_network`: TransformerNet (`cls.models.style`) against the VGG-19 PerceptualLoss on a folder of
  content images, at 256 px with batches of 4 (§3); the checkpoint has fixed keys {"model", "config",
  "style_image", "final"} and is written atomically.
- `stylize_dataset`: a NEW prepared jpeg dataset whose train split is the source's plus one styled copy of
  each train image, with one style for all classes or a style per class (§4.3: waves for cats, abstract for
  dogs). Val and test are carried over unchanged and never styled.
- `gradcam_style_scores` / `best_styles`: §4.1 picks, per class, the style whose Grad-CAM heat map on the
  styled images "almost covers the whole object". We have no object masks, so the score is defined in
  `gradcam_style_scores`.

Styling runs in batches of images of one size, under torch.inference_mode.
"""

from __future__ import annotations

import io
import math
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from cls.models import build_model
from cls.models.style import PerceptualLoss, TransformerNet

from .augment import NewImage, copy_name, default_mode, encode, expand_prepared, read_rgb
from .layout import Manifest, read_file_list, read_manifest, sha256_file, write_atomic

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NONE_STYLE = "none"  # the unstyled baseline row of gradcam_style_scores


# ---------------------------------------------------------------------------------------------------------
# Training (seed 002 §2-3)


class ContentImages(torch.utils.data.Dataset):
    """Every image under `root` (recursively), resized and centre-cropped to `size`, as float (3, S, S) in [0, 1]."""

    def __init__(self, root: str | os.PathLike, size: int) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"content image folder {self.root} does not exist")
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {self.root}")
        self.transform = v2.Compose(
            [v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True)]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        with Image.open(self.paths[i]) as im:
            return self.transform(TF.pil_to_tensor(im.convert("RGB")))


def load_style_image(path: str | os.PathLike, size: int | None) -> Tensor:
    """The style image as float (1, 3, H, W) in [0, 1], its shorter side resized to `size` (None: as it is)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"style image {path} does not exist")
    with Image.open(path) as im:
        image = TF.pil_to_tensor(im.convert("RGB"))
    if size is not None:
        image = TF.resize(image, size, antialias=True)
    return TF.to_dtype(image, torch.float32, scale=True).unsqueeze(0)


def _save_atomic(obj: Any, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())
    default_mode(Path(path))


def train_style_network(
    content_images_dir: str | os.PathLike,
    style_image_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    size: int = 256,
    batch_size: int = 4,
    steps: int = 20_000,
    lr: float = 1e-3,
    content_weight: float = 1.0,
    style_weight: float = 1e5,
    tv_weight: float = 0.0,
    style_size: int | None = None,
    channels: int = 32,
    residual_blocks: int = 5,
    device: str | torch.device = "cpu",
    pretrained_vgg: bool | str = True,
    seed: int = 0,
    num_workers: int = 0,
    check_every: int = 50,
    progress: bool = False,
) -> dict[str, float]:
    """Train a TransformerNet for the style of `style_image_path` and save it to `out_path`.

    Seed 002 §3: content images normalised to 256x256, batch 4, 20,000 iterations (one epoch of 80,000 COCO
    images); Adam at lr 1e-3 is Johnson et al.'s, whose network §2 uses. The style image's shorter side is
    resized to `style_size` (default `size`) so its texture scale matches the content crops. Loss layers are
    PerceptualLoss's defaults (§3.1's best). `pretrained_vgg=False` uses a random VGG-19: only for trying
    the pipeline; the loss network must be ImageNet-trained to transfer a style (§2.2).

    The loss is checked for NaN/inf (and shown) every `check_every` steps.
    Returns the final step's loss terms {"loss", "content", "style", "tv"} and the first step's "initial_loss".
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be at least 1, got steps={steps}, batch_size={batch_size}")
    if size < 8 or size % 4:
        raise ValueError(f"size must be a multiple of 4 and at least 8 (the style network's input), got {size}")
    # The loss first: without cached VGG-19 weights it raises PretrainedWeightsMissing before any work.
    loss_fn = PerceptualLoss(
        content_weight=content_weight, style_weight=style_weight, tv_weight=tv_weight, pretrained=pretrained_vgg
    ).to(device)
    data = ContentImages(content_images_dir, size)
    style = load_style_image(style_image_path, style_size or size).to(device)

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=min(batch_size, len(data)),
        shuffle=True,
        drop_last=True,  # every step sees a full batch; with fewer images than batch_size the batch shrinks
        num_workers=num_workers,
        generator=generator,
    )
    net: TransformerNet = build_model("style_transformer", channels=channels, residual_blocks=residual_blocks)
    net.to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    grams = loss_fn.style_targets(style)  # Eq. (3) of the style image, once

    def batches() -> Iterator[Tensor]:
        while True:  # epochs until `steps` batches are drawn
            yield from loader

    from tqdm import tqdm

    terms: dict[str, Tensor] = {}
    initial = math.nan
    bar = tqdm(range(steps), desc="style network", unit="step", disable=not progress)
    for step, content in zip(bar, batches()):
        content = content.to(device, non_blocking=True)
        terms = loss_fn(net(content), content, grams)  # Eq. (1): weighted content (2) + style (3) losses
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        if step % check_every == 0 or step == steps - 1:  # .item() waits for the GPU: not every step
            loss = terms["loss"].item()
            if not math.isfinite(loss):
                raise FloatingPointError(f"style network loss is {loss} at step {step}; lower lr or style_weight")
            initial = loss if step == 0 else initial
            bar.set_postfix(loss=f"{loss:.4g}")
    final = {k: float(v.detach()) for k, v in terms.items()}

    config = {
        "channels": channels,
        "residual_blocks": residual_blocks,
        "size": size,
        "style_size": style_size or size,
        "batch_size": batch_size,
        "steps": steps,
        "lr": lr,
        "content_weight": content_weight,
        "style_weight": style_weight,
        "tv_weight": tv_weight,
        "content_layers": list(loss_fn.content_layers),
        "style_layers": list(loss_fn.style_layers),
        "pretrained_vgg": pretrained_vgg,
        "seed": seed,
        "content_images": str(Path(content_images_dir).resolve()),
        "num_content_images": len(data),
    }
    net_cpu = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    _save_atomic(
        {"model": net_cpu, "config": config, "style_image": str(Path(style_image_path).resolve()), "final": final},
        out_path,
    )
    return {**final, "initial_loss": initial}


def read_style_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any], str | None]:
    """(state dict, style_transformer options, style image) of a style checkpoint.

    Two writers: `train_style_network` ({"model", "config": {"channels", "residual_blocks", ...},
    "style_image"}) and `cls train experiment=style_network` (cls.train.checkpoint's fixed keys, the resolved
    config with model = {"name": "style_transformer", ...} and style.image).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"style checkpoint {path} does not exist (make one with `cls stylize train`)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict) and isinstance(ckpt.get("config"), dict)):
        raise ValueError(f"{path} is not a style checkpoint (a dict with 'model' and 'config')")
    cfg = ckpt["config"]
    if isinstance(cfg.get("model"), dict):  # a training run's resolved config
        options = dict(cfg["model"])
        if options.pop("name", None) != "style_transformer":
            raise ValueError(f"{path} holds a {cfg['model'].get('name')!r} model, not a style_transformer")
        return ckpt["model"], options, (cfg.get("style") or {}).get("image")
    options = {k: cfg[k] for k in ("channels", "residual_blocks") if k in cfg}
    return ckpt["model"], options, ckpt.get("style_image")


def load_style_network(path: str | os.PathLike, device: str | torch.device = "cpu") -> TransformerNet:
    """A style network from `read_style_checkpoint`'s checkpoints, in eval mode on `device`."""
    state, options, _ = read_style_checkpoint(path)
    net = build_model("style_transformer", **options)
    net.load_state_dict(state)
    return net.to(device).eval()


# ---------------------------------------------------------------------------------------------------------
# Applying a style


def stylize_images(net: nn.Module, images: Sequence[Tensor], size: int | None = None) -> list[Tensor]:
    """Styled copies of uint8 (3, H, W) images, each of its own size, run as one batch on the net's device.

    size=None styles at the images' own size, which they must share: the style network needs H and W
    divisible by 4 (at least 8), so the batch is reflection-padded up to that and the result cropped back.
    size=N styles every image at NxN (seed 002 §4.1 styles at 224x224 to save time; sizes may then differ)
    and resizes each result back to its image's size.
    """
    if not images:
        return []
    if any(im.dtype != torch.uint8 or im.dim() != 3 for im in images):
        raise ValueError("stylize_images takes uint8 (3, H, W) images")
    if size is not None and (size < 8 or size % 4):
        raise ValueError(f"size must be a multiple of 4 and at least 8, got {size}")
    device = next(net.parameters()).device
    with torch.inference_mode():
        floats = [TF.to_dtype(im.to(device), torch.float32, scale=True) for im in images]
        if size is not None:
            y = net(torch.stack([TF.resize(x, [size, size], antialias=True) for x in floats]))
            out = [TF.resize(yi, list(x.shape[-2:]), antialias=True) for yi, x in zip(y, floats)]
        else:
            if len({x.shape for x in floats}) > 1:
                raise ValueError("images styled at their own size (size=None) must share one size to form a batch")
            h, w = floats[0].shape[-2:]
            ph, pw = max(8, -(-h // 4) * 4) - h, max(8, -(-w // 4) * 4) - w
            # Reflection needs a pad smaller than the side; only tiny images fall back to replication.
            mode = "reflect" if ph < h and pw < w else "replicate"
            y = net(F.pad(torch.stack(floats), (0, pw, 0, ph), mode=mode))[..., :h, :w]
            out = list(y)
        return [TF.to_dtype(yi.clamp(0, 1), torch.uint8, scale=True).cpu() for yi in out]


def stylize_batch(net: nn.Module, images: Tensor, size: int | None = None) -> Tensor:
    """`stylize_images` for a uint8 (B, 3, H, W) batch: uint8 (B, 3, H, W)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"stylize_batch takes uint8 (B, 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
    return torch.stack(stylize_images(net, list(images), size))


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file's header, without decoding it."""
    with Image.open(path) as im:
        return im.height, im.width


def _batches_by_size(
    root: Path, items: Sequence[tuple[str, int]], batch_size: int, size: int | None
) -> Iterator[list[tuple[str, int]]]:
    """`items` in batches whose images share one size (all do when styled at a fixed `size`), in a fixed order."""
    groups: dict[tuple[int, int], list[tuple[str, int]]] = defaultdict(list)
    for rel, label in items:
        groups[(0, 0) if size is not None else _image_size(root / rel)].append((rel, label))
    for key in sorted(groups):
        group = groups[key]
        for i in range(0, len(group), batch_size):
            yield group[i : i + batch_size]


def _style_tag(name: str) -> str:
    tag = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return f"style-{tag}"


def stylize_dataset(
    src_root: str | os.PathLike,
    out_root: str | os.PathLike,
    styles: Mapping[str, str | os.PathLike] | str | os.PathLike,
    *,
    size: int | None = None,
    fraction: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    device: str | torch.device = "cpu",
    jpeg_quality: int = 95,
    progress: bool = False,
    split_order: str = "clean",
) -> Manifest:
    """Seed 002 §4.3: a new prepared dataset with a styled copy of each image: of each train image with
    split_order "clean" (val and test unchanged), of every image, split 6:2:2, with "paper" (as §4.3 does; see
    `cls.data.augment.expand_prepared`).

    `styles` is one style checkpoint for every class, or {class name: checkpoint} (the paper styles cats
    with waves and dogs with abstract); classes left out of the mapping get no styled copies. `fraction`
    styles a random subset of each class's train images (fraction x count, rounded half up, drawn with
    `seed`; 1.0 = all, the paper's 10,000 -> 20,000). A copy keeps
    its original's size; see `stylize_images` for `size`. "x.jpg" styled by "wave.pt" is "x__style-wave.jpg".
    """
    src_root = Path(src_root)
    src = read_manifest(src_root)
    if isinstance(styles, Mapping):
        unknown = sorted(set(styles) - set(src.classes))
        if unknown:
            names = ", ".join(map(repr, unknown))
            raise ValueError(f"no class {names} in {src_root}; its classes: {', '.join(src.classes)}")
        per_class = {c: Path(p) for c, p in styles.items()}
    else:
        per_class = {c: Path(styles) for c in src.classes}
    if not per_class:
        raise ValueError("no style given")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if size is not None and (size < 8 or size % 4):
        raise ValueError(f"size must be a multiple of 4 and at least 8, got {size}")
    # Provenance: the checkpoint's content hash, so a retrained style is a different expansion.
    style_images = {p: read_style_checkpoint(p)[2] for p in set(per_class.values())}
    digests = {p: sha256_file(p) for p in style_images}
    source = {
        "method": "style",
        "styles": {
            c: {"checkpoint": str(p.resolve()), "sha256": digests[p], "style_image": style_images[p]}
            for c, p in sorted(per_class.items())
        },
        "size": size,
        "fraction": fraction,
        "seed": seed,
        "copies": 1,
        "jpeg_quality": jpeg_quality,
    }
    label_of = {c: i for i, c in enumerate(src.classes)}

    def generate(root: Path, train: list[tuple[str, int]]) -> Iterator[NewImage]:
        from tqdm import tqdm

        by_checkpoint: dict[Path, list[tuple[str, int]]] = defaultdict(list)
        g = torch.Generator().manual_seed(seed)
        for c, path in sorted(per_class.items()):
            items = [(rel, label) for rel, label in train if label == label_of[c]]
            n_keep = math.floor(fraction * len(items) + 0.5)  # round half up, not Python's half to even
            keep = sorted(torch.randperm(len(items), generator=g)[:n_keep].tolist())
            by_checkpoint[path] += [items[i] for i in keep]
        bar = tqdm(total=sum(map(len, by_checkpoint.values())), desc="stylize", unit="img", disable=not progress)
        for path, items in by_checkpoint.items():  # each network loaded once
            net, tag = load_style_network(path, device), _style_tag(path.stem)
            for batch in _batches_by_size(root, items, batch_size, size):
                styled = stylize_images(net, [read_rgb(root / rel) for rel, _ in batch], size)
                for (rel, label), image in zip(batch, styled):
                    yield copy_name(rel, tag), label, encode(image, jpeg_quality)
                bar.update(len(batch))
        bar.close()

    return expand_prepared(src_root, out_root, generate, source, src_manifest=src, split_order=split_order, seed=seed)


# ---------------------------------------------------------------------------------------------------------
# Choosing a style per class with Grad-CAM (seed 002 §4.1)


class _SqueezeLogit(nn.Module):
    """Makes a (B, 1) binary classifier return (B,), the shape Grad-CAM's binary target expects."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).squeeze(-1)


def find_target_layer(model: nn.Module, example: Tensor) -> str:
    """The dotted name of the module that last outputs the final convolutional feature map.

    Runs `example` once and takes the module that finishes last among those called exactly once whose
    output is a (B, C, h, w) map at the resolution of the last Conv2d's output (e.g. "features.29" of VGG,
    the ReLU after conv5_3; a ResNet's layer4). Modules called more than once (shared ReLUs) are skipped:
    Grad-CAM keeps one activation per layer. Models with two branches (dnffm) need an explicit choice.
    """
    order: list[tuple[str, tuple[int, ...]]] = []
    calls: dict[str, int] = defaultdict(int)
    last_conv_hw: list[tuple[int, ...]] = []

    def hook(name: str):
        def record(module: nn.Module, _inputs: Any, output: Any) -> None:
            calls[name] += 1
            if isinstance(output, Tensor):
                order.append((name, tuple(output.shape)))
                if isinstance(module, nn.Conv2d):
                    last_conv_hw.append(tuple(output.shape[-2:]))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if not last_conv_hw:
        raise ValueError("the classifier has no Conv2d: Grad-CAM needs a convolutional feature map")
    hw = last_conv_hw[-1]
    candidates = [n for n, shape in order if len(shape) == 4 and shape[-2:] == hw and calls[n] == 1]
    if not candidates:
        raise ValueError("found no module called once that outputs the final feature map; name a target layer")
    return candidates[-1]


def _sample_split(
    root: Path, split: str, n_classes: int, max_per_class: int, seed: int
) -> dict[int, list[str]]:
    """Up to `max_per_class` paths per class label from `split`, a seeded random sample in file order."""
    by_label: dict[int, list[str]] = defaultdict(list)
    for rel, label in read_file_list(root, split):
        by_label[label].append(rel)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for label in range(n_classes):
        rels = by_label.get(label, [])
        keep = sorted(torch.randperm(len(rels), generator=g)[:max_per_class].tolist())
        out[label] = [rels[i] for i in keep]
    return out


def gradcam_style_scores(
    classifier: nn.Module,
    target_layer: nn.Module | str | None,
    dataset_root: str | os.PathLike,
    style_checkpoints: Mapping[str, str | os.PathLike],
    *,
    split: str = "val",
    max_per_class: int = 50,
    size: int = 224,
    batch_size: int = 8,
    threshold: float = 0.5,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Seed 002 §4.1: how well each style keeps the classifier's attention on each class's object.

    Images of `split` (up to `max_per_class` per class) are resized to size x size (the paper's 224x224),
    styled by each checkpoint (and left unstyled for the "none" baseline row), normalised with mean/std
    (ImageNet's, as the classifiers' pretrained bases expect; None: no normalisation) and given to
    pytorch_grad_cam's GradCAM for the image's TRUE class: ClassifierOutputTarget(label) for a
    multi-class classifier, BinaryClassifierOutputTarget(label) for a one-logit binary one (it maximises the
    logit for class 1 and its negative for class 0).

    Score (the paper has no object masks and no formula, so this is our definition): for each image, the
    fraction of pixels where the true-class Grad-CAM map, min-max normalised to [0, 1] per image by
    pytorch_grad_cam, exceeds `threshold`; averaged over the class's images. Higher = the heat map covers
    more of the image, which on object-centred photos (Kaggle cats and dogs) stands for "covers the
    object". A map with no positive evidence is all zeros and scores 0. "prob" is the mean true-class
    probability (sigmoid for one logit, softmax otherwise), reported beside it: a style that spreads the
    heat map while destroying the class evidence shows a low prob.

    `target_layer` is a module of `classifier`, its dotted name, or None for `find_target_layer`'s choice.
    Returns rows {"style", "class", "score", "prob", "n"}, one per (style incl. "none", class with images in
    `split`), sorted by class then best score first. The classifier is left in its former train/eval mode
    with no gradients.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget, ClassifierOutputTarget

    if NONE_STYLE in style_checkpoints:
        raise ValueError(f"style name {NONE_STYLE!r} is reserved for the unstyled baseline")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    if max_per_class < 1 or batch_size < 1:
        raise ValueError("max_per_class and batch_size must be at least 1")
    root = Path(dataset_root)
    manifest = read_manifest(root)
    if split not in manifest.splits:
        raise ValueError(f"{root} has no split {split!r} (splits: {', '.join(manifest.splits)})")
    sampled = _sample_split(root, split, len(manifest.classes), max_per_class, seed)
    samples = {label: rels for label, rels in sampled.items() if rels}
    if not samples:
        raise ValueError(f"split {split!r} of {root} has no images")

    def load(rels: list[str]) -> Tensor:  # uint8 (N, 3, size, size); one class at a time bounds the memory
        return torch.stack([TF.resize(read_rgb(root / rel), [size, size], antialias=True) for rel in rels])

    nets: dict[str, TransformerNet | None] = {NONE_STYLE: None}
    for name, path in style_checkpoints.items():
        nets[name] = load_style_network(path, device)

    def prepare(batch: Tensor) -> Tensor:
        x = TF.to_dtype(batch, torch.float32, scale=True).to(device)
        if mean is not None and std is not None:
            x = TF.normalize(x, list(mean), list(std))
        # The classifier's base may be frozen (vgg16_transfer): an input that requires grad makes the
        # target layer's activations require grad, so Grad-CAM's gradient hook fires.
        return x.clone().requires_grad_(True)

    was_training = classifier.training
    classifier.eval()
    model = classifier
    try:
        first = prepare(load(next(iter(samples.values()))[:1]))
        with torch.no_grad():
            probe = classifier(first)
        binary = probe.dim() == 1 or probe.shape[-1] == 1
        if binary:
            if len(manifest.classes) != 2:
                raise ValueError(f"a one-logit classifier is binary; {root} has {len(manifest.classes)} classes")
            if probe.dim() == 2:
                model = _SqueezeLogit(classifier)
        elif probe.shape[-1] != len(manifest.classes):
            raise ValueError(
                f"the classifier has {probe.shape[-1]} outputs, {root} has {len(manifest.classes)} classes "
                f"(build it with num_classes={len(manifest.classes)})"
            )
        if target_layer is None:
            target_layer = find_target_layer(classifier, first.detach())
        layer = classifier.get_submodule(target_layer) if isinstance(target_layer, str) else target_layer

        from tqdm import tqdm

        rows = []
        total = len(nets) * sum(math.ceil(len(v) / batch_size) for v in samples.values())
        bar = tqdm(total=total, desc="grad-cam", unit="batch", disable=not progress)
        # Not `with GradCAM(...)`: its __exit__ prints and swallows IndexErrors, which would truncate the rows.
        cam = GradCAM(model=model, target_layers=[layer])
        try:
            for label, rels in samples.items():
                class_images = load(rels)
                for style, net in nets.items():
                    target = BinaryClassifierOutputTarget(label) if binary else ClassifierOutputTarget(label)
                    coverage, probs = [], []
                    for i in range(0, len(class_images), batch_size):
                        batch = class_images[i : i + batch_size]
                        styled = batch if net is None else stylize_batch(net, batch)
                        maps = cam(input_tensor=prepare(styled), targets=[target] * len(batch))  # (B, H, W) in [0, 1]
                        coverage.append((maps > threshold).reshape(len(batch), -1).mean(axis=1))
                        out = cam.outputs.detach().float().cpu()
                        if binary:  # the one logit is class 1's
                            p = torch.sigmoid(out) if label == 1 else 1 - torch.sigmoid(out)
                        else:
                            p = out.softmax(-1)[:, label]
                        probs.append(p.numpy())
                        bar.update(1)
                    rows.append(
                        {
                            "style": style,
                            "class": manifest.classes[label],
                            "score": float(np.concatenate(coverage).mean()),
                            "prob": float(np.concatenate(probs).mean()),
                            "n": len(class_images),
                        }
                    )
        finally:
            cam.activations_and_grads.release()
        bar.close()
    finally:
        classifier.zero_grad(set_to_none=True)
        classifier.train(was_training)
    rows.sort(key=lambda r: (r["class"], -r["score"], -r["prob"], r["style"]))
    return rows


def best_styles(rows: Sequence[Mapping[str, Any]], *, include_none: bool = False) -> dict[str, str]:
    """Per class, the style with the highest Grad-CAM score (ties: higher prob, then name), §4.1's choice.

    The "none" baseline is left out unless `include_none`: the point is to pick a style to augment with.
    """
    best: dict[str, Mapping[str, Any]] = {}
    for r in rows:
        if r["style"] == NONE_STYLE and not include_none:
            continue
        b = best.get(r["class"])
        if b is None or (r["score"], r["prob"], b["style"]) > (b["score"], b["prob"], r["style"]):
            best[r["class"]] = r
    return {c: r["style"] for c, r in sorted(best.items())}


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NONE_STYLE",
    "ContentImages",
    "best_styles",
    "find_target_layer",
    "gradcam_style_scores",
    "load_style_image",
    "load_style_network",
    "read_style_checkpoint",
    "stylize_batch",
    "stylize_dataset",
    "stylize_images",
    "train_style_network",
]
