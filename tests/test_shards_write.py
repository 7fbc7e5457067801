"""Writing shards: ImageFolder round trip, manifest, skipped images, errors, resume, parallel."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from shards.errors import DatasetLayoutError, ManifestError, ShardIntegrityError
from shards.manifest import PARTIAL_NAME, load_manifest, verify_split
from shards.write import main, write_dataset
from tests.shard_fixtures import make_imagefolder, read_all, write_jpeg


def test_imagefolder_round_trip(tmp_path):
    root = make_imagefolder(tmp_path / "img", {"train": {"b": 5, "a": 4}, "val": {"a": 2, "c": 1}})
    out = tmp_path / "sh"
    write_dataset("imagefolder", root, out, shard_size=3, progress=False)
    m = load_manifest(out)
    assert m.classes == ["a", "b", "c"] and m.layout == "imagefolder"
    assert m.split_size("train") == 9 and m.split_size("val") == 3
    assert [r.count for r in m.shards("train")] == [3, 3, 3]
    assert m.shards("train")[0].name == "train-000000.tar"
    assert m.version and m.options["shard_size"] == 3
    rows = read_all(out)
    for split in ("train", "val"):
        assert len(rows[split]) == m.split_size(split)
        assert len({r["key"] for r in rows[split]}) == len(rows[split])
        for r in rows[split]:
            meta = json.loads(r["json"])
            src = root / meta["path"]
            assert r["jpg"] == src.read_bytes()  # not re-encoded
            assert meta["class"] == src.parent.name and int(r["cls"]) == m.classes.index(meta["class"])
            assert meta["split"] == split and (meta["width"], meta["height"]) == (40, 30)
    for rec in m.shards("train"):
        assert (out / rec.name).stat().st_size == rec.bytes
    verify_split(m, "train")


def test_max_side_reencodes_shorter_side(tmp_path):
    root = make_imagefolder(tmp_path / "img", {"train": {"a": 2}}, w=64, h=48)
    out = tmp_path / "sh"
    write_dataset("imagefolder", root, out, max_side=24, progress=False)
    for r in read_all(out)["train"]:
        meta = json.loads(r["json"])
        assert (meta["width"], meta["height"]) == (32, 24) and meta["reencoded"]
        import io

        assert Image.open(io.BytesIO(r["jpg"])).size == (32, 24)


def test_unreadable_images_are_skipped_and_listed(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "img", {"train": {"a": 3, "b": 2}})
    bad = root / "train" / "a" / "a_001.jpg"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # truncated
    (root / "train" / "b" / "junk.png").write_bytes(b"not an image")
    out = tmp_path / "sh"
    assert main(["imagefolder", "--root", str(root), "--out", str(out), "--workers", "1", "--val-fraction", "0"]) == 0
    m = load_manifest(out)
    assert m.split_size("train") == 4
    assert {os.path.basename(s["path"]) for s in m.skipped} == {"a_001.jpg", "junk.png"}
    err = capsys.readouterr().err
    assert "skipped 2" in err and "a_001.jpg" in err and "truncated" in err


def test_layout_errors_are_one_clear_line(tmp_path, capsys):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetLayoutError, match="nope.*does not exist"):
        write_dataset("imagefolder", missing, tmp_path / "o", progress=False)
    flat = tmp_path / "flat"
    write_jpeg(flat / "x.jpg")
    with pytest.raises(DatasetLayoutError, match=r"flat.*not an ImageFolder.*ROOT/<split>/<class>"):
        write_dataset("imagefolder", flat, tmp_path / "o", progress=False)
    for layout in ("cub", "cars", "aircraft"):
        with pytest.raises(DatasetLayoutError, match=str(flat)):
            write_dataset(layout, flat, tmp_path / "o", progress=False)
    assert main(["cub", "--root", str(flat), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(flat) in err and len(err.splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "shards.write", "imagefolder", "--root", str(missing),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(missing) in r.stderr


def test_manifest_and_shard_errors_name_the_file(tmp_path):
    with pytest.raises(ManifestError, match=str(tmp_path)):
        load_manifest(tmp_path)
    root = make_imagefolder(tmp_path / "img", {"train": {"a": 4}})
    out = tmp_path / "sh"
    write_dataset("imagefolder", root, out, shard_size=2, progress=False, val_fraction=0)
    m = load_manifest(out)
    with pytest.raises(ManifestError, match="'val'.*train.*--val-fraction"):
        m.shards("val")
    p = out / "train-000001.tar"
    data = bytearray(p.read_bytes())
    data[600] ^= 0xFF  # same size, different content
    p.write_bytes(bytes(data))
    with pytest.raises(ShardIntegrityError, match="train-000001.tar.*sha256"):
        verify_split(m, "train")
    p.unlink()
    with pytest.raises(ShardIntegrityError, match="train-000001.tar.*missing"):
        verify_split(m, "train")


def test_interrupted_write_resumes_without_rewriting(tmp_path):
    root = make_imagefolder(tmp_path / "img", {"train": {"a": 6, "b": 5}, "val": {"a": 2}})
    out = tmp_path / "sh"
    write_dataset("imagefolder", root, out, shard_size=3, progress=False)
    full = (out / "manifest.json").read_text()
    names = sorted(p.name for p in out.glob("*.tar"))
    # the state an interruption leaves: a partial manifest without one shard, that shard half-written
    d = json.loads(full)
    lost = d["splits"]["train"]["shards"].pop(2)
    (out / PARTIAL_NAME).write_text(json.dumps(d))
    (out / "manifest.json").unlink()
    (out / lost["name"]).unlink()
    (out / (lost["name"] + ".tmp")).write_bytes(b"partial")
    before = {n: (out / n).stat() for n in names if n != lost["name"]}
    write_dataset("imagefolder", root, out, shard_size=3, progress=False)
    for n, st in before.items():
        now = (out / n).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), n
    assert (out / lost["name"]).is_file() and not (out / PARTIAL_NAME).exists()
    assert not list(out.glob("*.tmp"))
    assert json.loads((out / "manifest.json").read_text())["splits"] == json.loads(full)["splits"]
    # a shard whose bytes changed is rewritten, a finished run is kept entirely
    (out / names[0]).write_bytes(b"garbage")
    write_dataset("imagefolder", root, out, shard_size=3, progress=False)
    verify_split(load_manifest(out), "train")
    # other options (shard size) -> a different plan: nothing stale is kept
    write_dataset("imagefolder", root, out, shard_size=4, progress=False)
    assert [r.count for r in load_manifest(out).shards("train")] == [4, 4, 3]


def test_parallel_write_is_identical(tmp_path):
    root = make_imagefolder(tmp_path / "img", {"train": {"a": 7, "b": 6}})
    write_dataset("imagefolder", root, tmp_path / "one", shard_size=4, workers=1, progress=False)
    write_dataset("imagefolder", root, tmp_path / "two", shard_size=4, workers=2, progress=False)
    a, b = load_manifest(tmp_path / "one"), load_manifest(tmp_path / "two")
    assert [r.sha256 for r in a.shards("train")] == [r.sha256 for r in b.shards("train")]
