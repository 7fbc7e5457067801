"""Shared helpers and fixtures for the shards tests: real JPEG files, real tar shards, no mocks."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shards.manifest import Manifest, ShardRecord, save_manifest


def jpeg_bytes(w: int = 40, h: int = 30, seed: int = 0, color: tuple[int, int, int] | None = None,
               quality: int = 90) -> bytes:
    """A real JPEG: smooth random colour field (or a flat colour)."""
    rng = np.random.default_rng(seed)
    if color is not None:
        arr = np.empty((h, w, 3), np.uint8)
        arr[:] = color
        img = Image.fromarray(arr)
    else:
        small = rng.integers(0, 256, (max(1, h // 6), max(1, w // 6), 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_jpeg(path: Path, w: int = 40, h: int = 30, seed: int = 0, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(w, h, seed, **kw))
    return path


def make_imagefolder(root: Path, counts: dict[str, dict[str, int]], w: int = 40, h: int = 30) -> Path:
    """ROOT/<split>/<class>/<i>.jpg with the given number of images per split and class."""
    seed = 0
    for split, per_class in counts.items():
        for cls, n in per_class.items():
            for i in range(n):
                seed += 1
                write_jpeg(root / split / cls / f"{cls}_{i:03d}.jpg", w, h, seed)
    return root


def write_tar_shard(path: Path, samples: list[tuple[str, bytes, int]], image_ext: str = "jpg") -> ShardRecord:
    """A WebDataset shard written by hand (KEY.jpg + KEY.cls), e.g. to hold a truncated JPEG;
    `image_ext` names the image entry (png for PNG bytes)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for key, image, label in samples:
            for ext, data in (("cls", str(label).encode()), (image_ext, image)):
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    data = path.read_bytes()
    return ShardRecord(path.name, len(samples), hashlib.sha256(data).hexdigest(), len(data))


def manifest_from_tars(out: Path, splits: dict[str, list[ShardRecord]], classes: list[str]) -> Path:
    m = Manifest(dataset="handmade", classes=classes, splits=splits, layout="handmade")
    save_manifest(m, out / "manifest.json")
    return out / "manifest.json"


def read_all(shard_dir: Path) -> dict[str, list[dict]]:
    """Every sample of every split, via tarfile directly: {split: [{key, jpg, cls, json}]}."""
    m = json.loads((shard_dir / "manifest.json").read_text())
    out: dict[str, list[dict]] = {}
    for split, v in m["splits"].items():
        rows = []
        for rec in v["shards"]:
            with tarfile.open(shard_dir / rec["name"]) as tf:
                cur: dict = {}
                for ti in tf:
                    key, ext = ti.name.split(".", 1)
                    if cur and cur["key"] != key:
                        rows.append(cur)
                        cur = {}
                    cur["key"] = key
                    cur[ext] = tf.extractfile(ti).read()
                if cur:
                    rows.append(cur)
        out[split] = rows
    return out


@pytest.fixture(scope="session")
def unique_label_shards(tmp_path_factory) -> Path:
    """48 train images, each its own class (label = identity), in uneven shards of 7 (last one 6)."""
    from shards.write import write_dataset

    root = make_imagefolder(tmp_path_factory.mktemp("uniq") / "images",
                            {"train": {f"c{i:02d}": 1 for i in range(48)}, "val": {"c00": 2, "c01": 3}})
    out = root.parent / "shards"
    write_dataset("imagefolder", root, out, shard_size=7, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """3 classes, 23 train / 7 val images in shards of 4 (uneven last shard)."""
    from shards.write import write_dataset

    root = make_imagefolder(tmp_path_factory.mktemp("tiny") / "images",
                            {"train": {"a": 9, "b": 8, "c": 6}, "val": {"a": 3, "b": 2, "c": 2}})
    out = root.parent / "shards"
    write_dataset("imagefolder", root, out, shard_size=4, progress=False)
    return out


def small_crops(**kw):
    """A fast multi-crop recipe for tests."""
    from shards.config import CropConfig

    base = dict(global_size=16, local_crops=2, local_size=8, eval_size=16, eval_resize=18)
    base.update(kw)
    return CropConfig(**base)
