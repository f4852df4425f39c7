"""Hydra configs of `cls train` (a package so Hydra can find them after install)."""
