"""`run_sweep`: a sweep's trials as one Ray Tune experiment, each trial a Ray Train run (`cls.train.run.train`).

The sweep driver is, with the per-worker entry, the only place that touches Ray. It keeps the `trials` table
of the results store (a row per trial: running at start, finished / stopped / failed at the end), while rank
0 of each trial writes its `epochs` rows (cls.train.loop).

Continuing after an interruption (Ctrl-C, a killed driver, a cancelled or requeued job) needs no Tune state:
the trials are known from the sweep file alone (spec.expand), a trial whose row says finished or stopped is
not run again, and every other trial is started again under its own id, which is its Train run's name, so
Train resumes it from its last checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from cls.results import TrialRecord, compact, load
from cls.results.store import TERMINAL

from .spec import Asha, Sweep, Trial

DONE = ("finished", "stopped")  # a trial in either state is never run again; failed ones are retried
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 64 * 2**20}  # see _tune_trainable
_EPOCHS_DONE = "epochs_done"  # the time axis ASHA compares on (the trial's epochs, resumes included)


@dataclass
class SweepOutcome:
    total: int
    skipped: int  # finished in an earlier run of the sweep
    statuses: dict[str, str]  # trial id -> status after this run (running: interrupted, to be continued)
    interrupted: bool

    @property
    def failed(self) -> list[str]:
        return [t for t, s in self.statuses.items() if s == "failed"]

    @property
    def unfinished(self) -> list[str]:
        return [t for t, s in self.statuses.items() if s not in TERMINAL]


def prepare_trials(sweep: Sweep, trials: list[Trial], results_root: str | None = None) -> list[Trial]:
    """The trials' configs as the driver runs them: absolute paths, the sweep's name (and, if given, store
    root) in `results`."""
    from cls.train.run import absolute_paths

    prepared = []
    for trial in trials:
        results = {**trial.config["results"], "sweep": sweep.name, **({"root": results_root} if results_root else {})}
        prepared.append(Trial(trial.trial_id, trial.overrides, trial.axes,
                              absolute_paths({**trial.config, "results": results})))
    return prepared


def store_status(results_root: str | os.PathLike, sweep: str) -> dict[str, str]:
    """trial id -> status, as the store has it now."""
    rows = load(results_root, "trials", sweep=sweep)
    return dict(zip(rows["trial_id"], rows["status"])) if "status" in rows else {}


def run_sweep(sweep: Sweep, trials: list[Trial], out=sys.stdout) -> SweepOutcome:
    """Run the trials of `sweep` that have not finished yet (see the module docstring). Prints a line per
    trial event to `out`."""
    import ray

    from cls.train.run import check_batch, connect_ray, ensure_data, worker_resources

    for t in trials:
        check_batch(t.config)  # before Ray: a global batch that does not divide over a trial's workers
    if sweep.derive:  # the derived datasets the trials read, once, before the data checks below
        from .derive import build_derived

        connect_ray()
        build_derived(sweep.derive, log=lambda line: print(line, file=out, flush=True))
    root = trials[0].config["results"]["root"]
    for cfg in {t.config["data"]["root"]: t.config for t in trials}.values():
        ensure_data(cfg)  # before Tune: an unprepared dataset fails here, once, not in every trial

    before = store_status(root, sweep.name)
    todo = [t for t in trials if before.get(t.trial_id) not in DONE]
    skipped = len(trials) - len(todo)
    print(f"sweep {sweep.name}: {len(trials)} trials; {skipped} finished earlier, {len(todo)} to run, "
          f"{sweep.resources.max_concurrent} at a time; results in {root}", file=out, flush=True)
    if not todo:
        return SweepOutcome(len(trials), skipped, {t.trial_id: before[t.trial_id] for t in trials}, False)

    connect_ray()
    cluster = ray.cluster_resources()
    # Every trial, before any starts: an axis may change a trial's workers or GPUs.
    gpus = {t.trial_id: worker_resources(t.config["trainer"], cluster).get("GPU", 0.0) for t in todo}

    # Tune's own console output (a config box, a status table every few seconds) is replaced by the lines
    # _StoreCallback prints; the old reporter with verbose=0 is the one that stays quiet.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    configs = {t.trial_id: t.config for t in todo}
    scheduler = _asha(sweep.scheduler, max(t.config["trainer"]["epochs"] for t in todo))
    recorder = _StoreCallback({t.trial_id: t for t in todo}, gpus, scheduler, out, len(todo))
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_tune_trainable, configs=configs, per_epoch=scheduler is not None),
                            TRIAL_DRIVER_RESOURCES),
        param_space={"trial_id": tune.grid_search([t.trial_id for t in todo])},
        tune_config=tune.TuneConfig(
            metric=sweep.metric, mode=sweep.mode, scheduler=scheduler,
            max_concurrent_trials=sweep.resources.max_concurrent,
            # A reused trial actor keeps its imports warm for the next trial. Not under a scheduler: a trial
            # it stops is still inside fit(), the actor cannot be reset, and Tune 2.60 then fails the next
            # trial ("Trainable runner reuse requires reset_config() ...") instead of starting a new actor.
            reuse_actors=scheduler is None,
            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=sweep.name, storage_path=str(Path(todo[0].config["trainer"]["storage"]) / "_tune"),
            callbacks=[recorder], verbose=0,
        ),
    )
    with _sigterm_as_interrupt():
        tuner.fit()  # trial outcomes are in the store, where the callback wrote them
    after = store_status(root, sweep.name)
    statuses = {t.trial_id: after.get(t.trial_id, "running") for t in trials}
    interrupted = any(s not in TERMINAL for s in statuses.values())
    if not interrupted:
        compact(root, sweep.name)  # one file per table for the finished sweep: fast to read at any size
    return SweepOutcome(len(trials), skipped, statuses, interrupted)


def _tune_trainable(config: dict[str, Any], configs: dict[str, dict[str, Any]], per_epoch: bool) -> dict[str, Any]:
    """One trial, inside its Tune trial actor: the Train run of the trial's config. With `per_epoch` (a
    scheduler needs every epoch's result) Tune's reporter passes each epoch on; without, the trial reports
    once, at its end, and saves the reporter's queue actor: one process start fewer per trial (the epochs
    are in the store either way). The trial actor itself reserves no CPU (`TRIAL_DRIVER_RESOURCES`): on a
    small machine a CPU held by every trial's driver leaves its Train workers none, and the sweep waits."""
    from cls.train.run import train

    # Only a scheduler kills a trial's Train run while the cluster lives on (an interrupted sweep ends its
    # job, and Ray frees the job's placement groups with it): only then is Train's cleaner needed.
    result = train(configs[config["trial_id"]], callbacks=[_ReportEpochs()] if per_epoch else [], record=False,
                   killable=per_epoch)
    return {**result.metrics, _EPOCHS_DONE: result.metrics.get("epoch", -1) + 1}


def _trial_name(trial) -> str:
    return trial.config["trial_id"]


class _ReportEpochs(TuneReportCallback):
    """Tune's reporter, plus `epochs_done` (epochs including those before a resume): ASHA's time axis.
    Tune's own `training_iteration` restarts at 1 when a trial resumes in a new run of the sweep."""

    def after_report(self, run_context, metrics, checkpoint):
        first = {**metrics[0], _EPOCHS_DONE: metrics[0]["epoch"] + 1}
        super().after_report(run_context, [first, *metrics[1:]], checkpoint)


class _RecordingAsha(ASHAScheduler):
    """ASHA that remembers whom it stopped: a trial cut by the scheduler is done ("stopped"), one cut by an
    interruption is not (it resumes when the sweep runs again)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stopped: set[str] = set()

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            self.stopped.add(trial.config["trial_id"])
        return decision


def _asha(spec: Asha | None, epochs: int) -> _RecordingAsha | None:
    if spec is None:
        return None
    return _RecordingAsha(time_attr=_EPOCHS_DONE, max_t=spec.max_t or epochs, grace_period=spec.grace_period,
                          reduction_factor=spec.reduction_factor)


class _StoreCallback(tune.Callback):
    """Keeps each trial's `trials` row, in the driver, and prints one line per trial event."""

    def __init__(self, trials: dict[str, Trial], gpus: dict[str, float], scheduler, out, total: int) -> None:
        self.trials, self.gpus, self.scheduler, self.out, self.total = trials, gpus, scheduler, out, total
        self.records: dict[str, TrialRecord] = {}
        self.started = 0

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        trial_id = trial.config["trial_id"]
        spec = self.trials[trial_id]
        record = TrialRecord(spec.config, trial_id, self.gpus[trial_id],
                             extra={"experiment": _experiment(spec), **{f"axis.{k}": v for k, v in spec.axes.items()}})
        record.start()
        self.records[trial_id] = record
        self.started += 1
        axes = " ".join(f"{k}={v}" for k, v in spec.axes.items())
        self._print(f"[{self.started}/{self.total}] {trial_id} started: {axes}")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        trial_id = trial.config["trial_id"]
        epochs = self.trials[trial_id].config["trainer"]["epochs"]
        shown = "  ".join(f"{k} {result[k]:.4g}" for k in ("train_loss", "eval_loss", "eval_top1") if k in result)
        self._print(f"    {trial_id} epoch {result.get(_EPOCHS_DONE, '?')}/{epochs}  {shown}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        trial_id, record = trial.config["trial_id"], self.records.get(trial.config["trial_id"])
        if record is None:
            return
        done = len(record.writer.read("epochs"))
        if done >= self.trials[trial_id].config["trainer"]["epochs"]:
            status = "finished"
        elif self.scheduler is not None and trial_id in self.scheduler.stopped:
            status = "stopped"
        else:
            return  # cut short by an interruption: it stays "running" and resumes next time
        record.end(status)
        self._print(f"    {trial_id} {status} after {done} epochs")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        trial_id, record = trial.config["trial_id"], self.records.get(trial.config["trial_id"])
        if record is None:  # failed before it started (Tune could not start its actor): no row to close
            self._print(f"    {trial_id} FAILED before starting: {_error_text(trial).splitlines()[-1]}")
            return
        error = _error_text(trial)
        record.end("failed", error)
        self._print(f"    {trial_id} FAILED: {error.strip().splitlines()[-1]}")


def _error_text(trial) -> str:
    """The trial's error and traceback, as Tune wrote it to the trial's local error file just before this
    callback (its copy in storage, which `Trial.get_error` reads, is synced later)."""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    lines = [line for line in text.splitlines() if not line.startswith("Failure # ")]
    return "\n".join(lines).strip() or "unknown error (see the trial's log in the Ray session directory)"


def _experiment(trial: Trial) -> str | None:
    chosen = [o.split("=", 1)[1] for o in trial.overrides if o.startswith("experiment=")]
    return chosen[-1] if chosen else None


class _sigterm_as_interrupt:  # noqa: N801 - a context manager used like a function
    """SIGTERM (scancel, a job's end) stops the sweep the way Ctrl-C does: Tune stops its trials and returns,
    and the sweep continues when run again. Tune itself catches SIGINT and SIGUSR1 only."""

    def __enter__(self):
        self.previous = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self.previous)
