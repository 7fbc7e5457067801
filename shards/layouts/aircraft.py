"""FGVC-Aircraft (fgvc-aircraft-2013b) as released: official train / val / test splits.

ROOT/data/images/<id>.jpg, data/images_<level>_<split>.txt (lines "ID LABEL WITH SPACES"),
data/variants.txt, families.txt, manufacturers.txt (class names). ROOT may be the
fgvc-aircraft-2013b folder or its data/ folder. The bottom 20 rows of every image hold
the photographer's copyright banner, which the dataset authors advise to remove: the
writer crops it.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DatasetLayoutError
from . import DatasetIndex, Item, read_lines, require_dir

BANNER = 20
LEVELS = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}
EXPECTED = "the FGVC-Aircraft layout: data/images/*.jpg, data/images_variant_{train,val,test}.txt, data/variants.txt"


def _data_dir(root: Path) -> Path:
    for d in (root / "data", root, root / "fgvc-aircraft-2013b" / "data"):
        if (d / "images").is_dir() and (d / "variants.txt").is_file():
            return d
    raise DatasetLayoutError(f"{root} is not an FGVC-Aircraft folder: no data/images/ and data/variants.txt "
                             f"(expected {EXPECTED})")


def _split_file(data: Path, level: str, split: str) -> list[tuple[str, str]]:
    rows = []
    path = data / f"images_{level}_{split}.txt"
    if not path.is_file():
        raise DatasetLayoutError(f"{path} is missing (expected {EXPECTED})")
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            img_id, _, label = line.strip().partition(" ")
            rows.append((img_id, label.strip()))
    return rows


def _boxes(data: Path) -> dict[str, list[float]]:
    path = data / "images_box.txt"
    if not path.is_file():
        return {}
    out = {}
    for r in read_lines(path, EXPECTED):
        x0, y0, x1, y1 = (float(v) for v in r[1:5])
        out[r[0]] = [x0, y0, x1 - x0 + 1, y1 - y0 + 1]
    return out


def index(root: Path, level: str = "variant", trainval: bool = False, name: str | None = None) -> DatasetIndex:
    """Index FGVC-Aircraft at `level` (variant 100, family 70, manufacturer 30 classes)."""
    if level not in LEVELS:
        raise DatasetLayoutError(f"aircraft level must be one of {', '.join(LEVELS)}, got {level!r}")
    data = _data_dir(root)
    images = require_dir(data / "images", EXPECTED)
    names_file = data / LEVELS[level]
    if not names_file.is_file():
        raise DatasetLayoutError(f"{names_file} is missing (expected {EXPECTED})")
    classes = [ln.strip() for ln in names_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    label = {c: i for i, c in enumerate(classes)}
    boxes = _boxes(data)
    splits: dict[str, list[Item]] = {}
    for split in ("train", "val", "test") + (("trainval",) if trainval else ()):
        items = []
        for img_id, cname in _split_file(data, level, split):
            if cname not in label:
                raise DatasetLayoutError(f"{data / f'images_{level}_{split}.txt'}: class {cname!r} of image "
                                         f"{img_id} is not in {names_file.name}")
            extra = {"image_id": img_id}
            if img_id in boxes:
                extra["bbox"] = boxes[img_id]
            items.append(Item(images / f"{img_id}.jpg", label[cname], extra, crop_bottom=BANNER))
        splits[split] = items
    return DatasetIndex(name or f"fgvc-aircraft-{level}", "aircraft", data.parent if data.name == "data" else data,
                        classes, splits, {"level": level, "trainval": trainval, "banner_rows_removed": BANNER})
