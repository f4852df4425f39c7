"""`run_sweep`: a sweep's trials as one Ray Tune experiment, each trial a Ray Train run (`cls.train.run.train`).

The sweep driver is, with the per-worker entry, the only place that touches Ray. It keeps the `trials` table
of the results store (a row per trial: running at start, finished / stopped / failed at the end), while rank
0 of each trial writes its `epochs` rows (cls.train.loop).

Continuing after an interruption (Ctrl-C, a killed driver, a cancelled or requeued job) needs no Tune state:
the trials are known from the sweep file alone (spec.expand), a trial whose row says finished or stopped is
not run again, and every other trial is started again under its own id, which is its Train run's name, so
Train resumes it from its last checkpoint.

Several jobs can run one sweep at once (a SLURM job array, a sweep submitted twice, two `cls sweep` of one
file): Tune asks `_ClaimingSearcher` for its next trial whenever it has room for one, and the searcher hands
out only trials it could lease in the store (cls.results.leases). A trial another live job holds is waited
for, not run; one whose job died is taken over when its lease expires, and resumes from its checkpoint. A
job ends when every trial of the sweep is done, and the last one out compacts the store.

ASHA's rung decisions (`_StoreAsha`) come from the store's `epochs` table, which every job writes, not
from a scheduler's memory: a resumed sweep, or another job of it, prunes as one uninterrupted run would.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from cls.results import ResultsWriter, TrialRecord, compact, leases, load
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
    held: dict[str, str] = field(default_factory=dict)  # trial id -> the other job that held it (waited for)

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


def to_run(trials: list[Trial], before: dict[str, str], rerun_failed: bool = False) -> list[Trial]:
    """The trials a run of the sweep has to do: those with no row yet (new values on an axis, more seeds)
    and unfinished ones; failed ones only with `rerun_failed`. Finished and stopped ones never."""
    skip = DONE if rerun_failed else (*DONE, "failed")
    return [t for t in trials if before.get(t.trial_id) not in skip]


def lease_ttl_s() -> float:
    """How long a job's trial lease lives without a renewal: $CLS_LEASE_TTL_S, else 60 s."""
    value = os.environ.get("CLS_LEASE_TTL_S", str(leases.DEFAULT_TTL_S))
    try:
        ttl = float(value)
    except ValueError:
        ttl = math.nan
    if not ttl > 0:
        raise ValueError(f"CLS_LEASE_TTL_S={value!r}: give a number of seconds > 0 (default 60)")
    return ttl


def trial_status(results_root: str | os.PathLike, sweep: str, trial_id: str) -> str | None:
    """One trial's status as the store has it now."""
    rows = ResultsWriter(results_root, sweep, trial_id).read("trials")
    return rows[-1].get("status") if rows else None


def run_sweep(sweep: Sweep, trials: list[Trial], out=sys.stdout, rerun_failed: bool = False,
              insecure_no_auth: bool = False) -> SweepOutcome:
    """Run the trials of `sweep` that have not finished yet, sharing them with any other job running the
    same sweep on the same store (see the module docstring). Prints a line per trial event to `out`.
    `insecure_no_auth`: a local cluster runs without token auth (--insecure-no-auth)."""
    import ray

    from cls.train.run import check_batch, connect_ray, ensure_data, worker_resources

    for t in trials:
        check_batch(t.config)  # before Ray: a global batch that does not divide over a trial's workers
    if sweep.derive:  # the derived datasets the trials read, once, before the data checks below
        from .derive import build_derived

        connect_ray()
        build_derived(sweep.derive, log=lambda line: print(line, file=out, flush=True))
    root = trials[0].config["results"]["root"]
    ttl = lease_ttl_s()
    for cfg in {t.config["data"]["root"]: t.config for t in trials}.values():
        ensure_data(cfg)  # before Tune: an unprepared dataset fails here, once, not in every trial

    before = store_status(root, sweep.name)
    todo = to_run(trials, before, rerun_failed)
    skipped = len(trials) - len(todo)
    failed_before = sum(1 for t in trials if before.get(t.trial_id) == "failed" and t not in todo)
    print(f"sweep {sweep.name}: {len(trials)} trials; {skipped - failed_before} finished earlier, "
          + (f"{failed_before} failed earlier (--rerun-failed retries them), " if failed_before else "")
          + f"{len(todo)} to run, {sweep.resources.max_concurrent} at a time; results in {root}", file=out, flush=True)
    if not todo:
        return SweepOutcome(len(trials), skipped, {t.trial_id: before.get(t.trial_id, "running") for t in trials},
                            False)

    connect_ray(insecure_no_auth=insecure_no_auth, log_to_driver=False)  # see connect_ray
    logging.getLogger("ray.tune").setLevel(logging.WARNING)  # "Wrote the latest version of all result files ..."
    cluster = ray.cluster_resources()
    # Every trial, before any starts: an axis may change a trial's workers or GPUs.
    gpus = {t.trial_id: worker_resources(t.config["trainer"], cluster).get("GPU", 0.0) for t in todo}

    # Tune's own console output (a config box, a status table every few seconds) is replaced by the lines
    # _StoreCallback prints; the old reporter with verbose=0 is the one that stays quiet.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    configs = {t.trial_id: t.config for t in todo}
    scheduler = _asha(sweep, root, max(t.config["trainer"]["epochs"] for t in todo))
    searcher = _ClaimingSearcher(root, sweep.name, [t.trial_id for t in todo], ttl, rerun_failed, out)
    console = SweepConsole(out, len(todo))
    searcher.console = console
    recorder = _StoreCallback({t.trial_id: t for t in todo}, gpus, scheduler, console, len(todo), searcher)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_tune_trainable, configs=configs, per_epoch=scheduler is not None),
                            TRIAL_DRIVER_RESOURCES),
        tune_config=tune.TuneConfig(
            metric=sweep.metric, mode=sweep.mode, scheduler=scheduler, search_alg=searcher,
            num_samples=-1,  # as many trials as the searcher hands out, until it says FINISHED
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
    try:
        with _sigterm_as_interrupt():
            try:
                tuner.fit()  # trial outcomes are in the store, where the callback wrote them
            finally:
                recorder.close_open("interrupted")  # cut short: never left "running"; resumes next time
    finally:
        searcher.release_all()  # after its row is closed: an interrupted trial's lease goes now, not after its ttl
        console.close()
    after = store_status(root, sweep.name)
    statuses = {t.trial_id: after.get(t.trial_id, "running") for t in trials}
    interrupted = any(s not in TERMINAL for s in statuses.values())
    if not interrupted:
        _compact_once(root, sweep.name, ttl)
    return SweepOutcome(len(trials), skipped, statuses, interrupted, held=dict(searcher.waited))


def _compact_once(root: str, sweep: str, ttl: float) -> None:
    """One file per table for the finished sweep (fast to read at any size), by one job at a time: the
    last jobs out of a sweep finish together, and two compactions at once would delete each other's inputs."""
    lease = leases.acquire(root, sweep, leases.COMPACT, ttl_s=ttl)
    if isinstance(lease, leases.Lease):
        try:
            compact(root, sweep)
        finally:
            lease.release()


class SweepConsole:
    """Where a sweep's lines go: one line per trial event, and on a terminal a progress bar (rich) under them
    that counts the trials this run has ended. Ray's own output is kept off the terminal (connect_ray)."""

    def __init__(self, out, total: int) -> None:
        self.out, self.progress = out, None
        if total and getattr(out, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                     console=Console(file=out, force_terminal=True))
            self.task = self.progress.add_task("trials", total=total)
            self.progress.start()

    def print(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.out, flush=True)

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class _ClaimingSearcher(Searcher):
    """Hands Tune the sweep's trials one at a time, each only once this job holds its lease in the store.

    A trial another job holds is skipped for now and asked about again later: it is done when that job
    finishes it, and it is ours if that job dies (its lease expires). FINISHED once every trial is done or
    handed out, so the job stays until the whole sweep is done and no dead job's trial is stranded."""

    def __init__(self, root: str, sweep: str, trial_ids: list[str], ttl: float, rerun_failed: bool, out,
                 poll_s: float = 2.0) -> None:
        super().__init__()
        self.root, self.sweep, self.ttl, self.poll_s = root, sweep, ttl, poll_s
        self.console = SweepConsole(out, 0)
        self.pending = list(trial_ids)  # not yet handed to Tune, in the sweep's order
        self.done_states = DONE if rerun_failed else (*DONE, "failed")
        self.leases: dict[str, leases.Lease] = {}
        self.beats: dict[str, leases.Heartbeat] = {}
        self.waited: dict[str, str] = {}
        self._next_look = 0.0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the trials are the sweep file's; nothing for Tune to sample

    def suggest(self, trial_id: str) -> dict | str | None:
        if not self.pending:
            return Searcher.FINISHED
        if time.monotonic() < self._next_look:
            time.sleep(0.05)  # Tune asks in a loop while it has room: do not spin on the store
            return None
        statuses = store_status(self.root, self.sweep)
        # Others' rows: a trial another job finished (or failed) since we started is not ours to run.
        self.pending = [t for t in self.pending if statuses.get(t) not in self.done_states or t in self.waited]
        for candidate in list(self.pending):
            if candidate in self.waited and statuses.get(candidate) in self.done_states:
                self.pending.remove(candidate)  # the job we waited for finished it
                continue
            got = leases.acquire(self.root, self.sweep, candidate, ttl_s=self.ttl)
            if isinstance(got, leases.Lease):
                # Read its row again, now that we hold it: a job writes a trial's last row before it lets
                # the lease go, so a trial finished since `statuses` was read shows here, and is not rerun.
                if trial_status(self.root, self.sweep, candidate) in self.done_states:
                    got.release()
                    self.pending.remove(candidate)
                    continue
                self.pending.remove(candidate)
                self.leases[candidate] = got
                self.beats[candidate] = leases.Heartbeat(got)
                self.waited.pop(candidate, None)
                if got.took_over is not None:
                    self.console.print(f"    {candidate}: taken over from {got.took_over.describe()} (its lease "
                                       "expired or its process is gone); it resumes from its checkpoint")
                return {"trial_id": candidate}
            if candidate not in self.waited:
                self.waited[candidate] = got.job
                self.console.print(f"    {candidate} is held by {got.describe()}: waiting for it")
        if not self.pending:
            return Searcher.FINISHED
        self._next_look = time.monotonic() + self.poll_s
        return None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # the lease is released by _StoreCallback, after it wrote the trial's row

    def save(self, checkpoint_path: str) -> None:
        pass  # nothing to save: the store is the sweep's state (leases and rows), not Tune's experiment state

    def restore(self, checkpoint_path: str) -> None:
        pass

    def release(self, trial_id: str) -> None:
        beat, lease = self.beats.pop(trial_id, None), self.leases.pop(trial_id, None)
        if beat is not None:
            beat.stop()
        if lease is not None:
            lease.release()

    def release_all(self) -> None:
        for trial_id in list(self.leases):
            self.release(trial_id)


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


def rungs(spec: Asha, epochs: int) -> list[int]:
    """ASHA's milestones in epochs: grace * rf^k below max_t (Li et al. 2020, Alg. 2; as Ray's ASHA)."""
    max_t = spec.max_t or epochs
    out, k = [], 0
    while spec.grace_period * spec.reduction_factor ** k < max_t:
        out.append(int(spec.grace_period * spec.reduction_factor ** k))
        k += 1
    return out


def asha_decision(value: float, others: list[float], reduction_factor: float, mode: str) -> bool:
    """Whether a trial continues past a rung: its metric is not below the (1 - 1/rf) quantile of the values
    the other trials recorded at that rung (the first trial to reach a rung always continues), as Ray's
    ASHA `_Bracket.on_result` decides."""
    recorded = [v if mode == "max" else -v for v in others if v is not None and not math.isnan(v)]
    if not recorded:
        return True
    cutoff = np.nanpercentile(recorded, (1 - 1 / reduction_factor) * 100)
    return (value if mode == "max" else -value) >= cutoff


class _StoreAsha(FIFOScheduler):
    """Asynchronous successive halving whose rungs are the store's `epochs` rows of every trial of the
    sweep, by any job, in any run of it (Ray's ASHAScheduler keeps its rungs in memory, and Tune does not
    restore them: ray#30838). It remembers whom it stopped, and at which rung: a trial cut by the scheduler
    is done ("stopped"), one cut by an interruption is not (it resumes when the sweep runs again)."""

    def __init__(self, root: str, sweep: Sweep, epochs: int) -> None:
        super().__init__()
        self.root, self.sweep = root, sweep.name
        self.by, self.order, self.rf = sweep.metric, sweep.mode, sweep.scheduler.reduction_factor
        self.milestones = rungs(sweep.scheduler, epochs)
        self.stopped: dict[str, int] = {}  # trial id -> the rung (epochs) that stopped it
        self.decided: dict[str, set[int]] = {}  # trial id -> the rungs it was judged at in this run

    def on_trial_result(self, tune_controller, trial, result):
        trial_id, reached = trial.config["trial_id"], result.get(_EPOCHS_DONE)
        if reached is None or self.by not in result:
            return TrialScheduler.CONTINUE
        # Every rung the trial has passed and was not judged at in this run. A trial resumed after its rung's
        # epoch (interrupted between its checkpoint and the decision) first reports an epoch past the rung;
        # deciding only at `reached == rung` would let it through, unlike the uninterrupted sweep.
        decided = self.decided.setdefault(trial_id, set())
        due = [m for m in self.milestones if m <= reached and m not in decided]
        if not due:
            return TrialScheduler.CONTINUE
        epochs = load(self.root, "epochs", sweep=self.sweep)
        for rung in due:
            decided.add(rung)
            at_rung = epochs[epochs["epoch"] == rung - 1] if len(epochs) else epochs
            if self.by not in at_rung:
                continue
            own = at_rung.loc[at_rung["trial_id"] == trial_id, self.by]
            value = float(result[self.by]) if rung == reached else (float(own.iloc[-1]) if len(own) else None)
            if value is None:  # its row at that rung is not in the store: nothing to judge
                continue
            others = [float(v) for v in at_rung.loc[at_rung["trial_id"] != trial_id, self.by]]
            if not asha_decision(value, others, self.rf, self.order):
                self.stopped[trial_id] = rung
                return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


def _asha(sweep: Sweep, root: str, epochs: int) -> _StoreAsha | None:
    return None if sweep.scheduler is None else _StoreAsha(root, sweep, epochs)


class _StoreCallback(tune.Callback):
    """Keeps each trial's `trials` row, in the driver, and prints one line per trial event."""

    def __init__(self, trials: dict[str, Trial], gpus: dict[str, float], scheduler, out, total: int,
                 searcher: _ClaimingSearcher) -> None:
        self.trials, self.gpus, self.scheduler, self.out, self.total = trials, gpus, scheduler, out, total
        self.searcher = searcher
        self.records: dict[str, TrialRecord] = {}
        self.started = 0

    def _print(self, text: str) -> None:
        self.out.print(text)

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

    def close_open(self, status: str) -> None:
        """End the rows of the trials that started and never ended."""
        while self.records:
            self.records.popitem()[1].end(status)

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
        if self.scheduler is not None and trial_id in self.scheduler.stopped:
            # Stopped, even where its workers finished more epochs before Tune delivered the rung's result
            # (they do not wait for it): the decision, not the timing, is the sweep's record.
            status = "stopped"
            record.extra["stopped_at_rung"] = self.scheduler.stopped[trial_id]
        elif done >= self.trials[trial_id].config["trainer"]["epochs"]:
            status = "finished"
        else:
            status = "interrupted"  # cut short by an interruption: it resumes next time
        self.records.pop(trial_id)
        record.end(status)
        self.searcher.release(trial_id)
        self.out.advance()
        self._print(f"    {trial_id} {status} after {done} epochs")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        trial_id, record = trial.config["trial_id"], self.records.get(trial.config["trial_id"])
        if record is None:  # failed before it started (Tune could not start its actor): no row to close
            self.searcher.release(trial_id)
            self._print(f"    {trial_id} FAILED before starting: {_error_text(trial).splitlines()[-1]}")
            return
        error = _error_text(trial)
        self.records.pop(trial_id)
        record.end("failed", error)
        self.searcher.release(trial_id)
        self.out.advance()
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
