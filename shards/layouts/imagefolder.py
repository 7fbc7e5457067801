"""ImageFolder layout: ROOT/<split>/<class>/<image>; any split names, classes = sorted union."""
from __future__ import annotations

from pathlib import Path

from ..errors import DatasetLayoutError
from . import IMAGE_EXTS, DatasetIndex, Item


def index(root: Path, name: str | None = None) -> DatasetIndex:
    """Index ROOT/<split>/<class>/*; a class missing from one split still gets the shared label."""
    split_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    found: dict[str, dict[str, list[Path]]] = {}
    for sd in split_dirs:
        per_class = {}
        for cd in sorted(p for p in sd.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = sorted(f for f in cd.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
            if files:
                per_class[cd.name] = files
        if per_class:
            found[sd.name] = per_class
    if not found:
        loose = any(f.suffix.lower() in IMAGE_EXTS for f in root.iterdir() if f.is_file())
        flat = any(f.suffix.lower() in IMAGE_EXTS for d in split_dirs for f in d.iterdir() if f.is_file())
        what = ("images directly in it" if loose else
                "images in ROOT/<name>/ with no split level" if flat else "no <split>/<class>/<image> folders")
        raise DatasetLayoutError(
            f"{root} is not an ImageFolder dataset: {what} (expected ROOT/<split>/<class>/*.jpg, "
            f"e.g. ROOT/train/<class>/ and ROOT/val/<class>/)")
    classes = sorted({c for per_class in found.values() for c in per_class})
    label = {c: i for i, c in enumerate(classes)}
    splits = {
        s: [Item(f, label[c]) for c, files in per_class.items() for f in files] for s, per_class in found.items()
    }
    return DatasetIndex(name or root.name, "imagefolder", root, classes, splits)
