"""bench/gpu_check.py runs with plain torch, and its --device cpu --tiny table has one row per measurement."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"
EXPECTED = [
    ("batch-1 latency", "ResNet-50"),
    ("batch-1 latency", "ResNet-50 + MA"),
    ("batch-1 latency", "ResNet-50 + MA + EA"),
    ("training", "ResNet-50"),
    ("training", "DNFFM shufflenet_v2_x0_5 + regnet_y_400mf, cifar_stem"),
]


def _rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]  # skip the header


def test_tiny_cpu_run_writes_every_row_without_ray_dali_or_hydra(tmp_path):
    out = tmp_path / "gpu.md"
    # Run the script in a fresh interpreter and list which heavy frameworks it imported.
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['gpu_check.py', '--device', 'cpu', '--tiny', '--out', {str(out)!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('IMPORTED', sorted(m for m in ('ray', 'hydra', 'nvidia.dali', 'omegaconf') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "IMPORTED []" in done.stdout
    rows = _rows(out.read_text())
    assert [(r[0], r[1]) for r in rows] == EXPECTED
    for r in rows:
        assert float(r[5]) > 0  # a measured number, not a placeholder
    assert [r[6] for r in rows] == ["ms"] * 3 + ["images/s"] * 2
    assert "2,470" in rows[3][7] and "26.4" in rows[0][7]
    assert out.read_text() in done.stdout  # stdout carries the same table


def test_measurements_after_the_budget_are_skipped_not_run(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    ran = []
    monkeypatch.setattr(module, "latency_ms", lambda *a, **k: ran.append("latency") or 1.0)
    monkeypatch.setattr(module, "train_images_per_s", lambda *a, **k: ran.append("train") or 1.0)
    out = tmp_path / "skipped.md"
    assert module.main(["--device", "cpu", "--tiny", "--budget-s", "-1", "--out", str(out)]) == 0
    rows = _rows(out.read_text())
    assert len(rows) == len(EXPECTED) and ran == []
    assert all(r[5] == "skipped (time budget spent)" for r in rows)
