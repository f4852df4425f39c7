"""The models compute what the papers say: DNFFM Eqs. (1)-(3), seed 003's MA, EA and multi-scale pool, CBAM."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from cls.models import Backbone, build_model
from cls.models.attention import CBAM, HybridAttention, SpatialGate
from cls.models.complexity import count_macs
from cls.models.dnffm import FusionHead
from cls.models.finegrained import MultiScaleMaxPool, attention_map, erasure_mask


def test_fusion_head_reproduces_eqs_1_to_3_on_hand_computed_vectors():
    head = FusionHead(tau=0.5, lam=2.0, gamma=3.0)
    f1 = torch.tensor([[2.0, 4.0]])
    f2 = torch.tensor([[6.0, 0.0]])
    # Eq. (1): f_avg = 0.5 * ((2,4) + (6,0)) / 2 = (2, 1)
    # Eq. (2): f1s = 2 * ((2,4) - (2,1)) = (0, 6)
    # Eq. (3): f2s = 3 * ((6,0) - (2,1)) = (12, -3)
    expected = torch.tensor([[0.0, 6.0, 12.0, -3.0, 2.0, 1.0]])  # Concat(f1s, f2s, f_avg)
    assert torch.equal(head(f1, f2), expected)


def test_fusion_coefficients_fixed_or_learnable():
    fixed = FusionHead(0.5, 2.0, 3.0)
    assert not list(fixed.parameters())
    learnable = FusionHead(0.5, 2.0, 3.0, learnable=True)
    out = learnable(torch.randn(3, 4), torch.randn(3, 4)).sum()
    out.backward()
    assert learnable.coefficients.grad is not None and learnable.coefficients.grad.abs().sum() > 0


def test_fusion_rejects_features_of_different_widths():
    with pytest.raises(ValueError, match="Eq. \\(1\\) adds f1 and f2"):
        FusionHead()(torch.randn(2, 3), torch.randn(2, 4))


def test_dnffm_projects_both_backbones_to_one_width_and_fuses():
    model = build_model("dnffm", backbone1="shufflenet_v2_x0_5", backbone2="regnet_y_400mf", num_classes=7,
                        fusion_dim=16, small_input="cifar_stem").eval()
    assert model.project1[-1].in_features == 1024 and model.project2[-1].in_features == 440
    assert model.classifier[-1].in_features == 3 * 16
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_ma_maps_have_the_papers_shapes_and_range_and_eq_5_holds():
    torch.manual_seed(0)
    ma = HybridAttention(32).eval()
    f = torch.randn(2, 32, 9, 11)
    mc, ms = ma.channel(f), ma.spatial(f)
    assert mc.shape == (2, 32, 1, 1)  # M_c in R^{C x 1 x 1}
    assert ms.shape == (2, 1, 9, 11)  # M_s in R^{1 x H x W}
    for m in (mc, ms):
        assert (m > 0).all() and (m < 1).all()
    assert torch.allclose(ma(f), f + f * ms * mc, atol=1e-6)  # Eq. (5)


def test_ma_channel_branch_fuses_avg_and_max_with_a_1x1_conv():
    ma = HybridAttention(64)
    assert ma.channel.fuse.in_channels == 128 and ma.channel.fuse.out_channels == 64  # Eq. (15): 2C -> C
    assert ma.spatial.aspp.out_channels == 4  # Eq. (9): 1x1 + three dilated 3x3 -> 4 x H x W


def test_cbam_gates():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 5, 5)
    gate = SpatialGate().eval()
    s = gate(x)
    assert s.shape == (2, 1, 5, 5) and ((s > 0) & (s < 1)).all()
    cbam = CBAM(32).eval()
    c = cbam.channel(x)
    assert c.shape == (2, 32, 1, 1)
    x1 = x * c
    assert torch.allclose(cbam(x), x1 * cbam.spatial(x1))  # channel gate, then spatial gate


def test_ea_mask_is_zero_exactly_where_the_upsampled_map_exceeds_theta():
    torch.manual_seed(0)
    attention = torch.rand(2, 8, 7, 7)
    theta = 0.6
    mask = erasure_mask(attention, (28, 28), theta)
    # Reference, written out: channel mean, bilinear upsampling, per-image min-max, threshold.
    a = F.interpolate(attention.mean(1, keepdim=True), size=(28, 28), mode="bilinear", align_corners=False)
    a = (a - a.amin((2, 3), keepdim=True)) / (a.amax((2, 3), keepdim=True) - a.amin((2, 3), keepdim=True))
    assert mask.shape == (2, 1, 28, 28)
    assert torch.equal(mask == 0, a > theta)
    assert 0 < (mask == 0).float().mean() < 1
    assert torch.equal(attention_map(attention, (28, 28)) > theta, mask == 0)


def test_ea_erases_the_hot_spot():
    attention = torch.zeros(1, 4, 8, 8)
    attention[..., 2, 5] = 10.0
    mask = erasure_mask(attention, (8, 8), 0.5)
    assert mask[0, 0, 2, 5] == 0 and mask[0, 0, 7, 0] == 1
    assert erasure_mask(attention, (8, 8), 1.0).all()  # nothing exceeds the maximum


@pytest.mark.parametrize("theta", [-0.1, 1.5])
def test_theta_outside_unit_interval_is_rejected(theta):
    with pytest.raises(ValueError, match=r"theta must lie in \[0, 1\]"):
        build_model("fg_resnet50", theta=theta)
    with pytest.raises(ValueError, match=r"theta must lie in \[0, 1\]"):
        erasure_mask(torch.rand(1, 2, 4, 4), (4, 4), theta)


@pytest.mark.parametrize("size", [56, 57, 112, 224, 223])
def test_multiscale_pool_keeps_the_stem_pools_output_shape(size):
    x = torch.randn(1, 64, size, size)
    stem_pool = torchvision.models.resnet50().maxpool
    assert MultiScaleMaxPool()(x).shape == stem_pool(x).shape


def test_multiscale_pool_sums_three_scales():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    out = MultiScaleMaxPool((2, 4, 8))(x)
    expected = F.max_pool2d(x, 2) + F.interpolate(F.max_pool2d(x, 4), size=(4, 4), mode="bilinear") + 63.0
    assert torch.allclose(out, expected)


def test_fg_resnet_switches_change_the_forward():
    torch.manual_seed(0)
    plain = build_model("fg_resnet50", multiscale_pool=False, ma=False, ea=False)
    assert isinstance(plain.stem.pool, torch.nn.MaxPool2d) and plain.ma is None and plain.fc_erased is None
    full = build_model("fg_resnet50").train()
    assert isinstance(full.stem.pool, MultiScaleMaxPool) and full.ma is not None
    out = full(torch.rand(2, 3, 64, 64))
    assert isinstance(out, tuple) and len(out) == 2  # two stages for Eq. (21)
    full.eval()
    with torch.no_grad():
        x = torch.rand(2, 3, 64, 64)
        f, attention = full._features(x)
        first = full._classify(f, full.fc)
        second = full._classify(f * erasure_mask(attention, f.shape[-2:], full.theta), full.fc_erased)
        assert torch.allclose(full(x), (first + second) / 2, atol=1e-5)


@pytest.mark.parametrize("option,value", [("ma_after", "layer5"), ("ea_rerun", "half"), ("ea_head", "none")])
def test_fg_resnet_rejects_unknown_choices(option, value):
    with pytest.raises(ValueError, match=option):
        build_model("fg_resnet50", **{option: value})


def test_ma_position_is_configurable():
    model = build_model("fg_resnet50", ma_after="layer2", ea_rerun="full").eval()
    assert model.ma.channel.fuse.out_channels == 512
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 200)


def test_resnet50_at_448_counts_16_35_gmacs():
    model = build_model("fg_resnet50", num_classes=1000, multiscale_pool=False, ma=False, ea=False)
    macs = count_macs(model, torch.randn(1, 3, 448, 448))
    assert abs(macs / 16.35e9 - 1) <= 0.02, macs
    # the same network as torchvision's ResNet-50
    assert count_macs(torchvision.models.resnet50(), torch.randn(1, 3, 448, 448)) == macs


@pytest.mark.parametrize("name,size", [("vgg16", 16), ("resnet50", 8), ("fg_resnet50", 16), ("vgg16_transfer", 24)])
def test_a_resolution_the_model_cannot_take_is_a_clear_error(name, size):
    options = {"pretrained": False} if name == "vgg16_transfer" else {}
    model = build_model(name, **options).eval()
    with pytest.raises(ValueError, match=rf"{name} needs inputs of at least \d+x\d+ px.*got {size}x{size}"):
        model(torch.rand(1, 3, size, size))


def test_small_input_modes():
    cifar = Backbone("resnet50", small_input="cifar_stem").eval()
    up = Backbone("resnet50", small_input="upsample", upsample_size=64).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert cifar(x).shape == (1, 2048, 4, 4)  # stride 8: 3x3/1 stem, no max pool
        assert up(x).shape == (1, 2048, 2, 2)  # 64 px through the unchanged network
    assert cifar.features.conv1.kernel_size == (3, 3) and isinstance(cifar.features.maxpool, torch.nn.Identity)
    assert cifar.min_resolution == 8 and Backbone("resnet50").min_resolution == 32


def test_channel_count_check():
    with pytest.raises(ValueError, match=r"takes images of shape \(B, 3, H, W\)"):
        build_model("resnet50").eval()(torch.rand(1, 1, 32, 32))


def test_ea_mask_keeps_values_equal_to_theta():
    # min-max rescaling maps (0, 1, 2) to (0, 0.5, 1); Eq. (19) erases only values *above* θ
    attention = torch.tensor([0.0, 1.0, 2.0]).view(1, 1, 1, 3)
    assert erasure_mask(attention, (1, 3), 0.5).flatten().tolist() == [1.0, 1.0, 0.0]
