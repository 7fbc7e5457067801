"""Run checkpoints: loaded with weights_only, refused for a different model, RNG restored."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from harness.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
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
