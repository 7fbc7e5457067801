"""The streaming multi-crop loader on real shards: equal batches, exactly-once epochs, bad shards."""
from __future__ import annotations

import collections
import dataclasses
import warnings

import pytest
import torch

from shards.config import DataConfig
from shards.errors import ShardIntegrityError
from shards.manifest import load_manifest
from shards.pipeline import eval_loader, iter_shard, steps_per_epoch, train_loader
from tests.shard_fixtures import (  # noqa: F401
    jpeg_bytes,
    manifest_from_tars,
    small_crops,
    tiny_shards,
    unique_label_shards,
    write_tar_shard,
)


def _cfg(shards, **kw) -> DataConfig:
    base = dict(shards=str(shards), batch_size=4, num_workers=0, shuffle_buffer=8, crops=small_crops())
    base.update(kw)
    return DataConfig(**base)


def _labels(loader) -> list[int]:
    return [int(x) for b in loader for x in b["label"]]


def test_exactly_once_per_epoch_across_ranks_and_workers(unique_label_shards):
    # 48 samples in shards of 7,7,...,6: world x batch x steps == 48 -> each sample exactly once
    for world, workers, batch in ((1, 0, 4), (2, 2, 4), (3, 1, 4), (4, 0, 3), (2, 0, 8)):
        cfg = _cfg(unique_label_shards, batch_size=batch, num_workers=workers)
        assert steps_per_epoch(cfg, world) * world * batch == 48
        seen = collections.Counter()
        for rank in range(world):
            seen.update(_labels(train_loader(cfg, rank, world, epoch=3)))
        assert sorted(seen) == list(range(48)) and set(seen.values()) == {1}, (world, workers)


def test_epochs_shuffle_deterministically(unique_label_shards):
    cfg = _cfg(unique_label_shards)
    a, b, c = (_labels(train_loader(cfg, 0, 1, e)) for e in (0, 0, 1))
    assert a == b and a != c and sorted(a) == sorted(c)
    first = next(iter(train_loader(cfg, 0, 1, 0)))
    again = next(iter(train_loader(cfg, 0, 1, 0)))
    assert all(torch.equal(x, y) for x, y in zip(first["globals"] + first["locals"],
                                                   again["globals"] + again["locals"]))


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_equal_full_batches_on_every_rank(tiny_shards, workers):
    # 23 samples in 6 uneven shards (4,4,4,4,4,3); fewer shards than ranks x workers for most cases
    cases = [(w, {}) for w in (1, 2, 3, 4)] + [(3, {"samples_per_epoch": 50}), (2, {"resampled": True})]
    if workers == 0:  # in-process is cheap: every variant on every world size
        cases += [(w, x) for w in (1, 2, 4) for x in ({"samples_per_epoch": 50}, {"resampled": True})]
    for world, extra in cases:
        cfg = _cfg(tiny_shards, batch_size=3, num_workers=workers, **extra)
        steps = steps_per_epoch(cfg, world)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for rank in range(world):
                loader = train_loader(cfg, rank, world, epoch=1)
                batches = list(loader)
                assert len(batches) == steps == len(loader), (world, rank, extra)
                for b in batches:
                    assert [tuple(g.shape) for g in b["globals"]] == [(3, 3, 16, 16)] * 2
                    assert [tuple(x.shape) for x in b["locals"]] == [(3, 3, 8, 8)] * 2
                    assert b["globals"][0].dtype == torch.uint8 and b["label"].dtype == torch.int64
                    assert b["skipped"] == 0


def test_steps_per_epoch_formula(tiny_shards):
    assert steps_per_epoch(_cfg(tiny_shards, batch_size=2), 2) == 23 // 4
    assert steps_per_epoch(_cfg(tiny_shards, batch_size=2, fraction=0.5), 2) == round(23 * 0.5) // 4
    assert steps_per_epoch(_cfg(tiny_shards, batch_size=2, samples_per_epoch=100), 2) == 25
    assert steps_per_epoch(_cfg(tiny_shards, batch_size=64), 4) == 1


def test_warns_once_when_fewer_shards_than_slots(tiny_shards):
    cfg = _cfg(tiny_shards, batch_size=2, num_workers=0, seed=99)
    with pytest.warns(UserWarning, match="6 shards for 7 ranks"):
        train_loader(cfg, 0, 7, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_loader(cfg, 0, 7, 1)


def test_corrupt_jpeg_is_skipped_and_counted(tmp_path):
    good = [(f"s{i:03d}", jpeg_bytes(24, 20, seed=i), i % 2) for i in range(11)]
    broken = jpeg_bytes(24, 20, seed=99)
    samples = good[:5] + [("s999", broken[: len(broken) // 2], 0)] + good[5:]
    recs = [write_tar_shard(tmp_path / "train-000000.tar", samples[:6]),
            write_tar_shard(tmp_path / "train-000001.tar", samples[6:])]
    manifest_from_tars(tmp_path, {"train": recs, "val": recs}, ["even", "odd"])
    cfg = _cfg(tmp_path, batch_size=4)  # 12 samples -> 3 batches, one image undecodable
    batches = list(train_loader(cfg, 0, 1, 0))
    assert len(batches) == 3 and all(len(b["label"]) == 4 for b in batches)
    assert sum(b["skipped"] for b in batches) == 1
    ev = eval_loader(cfg, "val", batch_size=5)
    n = sum(len(y) for _, y in ev)
    assert n == 11 and ev.skipped == 1


def test_png_samples_are_read_by_the_train_and_the_eval_loader(tmp_path):
    """Both loaders take the image under the same keys (jpg, jpeg, png): a red PNG shard beside a
    blue JPEG shard comes out red and blue, nothing skipped."""
    import io

    from PIL import Image

    def png(color: tuple[int, int, int]) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (24, 20), color).save(buf, "PNG")
        return buf.getvalue()

    red = [(f"p{i}", png((220, 20, 20)), 0) for i in range(4)]
    blue = [(f"j{i}", jpeg_bytes(24, 20, color=(20, 20, 220)), 1) for i in range(4)]
    recs = [write_tar_shard(tmp_path / "train-000000.tar", red, image_ext="png"),
            write_tar_shard(tmp_path / "train-000001.tar", blue)]
    manifest_from_tars(tmp_path, {"train": recs, "val": recs}, ["red", "blue"])
    cfg = _cfg(tmp_path, batch_size=4)
    ev = eval_loader(cfg, "val", batch_size=8)
    [(x, y)] = list(ev)
    assert y.tolist() == [0] * 4 + [1] * 4 and ev.skipped == 0
    red_minus_blue = x[:, 0].mean((1, 2)) - x[:, 2].mean((1, 2))
    assert (red_minus_blue[:4] > 1).all() and (red_minus_blue[4:] < -1).all()
    batches = list(train_loader(cfg, 0, 1, 0))
    assert sorted(int(v) for b in batches for v in b["label"]) == [0] * 4 + [1] * 4
    assert sum(b["skipped"] for b in batches) == 0


def test_iter_shard_groups_a_tar_by_key(tmp_path):
    """iter_shard rests on webdataset's private `tariterators`: an upgrade that changes what it
    yields fails here, not as empty or mislabelled batches."""
    write_tar_shard(tmp_path / "a.tar", [("s0", b"abc", 3), ("s1", b"de", 4)], image_ext="png")
    got = list(iter_shard(str(tmp_path / "a.tar"), "a.tar"))
    assert [(s["__key__"], s["png"], s["cls"]) for s in got] == [("s0", b"abc", b"3"), ("s1", b"de", b"4")]


def test_split_without_any_decodable_image_fails_instead_of_spinning(tmp_path):
    rec = write_tar_shard(tmp_path / "train-000000.tar", [(f"s{i}", b"\xff\xd8garbage", 0) for i in range(3)])
    manifest_from_tars(tmp_path, {"train": [rec]}, ["x"])
    with pytest.raises(ShardIntegrityError, match="undecodable"):
        list(train_loader(_cfg(tmp_path, batch_size=2), 0, 1, 0))


def test_tampered_or_missing_shard_fails_naming_it(tmp_path, tiny_shards):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(tiny_shards, d)
    p = d / "train-000002.tar"
    data = bytearray(p.read_bytes())
    data[1000] ^= 0x55
    p.write_bytes(bytes(data))
    with pytest.raises(ShardIntegrityError, match="train-000002.tar"):
        train_loader(_cfg(d), 0, 1, 0)
    p.unlink()
    for verify in (True, False):
        with pytest.raises(ShardIntegrityError, match="train-000002.tar.*missing"):
            train_loader(_cfg(d, verify=verify), 0, 1, 0)


def test_eval_loader_every_sample_once_in_order(tiny_shards):
    cfg = _cfg(tiny_shards)
    ev = eval_loader(cfg, "val", batch_size=3)
    out = list(ev)
    assert len(out) == len(ev) == 3
    x = torch.cat([b[0] for b in out])
    y = torch.cat([b[1] for b in out])
    assert x.shape == (7, 3, 16, 16) and x.dtype == torch.float32
    assert -3 < float(x.min()) < 0 < float(x.max()) < 3  # ImageNet-normalised
    assert sorted(y.tolist()) == [0, 0, 0, 1, 1, 2, 2]
    x2 = torch.cat([b[0] for b in eval_loader(cfg, "val", batch_size=7)])
    assert torch.equal(x, x2)


def test_photometric_modes(tiny_shards):
    from shards.augment import to_model_input

    base = _cfg(tiny_shards, batch_size=8)
    raw = {}
    for mode in ("none", "step", "loader"):
        cfg = dataclasses.replace(base, crops=small_crops(photometric=mode))
        raw[mode] = next(iter(train_loader(cfg, 0, 1, 0)))
    # same geometric crops in every mode; photometric changes pixels only in "loader"
    assert torch.equal(raw["none"]["globals"][0], raw["step"]["globals"][0])
    assert not torch.equal(raw["none"]["globals"][0], raw["loader"]["globals"][0])
    views = raw["step"]["globals"] + raw["step"]["locals"]
    step_cfg = small_crops(photometric="step")
    g = torch.Generator().manual_seed(0)
    out = to_model_input(views, step_cfg, "cpu", g)
    ref = to_model_input(views, small_crops(photometric="none"), "cpu")
    assert [o.dtype for o in out] == [torch.float32] * 4 and out[0].shape == (8, 3, 16, 16)
    assert not torch.equal(out[0], ref[0])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(ref[0], (views[0].float() / 255 - mean) / std, atol=1e-5)


def test_shards_by_url_and_pipe(tiny_shards):
    """file:// URLs and webdataset `pipe:` commands ({} = file name) read the same samples."""
    local = _labels(train_loader(_cfg(tiny_shards), 0, 1, 0))
    for loc in (tiny_shards.as_uri(), f"pipe:cat {tiny_shards}/{{}}"):
        m = load_manifest(loc)
        assert m.split_size("train") == 23
        assert _labels(train_loader(_cfg(loc, verify=False), 0, 1, 0)) == local
        assert sum(len(y) for _, y in eval_loader(_cfg(loc, verify=False), "val")) == 7


def test_checksums_read_once_per_process_not_every_epoch(tmp_path, tiny_shards):
    """A bucket shard is hashed on its first epoch only; a local shard rewritten since is hashed again."""
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(tiny_shards, d)
    log = tmp_path / "opened.log"
    remote = f"pipe:sh -c 'echo {{}} >> {log}; cat {d}/{{}}'"  # every open of a file is logged
    for epoch in range(3):
        train_loader(_cfg(remote), 0, 1, epoch)
    opened = collections.Counter(line for line in log.read_text().split() if line.endswith(".tar"))
    train = {r.name for r in load_manifest(d).shards("train")}
    assert set(opened) == train and set(opened.values()) == {1}

    train_loader(_cfg(d), 0, 1, 0)  # verified and cached
    p = d / "train-000001.tar"
    data = bytearray(p.read_bytes())
    data[1000] ^= 0x55  # same size, new content (and mtime)
    p.write_bytes(bytes(data))
    with pytest.raises(ShardIntegrityError, match="train-000001.tar.*sha256"):
        train_loader(_cfg(d), 0, 1, 1)
    with pytest.raises(ShardIntegrityError, match="train-000001.tar.*sha256"):  # a new URL: hashed on first use
        train_loader(_cfg(f"pipe:cat {d}/{{}}"), 0, 1, 0)


def _tar_with_18_samples_and_a_good_one(d):
    """train-000000.tar: 18 samples (labels 0/1), train-000001.tar: 6; both listed in a manifest."""
    samples = [(f"s{i:03d}", jpeg_bytes(24, 20, seed=i), i % 2) for i in range(24)]
    recs = [write_tar_shard(d / "train-000000.tar", samples[:18]),
            write_tar_shard(d / "train-000001.tar", samples[18:])]
    manifest_from_tars(d, {"train": recs, "val": recs}, ["even", "odd"])
    return d / "train-000000.tar"


def _member_offset(path, name: str) -> int:
    import tarfile

    with tarfile.open(path) as tf:
        return tf.getmember(name).offset


def _corrupt_header(path) -> None:
    """Same size, one header's checksum broken (at s013.cls): tarfile ends the archive there, quietly."""
    data = bytearray(path.read_bytes())
    data[_member_offset(path, "s013.cls") + 148] ^= 0x11
    path.write_bytes(bytes(data))


def _truncate(path) -> None:
    """Cut inside s013.jpg's data: tarfile raises 'unexpected end of data' after 13 whole samples."""
    data = path.read_bytes()
    path.write_bytes(data[:_member_offset(path, "s013.jpg") + 512 + 100])


@pytest.mark.parametrize("damage", ["header", "truncated"])
def test_eval_loader_raises_on_a_short_shard_naming_it_and_the_counts(tmp_path, damage):
    """verify: false (remote shards) reads a damaged tar as far as it goes; eval must not score part
    of a split. A truncated shard is read through pipe: (a local one fails its size check first)."""
    shard = _tar_with_18_samples_and_a_good_one(tmp_path)
    (_corrupt_header if damage == "header" else _truncate)(shard)
    loc = tmp_path if damage == "header" else f"pipe:cat {tmp_path}/{{}}"
    ev = eval_loader(_cfg(loc, verify=False), "val", batch_size=4)
    with pytest.raises(ShardIntegrityError, match=r"train-000000.tar.*read 13 samples, the manifest lists 18"):
        list(ev)


@pytest.mark.parametrize("damage,workers", [("header", 0), ("truncated", 1)])
def test_train_loader_counts_a_short_shard_as_skipped_and_logs_it_once(tmp_path, caplog, damage, workers):
    shard = _tar_with_18_samples_and_a_good_one(tmp_path)
    (_corrupt_header if damage == "header" else _truncate)(shard)
    loc = tmp_path if damage == "header" else f"pipe:cat {tmp_path}/{{}}"
    cfg = _cfg(loc, verify=False, num_workers=workers)  # 24 samples, batch 4: 6 steps
    with caplog.at_level("WARNING", logger="shards.pipeline"):
        for epoch in (0, 1):
            batches = list(train_loader(cfg, 0, 1, epoch))
            assert len(batches) == 6 and all(len(b["label"]) == 4 for b in batches)
            assert sum(b["skipped"] for b in batches) == 18 - 13  # every epoch reads the whole split once
            assert all(set(b) == {"globals", "locals", "label", "skipped"} for b in batches)
    [record] = [r for r in caplog.records if r.name == "shards.pipeline"]
    assert "train-000000.tar" in record.message and "read 13 samples, the manifest lists 18" in record.message


def test_a_split_whose_shards_all_read_empty_fails_instead_of_looping(tmp_path):
    shard = _tar_with_18_samples_and_a_good_one(tmp_path)
    for path in (shard, tmp_path / "train-000001.tar"):
        path.write_bytes(b"\0" * path.stat().st_size)  # same size: a zeroed tar reads as empty
    with pytest.raises(ShardIntegrityError, match="none of the 2 shards"):
        list(train_loader(_cfg(tmp_path, verify=False), 0, 1, 0))


def test_eval_loader_raises_when_a_split_yields_no_sample(tmp_path):
    """Keys with a dot (another writer, a split named val.v2) merge a shard's samples into one with no
    image: the eval must fail naming the shard, not yield 0 batches."""
    samples = [(f"val.v2_{i:07d}", jpeg_bytes(24, 20, seed=i), 0) for i in range(5)]
    rec = write_tar_shard(tmp_path / "val.v2-000000.tar", samples)
    manifest_from_tars(tmp_path, {"val.v2": [rec]}, ["a"])
    with pytest.raises(ShardIntegrityError, match=r"val.v2-000000.tar.*read 1 samples, the manifest lists 5"):
        list(eval_loader(_cfg(tmp_path), "val.v2"))
    undecodable = write_tar_shard(tmp_path / "bad-000000.tar", [(f"s{i}", b"\xff\xd8garbage", 0) for i in range(3)])
    manifest_from_tars(tmp_path, {"bad": [undecodable]}, ["a"])
    with pytest.raises(ShardIntegrityError, match="'bad'.*none of its 3 images"):
        list(eval_loader(_cfg(tmp_path), "bad"))


def test_16_bit_png_in_a_shard_decodes_to_its_8_bit_values(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from shards.decode import decode_image

    eight = (np.arange(20 * 24).reshape(20, 24) % 200 + 30).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(eight * 257).save(buf, "PNG")  # 16-bit grey: v * 257 >> 8 == v
    img = decode_image(buf.getvalue())
    assert img.dtype == torch.uint8 and img.shape == (3, 20, 24)
    assert torch.equal(img[0], torch.from_numpy(eight.astype(np.uint8))) and torch.equal(img[0], img[2])
