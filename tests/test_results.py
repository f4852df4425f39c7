"""The results store (cls.results): round trip, plain pandas reads, idempotence, concurrent and killed
writers, schema drift, compaction and aggregate."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cls.results import ResultsWriter, aggregate, compact, flatten_config, load, summarize
from cls.results.store import data_files

REPO = Path(__file__).resolve().parents[1]


def metrics(trial: int, epoch: int) -> dict[str, float]:
    # Every value derives from (trial, epoch), so a row that mixed two writes would not add up.
    return {"train_loss": 1.0 / (epoch + 1), "eval_top1": trial + epoch / 1000, "lr": 0.1, "check": trial * 1000 + epoch}


def write_trials(root: str, sweep: str, trials: range, epochs: int) -> None:
    for t in trials:
        w = ResultsWriter(root, sweep, f"t{t:04d}")
        for e in range(epochs):
            w.write_epoch(e, metrics(t, e))
        w.write_trial({"model.name": f"m{t % 2}", "seed": t, "status": "finished"})


def test_round_trip_and_plain_pandas(tmp_path):
    root = str(tmp_path)
    cfg = {"model": {"name": "dnffm", "tau": 0.5}, "optim": {"lr": 0.1, "betas": [0.9, 0.999]}, "seed": 3}
    w = ResultsWriter(root, "lr-scan", "t0")
    w.write_epoch(0, {"train_loss": 2.0, "eval_top1": 0.25, "lr": 0.1, "images_per_s": 100, "epoch_seconds": 1.5})
    w.write_epoch(1, {"train_loss": 1.0, "eval_top1": 0.5, "lr": 0.05, "images_per_s": 110, "epoch_seconds": 1.4})
    epochs = load(root, "epochs").to_dict("records")
    w.write_trial({**flatten_config(cfg), **summarize(epochs), "status": "finished", "gpu_hours": 0.01})
    ResultsWriter(root, "other", "t0").write_epoch(0, {"eval_top1": 0.9})

    got = load(root, "epochs", sweep="lr-scan")
    assert got[["sweep", "trial_id", "epoch", "eval_top1", "images_per_s"]].to_dict("records") == [
        {"sweep": "lr-scan", "trial_id": "t0", "epoch": 0, "eval_top1": 0.25, "images_per_s": 100.0},
        {"sweep": "lr-scan", "trial_id": "t0", "epoch": 1, "eval_top1": 0.5, "images_per_s": 110.0},
    ]
    trial = load(root, "trials").iloc[0]
    assert (trial["model.name"], trial["model.tau"], trial["optim.betas"]) == ("dnffm", 0.5, "[0.9, 0.999]")
    assert (trial["final_eval_top1"], trial["best_train_loss"], trial["status"]) == (0.5, 1.0, "finished")
    assert trial["host"] and trial["cls_version"] == "0.1.0"

    # No helper: the sweep column comes from the hive directories.
    plain = pd.read_parquet(tmp_path / "epochs")
    assert sorted(zip(plain["sweep"].astype(str), plain["epoch"])) == [("lr-scan", 0), ("lr-scan", 1), ("other", 0)]
    assert pd.read_parquet(tmp_path / "trials")["sweep"].astype(str).tolist() == ["lr-scan"]
    assert len(load(root, "epochs", filters=[("sweep", "==", "other")])) == 1


def test_rewritten_epoch_and_trial_are_not_duplicated(tmp_path):
    w = ResultsWriter(tmp_path, "s", "t0")
    w.write_epoch(0, {"eval_top1": 0.1})
    w.write_epoch(1, {"eval_top1": 0.2})
    w.write_epoch(1, {"eval_top1": 0.3})  # a resumed trial re-runs epoch 1
    w.write_trial({"status": "running"})
    w.write_trial({"status": "finished"})
    plain = pd.read_parquet(tmp_path / "epochs")
    assert plain.sort_values("epoch")["eval_top1"].tolist() == [0.1, 0.3]
    assert pd.read_parquet(tmp_path / "trials")["status"].tolist() == ["finished"]


def test_names_that_would_break_the_layout_are_refused(tmp_path):
    for sweep, trial in [("2024", "t"), ("s", "../x"), ("s=1", "t"), ("s", ".hidden")]:
        with pytest.raises(ValueError):
            ResultsWriter(tmp_path, sweep, trial)


def _writer_process(root: str, first: int, count: int, epochs: int) -> None:
    write_trials(root, "par", range(first, first + count), epochs)


def test_eight_concurrent_writers_lose_nothing(tmp_path):
    procs, trials, epochs = 8, 5, 6
    ctx = multiprocessing.get_context("spawn")  # no fork of pyarrow's thread pools
    workers = [ctx.Process(target=_writer_process, args=(str(tmp_path), p * trials, trials, epochs)) for p in range(procs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    got = pd.read_parquet(tmp_path / "epochs")
    expected = {(f"t{t:04d}", e) for t in range(procs * trials) for e in range(epochs)}
    assert len(got) == len(expected) and set(zip(got["trial_id"], got["epoch"])) == expected
    assert (got["check"] == got["trial_id"].str[1:].astype(int) * 1000 + got["epoch"]).all()
    assert len(pd.read_parquet(tmp_path / "trials")) == procs * trials


LOOP = """
import sys
from cls.results import ResultsWriter
sys.path.insert(0, {tests!r})
from test_results import metrics
root, tag = sys.argv[1], sys.argv[2]
for t in range(10**6):
    w = ResultsWriter(root, "kill", f"t{{t % 3:04d}}")
    for e in range(20):
        w.write_epoch(e, dict(metrics(t % 3, e), check=(t % 3) * 1000 + e))
        print(tag, t, e, flush=True)
"""


def _start_loop(root: Path, tag: str) -> subprocess.Popen:
    code = textwrap.dedent(LOOP.format(tests=str(REPO / "tests")))
    return subprocess.Popen([sys.executable, "-c", code, str(root), tag], stdout=subprocess.PIPE, text=True, cwd=REPO)


def _check_readable(root: Path) -> pd.DataFrame:
    for f in data_files(root):  # every visible file is complete
        pq.read_table(f)
    got = load(root, "epochs")
    assert not got.duplicated(["trial_id", "epoch"]).any()
    assert (got["check"] == got["trial_id"].str[1:].astype(int) * 1000 + got["epoch"]).all()
    assert pd.read_parquet(root / "epochs").shape[0] == len(got)
    return got


def test_writer_killed_mid_write_leaves_a_readable_store(tmp_path):
    rng = np.random.default_rng(0)
    for round_ in range(3):
        proc = _start_loop(tmp_path, "k")
        for _ in range(int(rng.integers(30, 90))):  # wait until it is deep in its write loop
            proc.stdout.readline()
        time.sleep(float(rng.uniform(0, 0.02)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        got = _check_readable(tmp_path)
        assert len(got) > 0
    # A temp file left by a killed write is hidden from plain pandas and from load.
    (tmp_path / "epochs" / "sweep=kill" / ".trial-t0000.parquet.dead.tmp").write_bytes(b"PAR1 half a file")
    _check_readable(tmp_path)


def test_two_writers_of_the_same_trial(tmp_path):
    # Both write trial t0000 (a stale and a resumed worker); each complete write replaces the file whole.
    procs = [_start_loop(tmp_path, tag) for tag in "ab"]
    seen, deadline = 0, time.monotonic() + 20
    while seen < 150 and time.monotonic() < deadline:
        # An empty line is EOF: a writer died (it read a broken file); the check below then fails.
        lines = [p.stdout.readline() for p in procs if p.poll() is None]
        if not any(lines):
            break
        seen += sum(map(bool, lines))
        if seen % 10 < 2:  # a reader while both rewrite the file: complete rows only
            assert not load(tmp_path, "epochs").duplicated(["trial_id", "epoch"]).any()
    alive = [p.poll() is None for p in procs]
    for p in procs:
        p.kill()
        p.wait()
    assert seen >= 150 and all(alive), "a writer of the shared trial died or stalled"
    got = _check_readable(tmp_path)
    assert set(got["trial_id"]) <= {"t0000", "t0001", "t0002"} and got["epoch"].between(0, 19).all()


def test_schema_drift(tmp_path):
    a, b = ResultsWriter(tmp_path, "s", "a"), ResultsWriter(tmp_path, "s", "b")
    a.write_epoch(0, {"eval_top1": 0.5})
    b.write_epoch(0, {"eval_top1": 0.6, "eval_top5": 0.9})  # a later trial adds a metric
    a.write_trial({"optim.lr": 1, "status": "finished"})  # int here, float there: unified to float
    b.write_trial({"optim.lr": 0.1, "model.tau": 0.5, "status": "finished"})

    # Plain pandas reads it (taking the columns of the first file it opens) ...
    assert len(pd.read_parquet(tmp_path / "epochs")) == 2
    # ... load unifies every file's schema.
    epochs = load(tmp_path, "epochs").set_index("trial_id")
    assert np.isnan(epochs.loc["a", "eval_top5"]) and epochs.loc["b", "eval_top5"] == 0.9
    trials = load(tmp_path, "trials").set_index("trial_id")
    assert trials["optim.lr"].tolist() == [1.0, 0.1] and np.isnan(trials.loc["a", "model.tau"])
    # After compaction the sweep is one file with the unified schema: plain pandas sees the new column.
    compact(tmp_path, "s")
    assert pd.read_parquet(tmp_path / "epochs").set_index("trial_id").loc["b", "eval_top5"] == 0.9


def test_compact(tmp_path):
    write_trials(str(tmp_path), "c", range(6), 4)
    running = ResultsWriter(tmp_path, "c", "live")
    running.write_epoch(0, {"eval_top1": 0.1})
    running.write_trial({"status": "running"})
    before = load(tmp_path, "epochs").sort_values(["trial_id", "epoch"], ignore_index=True)

    assert compact(tmp_path, "c") == {"epochs": 6, "trials": 6}
    names = sorted(f.name for f in data_files(tmp_path / "epochs"))
    assert len(names) == 2 and names[0].startswith("part-") and names[1] == "trial-live.parquet"
    after = load(tmp_path, "epochs").sort_values(["trial_id", "epoch"], ignore_index=True)
    pd.testing.assert_frame_equal(before, after)
    assert len(pd.read_parquet(tmp_path / "epochs")) == len(before)

    # Idempotent: nothing left to merge.
    assert compact(tmp_path, "c") == {"epochs": 0, "trials": 0}
    assert sorted(f.name for f in data_files(tmp_path / "epochs")) == names
    # A compacted trial written again (resumed): load prefers the newer row, the next compact folds it in.
    ResultsWriter(tmp_path, "c", "t0001").write_epoch(3, {"eval_top1": 42.0})
    row = load(tmp_path, "epochs", filters=[("trial_id", "==", "t0001"), ("epoch", "==", 3)])
    assert row["eval_top1"].tolist() == [42.0]
    compact(tmp_path, "c")
    plain = pd.read_parquet(tmp_path / "epochs")
    assert len(plain) == len(before) and plain.query("trial_id == 't0001' and epoch == 3")["eval_top1"].tolist() == [42.0]


def test_aggregate_against_hand_computation():
    df = pd.DataFrame({
        "model.name": ["a", "a", "a", "b", "b", "c"],
        "optim.lr": [0.1, 0.1, 0.1, 0.1, 0.1, 0.01],
        "seed": [0, 1, 2, 0, 1, 0],
        "final_eval_top1": [0.70, 0.74, 0.72, 0.50, np.nan, 0.9],
    })
    got = aggregate(df, ["model.name", "optim.lr"], "final_eval_top1").set_index("model.name")
    assert got.loc["a", "mean"] == pytest.approx(0.72)
    assert got.loc["a", "std"] == pytest.approx(np.sqrt(((0.02**2) + 0 + (0.02**2)) / 2))  # sample std, ddof=1
    assert got.loc["a", "count"] == 3
    assert (got.loc["b", "mean"], got.loc["b", "count"]) == (0.5, 1)  # NaN (a failed seed) not counted
    assert np.isnan(got.loc["c", "std"]) and got.loc["c", "optim.lr"] == 0.01


def test_configurations_are_told_apart_by_axes_and_varying_config_only():
    from cls.results.read import configuration_columns

    trials = pd.DataFrame({
        "trial_id": ["a", "b", "c", "d"], "axis.model.tau": [0.5, 0.5, 1.0, 1.0], "axis.seed": [0, 1, 0, 1],
        "model.tau": [0.5, 0.5, 1.0, 1.0], "seed": [0, 1, 0, 1], "trainer.epochs": [2, 2, 2, 3],
        "trainer.storage": ["/a", "/b", "/a", "/a"], "started_at": [1.0, 2.0, 3.0, 4.0], "wall_s": [5.0, 6, 7, 8],
        "host": ["x", "y", "x", "y"], "attempts": [1, 2, 1, 1], "final_eval_top1": [0.1, 0.2, 0.3, 0.4],
    })
    # the seed averages; trainer.epochs varies within a tau, so it separates; where and when it ran does not
    assert configuration_columns(trials) == ["axis.model.tau", "trainer.epochs"]
    assert configuration_columns(trials.drop(columns="trainer.epochs")) == ["axis.model.tau"]
