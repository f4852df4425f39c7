"""Ablation sweeps: sweep files (`spec`) run as Ray Tune experiments of Ray Train runs (`driver`)."""

from .spec import Sweep, SweepError, Trial, expand, load_sweep

__all__ = ["Sweep", "SweepError", "Trial", "expand", "load_sweep"]
