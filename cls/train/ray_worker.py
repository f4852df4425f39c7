"""The per-worker entry of `TorchTrainer`: where Ray meets the training code, and nowhere else."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .loop import fit
from .sessions import RaySession


def _quiet_report_log() -> None:
    """Ray Train V2 logs every report of every worker, metrics and all, at INFO: one screenful per epoch in
    the driver's terminal. Its logger is named by file path (outside the `ray.train` hierarchy), hence this."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # a Ray without that module does not log there either
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    _quiet_report_log()
    session = RaySession()
    run_dir = Path(config["run_dir"])
    # Each worker leaves its pid where operators (and the fault-tolerance test) can find it.
    pids = run_dir / "workers"
    pids.mkdir(parents=True, exist_ok=True)
    (pids / f"rank{session.rank}.pid").write_text(str(os.getpid()))
    fit(config["cfg"], session, run_dir)
