"""Miniature copies of the official CUB, Stanford Cars and FGVC-Aircraft layouts, written to shards."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from shards.errors import DatasetLayoutError
from shards.manifest import load_manifest
from shards.write import write_dataset
from tests.shard_fixtures import jpeg_bytes, make_imagefolder, read_all, write_jpeg


def _meta(row: dict) -> dict:
    return json.loads(row["json"])


def make_mini_cub(root, per_class: list[tuple[int, int]]) -> list[str]:
    """A miniature CUB_200_2011 folder: (train, test) images per class; returns the class names."""
    classes = [f"{c:03d}.Bird_{c}" for c in range(1, len(per_class) + 1)]
    lines = {k: [] for k in ("images", "labels", "split", "boxes")}
    i = 0
    for c, (name, (ntr, nte)) in enumerate(zip(classes, per_class), 1):
        for j in range(ntr + nte):
            i += 1
            rel = f"{name}/{name.split('.')[1]}_{j:04d}_{i}.jpg"
            write_jpeg(root / "images" / rel, 50, 40, seed=i)
            lines["images"].append(f"{i} {rel}")
            lines["labels"].append(f"{i} {c}")
            lines["split"].append(f"{i} {1 if j < ntr else 0}")
            lines["boxes"].append(f"{i} {i}.0 2.0 20.0 15.0")
    (root / "classes.txt").write_text("".join(f"{k} {n}\n" for k, n in enumerate(classes, 1)))
    for key, fname in (("images", "images.txt"), ("labels", "image_class_labels.txt"),
                       ("split", "train_test_split.txt"), ("boxes", "bounding_boxes.txt")):
        (root / fname).write_text("\n".join(lines[key]) + "\n")
    return classes


def test_cub_official_split_labels_and_boxes(tmp_path):
    root = tmp_path / "CUB_200_2011"
    classes = make_mini_cub(root, [(3, 2), (2, 2), (4, 1)])
    out = tmp_path / "sh"
    # the parent of CUB_200_2011 works too
    write_dataset("cub", tmp_path, out, shard_size=4, progress=False, val_fraction=0)
    m = load_manifest(out)
    assert m.classes == classes and m.layout == "cub" and list(m.splits) == ["train", "test"]
    assert m.split_size("train") == 9 and m.split_size("test") == 5
    rows = read_all(out)
    for split, want in (("train", [3, 2, 4]), ("test", [2, 2, 1])):
        labels = [int(r["cls"]) for r in rows[split]]
        assert [labels.count(k) for k in range(3)] == want
        for r in rows[split]:
            meta = _meta(r)
            assert meta["class"] == classes[int(r["cls"])] and meta["path"].startswith("images/" + meta["class"] + "/")
            assert meta["bbox"] == [float(meta["image_id"]), 2.0, 20.0, 15.0]
    (root / "train_test_split.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="train_test_split.txt is missing"):
        write_dataset("cub", root, tmp_path / "o2", progress=False)


def _paths(rows: list[dict]) -> set[str]:
    return {_meta(r)["path"] for r in rows}


def test_validation_carved_from_train_never_touches_test(tmp_path):
    """CUB has no val split: the default carve takes 10% of each class of train, seeded, stratified."""
    root = tmp_path / "CUB_200_2011"
    make_mini_cub(root, [(20, 5), (11, 3), (2, 4)])
    rows = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        write_dataset("cub", root, tmp_path / name, shard_size=8, progress=False, seed=seed)
        rows[name] = read_all(tmp_path / name)
    both = read_all(_write_official(root, tmp_path / "official"))
    train, val, test = (_paths(rows["a"][s]) for s in ("train", "val", "test"))
    assert not val & test and not val & train  # no image in two splits
    assert val | train == _paths(both["train"]) and test == _paths(both["test"])  # val comes from train only
    labels = [int(r["cls"]) for r in rows["a"]["val"]]
    assert [labels.count(k) for k in range(3)] == [2, 1, 1]  # round(10%) per class, at least 1, keeps 1
    assert _paths(rows["b"]["val"]) == val and _paths(rows["c"]["val"]) != val  # seeded
    record = load_manifest(tmp_path / "a").options["val_carved"]
    assert record == {"from": "train", "fraction": 0.1, "seed": 0, "count": 4, "stratified_by": "class"}


def _write_official(root, out):
    write_dataset("cub", root, out, shard_size=8, progress=False, val_fraction=0)
    return out


def _cars_annos(items: list[tuple[str, int]]) -> np.ndarray:
    """The devkit's struct array (1 x N): uint16 boxes, uint8 class, char fname, each a 1x1 matrix."""
    dt = [(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    arr = np.zeros((1, len(items)), dtype=dt)
    for i, (fname, cls) in enumerate(items):
        arr[0, i] = (np.array([[3]], np.uint16), np.array([[4]], np.uint16), np.array([[30]], np.uint16),
                     np.array([[24]], np.uint16), np.array([[cls]], np.uint8), np.array([fname]))
    return arr


def test_cars_devkit_mat_files(tmp_path):
    from scipy.io import savemat

    root = tmp_path / "stanford_cars"
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012", "Audi R8 Coupe 2012"]
    train = [(f"{i:05d}.jpg", c) for i, c in enumerate([1, 1, 2, 3, 4, 4, 4], 1)]
    test = [(f"{i:05d}.jpg", c) for i, c in enumerate([2, 3, 4], 1)]
    for folder, items in (("cars_train", train), ("cars_test", test)):
        for k, (f, _) in enumerate(items):
            write_jpeg(root / folder / f, 40, 32, seed=k + (100 if folder == "cars_test" else 0))
    (root / "devkit").mkdir()
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": np.array([names], dtype=object)})
    savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": _cars_annos(train)})
    savemat(root / "cars_test_annos_withlabels.mat", {"annotations": _cars_annos(test)})  # in ROOT
    out = tmp_path / "sh"
    write_dataset("cars", root, out, shard_size=3, progress=False, val_fraction=0)  # the official splits
    m = load_manifest(out)
    assert m.classes == names and m.split_size("train") == 7 and m.split_size("test") == 3
    rows = read_all(out)
    by_file = {(_meta(r)["split"], _meta(r)["path"]): int(r["cls"]) for s in rows.values() for r in s}
    assert by_file[("train", "cars_train/00003.jpg")] == 1 and by_file[("train", "cars_train/00007.jpg")] == 3
    assert by_file[("test", "cars_test/00001.jpg")] == 1
    assert _meta(rows["train"][0])["bbox"] == [3.0, 4.0, 28.0, 21.0]
    (root / "devkit" / "cars_meta.mat").unlink()
    with pytest.raises(DatasetLayoutError, match="cars_meta.mat not found"):
        write_dataset("cars", root, tmp_path / "o2", progress=False)


def test_cars_imagefolder_repackaging(tmp_path):
    root = make_imagefolder(tmp_path / "cars", {"train": {"Audi R8": 2, "BMW M3": 3}, "test": {"Audi R8": 1}})
    write_dataset("cars", root, tmp_path / "sh", progress=False)
    m = load_manifest(tmp_path / "sh")
    assert m.layout == "cars" and m.options["packaging"] == "imagefolder"
    assert m.classes == ["Audi R8", "BMW M3"] and m.split_size("test") == 1
    assert m.split_size("train") + m.split_size("val") == 5 and m.split_size("val") == 2  # carved, 1 per class


def _aircraft_jpeg(seed: int, w: int = 48, h: int = 68) -> bytes:
    arr = np.asarray(Image.open(io.BytesIO(jpeg_bytes(w, h, seed=seed)))).copy()
    arr[..., 1] = np.maximum(arr[..., 1], 120)  # content never magenta
    arr[h - 20:] = (255, 0, 255)  # the copyright banner, in a colour nothing else has
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_aircraft_splits_levels_and_banner(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A300B4", "Cessna 172"]
    family = {"707-320": "Boeing 707", "A300B4": "A300", "Cessna 172": "Cessna 172"}
    plan = {"train": ["707-320", "A300B4", "A300B4", "Cessna 172"], "val": ["707-320", "Cessna 172"],
            "test": ["A300B4", "707-320", "Cessna 172"]}
    n = 1000000
    lines = {}
    for split, vs in plan.items():
        for v in vs:
            n += 1
            (data / "images").mkdir(parents=True, exist_ok=True)
            (data / "images" / f"{n}.jpg").write_bytes(_aircraft_jpeg(n))
            lines.setdefault(("variant", split), []).append(f"{n} {v}")
            lines.setdefault(("family", split), []).append(f"{n} {family[v]}")
    for (level, split), ls in lines.items():
        (data / f"images_{level}_{split}.txt").write_text("\n".join(ls) + "\n")
    for level in ("variant", "family"):
        tv = lines[(level, "train")] + lines[(level, "val")]
        (data / f"images_{level}_trainval.txt").write_text("\n".join(tv) + "\n")
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    (data / "families.txt").write_text("A300\nBoeing 707\nCessna 172\n")
    out = tmp_path / "sh"
    write_dataset("aircraft", tmp_path / "fgvc-aircraft-2013b", out, shard_size=2, progress=False)
    m = load_manifest(out)
    assert m.classes == variants and list(m.splits) == ["train", "val", "test"]
    assert [m.split_size(s) for s in ("train", "val", "test")] == [4, 2, 3]
    rows = read_all(out)
    for split, vs in plan.items():
        assert sorted(variants[int(r["cls"])] for r in rows[split]) == sorted(vs)
        for r in rows[split]:
            img = np.asarray(Image.open(io.BytesIO(r["jpg"])).convert("RGB")).astype(int)
            assert img.shape[:2] == (68 - 20, 48) and (_meta(r)["height"], _meta(r)["width"]) == (48, 48)
            magenta = (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] > 200)
            assert magenta.sum() == 0
    fam = tmp_path / "fam"
    write_dataset("aircraft", data, fam, progress=False, level="family", trainval=True)
    mf = load_manifest(fam)
    assert mf.classes == ["A300", "Boeing 707", "Cessna 172"] and mf.split_size("trainval") == 6
    assert mf.options["level"] == "family"
    with pytest.raises(DatasetLayoutError, match="manufacturers.txt is missing"):
        write_dataset("aircraft", data, tmp_path / "o3", progress=False, level="manufacturer")
