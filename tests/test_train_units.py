"""Training building blocks: metrics agree with scikit-learn, checkpoints have fixed keys and resume, a NaN
loss names its step, configs compose and reject typos."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torch import nn

from cls.train.checkpoint import CHECKPOINT_KEYS, load_checkpoint, restore, save_checkpoint
from cls.train.config import compose_config, to_container
from cls.train.engine import cross_entropy_loss, evaluate, train_one_epoch
from cls.train.loop import build_scheduler
from cls.train.metrics import ClassificationMetrics, class_probabilities
from cls.train.run import run_name

# From this file's place, not the working directory: run from elsewhere, a relative glob collects nothing
# and the parametrised tests then cannot fail (test_the_preset_list_is_not_empty guards it).
EXPERIMENTS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "cls" / "configs" / "experiment").glob("*.yaml"))


def test_the_preset_list_is_not_empty():
    assert len(EXPERIMENTS) >= 10, EXPERIMENTS


@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_metrics_agree_with_scikit_learn(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(200, num_classes, generator=g)
    labels = torch.randint(0, num_classes, (200,), generator=g)
    logits[torch.arange(100), labels[:100]] += 2.0  # better than chance, not perfect
    m = ClassificationMetrics(num_classes)
    for chunk in range(0, 200, 64):  # several updates, as batches come
        m.update(logits[chunk : chunk + 64], labels[chunk : chunk + 64])
    values, confusion = m.compute()

    y, p = labels.numpy(), torch.softmax(logits, 1).numpy()
    pred = p.argmax(1)
    assert values["top1"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
    assert values["precision"] == pytest.approx(skm.precision_score(y, pred, average="macro", zero_division=0), abs=1e-5)
    assert values["recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"), abs=1e-5)
    assert values["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-5)
    auc = skm.roc_auc_score(y, p[:, 1]) if num_classes == 2 else skm.roc_auc_score(y, p, multi_class="ovr")
    assert values["auroc"] == pytest.approx(auc, abs=1e-5)
    assert np.array_equal(confusion.numpy(), skm.confusion_matrix(y, pred, labels=range(num_classes)))
    assert ("top5" in values) == (num_classes > 5)
    if num_classes > 5:
        assert values["top5"] == pytest.approx(skm.top_k_accuracy_score(y, p, k=5), abs=1e-6)


def test_binary_logit_models_get_the_same_metrics():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])  # one sigmoid output (seed 002 §4.2)
    labels = torch.tensor([1, 0, 0, 0])
    probs = class_probabilities(logits)
    assert torch.allclose(probs[:, 1], torch.sigmoid(logits)) and torch.allclose(probs.sum(1), torch.ones(4))
    m = ClassificationMetrics(2)
    m.update(logits, labels)
    values, _ = m.compute()
    assert values["top1"] == pytest.approx(0.75)
    assert values["auroc"] == pytest.approx(skm.roc_auc_score(labels.numpy(), torch.sigmoid(logits).numpy()))


def test_checkpoint_has_fixed_keys_and_restores_optimizer_state(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    wrapped = nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)
    nn.Module.__init__(wrapped)
    wrapped.module = model  # what DDP looks like from outside: state dicts must not carry 'module.'
    path = save_checkpoint(tmp_path / "c.pt", model=wrapped, optimizer=optimizer, scheduler=scheduler, scaler=None,
                           epoch=4, config={"seed": 1})
    state = load_checkpoint(path)
    assert tuple(state) == CHECKPOINT_KEYS
    assert not any(k.startswith("module.") for k in state["model"])

    model2 = nn.Linear(4, 3)
    optimizer2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    scheduler2 = torch.optim.lr_scheduler.StepLR(optimizer2, 1, 0.5)
    assert restore(state, model2, optimizer2, scheduler2) == 5  # the epoch to start from
    assert torch.equal(model2.weight, model.weight)
    buf = optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(optimizer2.state_dict()["state"][0]["momentum_buffer"], buf)
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    torch.save({"model": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"not a cls checkpoint: it lacks \['optimizer'"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing")


def test_nan_loss_stops_with_the_step():
    model = nn.Linear(2, 2)
    batches = [(torch.randn(4, 2), torch.tensor([0, 1, 0, 1])) for _ in range(5)]
    batches[3] = (torch.full((4, 2), float("nan")), torch.tensor([0, 1, 0, 1]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 7, step 3"):
        train_one_epoch(model, batches, optimizer, cross_entropy_loss(), device="cpu", epoch=7, nan_check_every=2)


def test_train_and_evaluate_report_what_they_saw():
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    y = (x[:, 0] > 0).long()
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    for epoch in range(20):
        train = train_one_epoch(model, batches, optimizer, cross_entropy_loss(), device="cpu", epoch=epoch)
    assert train["images"] == 64 and train["steps"] == 4 and train["top1"] > 0.9
    values, confusion = evaluate(model, batches, cross_entropy_loss(), ClassificationMetrics(2), device="cpu")
    assert values["images"] == 64 and values["top1"] > 0.9 and int(confusion.sum()) == 64


def test_cosine_schedule_with_warmup():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = {"scheduler": "cosine", "warmup_epochs": 1, "step_epochs": 1, "step_gamma": 0.1}
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=10, epochs=3)
    lrs = []
    for _ in range(30):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up over epoch 1
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] < 0.01  # then cosine to ~0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_preset_composes(experiment):
    cfg = to_container(compose_config([f"experiment={experiment}"]))
    assert cfg["model"]["name"] and cfg["data"]["name"] and cfg["trainer"]["epochs"] >= 1


def test_presets_carry_the_papers_settings():
    maea = to_container(compose_config(["experiment=maea_cub200"]))
    assert (maea["optim"]["lr"], maea["optim"]["momentum"], maea["optim"]["weight_decay"]) == (0.002, 0.9, 6e-4)
    assert maea["data"]["batch_size"] == 16 and maea["model"]["ea"] is True  # seed 003 §4.2
    vgg = to_container(compose_config(["experiment=vgg16_catsdogs"]))
    assert (vgg["optim"]["lr"], vgg["trainer"]["epochs"], vgg["data"]["batch_size"]) == (1e-5, 30, 20)  # seed 002 §4.3
    assert vgg["trainer"]["loss"] == "bce"


@pytest.mark.parametrize(
    "override,message",
    [("model.tua=0.5", "model.tua"), ("optim.lrr=0.1", "optim.lrr"), ("experiment=dnffm_cifar1", "experiment/dnffm_cifar1"),
     ("model=resnet51", "model/resnet51"), ("trainer.epochs=three", "trainer.epochs")],
)
def test_misspelt_keys_and_groups_fail(override, message):
    with pytest.raises(Exception, match=message.replace(".", r"\.")):
        compose_config([override])


def test_run_name_depends_on_what_is_computed_not_where():
    a = to_container(compose_config(["trainer.epochs=3"]))
    b = to_container(compose_config(["trainer.epochs=3", "trainer.storage=/elsewhere", "trainer.workers=4"]))
    c = to_container(compose_config(["trainer.epochs=4"]))
    d = to_container(compose_config(["trainer.epochs=3", "results.root=/r", "results.sweep=s2"]))
    assert run_name(a) == run_name(b) == run_name(d) != run_name(c)
    assert run_name(a).startswith("dnffm-digits-")


def test_run_name_tells_expanded_copies_of_a_dataset_apart():
    # Seed 002 Table 2 compares one dataset (data.name cats_vs_dogs) expanded into different directories.
    plain, styled, moved = (to_container(compose_config([f"data.root={root}"]))
                            for root in ("/d/cats_vs_dogs", "/d/cats_vs_dogs-style", "/scratch/cats_vs_dogs"))
    assert run_name(plain) != run_name(styled)
    assert run_name(plain) == run_name(moved)


def test_paths_are_made_absolute_and_do_not_name_the_run(tmp_path, monkeypatch):
    from cls.train.run import absolute_paths

    monkeypatch.chdir(tmp_path)
    cfg = to_container(compose_config(["data.root=data/x", "trainer.storage=runs", "style.image=s.png"]))
    absolute = absolute_paths(cfg)
    assert absolute["data"]["root"] == str(tmp_path / "data" / "x")
    assert absolute["trainer"]["storage"] == str(tmp_path / "runs") and absolute["style"]["image"] == str(tmp_path / "s.png")
    assert cfg["data"]["root"] == "data/x"  # the caller's config is left as it was
    moved = to_container(compose_config(["data.root=/elsewhere/x", "data.num_workers=8", "trainer.storage=runs", "style.image=s.png"]))
    assert run_name(moved) == run_name(cfg)


def test_transform_overrides_mirror_transform_config():
    from dataclasses import fields

    from cls.data.transforms import TransformConfig
    from cls.train.config import TransformOverrides

    assert {f.name for f in fields(TransformOverrides)} == {f.name for f in fields(TransformConfig)} - {"family"}


def test_a_run_larger_than_the_cluster_fails_before_it_starts():
    from cls.train.run import check_resources

    check_resources(2, {"CPU": 1.0}, {"CPU": 2.0})
    with pytest.raises(ValueError, match=r"asks for 3 CPU \(3 workers x 1\) but the Ray cluster has 2"):
        check_resources(3, {"CPU": 1.0}, {"CPU": 2.0})
    with pytest.raises(ValueError, match=r"asks for 2 GPU .* has 0"):
        check_resources(2, {"CPU": 1.0, "GPU": 1.0}, {"CPU": 8.0})
    with pytest.raises(ValueError, match="trainer.workers must be at least 1"):
        check_resources(0, {"CPU": 1.0}, {"CPU": 2.0})


def test_workers_take_a_gpu_each_when_the_cluster_has_them_unless_told():
    from cls.train.run import worker_resources

    trainer = {"workers": 2, "cpus_per_worker": 4.0, "gpus_per_worker": None}
    assert worker_resources(trainer, {"CPU": 8.0}) == {"CPU": 4.0}
    assert worker_resources(trainer, {"CPU": 8.0, "GPU": 2.0}) == {"CPU": 4.0, "GPU": 1.0}
    assert worker_resources({**trainer, "gpus_per_worker": 0.0}, {"CPU": 8.0, "GPU": 2.0}) == {"CPU": 4.0}
    with pytest.raises(ValueError, match="lower trainer.workers"):
        worker_resources({**trainer, "workers": 3}, {"CPU": 8.0, "GPU": 2.0})


def test_the_private_ray_train_api_we_override_is_still_there():
    """_trainer_class overrides TorchTrainer._create_default_callbacks (a private method of ray==2.60.0):
    this fails, instead of the override silently doing nothing, when a Ray upgrade changes it."""
    import inspect

    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    from cls.train.run import _trainer_class

    source = inspect.getsource(TorchTrainer._create_default_callbacks)
    # The two defaults we filter out are still made there.
    assert "DatasetsCallback(" in source and "PlacementGroupCleanerCallback(" in source, source[:2000]
    assert list(inspect.signature(TorchTrainer._create_default_callbacks).parameters) == ["self"]
    lean = _trainer_class(placement_group_cleaner=False)
    assert issubclass(lean, TorchTrainer) and lean is not TorchTrainer
    assert lean._create_default_callbacks is not TorchTrainer._create_default_callbacks
    assert inspect.getmodule(DatasetsCallback) is not None and inspect.getmodule(PlacementGroupCleanerCallback)


def test_the_global_batch_divides_over_the_workers_or_fails_before_ray(tmp_path, monkeypatch):
    from cls.train import run

    assert run.worker_batch(16, 2) == 8 and run.worker_batch(20, 1) == 20
    with pytest.raises(ValueError, match=r"data.batch_size=20 is the global batch .* trainer.workers=3: set "
                                         r"data.batch_size to a multiple of 3 \(e.g. 18 or 21\)"):
        run.worker_batch(20, 3)
    cfg = to_container(compose_config(["experiment=maea_cub200", "trainer.workers=3",
                                       f"data.root={tmp_path / 'missing'}"]))
    monkeypatch.setattr(run, "connect_ray", lambda *a, **k: pytest.fail("Ray started"))
    with pytest.raises(ValueError, match=r"data.batch_size=16 .* trainer.workers=3"):
        run.train(cfg)  # neither Ray nor the (missing) dataset is reached
