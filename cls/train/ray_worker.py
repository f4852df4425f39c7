"""The per-worker entry of `TorchTrainer`: where Ray meets the training code, and nowhere else."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .loop import fit
from .sessions import RaySession


def train_loop_per_worker(config: dict[str, Any]) -> None:
    session = RaySession()
    run_dir = Path(config["run_dir"])
    # Each worker leaves its pid where operators (and the fault-tolerance test) can find it.
    pids = run_dir / "workers"
    pids.mkdir(parents=True, exist_ok=True)
    (pids / f"rank{session.rank}.pid").write_text(str(os.getpid()))
    fit(config["cfg"], session, run_dir)
