"""Run checkpoints: everything needed to continue a run exactly, and nothing loaded blindly.

A checkpoint is a folder with one `state.pt` (tensors and plain Python only, so it loads with
`weights_only=True`) holding the engine state (student, teacher, optimizer, scaler, centers),
the epoch and step it ends at, the RNG states and the config it was made with, and a
`commit.json` written after it with its size and sha256. Only a folder whose `state.pt` matches
its commit counts: a node lost while writing or uploading leaves a truncated `state.pt`, and a
resume then falls back to the newest intact checkpoint of the run.
"""
from __future__ import annotations

import hashlib
import io
import json
import posixpath
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch

from harness.config import ConfigError, shown
from harness.disk_full import naming_full_disk

if TYPE_CHECKING:
    import ray.train

STATE_FILE = "state.pt"
COMMIT_FILE = "commit.json"
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
                diffs.append(f"{key}: checkpoint {shown(a.get(key))} vs config {shown(b.get(key))}")
    return diffs


class DamagedCheckpointError(ConfigError):
    """A checkpoint folder whose state.pt is missing, uncommitted or not what was committed."""

    def __init__(self, folder: str | Path, reason: str) -> None:
        super().__init__(f"checkpoint {folder}: {reason}")
        self.reason = reason


class _HashingWriter(io.RawIOBase):
    """Hashes the bytes torch.save writes, so a ~1 GB state is not read back to checksum it."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.sha256, self.size = file, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.file.write(data)


def detached_copy(tree: Any) -> Any:
    """`tree` with every tensor copied to CPU memory: a snapshot that training can go on
    changing in place while a background thread writes it (harness/train_loop.py)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {key: detached_copy(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(detached_copy(value) for value in tree)
    return tree


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Write `state` into `folder/state.pt` (folder created), then commit it."""
    with naming_full_disk(f"checkpoint {folder}"):
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / STATE_FILE, "wb") as file:
            writer = _HashingWriter(file)
            torch.save(state, writer)
        commit = {"file": STATE_FILE, "bytes": writer.size, "sha256": writer.sha256.hexdigest()}
        (folder / COMMIT_FILE).write_text(json.dumps(commit))
    return folder


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def damage(folder: str | Path) -> str | None:
    """Why `folder` is not a complete checkpoint, or None when its state.pt is as committed."""
    path, commit = Path(folder) / STATE_FILE, Path(folder) / COMMIT_FILE
    if not path.is_file():
        return f"no {STATE_FILE} in it"
    try:
        record = json.loads(commit.read_text())
    except (OSError, ValueError):
        return f"no readable {COMMIT_FILE}: never committed"
    size = path.stat().st_size
    if size != record.get("bytes"):
        return f"{STATE_FILE} has {size} bytes, {record.get('bytes')} committed"
    if _sha256(path) != record.get("sha256"):
        return f"{STATE_FILE} does not match its committed sha256"
    return None


def read_state(folder: str | Path) -> dict[str, Any]:
    """The state saved in checkpoint `folder`, once its state.pt is what its commit.json
    records: the one reader of run checkpoints (a resume, `harness.evaluate`, `harness.final`,
    the benchmarks). A missing, uncommitted, damaged or unreadable one is a
    DamagedCheckpointError, one line naming the folder and what is wrong."""
    problem = damage(folder)
    if problem:
        raise DamagedCheckpointError(folder, problem)
    try:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # committed, yet not a state this torch reads with weights_only
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DamagedCheckpointError(folder, f"{STATE_FILE} cannot be read: {first}") from None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise DamagedCheckpointError(folder, f"{STATE_FILE} is not a run checkpoint (no 'config' in it)")
    return state


def load_checkpoint(folder: str | Path, config: dict[str, Any]) -> dict[str, Any]:
    """The state saved in `folder`, refused if damaged or made for a different model config."""
    state = read_state(folder)
    diffs = model_differences(state["config"], config)
    if diffs:
        raise ConfigError(f"checkpoint {folder} was made for a different model config: " + "; ".join(diffs))
    return state


def newest_first(latest: ray.train.Checkpoint) -> Iterator[ray.train.Checkpoint]:
    """`latest`, then the run's older checkpoints, newest first.

    Ray Train gives a worker only the latest checkpoint (`ray.train.get_checkpoint()`); the
    others are its sibling folders in the run folder, named `checkpoint_<date and time>`
    (StorageContext.make_default_checkpoint_dir_name, Ray 2.60), so their names sort by age.
    Folders newer than `latest` were never registered by Train and are left out."""
    import pyarrow.fs
    import ray.train

    yield latest
    parent, name = posixpath.split(latest.path.rstrip("/"))
    infos = latest.filesystem.get_file_info(pyarrow.fs.FileSelector(parent))
    older = sorted((info.base_name for info in infos if info.type == pyarrow.fs.FileType.Directory
                    and info.base_name.startswith("checkpoint_") and info.base_name < name), reverse=True)
    for sibling in older:
        yield ray.train.Checkpoint(posixpath.join(parent, sibling), filesystem=latest.filesystem)


def restore_newest_intact(latest: ray.train.Checkpoint,
                          config: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(the state of the newest intact checkpoint, a line naming the damaged latest one and the
    one used instead, or None when the latest is intact)."""
    problem = None
    for checkpoint in newest_first(latest):
        try:
            with checkpoint.as_directory() as folder:
                state = load_checkpoint(folder, config)
        except DamagedCheckpointError as exc:
            problem = problem or exc.reason
            continue
        if problem is None:
            return state, None
        return state, (f"checkpoint {latest.path} is damaged ({problem}); "
                       f"resuming from {checkpoint.path}, the newest intact one")
    raise DamagedCheckpointError(latest.path, f"{problem}, and no older intact checkpoint is next to it; "
                                              "delete the run folder to start over")
