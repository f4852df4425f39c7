"""Issue 11, cases 2 and 3: checkpoints are pruned to the last K plus the best, a damaged one is skipped for
the newest that loads, and a run whose checkpoints are all damaged starts over. Real checkpoints of real
(tiny) runs."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cls.train.checkpoint import Checkpoints, drop_stale_ray_snapshot, load_checkpoint
from cls.train.config import compose_config, to_container
from cls.train.loop import fit, read_epochs, read_resumes
from cls.train.sessions import LocalSession
from prepared_fixtures import write_dataset_for


def tiny_state() -> dict:
    model = torch.nn.Linear(3, 2)
    return {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1), "scheduler": None,
            "scaler": None, "config": {}}


def test_only_the_last_k_and_the_best_are_kept(tmp_path):
    # Case 3: every epoch's checkpoint was kept.
    ckpts = Checkpoints(tmp_path, keep=2, metric="eval_top1", mode="max")
    for epoch, top1 in enumerate([0.3, 0.9, 0.2, 0.4, 0.5, 0.1]):
        ckpts.save(epoch, {"eval_top1": top1}, **tiny_state())
    assert [p.name for p in ckpts.ours()] == ["epoch_0001", "epoch_0004", "epoch_0005"]  # best, then the last 2
    assert load_checkpoint(ckpts.ours()[0])["epoch"] == 1
    losses = Checkpoints(tmp_path / "min", keep=1, metric="eval_loss", mode="min")
    for epoch, loss in enumerate([2.0, 0.5, 1.0, 3.0]):
        losses.save(epoch, {"eval_loss": loss}, **tiny_state())
    assert [p.name for p in losses.ours()] == ["epoch_0001", "epoch_0003"]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def test_a_damaged_checkpoint_is_skipped_and_all_damaged_starts_over(tmp_path, capsys):
    # Case 2: a truncated newest checkpoint failed the run every time ("PytorchStreamReader failed ...").
    base = to_container(compose_config(["experiment=dnffm_digits"]))["data"]
    root = tmp_path / "digits"
    write_dataset_for(base, root)

    def run(epochs: int) -> dict:
        cfg = to_container(compose_config([
            "model=shufflenet_v2_x0_5", "model.small_input=cifar_stem", f"data.root={root}", "data.backend=torch",
            "data.batch_size=2", "data.num_workers=1", f"trainer.epochs={epochs}", "trainer.max_steps=1",
            "trainer.keep_checkpoints=2", f"results.root={tmp_path / 'results'}"]))
        return fit(cfg, LocalSession(run_dir, device="cpu"), run_dir)

    run_dir = tmp_path / "runs" / "r"
    run(3)
    checkpoints = run_dir / "checkpoints"
    kept = sorted(p.name for p in checkpoints.glob("epoch_*"))
    assert kept[-2:] == ["epoch_0001", "epoch_0002"] and len(kept) <= 3  # and the best, if that is epoch 0
    truncate(checkpoints / "epoch_0002" / "checkpoint.pt")
    capsys.readouterr()

    run(4)
    out = capsys.readouterr().out
    assert f"checkpoint {checkpoints / 'epoch_0002'} does not load" in out
    assert f"resuming from the newest checkpoint that loads, {checkpoints / 'epoch_0001'}" in out
    (resume,) = read_resumes(run_dir)
    assert resume["start_epoch"] == 2 and resume["skipped"][0][0] == str(checkpoints / "epoch_0002")
    assert (checkpoints / "damaged-epoch_0002" / "checkpoint.pt").is_file()
    assert [e["epoch"] for e in read_epochs(run_dir)] == [0, 1, 2, 3]
    assert load_checkpoint(checkpoints / "epoch_0003")["epoch"] == 3

    for p in checkpoints.glob("epoch_*"):
        truncate(p / "checkpoint.pt")
    run(5)
    out = capsys.readouterr().out
    assert "none of its checkpoints loads: starting over from epoch 1" in out and "Traceback" not in out
    assert [e["epoch"] for e in read_epochs(run_dir)] == [0, 1, 2, 3, 4]
    assert len(read_resumes(run_dir)) == 1  # started over: no resume
    assert sorted(p.name for p in checkpoints.glob("epoch_*"))[-2:] == ["epoch_0003", "epoch_0004"]


def test_a_ray_snapshot_that_lists_a_removed_checkpoint_is_dropped(tmp_path):
    # What Ray Train 2.60 wrote beside its checkpoints (the part of it that names them).
    (tmp_path / "checkpoint_2026-12-01_10-00-00.000001").mkdir()
    snapshot = tmp_path / "checkpoint_manager_snapshot.json"
    listed = {"checkpoint_results": [
        {"checkpoint_dir_name": "checkpoint_2026-12-01_10-00-00.000001"},
        {"checkpoint_dir_name": "checkpoint_2026-12-01_10-00-05.000002"}]}
    snapshot.write_text(json.dumps(listed))
    assert drop_stale_ray_snapshot(tmp_path) and not snapshot.exists()
    snapshot.write_text(json.dumps({"checkpoint_results": listed["checkpoint_results"][:1]}))
    assert not drop_stale_ray_snapshot(tmp_path) and snapshot.exists()  # all there: left alone
