"""Stanford Cars as released: devkit .mat annotations with cars_train/ and cars_test/.

ROOT/cars_train/*.jpg, ROOT/cars_test/*.jpg, devkit/cars_train_annos.mat,
cars_test_annos_withlabels.mat and devkit/cars_meta.mat (each .mat in ROOT or ROOT/devkit).
Annotations are struct arrays with bbox_x1, bbox_y1, bbox_x2, bbox_y2, class (1-based),
fname; class_names in cars_meta.mat. The common ImageFolder re-packaging
(ROOT/train/<class>/, ROOT/test/<class>/) is detected and read as an ImageFolder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DatasetLayoutError
from . import DatasetIndex, Item, require_dir

EXPECTED = ("the Stanford Cars layout: cars_train/, cars_test/, devkit/cars_train_annos.mat, "
            "cars_test_annos_withlabels.mat, devkit/cars_meta.mat (or ImageFolder ROOT/train/<class>/, "
            "ROOT/test/<class>/)")


def _find_mat(root: Path, name: str) -> Path:
    for d in (root, root / "devkit", root / "car_devkit" / "devkit"):
        if (d / name).is_file():
            return d / name
    raise DatasetLayoutError(f"{root}: {name} not found in ROOT or ROOT/devkit (expected {EXPECTED})")


def _loadmat(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat

    try:
        return loadmat(str(path), squeeze_me=True, struct_as_record=True)
    except Exception as e:
        raise DatasetLayoutError(f"{path} is not a readable .mat file ({type(e).__name__}: {e})") from None


def _annotations(path: Path) -> list[dict[str, Any]]:
    annos = _loadmat(path).get("annotations")
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    if annos is None or annos.dtype.names is None or not set(fields) <= set(annos.dtype.names):
        raise DatasetLayoutError(f"{path}: expected an 'annotations' struct with fields {', '.join(fields)}")
    annos = annos.reshape(-1)
    return [{f: annos[f][i] for f in fields} for i in range(annos.shape[0])]


def _is_imagefolder(root: Path) -> bool:
    return all((root / s).is_dir() and any(p.is_dir() for p in (root / s).iterdir()) for s in ("train", "test"))


def index(root: Path, name: str | None = None) -> DatasetIndex:
    """Index Stanford Cars (196 classes) with its official train/test split."""
    if not (root / "cars_train").is_dir() and _is_imagefolder(root):
        from . import imagefolder

        idx = imagefolder.index(root, name=name or "stanford-cars")
        idx.layout, idx.options = "cars", {"packaging": "imagefolder"}
        return idx
    if not (root / "cars_train").is_dir():
        raise DatasetLayoutError(f"{root} is not a Stanford Cars folder: no cars_train/ (expected {EXPECTED})")
    meta = _loadmat(_find_mat(root, "cars_meta.mat"))
    if "class_names" not in meta:
        raise DatasetLayoutError(f"{_find_mat(root, 'cars_meta.mat')}: no class_names (expected {EXPECTED})")
    classes = [str(c).strip() for c in meta["class_names"].reshape(-1)]
    splits = {}
    for split, folder, mat in (("train", "cars_train", "cars_train_annos.mat"),
                               ("test", "cars_test", "cars_test_annos_withlabels.mat")):
        images = require_dir(root / folder, EXPECTED)
        items = []
        for a in _annotations(_find_mat(root, mat)):
            c = int(a["class"])
            if not 1 <= c <= len(classes):
                raise DatasetLayoutError(f"{mat}: class {c} of {a['fname']} is outside 1..{len(classes)}")
            x1, y1, x2, y2 = (float(a[k]) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
            items.append(Item(images / str(a["fname"]), c - 1, {"bbox": [x1, y1, x2 - x1 + 1, y2 - y1 + 1]}))
        splits[split] = items
    return DatasetIndex(name or "stanford-cars", "cars", root, classes, splits, {"packaging": "devkit"})
