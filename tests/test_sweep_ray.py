"""`cls sweep` on real local Ray clusters: the quickstart end to end, a sweep interrupted twice (Ctrl-C, then a
killed driver) and continued, ASHA stopping a trial and a failing trial recorded."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cls.results import load
from cls.sweep import expand, load_sweep
from cls.train.loop import read_resumes
from polling import wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def sweep_command(tmp_path: Path, sweep: str | Path, *overrides: str) -> tuple[list[str], dict]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(CLS_DATA_ROOT=str(tmp_path / "data"), CLS_RUNS=str(tmp_path / "runs"),
               CLS_RESULTS=str(tmp_path / "results"))
    return [sys.executable, "-m", "cls", "sweep", str(sweep), *overrides], env


def run_sweep(tmp_path: Path, sweep, *overrides: str) -> subprocess.CompletedProcess:
    command, env = sweep_command(tmp_path, sweep, *overrides)
    return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1500)


def raw_rows(root: Path, table: str) -> pd.DataFrame:
    """Every row in the store's files, as plain pandas reads them (no deduplication)."""
    return pd.read_parquet(root / table)


def epochs_of(root: Path, sweep: str, trial_id: str) -> list[int]:
    try:
        rows = load(root, "epochs", sweep=sweep)
    except FileNotFoundError:
        return []
    return sorted(rows.loc[rows["trial_id"] == trial_id, "epoch"]) if len(rows) else []


def ctrl_c_when(command: list[str], env: dict, cwd: Path, ready, what: str, settle: float = 0.0) -> tuple[int, str]:
    """Start the sweep COMMAND, send it Ctrl-C (SIGINT) SETTLE seconds after READY() first holds, and return
    its exit status and output (SIGKILL to its process group if it has not ended by then)."""
    driver = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        wait_for(ready, 900, what)
        time.sleep(settle)
        driver.send_signal(signal.SIGINT)
        out, _ = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    return driver.returncode, out


def test_the_quickstart_sweep_end_to_end_from_a_fresh_directory(tmp_path):
    """The README's main command: CBAM on/off x 5 seeds x 3 epochs on digits, prepared on the spot; one row
    per trial and per trial and epoch, every trial well above 90% eval top-1, the aggregated table, the
    paired verdict for the CBAM axis and the pandas line, and no Ray noise on the console."""
    result = run_sweep(tmp_path, REPO / "sweeps" / "quickstart.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = tmp_path / "results"
    trials, epochs = raw_rows(results, "trials"), raw_rows(results, "epochs")
    expected = {t.trial_id for t in expand(load_sweep(REPO / "sweeps" / "quickstart.yaml"))}
    assert len(trials) == 10 and set(trials["trial_id"]) == expected
    assert (trials["status"] == "finished").all() and (trials["epochs_done"] == 3).all()
    assert len(epochs) == 30 and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert set(epochs["trial_id"]) == expected and sorted(set(epochs["epoch"])) == [0, 1, 2]
    # The trials row carries the config, the axes, the summary and where it ran.
    row = trials.iloc[0]
    assert row["model.name"] == "dnffm" and row["experiment"] == "dnffm_digits" and row["axis.seed"] in range(5)
    assert row["final_eval_top1"] == epochs[(epochs["trial_id"] == row["trial_id"]) & (epochs["epoch"] == 2)][
        "eval_top1"].item()
    assert row["wall_s"] > 0 and row["gpu_hours"] == 0 and row["host"] and row["torch_version"]
    # A result that means something: every trial learns digits.
    assert (trials["final_eval_top1"] > 0.9).all(), trials[["trial_id", "final_eval_top1"]].to_string()
    out = result.stdout
    assert "axis.model.cbam" in out and "final eval_top1" in out and "started_at" not in out
    # one line per configuration (CBAM on, off), each the mean over its 5 seeds
    assert len(re.findall(r"^ +(True|False) .* 5$", out, re.M)) == 2, out[-2000:]
    # Then the answer: CBAM against its baseline, paired on the seed (cls compare), then the pandas line.
    assert "compare final_eval_top1 by model.cbam, baseline model.cbam=False; pairs share seed" in out, out[-2000:]
    verdict = re.search(r"^  model\.cbam=True vs False: .*final_eval_top1.*5 pairs\)", out, re.M)
    assert verdict, out[-2000:]
    assert "pandas.read_parquet(" in out and str(results / "trials") in out
    assert out.index("compare final_eval_top1") < out.index("Read it with pandas")
    # The console: one line per trial event, none of Ray's own output.
    assert "Traceback" not in out + result.stderr and "(TrainController" not in out + result.stderr
    assert len(re.findall(r"^\[\d+/10\] \S+ started: ", out, re.M)) == 10


def test_an_interrupted_sweep_continues_without_rerunning_or_losing_a_trial(tmp_path):
    """Ctrl-C during trial 1, then SIGKILL of the driver (and its local cluster) during trial 2, then the
    same command to the end: every trial once, every epoch once, trial 1 and 2 resumed from checkpoints."""
    sweep = REPO / "sweeps" / "quickstart.yaml"
    overrides = ["sweep.axes.model.cbam.grid=[false]", "sweep.axes.seed.grid=[0,1,2]", "sweep.name=resume",
                 "trainer.epochs=2", "trainer.max_steps=25", "sweep.resources.max_concurrent=1"]
    first, second, third = (t.trial_id for t in expand(load_sweep(sweep, overrides)))
    results = tmp_path / "results"
    command, env = sweep_command(tmp_path, sweep, *overrides)

    # 1. Ctrl-C once trial 1 has its first epoch: the sweep stops, saying how to continue.
    status, out = ctrl_c_when(command, env, tmp_path, lambda: epochs_of(results, "resume", first) == [0],
                              "trial 1's first epoch", settle=1.0)  # its checkpoint is written right after its row
    assert status == 130, out[-3000:]
    assert "interrupted" in out and "run the same command to continue" in out
    # Its row is closed, not left "running": interrupted, to be resumed.
    assert load(results, "trials", sweep="resume").set_index("trial_id").loc[first, "status"] == "interrupted"

    # 2. Run again, and kill the driver with its cluster once trial 2 has its first epoch.
    driver = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        wait_for(lambda: epochs_of(results, "resume", second) == [0], 600, "trial 2's first epoch")
        time.sleep(1.0)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        out, _ = driver.communicate(timeout=60)
    assert "0 finished earlier, 3 to run" in out, out[-3000:]
    finished_first = load(results, "trials", sweep="resume").set_index("trial_id").loc[first]
    assert finished_first["status"] == "finished"

    # 3. The same command finishes the sweep: trial 1 is not run again, trial 2 resumes at its epoch 1.
    result = run_sweep(tmp_path, sweep, *overrides)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 finished earlier, 2 to run" in result.stdout
    assert f"{first} started" not in result.stdout
    # The killed job's lease on trial 2 is taken over at once (its process is gone), not waited out.
    assert f"{second}: taken over from" in result.stdout, result.stdout[-3000:]
    trials, epochs = raw_rows(results, "trials"), raw_rows(results, "epochs")
    assert sorted(trials["trial_id"]) == sorted([first, second, third]) and (trials["status"] == "finished").all()
    assert len(epochs) == 6 and not epochs.duplicated(["trial_id", "epoch"]).any()
    final = trials.set_index("trial_id")
    assert final.loc[first, "written_at"] == finished_first["written_at"]  # untouched by the third run
    assert final.loc[first, "attempts"] == 2 and final.loc[second, "attempts"] == 2 and final.loc[third, "attempts"] == 1
    # Each interrupted trial resumed once, from a checkpoint (at epoch 1, or 2 if it finished its second
    # epoch while the sweep was stopping), never from scratch.
    for trial in (first, second):
        assert [r["start_epoch"] >= 1 for r in read_resumes(tmp_path / "runs" / trial)] == [True], trial
    assert read_resumes(tmp_path / "runs" / third) == []


ASHA = """# three learning rates on digits: one learns, one barely moves, one diverges
name: {name}
overrides: [model=shufflenet_v2_x0_5, model.small_input=cifar_stem, trainer.epochs=3, trainer.nan_check_every=1,
            data.backend=torch]
axes:
  optim.lr: {{grid: [0.05, 1.0e-7, 1.0e+30]}}
metric: eval_top1
mode: max
scheduler:
  asha: {{grace_period: 1, reduction_factor: 2}}
resources: {{workers: 1, cpus_per_worker: 2, max_concurrent: 1}}
"""


def decisions(results: Path, sweep: str) -> dict:
    """Each trial's status, and the rung that stopped it, by learning rate."""
    rows = load(results, "trials", sweep=sweep).set_index("optim.lr")
    rungs = rows["stopped_at_rung"] if "stopped_at_rung" in rows else pd.Series(index=rows.index, dtype=float)
    return {lr: (rows.loc[lr, "status"], None if pd.isna(rungs[lr]) else int(rungs[lr])) for lr in rows.index}


def test_asha_stops_a_weak_trial_and_a_failing_trial_is_recorded_and_an_interruption_changes_neither(tmp_path):
    sweep = tmp_path / "asha.yaml"
    sweep.write_text(ASHA.format(name="asha"))
    result = run_sweep(tmp_path, sweep)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 trials failed" in result.stderr
    results = tmp_path / "results"
    trials = load(results, "trials", sweep="asha").set_index("optim.lr")
    assert trials.loc[0.05, "status"] == "finished" and trials.loc[0.05, "epochs_done"] == 3
    assert trials.loc[1e-7, "status"] == "stopped" and trials.loc[1e-7, "epochs_done"] < 3
    assert trials.loc[1e-7, "stopped_at_rung"] == trials.loc[1e-7, "epochs_done"]
    assert trials.loc[1e30, "status"] == "failed" and "loss is" in trials.loc[1e30, "error"]
    assert "--rerun-failed" in result.stderr
    uninterrupted = decisions(results, "asha")
    # Run again: nothing to do (a failed trial is retried only when asked), and it still says it failed.
    again = run_sweep(tmp_path, sweep)
    assert again.returncode == 1 and "1 failed earlier (--rerun-failed retries them), 0 to run" in again.stdout
    # --rerun-failed retries it (it fails again); the finished and the stopped trials stay done.
    again = run_sweep(tmp_path, sweep, "--rerun-failed")
    assert again.returncode == 1 and "2 finished earlier, 1 to run" in again.stdout
    trials = load(results, "trials", sweep="asha").set_index("optim.lr")
    assert trials["attempts"].to_dict() == {0.05: 1, 1e-7: 1, 1e30: 2}

    # The same sweep, stopped (Ctrl-C) as its second trial starts, then run again: the resumed run decides
    # that trial's rungs against the first trial's rows in the store, and stops it where the uninterrupted
    # run did. Ray's ASHA, whose rungs live in memory and are not restored (ray#30838), would let it run to
    # the end as the first trial at its rungs.
    # Its own runs directory (and store): a trial's run is named by its config, so in the first one the cut
    # sweep's trials would resume the first sweep's runs.
    elsewhere = tmp_path / "cut"
    elsewhere.mkdir()
    cut = elsewhere / "cut.yaml"
    cut.write_text(ASHA.format(name="cut"))
    results = elsewhere / "results"
    command, env = sweep_command(elsewhere, cut)
    def second_started():
        return (results / "trials" / "sweep=cut").exists() and len(load(results, "trials", sweep="cut")) >= 2

    status, out = ctrl_c_when(command, env, tmp_path, second_started, "the second trial of the cut sweep")
    assert status == 130, out[-3000:]
    assert decisions(results, "cut")[1e-7] == ("interrupted", None), out[-3000:]
    resumed = run_sweep(elsewhere, cut)
    assert resumed.returncode == 1, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "1 finished earlier, 2 to run" in resumed.stdout, resumed.stdout[-3000:]
    assert decisions(results, "cut") == uninterrupted, (uninterrupted, resumed.stdout[-3000:])
