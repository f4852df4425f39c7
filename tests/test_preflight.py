"""Issue 11, cases 4-6: the dataset's split is a config value of its own, and every value is checked before
Ray starts: exit 2 with one line naming the problem and the fix; a traceback only for a bug of cls."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cls.cli import main
from cls.data.layout import array_paths, read_manifest
from cls.sweep import expand, load_sweep
from cls.train.config import compose_config, to_container
from cls.train.run import ensure_data, run_name


def digits_cfg(root: Path, *overrides: str) -> dict:
    return to_container(compose_config(["experiment=dnffm_digits", f"data.root={root}", *overrides]))


def test_the_split_does_not_depend_on_the_trials_seed(tmp_path):
    # Case 4: digits was prepared with the trial's seed, so one trial id met two test sets.
    for seed in (0, 1):
        ensure_data(digits_cfg(tmp_path / f"s{seed}", f"seed={seed}"))
    labels = [np.load(array_paths(tmp_path / f"s{seed}", "test")[1]) for seed in (0, 1)]
    images = [np.load(array_paths(tmp_path / f"s{seed}", "test")[0]) for seed in (0, 1)]
    assert np.array_equal(labels[0], labels[1]) and np.array_equal(images[0], images[1])
    assert read_manifest(tmp_path / "s0").source["options"]["seed"] == 0  # the manifest records the split seed

    # The split seed is a data value, in the trial id; the quickstart's trials share one.
    a, b = digits_cfg(tmp_path / "s0"), digits_cfg(tmp_path / "s0", "data.split_seed=1")
    assert run_name(a) != run_name(b)
    trials = expand(load_sweep("sweeps/quickstart.yaml"))
    assert {t.config["data"]["split_seed"] for t in trials} == {0} and {t.config["seed"] for t in trials} == set(range(5))

    # A dataset split with another seed than the config's is refused, naming both and the fix.
    with pytest.raises(ValueError, match=r"prepared with split seed 0 but the config asks for data.split_seed=1.*"
                                         r"cls data prepare digits --seed 1"):
        ensure_data(b)


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


SWEEP_CASES = {
    # case 5: values that reached the workers before they failed
    "a seed of another type": ("experiment: dnffm_digits\naxes:\n  seed: {grid: [zero, 1.5]}\n", "seed", []),
    "an unknown backbone": ("experiment: dnffm_digits\naxes:\n  seed: {grid: [0]}\n", "model.backbone1='nonsense'",
                            ["model.backbone1=nonsense"]),
    "no epochs": ("experiment: dnffm_digits\naxes:\n  seed: {grid: [0]}\n", "trainer.epochs=0", ["trainer.epochs=0"]),
    "negative epochs": ("experiment: dnffm_digits\naxes:\n  seed: {grid: [0]}\n", "trainer.epochs=-1",
                        ["trainer.epochs=-1"]),
    "duplicate keys": ("experiment: dnffm_digits\naxes:\n  seed: {grid: [0]}\n  seed: {grid: [1]}\n",
                       "sweep.yaml:4: key 'seed' appears twice (also on line 3)", []),
    "an unclosed bracket": ("experiment: dnffm_digits\naxes:\n  seed: {grid: [0]}\n", "close its brackets",
                            ["sweep.axes.seed.grid=[0,1"]),
    "a 300-character name": (f"name: s{'x' * 299}\nexperiment: dnffm_digits\naxes:\n  seed: {{grid: [0]}}\n",
                             "300 characters long", []),
    "a slash in the trial id": ("experiment: dnffm_digits\naxes:\n  seed: {grid: [0]}\n", "is not a model",
                                ["model.name=x/y"]),
}


@pytest.mark.parametrize("case", sorted(SWEEP_CASES))
def test_a_bad_sweep_fails_even_its_listing_in_one_line(tmp_path, capsys, case):
    import ray

    text, phrase, overrides = SWEEP_CASES[case]
    code, err = run_cli(capsys, "sweep", str(write(tmp_path, text)), "--list", *overrides)
    assert code == 2 and phrase in one_line(err), err
    assert err.startswith("cls sweep: error: ") and not ray.is_initialized()


TRAIN_CASES = {
    "seed=abc": "'abc'",
    "model.backbone1=nonsense": "is not a backbone",
    "trainer.epochs=0": "trainer.epochs=0",
    "model.name=x/y": "model.name='x/y' is not a model",
    "trainer.name=a/b": "cannot be a file name",
    "trainer.epochs=[1": "bad override 'trainer.epochs=[1': its brackets or quotes are not closed",
    "model.num_classes=5": "model.num_classes=5 but",
}


@pytest.mark.parametrize("override", sorted(TRAIN_CASES))
def test_cls_train_checks_every_value_before_ray_starts(tmp_path, capsys, override):
    import ray

    code, err = run_cli(capsys, "train", "experiment=dnffm_digits", f"data.root={tmp_path / 'digits'}", override)
    assert code == 2 and TRAIN_CASES[override] in one_line(err), err
    assert not ray.is_initialized()


def test_unwritable_store_runs_and_data_paths_fail_before_ray(tmp_path, capsys):
    # Case 6: a read-only store, a store path that is a file, a data root under a file: tracebacks.
    import ray

    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    read_only = Path("/sys/cls-store")  # read-only even for root (the tests may run as root)
    if os.geteuid() != 0:
        read_only = tmp_path / "ro"
        read_only.mkdir()
        read_only.chmod(0o500)
    base = ["train", "experiment=dnffm_digits", f"data.root={tmp_path / 'digits'}"]
    for override, phrase in ((f"results.root={read_only}", "the results store /sys/cls-store is not writable"
                              if os.geteuid() == 0 else "is not writable"),
                             (f"results.root={a_file}", f"is a file; set results.root"),
                             (f"trainer.storage={a_file / 'runs'}", f"{a_file} is a file; set trainer.storage"),
                             (f"data.root={a_file / 'digits'}", f"{a_file} is a file; set data.root")):
        code, err = run_cli(capsys, *base, override)
        assert code == 2 and phrase in one_line(err), (override, err)
    assert not ray.is_initialized()


def test_ray_failing_to_start_is_one_line(tmp_path, capsys, monkeypatch):
    import ray

    def timed_out(*args, **kwargs):
        raise Exception("The current node timed out during startup. This could happen because ...\n"
                        "Some processes may not have started")

    monkeypatch.setattr(ray, "init", timed_out)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, err = run_cli(capsys, "train", "experiment=dnffm_digits", f"data.root={tmp_path / 'digits'}",
                        "trainer.epochs=1")
    assert code == 2 and "a local Ray cluster did not start" in one_line(err) and "run the command again" in err
    from cls.results import load

    assert load(os.environ["CLS_RESULTS"], "trials").empty  # nothing ran, so no row says "running"


def test_a_bug_of_cls_shows_its_traceback_and_says_so(tmp_path, capsys, monkeypatch):
    import cls.cli.results as results_cli

    monkeypatch.setattr(results_cli, "run", lambda args: {}["a bug"])
    code, err = run_cli(capsys, "results", "--root", str(tmp_path))
    assert code == 1 and "Traceback" in err and "KeyError" in err and "this is a bug in cls" in err
