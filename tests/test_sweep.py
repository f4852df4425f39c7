"""Sweep files: expansion into trials, the errors of malformed files (with their line), and every shipped
sweep file composing and running one tiny step."""

import glob
import math
import os
from pathlib import Path

import pytest

from cls.cli import main
from cls.results import load
from cls.sweep import SweepError, expand, load_sweep
from cls.train.config import compose_config, to_container
from cls.train.loop import fit
from cls.train.sessions import LocalSession
from prepared_fixtures import write_dataset_for

SWEEPS = sorted(glob.glob("sweeps/*.yaml"))
EXPECTED_TRIALS = {"quickstart": 10, "dnffm_ablation": 720, "maea_ablation": 54, "style_aug": 36, "baselines": 36}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def test_every_issue_sweep_ships():
    assert sorted(Path(p).stem for p in SWEEPS) == sorted(EXPECTED_TRIALS)


def test_quickstart_expands_to_its_grid_with_stable_ids():
    trials = expand(load_sweep("sweeps/quickstart.yaml"))
    assert len(trials) == 10 == len({t.trial_id for t in trials})
    assert {(t.axes["model.cbam"], t.axes["seed"]) for t in trials} == {(c, s) for c in (True, False) for s in range(5)}
    for t in trials:
        assert (t.config["model"]["cbam"], t.config["seed"]) == (t.axes["model.cbam"], t.axes["seed"])
        assert t.config["trainer"]["epochs"] == 3 and t.config["model"]["backbone1"] == "shufflenet_v2_x0_5"
        assert t.config["trainer"]["workers"] == 1 and t.config["data"]["batch_size"] == 32
    # The same file gives the same trials, ids included: what resuming a sweep relies on.
    assert [t.trial_id for t in expand(load_sweep("sweeps/quickstart.yaml"))] == [t.trial_id for t in trials]


def test_overrides_change_the_file_or_every_trial():
    base = expand(load_sweep("sweeps/quickstart.yaml"))
    fewer = expand(load_sweep("sweeps/quickstart.yaml", ["sweep.axes.seed.grid=[0]", "sweep.resources.max_concurrent=2"]))
    assert len(fewer) == 2 and {t.trial_id for t in fewer} < {t.trial_id for t in base}
    shorter = expand(load_sweep("sweeps/quickstart.yaml", ["trainer.epochs=1"]))
    assert all(t.config["trainer"]["epochs"] == 1 for t in shorter)
    assert not {t.trial_id for t in shorter} & {t.trial_id for t in base}  # another computation, other ids
    # Where a trial runs is not what it computes: more workers, same trials.
    moved = expand(load_sweep("sweeps/quickstart.yaml", ["trainer.workers=2", "trainer.storage=/elsewhere"]))
    assert [t.trial_id for t in moved] == [t.trial_id for t in base]


@pytest.mark.parametrize("path", SWEEPS)
def test_trial_configs_are_what_their_overrides_compose_to(path):
    trials = expand(load_sweep(path))
    assert len(trials) == EXPECTED_TRIALS[Path(path).stem]
    for trial in trials[:3] + trials[-3:]:  # the fast composer against Hydra itself, on both ends of the grid
        assert to_container(compose_config(trial.overrides)) == trial.config


def test_random_axes_are_drawn_by_the_sweep_seed(tmp_path):
    text = """experiment: dnffm_digits
axes:
  optim.lr: {loguniform: [0.001, 0.1]}
  model.fusion_dim: {choice: [64, 128, 256]}
  optim.momentum: {uniform: [0.8, 0.99]}
  trainer.epochs: {randint: [1, 4]}
  model.cbam: {grid: [true, false]}
samples: 3
seed: 7
"""
    trials = expand(load_sweep(write(tmp_path, text)))
    assert len(trials) == 6
    for t in trials:
        assert 0.001 <= t.config["optim"]["lr"] <= 0.1 and 0.8 <= t.config["optim"]["momentum"] <= 0.99
        assert t.config["model"]["fusion_dim"] in (64, 128, 256) and t.config["trainer"]["epochs"] in (1, 2, 3)
    assert [t.trial_id for t in expand(load_sweep(write(tmp_path, text)))] == [t.trial_id for t in trials]
    other = expand(load_sweep(write(tmp_path, text.replace("seed: 7", "seed: 8"))))
    assert {t.config["optim"]["lr"] for t in other}.isdisjoint({t.config["optim"]["lr"] for t in trials})


def test_pairs_and_mapping_axes_set_several_keys(tmp_path):
    trials = expand(load_sweep(write(tmp_path, """experiment: dnffm_digits
axes:
  backbones:
    pairs: [resnet50, vgg16, shufflenet_v2_x0_5]
    keys: [model.backbone1, model.backbone2]
  fusion:
    grid:
      - {model.tau: 0.5, model.gamma: 2.0}
      - {model.tau: 2.0, model.gamma: 0.5}
""")))
    assert len(trials) == 6
    assert {t.axes["backbones"] for t in trials} == {"resnet50+vgg16", "resnet50+shufflenet_v2_x0_5",
                                                     "vgg16+shufflenet_v2_x0_5"}
    t = next(t for t in trials if t.axes == {"backbones": "resnet50+vgg16", "fusion": "tau=2.0,gamma=0.5"})
    assert (t.config["model"]["backbone1"], t.config["model"]["backbone2"]) == ("resnet50", "vgg16")
    assert (t.config["model"]["tau"], t.config["model"]["gamma"]) == (2.0, 0.5)


def test_group_axes_pick_presets_and_models():
    trials = expand(load_sweep("sweeps/baselines.yaml"))
    names = {(t.config["data"]["name"], t.config["model"]["name"]) for t in trials}
    assert len(names) == 18 and ("svhn", "vgg16") in names
    assert all(t.config["model"]["small_input"] == "cifar_stem" for t in trials)  # the preset's, kept


# (file text, the line at fault, what the message must say)
MALFORMED = {
    "unknown axis": ("experiment: dnffm_digits\naxes:\n  model.tau: {grid: [0.5]}\n  model.tua: {grid: [1.0]}\n",
                     4, "tua"),
    "empty grid": ("experiment: dnffm_digits\naxes:\n  model.tau: {grid: []}\n", 3, "empty"),
    "bad range": ("experiment: dnffm_digits\naxes:\n  optim.lr:\n    uniform: [0.1, 0.01]\n", 4, "low must be < high"),
    "log of zero": ("experiment: dnffm_digits\naxes:\n  optim.lr: {loguniform: [0, 0.1]}\n", 3, "low > 0"),
    "not a range": ("experiment: dnffm_digits\naxes:\n  optim.lr: {uniform: [0.1]}\n", 3, "[low, high]"),
    "wrong type": ("experiment: dnffm_digits\naxes:\n  model.tau:\n    grid:\n      - 0.5\n      - fast\n", 6,
                   "model.tau"),
    "unknown kind": ("experiment: dnffm_digits\naxes:\n  model.tau: {range: [0.5, 1]}\n", 3, "exactly one of"),
    "unknown top-level key": ("experiment: dnffm_digits\naxis:\n  model.tau: {grid: [0.5]}\n", 2, "unknown key 'axis'"),
    "no axes": ("experiment: dnffm_digits\n", 1, "needs `axes`"),
    "unknown experiment": ("experiment: dnffm_nope\naxes:\n  seed: {grid: [0]}\n", None, "dnffm_nope"),
    "unknown metric": ("experiment: dnffm_digits\naxes:\n  seed: {grid: [0]}\nmetric: eval_acc\n", 4, "eval_acc"),
    "bad scheduler option": ("experiment: dnffm_digits\naxes:\n  seed: {grid: [0]}\nscheduler:\n  asha:\n"
                             "    grace: 2\n", 6, "unknown asha option"),
    "bad resources": ("experiment: dnffm_digits\naxes:\n  seed: {grid: [0]}\nresources:\n  workers: 0\n", 5,
                      "positive integer"),
    "an axis with no effect": ("experiment: dnffm_digits\naxes:\n  trainer.workers: {grid: [1, 2]}\n", 2,
                               "same trial"),
    "a value twice": ("experiment: dnffm_digits\naxes:\n  seed: {grid: [0, 0]}\n", 3, "twice"),
    "a name that cannot be a directory": ("name: 2024/a\nexperiment: dnffm_digits\naxes:\n  seed: {grid: [0]}\n", 1,
                                          "sweep name"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_sweep_names_its_line(tmp_path, case):
    text, line, phrase = MALFORMED[case]
    path = write(tmp_path, text)
    with pytest.raises(SweepError) as caught:
        expand(load_sweep(path))
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}:" if line else f"{path}"), message
    assert phrase in message, message


def test_a_malformed_command_line_override_is_named(tmp_path):
    with pytest.raises(SweepError, match=r"override sweep\.axes\.seed\.grid.*empty"):
        load_sweep("sweeps/quickstart.yaml", ["sweep.axes.seed.grid=[]"])


def test_cls_sweep_rejects_a_malformed_file_before_anything_starts(tmp_path, capsys):
    import ray

    path = write(tmp_path, MALFORMED["bad range"][0])
    results = tmp_path / "results"
    assert main(["sweep", str(path), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert f"cls sweep: error: {path}:4:" in err and "low must be < high" in err
    assert not results.exists() and not ray.is_initialized()


def test_cls_sweep_list_prints_the_trials(capsys):
    assert main(["sweep", "sweeps/maea_ablation.yaml", "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "54 trials" and len(out) == 55
    assert any("variant=multiscale_pool=True,ma=True,ea=True,theta=0.9" in line for line in out)


@pytest.mark.slow
@pytest.mark.parametrize("path", SWEEPS)
def test_each_sweep_runs_one_tiny_step_at_both_ends_of_its_grid(tmp_path, path):
    """The first and the last trial of each sweep (every axis at its first, then its last value), one
    training step each on a tiny dataset of the kind the trial expects, rows into the store."""
    trials = expand(load_sweep(path))
    for trial in (trials[0], trials[-1]):
        cfg = trial.config
        root = tmp_path / "data" / Path(cfg["data"]["root"]).name
        if not root.exists():
            write_dataset_for(cfg["data"], root)
        cfg["data"].update(root=str(root), batch_size=2, num_workers=1)
        cfg["trainer"].update(epochs=1, max_steps=1, nan_check_every=1, storage=str(tmp_path / "runs"))
        cfg["results"] = {"root": str(tmp_path / "results"), "sweep": Path(path).stem}
        if "pretrained" in cfg["model"]:
            cfg["model"]["pretrained"] = False  # nothing downloads in tests
        run_dir = tmp_path / "runs" / trial.trial_id
        metrics = fit(cfg, LocalSession(run_dir, device="cpu"), run_dir)
        assert metrics["train_steps"] == 1 and math.isfinite(metrics["train_loss"])
    epochs = load(tmp_path / "results", "epochs", sweep=Path(path).stem)
    assert sorted(epochs["trial_id"]) == sorted({trials[0].trial_id, trials[-1].trial_id})
    assert os.listdir(tmp_path / "results" / "epochs") == [f"sweep={Path(path).stem}"]


def test_style_aug_declares_its_derived_datasets_and_builds_each_once(tmp_path, monkeypatch):
    """sweeps/style_aug.yaml's `derive:` on a tiny cats vs dogs: two style networks (a few steps here), the four
    policies and the styled copies in both split orders; built once, then kept (as Ray tasks the second time)."""
    import numpy as np
    from PIL import Image

    from cls.data.layout import read_manifest
    from cls.sweep.derive import build_derived
    from prepared_fixtures import write_jpeg_dataset

    data = tmp_path / "data"
    monkeypatch.setenv("CLS_DATA_ROOT", str(data))
    from dataclasses import replace

    from cls.data.layout import write_manifest

    source = write_jpeg_dataset(data / "cats_vs_dogs", {"train": 4, "val": 2, "test": 2}, num_classes=2,
                                name="cats_vs_dogs", sides=(32, 40))
    write_manifest(data / "cats_vs_dogs", replace(source, classes=["cat", "dog"]))  # Kaggle's class names
    (data / "coco").symlink_to(data / "cats_vs_dogs" / "images" / "train")
    (data / "styles").mkdir()
    for name in ("wave", "abstract"):
        pixels = np.random.default_rng(len(name)).integers(0, 255, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / "styles" / f"{name}.jpg")
    text = Path("sweeps/style_aug.yaml").read_text()
    for name in ("wave", "abstract"):  # the shipped entries, trained for 2 steps on a random VGG-19
        text = text.replace(f'style: "${{CLS_DATA_ROOT}}/styles/{name}.jpg"}}',
                            f'style: "${{CLS_DATA_ROOT}}/styles/{name}.jpg", steps: 2, size: 32, batch_size: 2, '
                            f'pretrained_vgg: false}}')
    sweep = load_sweep(write(tmp_path, text))
    assert len(sweep.derive) == 12

    first = build_derived(sweep.derive, use_ray=False, log=lambda line: None)
    assert sorted(set(first.values())) == ["built"] and len(first) == 12
    for order in ("paper", "clean"):
        for name in ("pan_crop", "crop_rotate", "rotate_noise", "pan_noise", "style"):
            manifest = read_manifest(data / order / f"cats_vs_dogs-{name}")
            assert manifest.source["split_order"] == order
            leaked = manifest.source["generated"]["val"] + manifest.source["generated"]["test"]
            assert (leaked > 0) if order == "paper" else (leaked == 0)
    stamps = {p: p.stat().st_mtime_ns for p in data.rglob("manifest.json")} | {
        p: p.stat().st_mtime_ns for p in (data / "styles").glob("*.pt")}

    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        again = build_derived(sweep.derive, use_ray=True, log=lambda line: None)
    finally:
        ray.shutdown()
    assert set(again.values()) == {"kept"} and len(again) == 12
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing was written again


def test_a_bad_derive_entry_names_its_line(tmp_path):
    path = write(tmp_path, "experiment: dnffm_digits\naxes:\n  seed: {grid: [0]}\nderive:\n"
                           "  - augment: {out: x, src: y, policy: noise}\n  - shuffle: {out: z}\n")
    with pytest.raises(SweepError, match=r"sweep.yaml:6: each derive entry is one of"):
        load_sweep(path)
    path = write(tmp_path, "experiment: dnffm_digits\naxes:\n  seed: {grid: [0]}\nderive:\n"
                           "  - augment: {out: x, src: y, policy: noise, copies: two}\n")
    with pytest.raises(SweepError, match=r"sweep.yaml:5: augment.copies must be a int"):
        load_sweep(path)


def test_asha_judges_a_resumed_trial_at_every_rung_it_passed_unjudged(tmp_path):
    """_StoreAsha's rungs come from the store's epochs rows. A trial that resumes after its rung's epoch
    (interrupted between that epoch's checkpoint and the decision) first reports an epoch past the rung: it
    is judged at that rung from its own row, as the uninterrupted sweep would have judged it."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from cls.results import ResultsWriter
    from cls.sweep.driver import _StoreAsha

    sweep = load_sweep(write(tmp_path, "name: asha\nexperiment: dnffm_digits\naxes:\n  seed: {grid: [0]}\n"
                                       "scheduler:\n  asha: {grace_period: 1, reduction_factor: 2}\n"))
    root = tmp_path / "results"
    history = {"learns": [0.10, 0.25, 0.60], "resumed": [0.103, 0.103], "missing": [0.103]}
    for trial_id, values in history.items():
        ResultsWriter(root, "asha", trial_id).write_epochs(
            [{"epoch": e, "eval_top1": v, "train_loss": 1.0} for e, v in enumerate(values)])
    asha = _StoreAsha(str(root), sweep, epochs=3)
    assert asha.milestones == [1, 2]

    def report(trial_id, epochs_done, value):
        return asha.on_trial_result(None, SimpleNamespace(config={"trial_id": trial_id}),
                                    {"epochs_done": epochs_done, "eval_top1": value})

    # Back after epoch 3 with rungs 1 and 2 passed unjudged: rung 1 (0.103 vs 0.10, 0.103) lets it on,
    # rung 2 (0.103 below the median of 0.25 and nothing else) stops it.
    assert report("resumed", 3, 0.10) == TrialScheduler.STOP and asha.stopped["resumed"] == 2
    # Judged once per rung: a second report at a rung already judged is not judged again.
    assert report("learns", 1, 0.25) == TrialScheduler.CONTINUE and asha.decided["learns"] == {1}
    assert report("learns", 1, 0.0) == TrialScheduler.CONTINUE
    # A passed rung whose row is not in the store is not judged from a guess (its rung 1 row lets it on).
    assert report("missing", 3, 0.9) == TrialScheduler.CONTINUE and asha.decided["missing"] == {1, 2}
    # The rung reached is judged from the result: 0.0 below the median of 0.10, 0.103, 0.103.
    assert report("fresh", 1, 0.0) == TrialScheduler.STOP and asha.stopped["fresh"] == 1
