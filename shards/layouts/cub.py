"""CUB-200-2011 as released (CUB_200_2011.tgz): the official train/test split, bounding boxes in the json.

ROOT/images.txt (id path), image_class_labels.txt (id class, 1-based), train_test_split.txt
(id is_train: 1 = train), classes.txt (id name), bounding_boxes.txt (id x y w h), images/.
ROOT may also be the folder that holds CUB_200_2011/.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DatasetLayoutError
from . import DatasetIndex, Item, read_lines, require_dir

EXPECTED = "the CUB-200-2011 layout: images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, images/"


def _find_root(root: Path) -> Path:
    if (root / "images.txt").is_file():
        return root
    if (root / "CUB_200_2011" / "images.txt").is_file():
        return root / "CUB_200_2011"
    raise DatasetLayoutError(f"{root} is not a CUB-200-2011 folder: no images.txt (expected {EXPECTED})")


def index(root: Path, name: str | None = None) -> DatasetIndex:
    """Index CUB-200-2011 with its official split (split names: train, test)."""
    root = _find_root(root)
    images = require_dir(root / "images", EXPECTED)
    paths = {r[0]: r[1] for r in read_lines(root / "images.txt", EXPECTED)}
    labels = {r[0]: int(r[1]) for r in read_lines(root / "image_class_labels.txt", EXPECTED)}
    is_train = {r[0]: r[1] == "1" for r in read_lines(root / "train_test_split.txt", EXPECTED)}
    classes_rows = sorted((int(r[0]), r[1]) for r in read_lines(root / "classes.txt", EXPECTED))
    bbox_file = root / "bounding_boxes.txt"
    boxes = {r[0]: [float(v) for v in r[1:5]] for r in read_lines(bbox_file, EXPECTED)} if bbox_file.is_file() else {}
    ids = [int(cid) for cid, _ in classes_rows]
    if ids != list(range(1, len(ids) + 1)):
        raise DatasetLayoutError(f"{root / 'classes.txt'}: class ids must be 1..N (expected {EXPECTED})")
    classes = [n for _, n in classes_rows]
    splits: dict[str, list[Item]] = {"train": [], "test": []}
    for img_id, rel in paths.items():
        if img_id not in labels or img_id not in is_train:
            raise DatasetLayoutError(
                f"{root}: image id {img_id} ({rel}) has no label or split line (expected {EXPECTED})")
        lab = labels[img_id]
        if not 1 <= lab <= len(classes):
            raise DatasetLayoutError(f"{root / 'image_class_labels.txt'}: class {lab} of image {img_id} "
                                     f"is outside 1..{len(classes)}")
        extra = {"image_id": int(img_id)}
        if img_id in boxes:
            extra["bbox"] = boxes[img_id]  # x, y, width, height in pixels
        splits["train" if is_train[img_id] else "test"].append(Item(images / rel, lab - 1, extra))
    return DatasetIndex(name or "cub200", "cub", root, classes, splits)
