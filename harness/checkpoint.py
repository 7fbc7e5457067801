"""Run checkpoints: everything needed to continue a run exactly, and nothing loaded blindly.

A checkpoint is a folder with one `state.pt` (tensors and plain Python only, so it loads with
`weights_only=True`) holding the engine state (student, teacher, optimizer, scaler, centers),
the epoch and step it ends at, the RNG states and the config it was made with.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.config import ConfigError

STATE_FILE = "state.pt"
# Keys whose change alters the shape or meaning of saved weights.
_MODEL_KEYS = ("model", "loss.mil_pooling", "loss.mil_attention_dim")
_IGNORED_MODEL_KEYS = ("model.init_checkpoint",)


def rng_state() -> dict[str, Any]:
    """Torch, NumPy and Python RNG states as tensors and plain lists."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _to_lists(random.getstate()),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_to_tuples(state["python"]))


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (list, tuple)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def model_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys that change the saved weights' shape or meaning, with both values."""
    a, b = _flatten(saved), _flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key.startswith(_MODEL_KEYS) and not key.startswith(_IGNORED_MODEL_KEYS):
            if a.get(key) != b.get(key):
                diffs.append(f"{key}: checkpoint {a.get(key)!r} vs config {b.get(key)!r}")
    return diffs


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Write `state` into `folder/state.pt` (folder created)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / STATE_FILE)
    return folder


def load_checkpoint(folder: str | Path, config: dict[str, Any]) -> dict[str, Any]:
    """The state saved in `folder`, refused if it was made for a different model config."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"checkpoint {folder}: no {STATE_FILE} in it")
    state = torch.load(path, map_location="cpu", weights_only=True)
    diffs = model_differences(state["config"], config)
    if diffs:
        raise ConfigError(f"checkpoint {folder} was made for a different model config: " + "; ".join(diffs))
    return state
