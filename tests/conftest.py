"""Every test writes its results store and runs under its own temporary directory, never the checkout's."""

import pytest


@pytest.fixture(autouse=True)
def _private_store(tmp_path_factory, monkeypatch):
    # The config's defaults are ./results and ./runs (or $CLS_RESULTS / $CLS_RUNS): relative to wherever
    # pytest was started. A test that wants them elsewhere still sets results.root / trainer.storage.
    base = tmp_path_factory.mktemp("store")
    monkeypatch.setenv("CLS_RESULTS", str(base / "results"))
    monkeypatch.setenv("CLS_RUNS", str(base / "runs"))
