"""`cls export` (cls.results.export) of a real results store, read back with TensorBoard's own event reader
and MLflow's own client; without the optional extra the command names it."""

from __future__ import annotations

import sys

import pytest

from cls.cli import SUBCOMMANDS, main
from cls.results import ResultsWriter, summarize

SWEEP = "exp"
# trial -> (config, status, per-epoch eval_top1)
TRIALS = {
    "t0": ({"model.name": "dnffm", "model.cbam": True, "optim.lr": 0.1, "optim.betas": "[0.9, 0.999]",
            "axis.seed": 0, "seed": 0}, "finished", [0.5, 0.7, 0.9]),
    "t1": ({"model.name": "dnffm", "model.cbam": False, "optim.lr": 0.1, "optim.betas": "[0.9, 0.999]",
            "axis.seed": 0, "seed": 0}, "failed", [0.4]),
}


def epoch(top1: float, e: int) -> dict[str, float]:
    return {"eval_top1": top1, "train_loss": 1.0 / (e + 1), "lr": 0.1 * 0.5**e}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    for trial, (config, status, curve) in TRIALS.items():
        w = ResultsWriter(root, SWEEP, trial)
        rows = [{"epoch": e, **epoch(v, e)} for e, v in enumerate(curve)]
        w.write_epochs(rows)
        w.write_trial({**config, **summarize(rows), "status": status, "host": "node1"})
    return root


@pytest.fixture(autouse=True)
def _cli(monkeypatch):
    monkeypatch.setitem(SUBCOMMANDS, "export", "cls.cli.export")


def test_tensorboard_round_trip(store, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    logdir = tmp_path / "tb"
    for _ in range(2):  # a second export replaces the first, it does not double the points
        assert main(["export", SWEEP, "--root", str(store), "--tensorboard", str(logdir)]) == 0
    assert "TensorBoard: 2 runs" in capsys.readouterr().out
    for trial, (config, status, curve) in TRIALS.items():
        events = EventAccumulator(str(logdir / SWEEP / trial))
        events.Reload()
        assert sorted(events.Tags()["scalars"]) == ["eval_top1", "lr", "train_loss"]
        points = events.Scalars("eval_top1")
        assert [p.step for p in points] == list(range(len(curve)))
        assert [p.value for p in points] == pytest.approx(curve)
        assert [p.value for p in events.Scalars("lr")] == pytest.approx([0.1 * 0.5**e for e in range(len(curve))])
        # hparams: the session-start info carries the config, numbers as numbers (booleans as 1/0, as torch's
        # hparams writes them), text as text.
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        assert info["model.name"].string_value == "dnffm" and info["optim.lr"].number_value == 0.1
        assert info["model.cbam"].number_value == float(config["model.cbam"]) and info["status"].string_value == status
        assert info["optim.betas"].string_value == "[0.9, 0.999]"


def test_mlflow_round_trip(store, tmp_path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the working directory
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for _ in range(2):  # exported again: the runs are replaced, not added
        assert main(["export", SWEEP, "--root", str(store), "--mlflow", uri]) == 0
    assert "MLflow: 2 runs in experiment 'exp'" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(SWEEP)
    runs = {r.data.tags["cls.trial_id"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(TRIALS)
    for trial, (config, status, curve) in TRIALS.items():
        run = runs[trial]
        assert run.info.run_name == trial and run.data.tags["cls.sweep"] == SWEEP
        assert run.info.status == {"finished": "FINISHED", "failed": "FAILED"}[status]
        assert run.data.tags["cls.status"] == status and run.data.tags["cls.host"] == "node1"
        assert {k: run.data.params[k] for k in config} == {k: str(v) for k, v in config.items()}
        history = sorted(client.get_metric_history(run.info.run_id, "eval_top1"), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(e, pytest.approx(v)) for e, v in enumerate(curve)]
        assert sorted(run.data.metrics) == ["eval_top1", "lr", "train_loss"]


@pytest.mark.parametrize("flag, module, tool", [("--tensorboard", "torch.utils.tensorboard", "TensorBoard"),
                                                ("--mlflow", "mlflow.tracking", "MLflow")])
def test_without_the_extra_the_command_names_it(store, tmp_path, capsys, monkeypatch, flag, module, tool):
    monkeypatch.setitem(sys.modules, module, None)  # what an environment without the package imports
    assert main(["export", SWEEP, "--root", str(store), flag, str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"cls export: error: exporting to {tool} needs the optional extra 'export'" in err
    assert "pip install 'cls[export]'" in err


def test_export_needs_a_destination_and_a_known_sweep(store, tmp_path, capsys):
    assert main(["export", SWEEP, "--root", str(store)]) == 2
    assert "--tensorboard DIR and/or --mlflow URI" in capsys.readouterr().err
    assert main(["export", "nope", "--root", str(store), "--tensorboard", str(tmp_path)]) == 2
    assert "no trials of sweep 'nope'" in capsys.readouterr().err
