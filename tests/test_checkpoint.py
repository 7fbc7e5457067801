"""Run checkpoints: loaded with weights_only, refused for a different model or when damaged
(the newest intact one used instead), RNG restored."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from harness.checkpoint import (
    COMMIT_FILE,
    DamagedCheckpointError,
    damage,
    detached_copy,
    load_checkpoint,
    read_state,
    restore_newest_intact,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from harness.config import ConfigError, build_config, to_dict


def state_for(config: dict) -> dict:
    return {"engine": {"w": torch.arange(3.0)}, "epoch": 2, "step": 0, "rng": rng_state(), "config": config}


def test_checkpoint_from_another_model_is_refused_naming_fields(tmp_path):
    saved = to_dict(build_config({"model": {"out_dim": 128}}))
    save_checkpoint(tmp_path, state_for(saved))
    current = to_dict(build_config({"model": {"out_dim": 256, "hidden_dim": 64}}))
    with pytest.raises(ConfigError) as err:
        load_checkpoint(tmp_path, current)
    assert "model.out_dim: checkpoint 128 vs config 256" in str(err.value)
    assert "model.hidden_dim" in str(err.value)


def test_same_model_other_schedule_loads(tmp_path):
    saved = to_dict(build_config({"optim": {"epochs": 2}}))
    save_checkpoint(tmp_path, state_for(saved))
    state = load_checkpoint(tmp_path, to_dict(build_config({"optim": {"epochs": 5}, "loss": {"mil_weight": 0.3}})))
    assert state["epoch"] == 2 and torch.equal(state["engine"]["w"], torch.arange(3.0))


def test_missing_state_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no state.pt"):
        load_checkpoint(tmp_path, to_dict(build_config({})))


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    save_checkpoint(tmp_path, state_for(to_dict(build_config({}))))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(tmp_path, to_dict(build_config({})))["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_a_truncated_state_is_refused_as_damaged(tmp_path):
    save_checkpoint(tmp_path, state_for(to_dict(build_config({}))))
    size = (tmp_path / "state.pt").stat().st_size
    with open(tmp_path / "state.pt", "r+b") as f:
        f.truncate(1000)
    assert damage(tmp_path) == f"state.pt has 1000 bytes, {size} committed"
    with pytest.raises(DamagedCheckpointError, match="has 1000 bytes"):
        load_checkpoint(tmp_path, to_dict(build_config({})))


def test_same_size_corruption_and_a_missing_commit_are_damage(tmp_path):
    save_checkpoint(tmp_path, state_for(to_dict(build_config({}))))
    assert damage(tmp_path) is None
    with open(tmp_path / "state.pt", "r+b") as f:
        f.seek(-10, 2)
        f.write(b"x" * 10)
    assert damage(tmp_path) == "state.pt does not match its committed sha256"
    (tmp_path / COMMIT_FILE).unlink()
    assert damage(tmp_path) == "no readable commit.json: never committed"


def test_a_committed_file_torch_cannot_read_is_damage_too(tmp_path):
    """A state.pt that matches its commit record yet is no torch file (copied over, another format)."""
    import hashlib
    import json

    save_checkpoint(tmp_path, state_for(to_dict(build_config({}))))
    junk = b"not a torch file" * 100
    (tmp_path / "state.pt").write_bytes(junk)
    (tmp_path / COMMIT_FILE).write_text(json.dumps({"file": "state.pt", "bytes": len(junk),
                                                    "sha256": hashlib.sha256(junk).hexdigest()}))
    assert damage(tmp_path) is None
    with pytest.raises(DamagedCheckpointError, match=r"state.pt cannot be read: "):
        read_state(tmp_path)


def run_with_checkpoints(run_dir, epochs: int) -> list:
    """Checkpoint folders named the way Ray Train names them (by date and time), oldest first."""
    config = to_dict(build_config({}))
    folders = []
    for epoch in range(1, epochs + 1):
        folder = run_dir / f"checkpoint_2026-11-30_05-00-0{epoch}.000000"
        save_checkpoint(folder, {**state_for(config), "epoch": epoch})
        folders.append(folder)
    return folders


def test_resume_skips_a_damaged_latest_for_the_newest_intact_one(tmp_path):
    import ray.train

    folders = run_with_checkpoints(tmp_path, 4)
    latest = folders[2]  # the 4th was never registered by Train: newer than the latest it gives
    (latest / "state.pt").write_bytes((latest / "state.pt").read_bytes()[:1000])
    state, line = restore_newest_intact(ray.train.Checkpoint(str(latest)), to_dict(build_config({})))
    assert state["epoch"] == 2
    assert line.startswith(f"checkpoint {latest} is damaged (state.pt has 1000 bytes")
    assert line.endswith(f"resuming from {folders[1]}, the newest intact one")

    intact, line = restore_newest_intact(ray.train.Checkpoint(str(folders[1])), to_dict(build_config({})))
    assert intact["epoch"] == 2 and line is None


def test_no_intact_checkpoint_left_is_one_error(tmp_path):
    import ray.train

    folders = run_with_checkpoints(tmp_path, 2)
    for folder in folders:
        (folder / COMMIT_FILE).unlink()
    with pytest.raises(DamagedCheckpointError, match="never committed, and no older intact checkpoint"):
        restore_newest_intact(ray.train.Checkpoint(str(folders[-1])), to_dict(build_config({})))


def test_a_snapshot_written_after_training_went_on_is_the_state_at_report_time(tmp_path):
    """The async checkpoint (harness/train_loop.py): rank 0 snapshots the state, trains on while Ray's
    upload thread writes it. What is written must be the state at the snapshot, bit for bit."""
    from cmd_model.config import LossConfig, OptimConfig
    from cmd_model.engine import CMDEngine
    from tests.tiny_models import tiny_vit_config

    gen = torch.Generator().manual_seed(0)
    views = [torch.randn(4, 3, 32, 32, generator=gen) for _ in range(2)] + [
        torch.randn(4, 3, 16, 16, generator=gen) for _ in range(2)]
    torch.manual_seed(0)
    engine = CMDEngine(tiny_vit_config(), LossConfig(), OptimConfig(epochs=2, warmup_epochs=0, lr=0.05),
                       steps_per_epoch=3, global_batch=4)
    engine.train_step(views, 0, 0)
    at_report = save_checkpoint(tmp_path / "sync", {"engine": engine.state_dict()})  # what sync writes
    snapshot = detached_copy({"engine": engine.state_dict()})
    engine.train_step(views, 1, 0)  # training goes on, in place, before the upload thread writes
    written = save_checkpoint(tmp_path / "async", snapshot)

    def flat(folder):
        return dict(_leaves(torch.load(folder / "state.pt", weights_only=True)))

    sync, late = flat(at_report), flat(written)
    assert sync.keys() == late.keys()
    changed = [k for k, v in _leaves({"engine": engine.state_dict()}) if isinstance(v, torch.Tensor)
               and not torch.equal(v, sync[k])]
    assert changed, "the second step changed nothing: the test would not see a stale snapshot"
    for key, value in sync.items():
        assert (torch.equal(value, late[key]) if isinstance(value, torch.Tensor) else value == late[key]), key


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{prefix}{key}.")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _leaves(value, f"{prefix}{i}.")
    else:
        yield prefix, tree


def test_a_damaged_run_checkpoint_as_init_checkpoint_is_refused_before_ray(tmp_path):
    from harness.preflight import check_init_checkpoint

    save_checkpoint(tmp_path, state_for(to_dict(build_config({}))))
    assert check_init_checkpoint(str(tmp_path / "state.pt"), "cfg.yaml") == str(tmp_path / "state.pt")
    size = (tmp_path / "state.pt").stat().st_size
    (tmp_path / "state.pt").write_bytes((tmp_path / "state.pt").read_bytes()[:1000])
    with pytest.raises(ConfigError) as err:
        check_init_checkpoint(str(tmp_path / "state.pt"), "cfg.yaml")
    assert str(err.value) == f"cfg.yaml: 'model.init_checkpoint' = {tmp_path / 'state.pt'}: " \
                             f"state.pt has 1000 bytes, {size} committed"
