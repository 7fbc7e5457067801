"""Writing shards: ImageFolder round trip, manifest, skipped images, errors, resume, parallel,
another dataset's folder, Ctrl-C / SIGTERM, 16-bit PNGs, dotted split names, images edited in place."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from shards.errors import DatasetLayoutError, ManifestError, ShardIntegrityError
from shards.manifest import MANIFEST_NAME, PARTIAL_NAME, Manifest, load_manifest, sha256_file, verify_split
from shards.write import main, recorded_shards, write_dataset
from tests.shard_fixtures import make_imagefolder, read_all, write_jpeg

ROOT = Path(__file__).resolve().parent.parent


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


def test_a_folder_holding_another_dataset_is_refused_unless_overwrite(tmp_path, capsys, monkeypatch):
    a = make_imagefolder(tmp_path / "a", {"train": {"x": 3, "y": 3}})
    b = make_imagefolder(tmp_path / "b", {"train": {"u": 2, "v": 2}})
    out = tmp_path / "sh"
    common = ["--out", str(out), "--shard-size", "2", "--workers", "1", "--val-fraction", "0", "--quiet"]
    assert main(["imagefolder", "--root", str(a), *common]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["imagefolder", "--root", str(b), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'a'" in err and "'b'" in err and "--overwrite" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    # the same dataset again resumes; so does a relative path to the same root
    assert main(["imagefolder", "--root", str(a), *common]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.chdir(tmp_path)
    assert main(["imagefolder", "--root", "a", *common]) == 0
    # an interrupted write of another dataset counts as well
    (out / MANIFEST_NAME).rename(out / PARTIAL_NAME)
    assert main(["imagefolder", "--root", str(b), "--name", "other", *common]) == 2
    assert "'other'" in capsys.readouterr().err
    assert main(["imagefolder", "--root", str(b), *common, "--overwrite"]) == 0
    m = load_manifest(out)
    assert m.dataset == "b" and m.classes == ["u", "v"] and m.source == str(b)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train-000000.tar", "train-000001.tar"]
    assert "--overwrite" in subprocess.run([sys.executable, "-m", "shards.write", "--help"], capture_output=True,
                                           text=True, cwd=ROOT).stdout


def _many_images(root: Path, n: int) -> Path:
    """ROOT/train/<4 classes>/: n images, hard links to 8 real JPEGs (quick to make, each still decoded)."""
    sources = [write_jpeg(root.parent / "sources" / f"{i}.jpg", 32, 32, seed=i) for i in range(8)]
    for i in range(n):
        d = root / "train" / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        os.link(sources[i % 8], d / f"{i:05d}.jpg")
    return root


@contextmanager
def signals_as_a_terminal_gives_them() -> Iterator[None]:
    """A child started here gets SIGINT and SIGTERM delivered and at their default: a test runner's
    process may have them ignored or blocked (seen under pytest-xdist), which a child inherits."""
    held = {signal.SIGINT, signal.SIGTERM}
    handlers = {sig: signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
                for sig in held}
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_write_and_keeps_its_finished_shards(tmp_path, capsys, sig):
    """SIGINT as a terminal's Ctrl-C sends it (the whole process group), SIGTERM to the main process
    only: the writer ends its workers, records what finished, says how to resume, exits 128 + signal."""
    root = _many_images(tmp_path / "img", 800)  # 200 shards: still running when the first is recorded
    out = tmp_path / "sh"
    argv = ["imagefolder", "--root", str(root), "--out", str(out), "--shard-size", "4", "--workers", "2",
            "--val-fraction", "0"]
    with open(tmp_path / "stderr.txt", "w") as err, signals_as_a_terminal_gives_them():
        proc = subprocess.Popen([sys.executable, "-m", "shards.write", *argv], stdout=subprocess.DEVNULL,
                                stderr=err, cwd=ROOT, start_new_session=True)
    try:
        while recorded_shards(out) < 1:
            assert proc.poll() is None, "the write ended before a signal could be sent"
            time.sleep(0.02)
        children = psutil.Process(proc.pid).children(recursive=True)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        rc = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive
    assert rc == 128 + sig
    last = (tmp_path / "stderr.txt").read_text().strip().splitlines()[-1]
    assert last.startswith(f"stopped by {sig.name}: ") and "run the same command again to resume" in last, last
    recs = [r for rs in Manifest.from_dict(json.loads((out / PARTIAL_NAME).read_text())).splits.values() for r in rs]
    assert recs and f"{len(recs)} finished shards" in last
    for r in recs:
        assert sha256_file(out / r.name) == r.sha256 and r.count == 4
    # the queue was not run out: at most one unrecorded shard per worker (finished as it was ended)
    unrecorded = {p.name for p in out.glob("*.tar")} - {r.name for r in recs}
    assert len(unrecorded) <= 2 and not list(out.glob("*.tmp")) and not (out / MANIFEST_NAME).exists()
    stamps = {r.name: (out / r.name).stat() for r in recs}
    assert main(argv) == 0
    assert f"{len(recs)} shards kept from an earlier run" in capsys.readouterr().err
    for name, st in stamps.items():
        now = (out / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), name
    assert load_manifest(out).split_size("train") == 800


def test_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    """Pillow's convert("RGB") clips 16-bit grey at 255 (a white image); the writer keeps the top byte."""
    eight = (np.arange(48 * 64).reshape(48, 64) % 200 + 30).astype(np.uint16)  # mean 129.0
    sixteen = eight * 257  # v * 257 >> 8 == v
    root = tmp_path / "img"
    (root / "train" / "grey").mkdir(parents=True)
    Image.fromarray(sixteen).save(root / "train" / "grey" / "png16.png")
    pgm = root / "train" / "grey" / "pgm16.pgm"  # big-endian 16-bit grey: Pillow mode I
    pgm.write_bytes(b"P5 64 48 65535\n" + sixteen.astype(">u2").tobytes())
    assert {Image.open(p).mode for p in (root / "train" / "grey").iterdir()} == {"I;16", "I"}
    out = tmp_path / "sh"
    write_dataset("imagefolder", root, out, progress=False, val_fraction=0)
    rows = read_all(out)["train"]
    assert len(rows) == 2
    for r in rows:
        assert json.loads(r["json"])["reencoded"]
        stored = np.asarray(Image.open(io.BytesIO(r["jpg"])).convert("L"), dtype=np.float64)
        assert abs(stored.mean() - eight.mean()) < 1.5 and np.abs(stored - eight).mean() < 3


def test_dotted_split_folder_keeps_its_samples_apart(tmp_path):
    """WebDataset cuts keys at the first dot: a split named val.v2 must not merge its samples."""
    from shards.config import DataConfig
    from shards.pipeline import eval_loader, iter_shard

    root = make_imagefolder(tmp_path / "img", {"train": {"a": 2, "b": 2}, "val.v2": {"a": 3, "b": 2}})
    out = tmp_path / "sh"
    write_dataset("imagefolder", root, out, shard_size=10, progress=False)
    m = load_manifest(out)
    assert m.split_size("val.v2") == 5 and m.shards("val.v2")[0].name == "val.v2-000000.tar"
    samples = list(iter_shard(str(out / "val.v2-000000.tar"), "val.v2-000000.tar"))
    assert len(samples) == 5 and all("." not in s["__key__"] and "jpg" in s for s in samples)
    from tests.shard_fixtures import small_crops

    ys = [int(y) for _, yb in eval_loader(DataConfig(shards=str(out), crops=small_crops()), "val.v2") for y in yb]
    assert sorted(ys) == [0, 0, 0, 1, 1]


def test_an_image_edited_in_place_with_the_same_size_is_rewritten(tmp_path):
    """The resume check knows a source file by size and mtime: new pixels in the same bytes count."""
    root = tmp_path / "img"
    rng = np.random.default_rng(0)
    for i in range(4):
        (root / "train" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "train" / "a" / f"{i}.bmp")
    out = tmp_path / "sh"
    write_dataset("imagefolder", root, out, shard_size=2, progress=False, val_fraction=0)
    edited = root / "train" / "a" / "2.bmp"
    size, mtime = edited.stat().st_size, edited.stat().st_mtime_ns
    Image.new("RGB", (16, 16), (250, 10, 10)).save(edited)
    os.utime(edited, ns=(mtime + 10**9, mtime + 10**9))  # a clock tick later, whatever the file system's grain
    assert edited.stat().st_size == size
    write_dataset("imagefolder", root, out, shard_size=2, progress=False, val_fraction=0)
    [row] = [r for r in read_all(out)["train"] if json.loads(r["json"])["path"] == "train/a/2.bmp"]
    red = np.asarray(Image.open(io.BytesIO(row["jpg"])), dtype=np.float64).mean((0, 1))
    assert red[0] > 200 and red[1] < 50, red
    verify_split(load_manifest(out), "train")
