"""Issue 11: nothing a user types or a disk does poisons the store. Typed columns, files of conflicting
types (as the store of an earlier cls holds), damaged files, and the per-writer sequence that decides which
copy of a row wins. Real Parquet files throughout."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cls.cli import main
from cls.results import ResultsWriter, TrialRecord, compact, load
from cls.results.store import StoreWarning, live_file
from cls.train.config import compose_config, to_container


def cfg(tmp_path: Path, *overrides: str) -> dict:
    return to_container(compose_config(["experiment=dnffm_digits", f"results.root={tmp_path / 'results'}",
                                        "results.sweep=s", *overrides]))


def old_main_trial(root: Path, sweep: str, trial_id: str, **columns) -> Path:
    """A trials file as the cls before issue 11 wrote it: each column typed by its value alone."""
    path = live_file(root, "trials", sweep, trial_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([{"trial_id": trial_id, "status": "finished", "final_eval_top1": 0.5,
                                          "best_eval_top1": 0.5, "written_at": 1, **columns}]), path)
    return path


def truncate_footer(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 12])  # the footer's length and magic bytes gone


def test_seed_abc_is_rejected_before_anything_is_written(tmp_path, capsys):
    # Case 1: `cls train experiment=dnffm_digits seed=abc` wrote a string seed into the store.
    results = tmp_path / "results"
    assert main(["train", "experiment=dnffm_digits", "seed=abc", f"results.root={results}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seed" in err and "'abc'" in err, err
    assert not results.exists()


def test_a_mixed_bool_and_string_axis_is_one_string_column(tmp_path):
    # Case 1: `model.pretrained: {grid: [false, IMAGENET1K_V1]}` put bool and string in one column.
    for value in ("false", "IMAGENET1K_V1"):
        c = cfg(tmp_path, f"model.pretrained={value}", f"trainer.name=p-{value}")
        TrialRecord(c, f"p-{value}", 0.0, extra={"axis.model.pretrained": c["model"]["pretrained"]}).start()
    files = sorted((tmp_path / "results" / "trials" / "sweep=s").glob("*.parquet"))
    assert [pq.read_schema(f).field("model.pretrained").type for f in files] == [pa.string(), pa.string()]
    assert [pq.read_schema(f).field("seed").type for f in files] == [pa.int64(), pa.int64()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: the files agree
        trials = load(tmp_path / "results", "trials").set_index("trial_id")
    assert trials.loc["p-false", "model.pretrained"] == "false" == trials.loc["p-false", "axis.model.pretrained"]
    assert trials.loc["p-IMAGENET1K_V1", "model.pretrained"] == "IMAGENET1K_V1"
    assert trials["model.tau"].dtype == "float64" and trials["seed"].tolist() == [0, 0]


def test_a_value_the_column_cannot_hold_is_refused_naming_key_and_value(tmp_path):
    c = cfg(tmp_path)
    c["seed"] = "abc"  # as if a config of another type had reached the writer
    with pytest.raises(ValueError, match=r"seed='abc'.*integer"):
        TrialRecord(c, "t", 0.0).start()
    assert not (tmp_path / "results" / "trials").exists()


def test_files_of_conflicting_types_are_read_with_a_warning_and_listed_by_check(tmp_path, capsys):
    # What the cls before issue 11 left behind: seed int64 in one file, string in another.
    root = tmp_path / "results"
    a = old_main_trial(root, "s", "a", seed=0)
    b = old_main_trial(root, "s", "b", seed="abc")
    with pytest.warns(StoreWarning, match=r"'seed' has more than one type") as caught:
        trials = load(root, "trials", sweep="s").set_index("trial_id")
    assert str(a) in str(caught[0].message) and str(b) in str(caught[0].message)
    assert trials.loc["a", "seed"] == "0" and trials.loc["b", "seed"] == "abc"

    with pytest.warns(StoreWarning, match="'seed'"):
        assert main(["results", "--root", str(root), "--sweep", "s"]) == 0
    assert "sweep s: 2 trials (2 finished)" in capsys.readouterr().out
    assert main(["results", "--root", str(root), "--check"]) == 1
    out = capsys.readouterr().out
    assert "conflicting: column 'seed' of trials" in out and f"int64: {a}" in out and f"string: {b}" in out
    assert "what to do" in out
    # compact leaves such files alone rather than write a part of two types
    with pytest.warns(StoreWarning, match="not compacting"):
        compact(root, "s")
    assert a.is_file() and b.is_file()


def test_a_damaged_file_is_named_and_skipped_by_every_reader(tmp_path, capsys):
    from cls.results.report import write_report
    from cls.sweep.driver import store_status

    root = tmp_path / "results"
    for t in ("good", "bad"):
        w = ResultsWriter(root, "s", t)
        w.write_epoch(0, {"train_loss": 1.0, "eval_loss": 1.0, "eval_top1": 0.5})
        w.write_trial({"status": "finished", "final_eval_top1": 0.5, "best_eval_top1": 0.5, "axis.seed": 0})
    bad = live_file(root, "trials", "s", "bad")
    truncate_footer(bad)

    with pytest.warns(StoreWarning, match=f"skipping damaged file {bad}"):
        assert load(root, "trials")["trial_id"].tolist() == ["good"]
    with pytest.warns(StoreWarning):
        assert store_status(root, "s") == {"good": "finished"}  # a sweep's resume: "bad" runs again
    with pytest.warns(StoreWarning, match=f"skipping damaged file {bad}"):
        assert main(["results", "--root", str(root)]) == 0
    assert "sweep s: 1 trials (1 finished)" in capsys.readouterr().out
    with pytest.warns(StoreWarning):
        assert write_report(root, "s", tmp_path / "report").is_file()
    assert main(["results", "--root", str(root), "--check"]) == 1
    out = capsys.readouterr().out
    assert f"damaged: {bad}" in out and "mv" in out
    with pytest.warns(StoreWarning):
        compact(root, "s")
    assert bad.is_file()  # never deleted: it is the user's to look at

    # Its owner writing again replaces it whole (the epochs file here).
    epochs = live_file(root, "epochs", "s", "bad")
    truncate_footer(epochs)
    with pytest.warns(StoreWarning, match="damaged"):
        ResultsWriter(root, "s", "bad").write_epoch(1, {"eval_top1": 0.6})
    assert pq.read_table(epochs)["epoch"].to_pylist() == [1]


def test_check_of_a_sound_store_exits_zero(tmp_path, capsys):
    ResultsWriter(tmp_path, "s", "t").write_trial({"status": "finished"})
    assert main(["results", "--root", str(tmp_path), "--check"]) == 0
    assert "0 problem(s)" in capsys.readouterr().out


def test_a_newer_row_wins_even_from_a_host_whose_clock_is_behind(tmp_path, monkeypatch):
    # Case 7: rows were deduplicated by written_at, so the later writer, on a host 1 h behind, lost.
    import time as time_module

    now = time_module.time_ns()
    monkeypatch.setattr(time_module, "time_ns", lambda: now)
    first = ResultsWriter(tmp_path, "s", "t")
    first.write_epoch(0, {"eval_top1": 0.1})
    first.write_trial({"status": "running"})
    compact(tmp_path, "s")  # nothing terminal yet: the trial row stays live ...
    first.write_trial({"status": "finished"})
    compact(tmp_path, "s")  # ... now both rows are in a part

    monkeypatch.setattr(time_module, "time_ns", lambda: now - 3600 * 10**9)  # the resuming host: 1 h behind
    later = ResultsWriter(tmp_path, "s", "t")
    later.write_epoch(0, {"eval_top1": 0.7})
    later.write_trial({"status": "stopped"})
    # Part and live file each hold a copy of the key; the later writer's sequence wins, not the clock.
    assert len(pd.read_parquet(tmp_path / "trials")) == 2
    (row,) = load(tmp_path, "trials").to_dict("records")
    assert row["status"] == "stopped" and row["written_at"] < now
    assert load(tmp_path, "epochs")["eval_top1"].tolist() == [0.7]
    # A row of a store written before there was a sequence loses to a sequenced one.
    old = old_main_trial(tmp_path, "s", "u", written_at=now + 10**12)  # its clock far ahead
    old.rename(old.with_name("part-old.parquet"))
    ResultsWriter(tmp_path, "s", "u").write_trial({"status": "failed"})
    assert load(tmp_path, "trials").set_index("trial_id").loc["u", "status"] == "failed"
