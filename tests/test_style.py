"""Seed 002: the style network keeps H x W, the perceptual loss is Eqs. (2)-(3) on VGG-19, the VGG-16
transfer classifier trains only its dense layers."""

import pytest
import torch
import torchvision

from cls.models import build_model
from cls.models.style import PerceptualLoss, content_loss, gram_matrix, vgg19_layer_indices


@pytest.mark.parametrize("h,w", [(8, 8), (36, 52), (64, 48), (100, 8)])
def test_style_network_keeps_height_and_width(h, w):
    net = build_model("style_transformer", channels=4, residual_blocks=1).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, h, w)).shape == (1, 3, h, w)


@pytest.mark.parametrize("h,w,message", [(30, 32, "divisible by 4"), (32, 34, "divisible by 4"), (4, 8, "at least 8x8")])
def test_style_network_rejects_sizes_it_cannot_keep(h, w, message):
    with pytest.raises(ValueError, match=message):
        build_model("style_transformer")(torch.rand(1, 3, h, w))


def test_style_network_has_five_residual_blocks_by_default():
    from cls.models.style import ResidualBlock

    net = build_model("style_transformer")
    assert sum(isinstance(m, ResidualBlock) for m in net.modules()) == 5


def test_vgg19_layer_names_point_at_the_relu_after_each_conv():
    features = torchvision.models.vgg19().features
    index = vgg19_layer_indices()
    assert len(index) == 16  # VGG-19 has 16 conv layers
    for name, i in index.items():
        assert isinstance(features[i], torch.nn.ReLU) and isinstance(features[i - 1], torch.nn.Conv2d), name
    assert features[index["conv1_2"] - 1].out_channels == 64
    assert features[index["conv3_3"] - 1].out_channels == 256
    assert index["conv5_4"] == 35


def test_gram_matrix_is_eq_3_normalised_by_chw():
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # (B=1, C=2, H=1, W=2)
    # Σ_hw φ_c φ_c' / (C·H·W) with C·H·W = 4
    expected = torch.tensor([[[1 + 4, 3 + 8], [3 + 8, 9 + 16]]]) / 4.0
    assert torch.allclose(gram_matrix(f), expected)


def test_content_loss_is_eq_2():
    a, b = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    assert torch.allclose(content_loss(a, b), ((a - b) ** 2).sum() / (2 * 3 * 4 * 5))


def test_perceptual_loss_defaults_are_the_papers_best_layers():
    loss = PerceptualLoss(pretrained=False)
    assert loss.content_layers == ("conv3_3",)
    assert loss.style_layers == ("conv1_2", "conv2_2", "conv3_3", "conv4_3")
    assert len(loss.vgg) == vgg19_layer_indices()["conv4_3"] + 1  # the VGG is cut after the deepest layer used


def test_perceptual_loss_trains_the_style_network_only():
    torch.manual_seed(0)
    loss_fn = PerceptualLoss(pretrained=False, tv_weight=1e-3)
    net = build_model("style_transformer", channels=8, residual_blocks=1)
    content, style = torch.rand(2, 3, 32, 32), torch.rand(1, 3, 32, 32)
    grams = loss_fn.style_targets(style)
    assert grams["conv1_2"].shape == (1, 64, 64)
    terms = loss_fn(net(content), content, grams)
    assert set(terms) == {"loss", "content", "style", "tv"} and all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    assert all(p.grad is not None for p in net.parameters())
    assert all(p.grad is None and not p.requires_grad for p in loss_fn.parameters())
    # identical images: no content loss, and the style loss of an image against itself is 0
    same = loss_fn(style, style, loss_fn.style_targets(style))
    assert same["content"] == 0 and same["style"] < 1e-12


def test_perceptual_loss_rejects_unknown_layers():
    with pytest.raises(ValueError, match=r"unknown VGG-19 layer\(s\) \['conv6_1'\]"):
        PerceptualLoss(content_layers=("conv6_1",), pretrained=False)


def test_vgg16_transfer_freezes_the_convolutional_base():
    model = build_model("vgg16_transfer", pretrained=False, hidden=32).train()
    assert not any(p.requires_grad for p in model.features.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    assert model.classifier[-1].out_features == 1  # one sigmoid output
    x = torch.rand(3, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (3,)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 1.0, 1.0])).backward()
    assert all(p.grad is None for p in model.features.parameters())
    p = model.eval().predict_proba(x)
    assert ((p > 0) & (p < 1)).all() and torch.allclose(p, torch.sigmoid(model(x)))
