"""The bundled demo set: deterministic bytes, 8 look-alike classes, shards made on demand."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from shards.demo import class_names, ensure_demo_shards, make_demo_imagefolder
from shards.manifest import load_manifest


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.jpg"))}


def test_same_seed_same_bytes_and_eight_classes(tmp_path):
    a = make_demo_imagefolder(tmp_path / "a", train_per_class=3, val_per_class=1, seed=5)
    b = make_demo_imagefolder(tmp_path / "b", train_per_class=3, val_per_class=1, seed=5)
    c = make_demo_imagefolder(tmp_path / "c", train_per_class=3, val_per_class=1, seed=6)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db and len(da) == 8 * 5  # 3 train, 1 val, 1 test per class
    assert da.keys() == dc.keys() and da != dc
    assert sorted(p.name for p in (a / "train").iterdir()) == class_names(8)
    assert len(set(class_names(8))) == 8
    with pytest.raises(ValueError):
        class_names(9)


def test_ensure_demo_shards_writes_once(tmp_path):
    out = tmp_path / "demo" / "shards"
    m = ensure_demo_shards(out, train_per_class=4, val_per_class=2, shard_size=8)
    man = load_manifest(out)
    assert man.num_classes == 8 and man.split_size("train") == 32 and man.split_size("val") == 16
    assert (tmp_path / "demo" / "images" / "train").is_dir()
    mtime = m.stat().st_mtime_ns
    assert ensure_demo_shards(out, train_per_class=4, val_per_class=2) == m
    assert m.stat().st_mtime_ns == mtime
