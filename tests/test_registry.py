"""Every registered model builds by name, runs forward and backward on the CPU, and bad names fail clearly."""

import pytest
import torch

from cls.models import BACKBONES, build_model, list_models, model_options, multi_stage_cross_entropy
from cls.models.registry import register_model

# Small, fast settings per model; everything else is the registered default.
SMOKE = {
    "dnffm": dict(num_classes=5, small_input="cifar_stem", fusion_dim=32),
    "fg_resnet50": dict(num_classes=5),
    "vgg16_transfer": dict(pretrained=False, hidden=16),
    "style_transformer": dict(channels=8, residual_blocks=2),
}
RESOLUTION = {"fg_resnet50": 64, "style_transformer": 36}


def smoke_options(name: str) -> dict:
    options = dict(SMOKE.get(name, {}))
    if "num_classes" in model_options(name):
        options.setdefault("num_classes", 5)
    if "pretrained" in model_options(name):
        options["pretrained"] = False  # nothing may download in tests
    return options


def test_registry_holds_every_model_of_the_seeds():
    names = set(list_models())
    assert set(BACKBONES) <= names  # the six single-backbone baselines of DNFFM Tables 1-3
    assert {"dnffm", "fg_resnet50", "style_transformer", "vgg16_transfer"} <= names
    assert list_models(task="image-to-image") == ["style_transformer"]


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name):
    torch.manual_seed(0)
    model = build_model(name, **smoke_options(name)).train()
    size = RESOLUTION.get(name, 32)
    x = torch.rand(2, 3, size, size)
    out = model(x)
    if name == "style_transformer":
        assert out.shape == x.shape
        loss = out.square().mean()
    elif name == "vgg16_transfer":
        assert out.shape == (2,)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, torch.tensor([0.0, 1.0]))
    else:
        stages = out if isinstance(out, tuple) else (out,)
        assert all(s.shape == (2, 5) for s in stages)
        loss = multi_stage_cross_entropy(out, torch.tensor([1, 3]))
    assert torch.isfinite(loss)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable), "a trainable parameter got no gradient"

    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and torch.isfinite(out).all()


def test_unknown_model_name_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown model 'resnet51'.*known models: .*resnet50"):
        build_model("resnet51")


def test_unknown_option_lists_the_options():
    with pytest.raises(ValueError, match=r"model 'dnffm' has no option 'tua'.*tau=1\.0"):
        build_model("dnffm", tua=0.5)


def test_unknown_backbone_name_lists_known_backbones():
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet18'.*densenet121"):
        build_model("dnffm", backbone1="resnet18")


def test_bad_small_input_mode_is_rejected():
    with pytest.raises(ValueError, match="small_input must be one of"):
        build_model("resnet50", small_input="cifar")


def test_a_name_registered_twice_raises():
    with pytest.raises(ValueError, match="registered twice"):
        register_model("resnet50")(lambda: None)


def test_multi_stage_loss_sums_the_stages():
    torch.manual_seed(0)
    a, b, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(multi_stage_cross_entropy((a, b), y), ce(a, y) + ce(b, y))
    assert torch.allclose(multi_stage_cross_entropy(a, y), ce(a, y))
