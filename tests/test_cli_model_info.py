"""`cls model-info`: the table a researcher reads, and clear errors for bad input."""

import subprocess
import sys

import pytest
import torch

from cls.cli import main
from cls.cli.model_info import parse_overrides
from cls.models import build_model
from cls.models.complexity import count_macs, count_params, measure


def test_model_info_prints_parameters_and_macs(capsys):
    assert main(["model-info", "resnet50", "--resolution", "64", "--repeats", "2", "num_classes=10"]) == 0
    out = capsys.readouterr().out
    model = build_model("resnet50", num_classes=10)
    assert f"{count_params(model) / 1e6:.2f}" in out
    assert f"{count_macs(model, torch.randn(1, 3, 64, 64)) / 1e9:.3f}" in out
    assert "64x64 px, batch 1, cpu" in out


def test_overrides_may_follow_options(capsys):
    assert main(["model-info", "dnffm", "--resolution", "32", "--no-latency", "small_input=cifar_stem", "fusion_dim=64"]) == 0
    assert "small_input=cifar_stem fusion_dim=64" in capsys.readouterr().out


def test_paper_table_sets_table_4_beside_ours(capsys):
    assert main(["model-info", "--paper", "--no-latency", "--resolution", "64"]) == 0
    out = capsys.readouterr().out
    for label, paper_gmacs in [("ResNet50", "16.5"), ("+ MA", "18.5"), ("+ MA + EA", "19.8")]:
        assert label in out and paper_gmacs in out


def test_paper_table_only_for_the_fine_grained_model(capsys):
    assert main(["model-info", "vgg16", "--paper"]) == 2
    assert "covers fg_resnet50 only" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["model-info", "resnet51"], "unknown model 'resnet51'"),
        (["model-info", "fg_resnet50", "theta=1.5", "--no-latency"], "theta must lie in [0, 1]"),
        (["model-info", "vgg16", "--resolution", "16", "--no-latency"], "vgg16 needs inputs of at least 32x32 px"),
        (["model-info", "resnet50", "depth"], "override 'depth' is not of the form key=value"),
        (["model-info", "dnffm", "backbone2=vit_b_16"], "unknown backbone 'vit_b_16'"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "cls", "model-info", "shufflenet_v2_x0_5", "--resolution", "32", "--no-latency"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "shufflenet_v2_x0_5" in result.stdout


def test_parse_overrides_reads_yaml_values():
    assert parse_overrides(["ma=false", "theta=0.5", "aspp_dilations=[1, 2, 3]", "small_input=null"]) == {
        "ma": False,
        "theta": 0.5,
        "aspp_dilations": [1, 2, 3],
        "small_input": None,
    }


def test_measure_reports_a_positive_latency():
    c = measure(build_model("shufflenet_v2_x0_5"), 32, repeats=2, warmup=1)
    assert c.latency_ms is not None and c.latency_ms > 0 and c.params > 0 and c.macs > 0
