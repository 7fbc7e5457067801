"""The streaming multi-crop loader: shards -> decode -> crops -> batches, split by rank and worker.

Equal batches on every rank (see shards/README.md, "Equal batches"): each epoch the
split's samples are laid out as one sequence -- shards in a per-epoch shuffled order,
samples in shard order -- repeated as often as needed. Slot (rank, DataLoader worker)
g takes the contiguous range of that sequence that holds exactly the samples its batches
need, so every rank yields exactly steps_per_epoch(...) full batches, and with
`samples_per_epoch` <= split size every sample is seen at most once per epoch by the
whole world (exactly once when the split size is a multiple of world x batch).
`data.resampled` instead draws shards at random with replacement per slot.

Every shard read is held to its sample count in the manifest, since a truncated or corrupted tar
(with `verify: false`) otherwise just ends early: the eval loader raises, the train loader counts
the missing samples in `skipped` and logs the shard once.
"""
from __future__ import annotations

import bisect
import logging
import math
import random
import tarfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .augment import eval_view, multicrop, normalize, photometric
from .config import CropConfig, DataConfig
from .decode import UndecodableImage, decode_image
from .errors import ShardIntegrityError, ShardReadError
from .manifest import Manifest, load_manifest, verify_split
from .urls import is_remote, open_url

_WARNED: set[tuple] = set()
log = logging.getLogger(__name__)


def manifest_for(data: DataConfig) -> Manifest:
    """The manifest of data.shards, generating the demo set first when data.demo and it is missing."""
    if data.demo and not is_remote(data.shards):
        from .demo import ensure_demo_shards

        ensure_demo_shards(Path(data.shards))
    return load_manifest(data.shards)


def steps_per_epoch(data: DataConfig, world_size: int, manifest: Manifest | None = None) -> int:
    """Batches per rank per epoch: max(1, (samples_per_epoch or round(split * fraction)) // (world * batch))."""
    m = manifest or manifest_for(data)
    n = data.samples_per_epoch or round(m.split_size(data.train_split) * data.fraction)
    return max(1, n // (world_size * data.batch_size))


def _check(data: DataConfig, world_size: int, rank: int) -> None:
    if data.batch_size < 1 or data.num_workers < 0:
        raise ValueError(f"batch_size must be >= 1 and num_workers >= 0 (got {data.batch_size}, {data.num_workers})")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")


# ----------------------------------------------------------------------------- reading

IMAGE_KEYS = ("jpg", "jpeg", "png")  # a sample's image entry; shards.write writes .jpg


def image_bytes(sample: dict[str, Any]) -> bytes:
    """The image of a sample under the first of IMAGE_KEYS it has; b"" (undecodable) when none."""
    return next((sample[key] for key in IMAGE_KEYS if sample.get(key)), b"")


def iter_shard(url: str, name: str) -> Iterator[dict[str, Any]]:
    """Samples of one tar shard as {"__key__", "jpg", "cls", "json", ...} via webdataset's tar grouping.

    The one use of webdataset's private `tariterators`: its public `tarfile_samples` opens each
    URL itself (gopen), which would bypass `open_url` (fsspec schemes, file:// paths).
    tests/test_shards_pipeline.py checks the samples it yields, so a change there fails loudly.
    """
    from webdataset.tariterators import group_by_keys, tar_file_expander

    try:
        stream = open_url(url)
    except FileNotFoundError:
        raise ShardReadError(name, url, "is missing") from None
    try:
        yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
    except (OSError, EOFError, ValueError, tarfile.TarError) as e:
        detail = str(e.args[0] if e.args else e).split(" @ ")[0]  # webdataset appends " @ <stream>"
        raise ShardReadError(name, url, f"cannot be read: {type(e).__name__}: {detail}") from e
    finally:
        stream.close()


@dataclass
class ShortRead:
    """A shard read that disagrees with the manifest's sample count: what was read, why it stopped."""

    shard: str
    url: str
    read: int
    count: int
    missing: int  # samples the reader wanted from it and did not get
    reason: str = ""

    def message(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return (f"shard {self.shard} at {self.url}: read {self.read} samples, the manifest lists {self.count}{why}; "
                "truncated, corrupted or replaced (verify: true checks sha256 before reading)")


@dataclass
class _Plan:
    """Everything a slot needs to know which samples to read (small, picklable)."""

    urls: list[str]
    names: list[str]
    counts: list[int]
    seed: int
    epoch: int
    rank: int
    world: int
    workers: int
    steps: int
    batch: int
    resampled: bool
    shuffle_buffer: int
    crops: CropConfig
    _orders: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts)

    def slot_batches(self, w: int) -> int:
        """Batches DataLoader worker w yields: the rank's steps spread round-robin over workers."""
        return self.steps // self.workers + (1 if w < self.steps % self.workers else 0)

    def slot_start(self, w: int) -> int:
        """First sequence position of slot (rank, w): all earlier slots' samples come before it."""
        return (self.rank * self.steps + sum(self.slot_batches(i) for i in range(w))) * self.batch

    def order(self, cycle: int) -> tuple[list[int], list[int]]:
        """Shard order of one pass over the split (seeded by seed, epoch, pass) and its cumulative counts."""
        if cycle not in self._orders:
            order = list(range(len(self.urls)))
            random.Random(f"{self.seed}:{self.epoch}:{cycle}").shuffle(order)
            cum = [0]
            for i in order:
                cum.append(cum[-1] + self.counts[i])
            self._orders[cycle] = (order, cum)
        return self._orders[cycle]

    def segments(self, start: int, length: int | None) -> Iterator[tuple[int, int, int]]:
        """(shard, skip, take) pieces covering sequence positions [start, start+length) (None: forever)."""
        p, end, total = start, None if length is None else start + length, self.total
        while end is None or p < end:
            cycle, q = divmod(p, total)
            order, cum = self.order(cycle)
            j = bisect.bisect_right(cum, q) - 1
            skip = q - cum[j]
            take = self.counts[order[j]] - skip
            if end is not None:
                take = min(take, end - p)
            yield order[j], skip, take
            p += take


def _read_segments(plan: _Plan, segs: Iterable[tuple[int, int, int]], short: list[ShortRead]
                   ) -> Iterator[dict[str, Any]]:
    """The samples of each (shard, skip, take) piece. A shard that ends or fails early is noted in
    `short` and reading goes on; once every shard of the split has come up empty since the last
    sample, nothing is left to read and it raises instead of looping."""
    empty: set[int] = set()
    for shard, skip, take in segs:
        n, reason = 0, ""
        it = iter_shard(plan.urls[shard], plan.names[shard])
        try:
            for s in it:
                n += 1
                if n > skip:
                    empty.clear()
                    yield s
                if n >= skip + take:
                    break
        except ShardReadError as e:
            reason = e.reason
        finally:
            it.close()  # close the stream now (a pipe: process too), not at garbage collection
        got = max(0, n - skip)
        if got < take:
            short.append(ShortRead(plan.names[shard], plan.urls[shard], n, plan.counts[shard], take - got, reason))
        if got == 0:
            empty.add(shard)
            if len(empty) == len(plan.urls):
                raise ShardIntegrityError(f"none of the {len(plan.urls)} shards of the split yields a sample "
                                          f"any more; last: {short[-1].message()}")


def _shuffled(it: Iterable[Any], size: int, rnd: random.Random) -> Iterator[Any]:
    """A shuffle buffer: keeps `size` samples, yields a random one for each new one."""
    if size <= 1:
        yield from it
        return
    buf: list[Any] = []
    for x in it:
        if len(buf) < size:
            buf.append(x)
            continue
        i = rnd.randrange(size)
        yield buf[i]
        buf[i] = x
    rnd.shuffle(buf)
    yield from buf


def single_threaded(it: Iterator[Any]) -> Iterator[Any]:
    """Run an iterator's work with 1 torch thread, restoring the caller's count around each yield.

    In-process loading (num_workers=0, eval) on many small tensors: 2 OpenMP threads on a busy
    2-core box made it much slower than 1 (shards/README.md, "Decode and geometric work");
    DataLoader workers use 1 thread for the same reason.
    """
    prev = torch.get_num_threads()
    try:
        while True:
            torch.set_num_threads(1)
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                torch.set_num_threads(prev)
            yield item
    finally:
        torch.set_num_threads(prev)


def _label(sample: dict[str, Any]) -> int:
    c = sample.get("cls")
    return int(c) if c is not None else -1


class MultiCropStream(IterableDataset):
    """One rank's stream; each DataLoader worker (slot) yields its share of full multi-crop batches."""

    def __init__(self, plan: _Plan, photometric_in_loader: bool) -> None:
        super().__init__()
        self.plan = plan
        self.photometric_in_loader = photometric_in_loader

    def _raw(self, w: int, rnd: random.Random, short: list[ShortRead]) -> Iterator[dict[str, Any]]:
        p = self.plan
        slot = p.rank * p.workers + w
        if p.resampled:
            shards = [i for i in range(len(p.urls))]

            def forever() -> Iterator[tuple[int, int, int]]:
                while True:
                    i = rnd.choices(shards, weights=p.counts)[0]
                    yield i, 0, p.counts[i]

            yield from _shuffled(_read_segments(p, forever(), short), p.shuffle_buffer, rnd)
            return
        start, need = p.slot_start(w), p.slot_batches(w) * p.batch
        # the slot's own range, shuffled; then (only if images were skipped) the positions after it
        yield from _shuffled(_read_segments(p, p.segments(start, need), short), p.shuffle_buffer, rnd)
        yield from _shuffled(_read_segments(p, p.segments(start + need, None), short), p.shuffle_buffer,
                             random.Random(f"{p.seed}:{p.epoch}:{slot}:extra"))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if get_worker_info() is not None:  # DataLoader workers already run single-threaded
            return self._batches()
        return single_threaded(self._batches())

    def _batches(self) -> Iterator[dict[str, Any]]:
        p = self.plan
        info = get_worker_info()
        w = info.id if info is not None else 0
        slot = p.rank * p.workers + w
        n_batches = p.slot_batches(w)
        if n_batches == 0:
            return
        rnd = random.Random(f"{p.seed}:{p.epoch}:{slot}")
        gen = torch.Generator().manual_seed(hash((p.seed, p.epoch, slot)) & 0x7FFF_FFFF_FFFF)
        crops = p.crops
        g_views: list[list[Tensor]] = [[], []]
        l_views: list[list[Tensor]] = [[] for _ in range(crops.local_crops)]
        labels: list[int] = []
        short: list[ShortRead] = []  # filled by the reader; reported with the next batch
        skipped = 0
        done = 0
        failed_in_a_row = 0
        for sample in self._raw(w, rnd, short):
            try:
                img = decode_image(image_bytes(sample))
            except UndecodableImage:
                skipped += 1  # a truncated / corrupt image costs one sample, never the epoch
                failed_in_a_row += 1
                if failed_in_a_row > p.total:
                    break
                continue
            failed_in_a_row = 0
            gl, lo = multicrop(img, crops, rnd)
            for acc, v in zip(g_views + l_views, gl + lo):
                acc.append(v)
            labels.append(_label(sample))
            if len(labels) == p.batch:
                views = [torch.stack(v) for v in g_views + l_views]
                if self.photometric_in_loader:
                    views = photometric(views, crops, gen)
                yield {"globals": views[:2], "locals": views[2:], "label": torch.tensor(labels, dtype=torch.int64),
                       "skipped": skipped + sum(r.missing for r in short),
                       "short": [(r.shard, r.message()) for r in short]}
                short.clear()
                g_views = [[], []]
                l_views = [[] for _ in range(crops.local_crops)]
                labels, skipped = [], 0
                done += 1
                if done == n_batches:
                    return
        raise ShardIntegrityError(f"rank {p.rank} worker {w} read {p.total} undecodable images in a row: "
                                  f"no decodable image left in the split's shards ({', '.join(p.names[:3])}...)")


class TrainLoader:
    """Iterable of exactly `len(self)` multi-crop batches for one rank and epoch.

    Short shards met by the loader's workers arrive with the batches ("short"); they are logged
    here, once per shard and process, rather than by every worker process of every epoch.
    """

    def __init__(self, loader: DataLoader, steps: int, manifest: Manifest) -> None:
        self.loader, self.steps, self.manifest = loader, steps, manifest

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            for shard, message in batch.pop("short"):
                key = ("short", self.manifest.location(), shard)
                if key not in _WARNED:
                    _WARNED.add(key)
                    log.warning("%s; its missing samples are counted in 'skipped'", message)
            yield batch

    def __len__(self) -> int:
        return self.steps


def train_loader(data: DataConfig, rank: int, world_size: int, epoch: int) -> TrainLoader:
    """Multi-crop batches of data.train_split for one rank and epoch (see the module docstring).

    Batches: {"globals": [uint8 (B,3,G,G)] * 2, "locals": [uint8 (B,3,L,L)] * local_crops,
    "label": int64 (B,), "skipped": images skipped by that batch's worker since its previous batch}.
    """
    _check(data, world_size, rank)
    m = manifest_for(data)
    recs = [r for r in verify_split(m, data.train_split, data.verify) if r.count > 0]
    if not recs:
        raise ShardIntegrityError(f"split {data.train_split!r} of {m.location()} has no samples")
    workers = max(1, data.num_workers)
    steps = steps_per_epoch(data, world_size, m)
    key = (m.location(), data.train_split, len(recs), world_size, workers)
    if len(recs) < world_size * workers and rank == 0 and key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"{data.train_split!r} has {len(recs)} shards for {world_size} ranks x {workers} loader "
                      "workers: several workers read the same shard and skip to their part (slower); "
                      "write smaller shards (--shard-size) for more parallel reading", stacklevel=2)
    plan = _Plan([m.shard_url(r) for r in recs], [r.name for r in recs], [r.count for r in recs], data.seed,
                 epoch, rank, world_size, workers, steps, data.batch_size, data.resampled,
                 data.shuffle_buffer, data.crops)
    ds = MultiCropStream(plan, data.crops.photometric == "loader")
    kw: dict[str, Any] = {"prefetch_factor": 2, "persistent_workers": False} if data.num_workers > 0 else {}
    dl = DataLoader(ds, batch_size=None, num_workers=data.num_workers, **kw)
    return TrainLoader(dl, steps, m)


class EvalLoader:
    """Every sample of a split once, in manifest order: (normalised float (B,3,E,E), int64 labels).

    A shard holding other than the manifest's count of samples, or a split of which no image
    decodes, raises ShardIntegrityError: evaluating on part of a split would report a wrong number.
    """

    def __init__(self, data: DataConfig, split: str, batch_size: int, manifest: Manifest) -> None:
        self.data, self.split, self.batch_size, self.manifest = data, split, batch_size, manifest
        self.records = verify_split(manifest, split, data.verify)
        self.skipped = 0

    def __len__(self) -> int:
        return math.ceil(sum(r.count for r in self.records) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return single_threaded(self._batches())

    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        self.skipped = 0
        xs: list[Tensor] = []
        ys: list[int] = []
        decoded = 0
        for r in self.records:
            url, n, reason = self.manifest.shard_url(r), 0, ""
            try:
                for s in iter_shard(url, r.name):
                    n += 1
                    try:
                        img = decode_image(image_bytes(s))
                    except UndecodableImage:
                        self.skipped += 1
                        continue
                    decoded += 1
                    xs.append(eval_view(img, self.data.crops))
                    ys.append(_label(s))
                    if len(xs) == self.batch_size:
                        yield normalize(torch.stack(xs)), torch.tensor(ys, dtype=torch.int64)
                        xs, ys = [], []
            except ShardReadError as e:
                reason = e.reason
            if reason or n != r.count:
                raise ShardIntegrityError(ShortRead(r.name, url, n, r.count, max(0, r.count - n), reason).message())
        total = sum(r.count for r in self.records)
        if decoded == 0 and total:
            raise ShardIntegrityError(f"split {self.split!r} of {self.manifest.location()}: none of its {total} "
                                      "images could be decoded")
        if xs:
            yield normalize(torch.stack(xs)), torch.tensor(ys, dtype=torch.int64)


def eval_loader(data: DataConfig, split: str, batch_size: int = 256) -> EvalLoader:
    """Deterministic eval batches of `split`: shorter side -> crops.eval_resize, center crop eval_size."""
    return EvalLoader(data, split, batch_size, manifest_for(data))
