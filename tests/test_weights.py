"""Pretrained weights load from the local torch cache only; a missing file is named with how to get it."""

import pytest
import torch
import torchvision

from cls.models import PretrainedWeightsMissing, build_model
from cls.models.style import PerceptualLoss
from cls.models.weights import cache_path, resolve_weights


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch cache of the test's own, so the machine's real cache can neither help nor be touched."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def put_in_cache(arch: str, weights_name: str, state: dict) -> None:
    path = cache_path(resolve_weights(arch, weights_name))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def test_missing_weights_name_the_file_and_the_fix(torch_home):
    with pytest.raises(PretrainedWeightsMissing) as err:
        build_model("resnet50", pretrained=True)
    message = str(err.value)
    expected = torch_home / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert str(expected) in message
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message
    assert "ResNet50_Weights.IMAGENET1K_V2" in message and "pretrained=false" in message
    assert not expected.exists()  # nothing was downloaded


def test_weights_load_from_the_local_cache_before_the_stem_changes(torch_home):
    torch.manual_seed(0)
    reference = torchvision.models.resnet50()
    put_in_cache("resnet50", "IMAGENET1K_V1", reference.state_dict())
    model = build_model("resnet50", pretrained="IMAGENET1K_V1", small_input="cifar_stem")
    features = model.backbone.features
    assert torch.equal(features.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)
    assert torch.equal(features.bn1.running_var, reference.bn1.running_var)
    assert features.conv1.kernel_size == (3, 3)  # replaced after loading: new, not pretrained


def test_legacy_densenet_checkpoints_load(torch_home):
    torch.manual_seed(0)
    reference = torchvision.models.densenet121()
    # torchvision's published file uses the old 'norm.1' key style
    legacy = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in reference.state_dict().items()}
    assert any(".norm.1." in k for k in legacy)
    put_in_cache("densenet121", "IMAGENET1K_V1", legacy)
    model = build_model("densenet121", pretrained=True)
    got = model.backbone.features.features.denseblock2.denselayer3.norm1.weight
    assert torch.equal(got, reference.features.denseblock2.denselayer3.norm1.weight)


def test_unknown_weights_name_lists_the_choices(torch_home):
    with pytest.raises(ValueError, match=r"has no pretrained weights 'IMAGENET22K'.*IMAGENET1K_V1"):
        build_model("vgg16", pretrained="IMAGENET22K")


def test_models_that_default_to_pretrained_say_what_is_missing(torch_home):
    with pytest.raises(PretrainedWeightsMissing, match="vgg16-397923af.pth"):
        build_model("vgg16_transfer")  # transfer learning: ImageNet weights by default
    with pytest.raises(PretrainedWeightsMissing, match="vgg19-dcbb9e9d.pth"):
        PerceptualLoss()  # the loss network of seed 002 is an ImageNet VGG-19
