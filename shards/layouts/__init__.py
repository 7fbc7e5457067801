"""Dataset layouts: each module turns one official on-disk layout into a DatasetIndex.

A layout only lists files, labels and splits; decoding and shard writing are elsewhere
(shards/write.py), so adding a dataset means adding one small module here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DatasetLayoutError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
LAYOUTS = ("imagefolder", "cub", "cars", "aircraft")


@dataclass
class Item:
    """One source image: its file, integer label, extras for the sample json, rows to crop at the bottom."""

    path: Path
    label: int
    extra: dict[str, Any] = field(default_factory=dict)
    crop_bottom: int = 0


@dataclass
class DatasetIndex:
    """A dataset as the writer needs it: class names and the items of each official split."""

    name: str
    layout: str
    root: Path
    classes: list[str]
    splits: dict[str, list[Item]]
    options: dict[str, Any] = field(default_factory=dict)


def index_dataset(layout: str, root: Path, **opts: Any) -> DatasetIndex:
    """List a dataset in `layout` under `root`; wrong or missing folders raise DatasetLayoutError."""
    if layout not in LAYOUTS:
        raise DatasetLayoutError(f"unknown layout {layout!r}; expected one of: {', '.join(LAYOUTS)}")
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetLayoutError(f"dataset folder {root} does not exist (expected a {layout} dataset there)")
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset path {root} is not a folder (expected a {layout} dataset folder)")
    module = importlib.import_module(f"{__name__}.{layout}")
    index = module.index(root, **opts)
    for split, items in index.splits.items():
        if not items:
            raise DatasetLayoutError(f"{root}: split {split!r} of the {layout} layout has no images")
    return index


def read_lines(path: Path, expected: str) -> list[list[str]]:
    """Whitespace-split non-empty lines of an annotation file; a missing file names what was expected."""
    if not path.is_file():
        raise DatasetLayoutError(f"{path} is missing (expected {expected})")
    out = []
    for _n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if line.strip():
            out.append(line.split())
    return out


def require_dir(path: Path, expected: str) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"{path} is missing (expected {expected})")
    return path
