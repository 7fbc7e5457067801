"""Write a dataset as WebDataset tar shards + manifest.json (CLI: `python -m shards.write LAYOUT ...`).

Each sample is KEY.jpg (the source JPEG bytes, re-encoded only to resize or crop),
KEY.cls (label as ASCII) and KEY.json (source path, class, split, size, extras).
Shards are written in parallel processes and the run is resumable: finished shards are
recorded in manifest.partial.json and kept on the next run when their sha256 still matches.
Ctrl-C or SIGTERM ends the worker processes at once and records every finished shard first.
An output folder holding another dataset's shards is refused unless `overwrite` is set.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing as mp
import os
import random
import signal
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .carve import carve_validation
from .errors import DatasetLayoutError, ShardFolderInUseError
from .layouts import LAYOUTS, DatasetIndex, Item, index_dataset
from .manifest import MANIFEST_NAME, PARTIAL_NAME, Manifest, ShardRecord, save_manifest, sha256_file

JPEG_QUALITY = 95


@dataclass
class ShardJob:
    """One shard to write: its name, the items (key, item, class name) and the encoding options."""

    split: str
    name: str
    out: Path
    root: Path
    items: list[tuple[str, Item, str]]
    max_side: int | None
    plan: str = ""
    skipped: list[dict[str, str]] = field(default_factory=list)


def _plan_digest(job: ShardJob) -> str:
    """Digest of what a shard should contain, so a resumed run never keeps a shard built from other inputs.

    Each source file counts by size and mtime: an image edited in place keeps its size often enough
    (same dimensions, uncompressed formats, same-length edits) that size alone would keep a stale shard.
    """
    h = hashlib.sha256()
    h.update(json.dumps([job.split, job.name, job.max_side, JPEG_QUALITY]).encode())
    for key, it, cname in job.items:
        try:
            st = it.path.stat()
            stamp = [st.st_size, st.st_mtime_ns]
        except OSError:
            stamp = [-1, -1]
        h.update(json.dumps([key, str(it.path), stamp, it.label, cname, it.crop_bottom, it.extra],
                            sort_keys=True, default=str).encode())
    return h.hexdigest()


def encode_image(item: Item, max_side: int | None) -> tuple[bytes, int, int, float, bool]:
    """Read and fully decode one image (catches truncation); return JPEG bytes, size, scale, re-encoded?

    The original bytes are kept when the file is already an RGB/grey JPEG and nothing
    has to change; otherwise it is converted to RGB, banner-cropped / resized, saved as JPEG.
    """
    from PIL import Image

    from .rgb import to_rgb

    raw = item.path.read_bytes()
    with Image.open(io.BytesIO(raw)) as im:
        im.load()  # full decode: raises OSError on truncated data
        fmt, (w, h) = im.format, im.size
        crop = item.crop_bottom
        if crop and h <= crop:
            raise ValueError(f"image is {h} px tall, cannot remove a {crop} px banner")
        hc = h - crop
        scale = 1.0
        if max_side and min(w, hc) > max_side:
            scale = max_side / min(w, hc)
        if fmt == "JPEG" and im.mode in ("RGB", "L") and not crop and scale == 1.0:
            return raw, w, h, 1.0, False
        img = to_rgb(im)
    if crop:
        img = img.crop((0, 0, w, hc))
    if scale != 1.0:
        size = (max(1, round(w * scale)), max(1, round(hc * scale)))
        img = img.resize(size, Image.BICUBIC, reducing_gap=3.0)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue(), img.width, img.height, scale, True


def _scaled_extra(extra: dict[str, Any], scale: float, height: int) -> dict[str, Any]:
    """Bounding boxes follow the stored image: scaled with it and clipped to a cropped banner."""
    out = dict(extra)
    if "bbox" in out:
        x, y, bw, bh = (float(v) * scale for v in out["bbox"])
        bh = max(0.0, min(bh, height - y))
        out["bbox"] = [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)]
    return out


def _reason(e: Exception) -> str:
    """A short reason for a skipped file (PIL's messages name an in-memory buffer, not the file)."""
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "not an image file Pillow can read"
    if isinstance(e, OSError) and "runcat" in str(e):
        return f"truncated image ({e})"
    return f"{type(e).__name__}: {e}"


def _add(tw: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add one member with fixed metadata, so equal inputs give byte-identical shards."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = len(data), 0, 0o444
    tw.addfile(ti, io.BytesIO(data))


def write_shard(job: ShardJob) -> tuple[ShardRecord, list[dict[str, str]]]:
    """Write one shard (the WebDataset tar format: KEY.ext members, grouped by KEY) to NAME.tmp then
    rename; unreadable images are skipped with their reason."""
    final = job.out / job.name
    tmp = job.out / (job.name + ".tmp")
    skipped: list[dict[str, str]] = []
    count = 0
    with open(tmp, "wb") as f:
        tw = tarfile.open(fileobj=f, mode="w|", format=tarfile.USTAR_FORMAT)
        for key, it, cname in job.items:
            try:
                jpg, w, h, scale, reenc = encode_image(it, job.max_side)
            except Exception as e:  # truncated / unreadable / not an image: skip, never fatal
                skipped.append({"path": str(it.path), "split": job.split, "shard": job.name, "reason": _reason(e)})
                continue
            try:
                rel = it.path.relative_to(job.root).as_posix()
            except ValueError:
                rel = str(it.path)
            meta = {"path": rel, "class": cname, "label": it.label, "split": job.split,
                    "width": w, "height": h, **_scaled_extra(it.extra, scale, h)}
            if reenc:
                meta["reencoded"] = True
            _add(tw, f"{key}.cls", str(it.label).encode())
            _add(tw, f"{key}.jpg", jpg)
            _add(tw, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
            count += 1
        tw.close()
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    rec = ShardRecord(job.name, count, sha256_file(final), final.stat().st_size, job.plan)
    return rec, skipped


def sample_key(split: str, i: int) -> str:
    """The WebDataset key of the i-th sample of `split`, free of dots.

    WebDataset cuts a member name at its first dot into key and extension, so a dot in the key
    (an ImageFolder split folder named `val.v2`) would merge a shard's samples into one. The split
    keeps its name everywhere else (manifest, shard names); keys only need to be unique in a shard.
    """
    return f"{split.replace('.', '_')}_{i:07d}"


def plan_jobs(index: DatasetIndex, out: Path, shard_size: int, max_side: int | None,
              seed: int, shuffle: bool) -> list[ShardJob]:
    """Cut each split into shards of `shard_size` items, shuffled once (seeded) so shards mix classes."""
    jobs = []
    for split, items in index.splits.items():
        items = list(items)
        if shuffle:
            random.Random(f"{seed}:{split}").shuffle(items)
        keyed = [(sample_key(split, i), it, index.classes[it.label]) for i, it in enumerate(items)]
        for s in range(0, len(keyed), shard_size):
            job = ShardJob(split, f"{split}-{s // shard_size:06d}.tar", out, index.root,
                           keyed[s:s + shard_size], max_side)
            job.plan = _plan_digest(job)
            jobs.append(job)
    return jobs


def _earlier_manifests(out: Path) -> list[Manifest]:
    """The manifests an earlier finished (manifest.json) or interrupted (partial) run left in `out`."""
    found = []
    for name in (MANIFEST_NAME, PARTIAL_NAME):
        p = out / name
        if not p.is_file():
            continue
        try:
            found.append(Manifest.from_dict(json.loads(p.read_text())))
        except Exception:
            continue  # a damaged record file only costs a rewrite
    return found


def _same_folder(recorded: str, root: Path) -> bool:
    """Whether a manifest's `source` names `root` (older manifests may hold a relative path)."""
    return recorded == str(root) or Path(recorded).expanduser().resolve() == root.resolve()


def _claim_folder(out: Path, index: DatasetIndex, overwrite: bool) -> None:
    """Refuse `out` when it holds another dataset's shards (a manifest naming another dataset, layout or
    source), unless `overwrite`; with `overwrite`, delete the shards its manifests list and the manifests.
    The same dataset again is a resume and passes untouched."""
    earlier = _earlier_manifests(out)
    if overwrite:
        for m in earlier:
            for r in (r for rs in m.splits.values() for r in rs):
                if Path(r.name).name == r.name:  # a file of `out` itself, never a path leading elsewhere
                    (out / r.name).unlink(missing_ok=True)
        for name in (MANIFEST_NAME, PARTIAL_NAME):
            (out / name).unlink(missing_ok=True)
        return
    for m in earlier:
        if (m.dataset, m.layout) != (index.name, index.layout) or not _same_folder(m.source, index.root):
            raise ShardFolderInUseError(
                f"{out} holds the shards of dataset {m.dataset!r} ({m.layout} from {m.source}), not of "
                f"{index.name!r} ({index.layout} from {index.root}): pass --overwrite to replace them, "
                "or choose another --out")


def _previous_records(out: Path) -> tuple[dict[str, ShardRecord], dict[str, list[dict[str, str]]]]:
    """Shard records (and their skipped files) from an earlier finished or interrupted run."""
    recs: dict[str, ShardRecord] = {}
    skipped: dict[str, list[dict[str, str]]] = {}
    for m in _earlier_manifests(out):
        for r in (r for rs in m.splits.values() for r in rs):
            recs[r.name] = r
        for s in m.skipped:
            same = skipped.setdefault(s.get("shard", ""), [])
            if s not in same:  # both record files may list it
                same.append(s)
    return recs, skipped


def _reusable(job: ShardJob, rec: ShardRecord | None) -> bool:
    path = job.out / job.name
    if rec is None or rec.plan != job.plan or not path.is_file() or path.stat().st_size != rec.bytes:
        return False
    return sha256_file(path) == rec.sha256


def _manifest(index: DatasetIndex, jobs: list[ShardJob], done: dict[str, ShardRecord],
              skipped: list[dict[str, str]], options: dict[str, Any]) -> Manifest:
    splits: dict[str, list[ShardRecord]] = {s: [] for s in index.splits}
    for j in jobs:
        if j.name in done:
            splits[j.split].append(done[j.name])
    return Manifest(dataset=index.name, classes=index.classes, splits=splits, layout=index.layout,
                    source=str(index.root), options=options, skipped=skipped)


class Terminated(BaseException):
    """SIGTERM arrived while shards were being written (the writer's SIGINT is KeyboardInterrupt)."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While shards are written, SIGTERM raises Terminated, so the writer ends its workers and records
    its finished shards instead of dying with its workers orphaned. Only where Python can install a
    handler (the main thread) and nothing else handles SIGTERM already."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def raise_terminated(signum: int, frame: Any) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold a second Ctrl-C / SIGTERM until the clean-up after the first is done; it is delivered after."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _ignore_sigint() -> None:
    """Worker initializer: Ctrl-C in a terminal reaches the whole process group; the main process
    alone decides, and ends the workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


Finish = Callable[[ShardJob, ShardRecord, list[dict[str, str]]], None]


def _write_in_processes(todo: list[ShardJob], workers: int, finish: Finish) -> None:
    """Write `todo` in `workers` spawned processes, calling `finish` as each shard completes.

    On any exception (Ctrl-C, SIGTERM, a failing shard) the workers are ended at once -- the
    executor's own shutdown would first run every queued shard -- and every shard that did
    complete is still passed to `finish` before the exception goes on.
    """
    before = set(mp.active_children())
    ex = ProcessPoolExecutor(min(workers, len(todo)), mp_context=mp.get_context("spawn"), initializer=_ignore_sigint)
    futures: dict[Future, ShardJob] = {}
    try:
        for j in todo:
            futures[ex.submit(write_shard, j)] = j
        for fut in as_completed(futures):
            finish(futures[fut], *fut.result())
    except BaseException:
        with _signals_held():
            ours = set(mp.active_children()) - before  # the pool's workers (spawned, never anyone else's)
            for proc in ours:
                proc.terminate()
            for proc in ours:
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            ex.shutdown(wait=True, cancel_futures=True)
            for fut, j in futures.items():
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    finish(j, *fut.result())
        raise
    ex.shutdown()


def write_dataset(layout: str, root: Path, out: Path, shard_size: int = 1000, max_side: int | None = None,
                  workers: int = 1, *, seed: int = 0, shuffle: bool = True, progress: bool = True,
                  val_fraction: float = 0.1, overwrite: bool = False, **layout_opts: Any) -> Path:
    """Write `root` (in `layout`) as shards into `out`; returns the manifest path. Resumes earlier runs.

    A dataset without a val split gets one carved from train (`val_fraction`, stratified, seeded by
    `seed`; shards/carve.py), so studies never select on test data. An `out` holding another
    dataset's shards raises ShardFolderInUseError unless `overwrite` (which deletes them first).
    Interrupted (KeyboardInterrupt, or Terminated on SIGTERM), it records every finished shard in
    manifest.partial.json before the exception goes on.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if max_side is not None and max_side < 8:
        raise ValueError(f"max_side must be >= 8 px, got {max_side}")
    root, out = Path(root).expanduser().absolute(), Path(out).expanduser()
    index = carve_validation(index_dataset(layout, root, **layout_opts), val_fraction, seed)
    _claim_folder(out, index, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.tar.tmp"):
        stale.unlink()
    jobs = plan_jobs(index, out, shard_size, max_side, seed, shuffle)
    options = {"shard_size": shard_size, "max_side": max_side, "seed": seed, "shuffle": shuffle,
               "jpeg_quality": JPEG_QUALITY, **index.options}
    prev, prev_skipped = _previous_records(out)
    done: dict[str, ShardRecord] = {}
    skipped: list[dict[str, str]] = []
    todo = []
    for j in jobs:
        if _reusable(j, prev.get(j.name)):
            done[j.name] = prev[j.name]
            skipped += prev_skipped.get(j.name, [])
        else:
            todo.append(j)
    kept = len(done)
    total = sum(len(j.items) for j in jobs)

    def record() -> None:
        save_manifest(_manifest(index, jobs, done, skipped, options), out / PARTIAL_NAME)

    if todo:  # shards are about to change: the folder's state is the partial manifest until the end
        record()
        (out / MANIFEST_NAME).unlink(missing_ok=True)

    from tqdm import tqdm

    bar = tqdm(total=total, initial=sum(len(j.items) for j in jobs if j.name in done), unit="img",
               desc=f"{index.name} -> {out}", disable=not progress, file=sys.stderr)

    def finish(job: ShardJob, rec: ShardRecord, sk: list[dict[str, str]]) -> None:
        if job.name in done:
            return
        done[job.name] = rec
        skipped.extend(sk)
        record()
        bar.update(len(job.items))

    with _sigterm_raises():  # around the clean-up too: a second SIGTERM held there still raises after it
        try:
            if workers <= 1 or len(todo) <= 1:
                for j in todo:
                    finish(j, *write_shard(j))
            else:
                _write_in_processes(todo, workers, finish)
        except BaseException:
            with _signals_held():  # what is finished stays recorded; half-written shards go
                record()
                for stale in out.glob("*.tar.tmp"):
                    stale.unlink(missing_ok=True)
            raise
        finally:
            bar.close()
    manifest = _manifest(index, jobs, done, skipped, options)
    path = out / MANIFEST_NAME
    save_manifest(manifest, path)
    (out / PARTIAL_NAME).unlink(missing_ok=True)
    if progress:
        print(summary(manifest, kept=kept), file=sys.stderr)
    return path


def recorded_shards(out: Path) -> int:
    """Finished shards an interrupted run recorded in `out`'s partial manifest (0 when none)."""
    try:
        m = Manifest.from_dict(json.loads((Path(out).expanduser() / PARTIAL_NAME).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return sum(len(rs) for rs in m.splits.values())


def summary(m: Manifest, kept: int = 0) -> str:
    """Human summary: images per split, classes, bytes, skipped files with reasons."""
    n_shards = sum(len(v) for v in m.splits.values())
    size = sum(r.bytes for v in m.splits.values() for r in v)
    per_split = ", ".join(f"{s} {m.split_size(s)}" for s in m.splits)
    lines = [f"{m.dataset}: {sum(m.split_size(s) for s in m.splits)} images ({per_split}), "
             f"{m.num_classes} classes, {n_shards} shards, {size / 1e6:.1f} MB"
             + (f", {kept} shards kept from an earlier run" if kept else "")]
    if m.skipped:
        lines.append(f"skipped {len(m.skipped)} unreadable files:")
        lines += [f"  {s['path']}: {s['reason']}" for s in m.skipped]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m shards.write",
        description="Write a dataset in its official layout as WebDataset tar shards + manifest.json.")
    p.add_argument("layout", choices=LAYOUTS, help="dataset layout of --root")
    p.add_argument("--root", required=True, type=Path, help="dataset folder as its official release unpacks")
    p.add_argument("--out", required=True, type=Path, help="folder for the shards and manifest.json")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--max-side", type=int, default=None,
                   help="resize so the shorter side is at most this many pixels (default: keep)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="parallel writer processes (default min(4, CPUs))")
    p.add_argument("--seed", type=int, default=0, help="seed of the one-off sample shuffle (default 0)")
    p.add_argument("--no-shuffle", action="store_true", help="keep the source order inside shards")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of each class of train moved to a 'val' split when the dataset has none "
                        "(CUB, Cars), seeded by --seed; studies select on val, never test (default 0.1; 0: none)")
    p.add_argument("--name", default=None, help="dataset name in the manifest (default: the layout's)")
    p.add_argument("--level", choices=("variant", "family", "manufacturer"), default="variant",
                   help="aircraft: label granularity (default variant, 100 classes)")
    p.add_argument("--aircraft-trainval", action="store_true",
                   help="aircraft: also write the official trainval split")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what --out holds even when its manifest names another dataset, layout or "
                        "source (its listed shards are deleted first); without it such a folder is refused, "
                        "and the same dataset again resumes")
    p.add_argument("--quiet", action="store_true",
                   help="print nothing but errors (no progress bar, summary or manifest path)")
    return p


def layout_options(args: argparse.Namespace) -> dict[str, Any]:
    """The CLI options that apply to the chosen layout."""
    opts: dict[str, Any] = {}
    if args.name:
        opts["name"] = args.name
    if args.layout == "aircraft":
        opts.update(level=args.level, trainval=args.aircraft_trainval)
    return opts


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = write_dataset(args.layout, args.root, args.out, args.shard_size, args.max_side, args.workers,
                             seed=args.seed, shuffle=not args.no_shuffle, progress=not args.quiet,
                             val_fraction=args.val_fraction, overwrite=args.overwrite, **layout_options(args))
    except (DatasetLayoutError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as e:
        for held in (signal.SIGINT, signal.SIGTERM):  # stopping already: a repeated signal changes nothing
            signal.signal(held, signal.SIG_IGN)
        sig = signal.SIGINT if isinstance(e, KeyboardInterrupt) else signal.SIGTERM
        print(f"stopped by {sig.name}: {recorded_shards(args.out)} finished shards are recorded in "
              f"{args.out / PARTIAL_NAME}; run the same command again to resume", file=sys.stderr)
        return 128 + sig
    if not args.quiet:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
