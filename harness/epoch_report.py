"""An epoch's report to Ray Train with its checkpoint, and the run's state that a resume reads back."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ray.train

from cmd_model.engine import CMDEngine
from harness.checkpoint import detached_copy, restore_newest_intact, rng_state, save_checkpoint
from harness.config import TrainConfig, to_dict
from harness.disk_full import naming_full_disk


def run_state(engine: CMDEngine, cfg: TrainConfig, epoch: int, step: int, best: float,
              history: list[dict[str, float]], epoch_rng: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run needs: (epoch, step) is the next step to run."""
    return {
        "engine": engine.state_dict(),
        "epoch": epoch,
        "step": step,
        "best_probe_top1": best,
        "history": history,
        "rng": rng_state(),
        "epoch_rng": epoch_rng,
        "config": to_dict(cfg),
    }


def restore(engine: CMDEngine, config: dict[str, Any], rank: int) -> dict[str, Any] | None:
    """The latest checkpoint's state loaded into `engine`, or the newest intact one when the latest
    is damaged (said in one line); None for a new run."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    state, fallback = restore_newest_intact(checkpoint, config)
    if fallback and rank == 0:
        print(f"[train] {fallback}", flush=True)
    engine.load_state_dict(state["engine"])
    return state


def report(metrics: dict[str, Any], state: dict[str, Any] | None, rank: int, upload: str) -> None:
    """Report on every rank (a barrier); rank 0 attaches the checkpoint.

    With `run.checkpoint_upload: async` the step only pays for a CPU copy of the state: Ray
    Train's upload thread writes and commits `state.pt`, then uploads it, and the metrics reach
    Tune once it is stored (Ray 2.60 `CheckpointUploadMode.ASYNC` with a `checkpoint_upload_fn`;
    Train waits for pending uploads before the run ends).
    """
    if state is None or rank != 0:
        ray.train.report(metrics)
        return
    if upload == "sync":
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(Path(tmp), state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_upload_fn=persist_checkpoint)
        return
    snapshot, folder = detached_copy(state), Path(tempfile.mkdtemp(prefix="cmd-checkpoint-"))

    def write_then_upload(checkpoint: ray.train.Checkpoint, name: str) -> ray.train.Checkpoint:
        save_checkpoint(folder, snapshot)
        return persist_checkpoint(checkpoint, name)

    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                     checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
                     checkpoint_upload_fn=write_then_upload)


def persist_checkpoint(checkpoint: ray.train.Checkpoint, name: str) -> ray.train.Checkpoint:
    """Ray Train's own upload of a local checkpoint folder into the run's storage, a full disk
    there named in one line (harness/disk_full.py). Its only entry point is the StorageContext
    (a DeveloperAPI in Ray 2.60); used here alone."""
    storage = ray.train.get_context().get_storage()
    with naming_full_disk(f"checkpoint {storage.build_checkpoint_path_from_name(name)}"):
        return storage.persist_current_checkpoint(checkpoint, name)
