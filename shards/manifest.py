"""manifest.json: what a shard folder holds (splits, shards, counts, checksums, classes).

The manifest is the single source of truth the loader trusts: split sizes fix the epoch
length, sha256 per shard catches corruption before training reads it.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ManifestError, ShardIntegrityError
from .urls import is_remote, join, local_path, open_url

MANIFEST_NAME = "manifest.json"
PARTIAL_NAME = "manifest.partial.json"
FORMAT_VERSION = 1


def tool_version() -> str:
    """The installed cmd-harness version, recorded so a manifest says what wrote it."""
    try:
        from importlib.metadata import version

        return version("cmd-harness")
    except Exception:
        return "0+unknown"


@dataclass
class ShardRecord:
    """One tar shard: file name (relative to the manifest), samples, sha256, size in bytes."""

    name: str
    count: int
    sha256: str
    bytes: int
    plan: str = ""  # digest of the source items + options that produced it (resume check)


@dataclass
class Manifest:
    """A shard folder's contents. `base` is where it was loaded from (not saved)."""

    dataset: str
    classes: list[str]
    splits: dict[str, list[ShardRecord]]
    layout: str = ""
    source: str = ""  # the dataset root that was written
    options: dict[str, Any] = field(default_factory=dict)
    version: str = field(default_factory=tool_version)
    skipped: list[dict[str, str]] = field(default_factory=list)
    format: int = FORMAT_VERSION
    base: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def shards(self, split: str) -> list[ShardRecord]:
        """The split's shard records; a missing split names the ones that exist."""
        if split not in self.splits:
            hint = ("; rewrite the shards with `python -m shards.write ... --val-fraction 0.1` to carve a "
                    "validation split from train" if split == "val" and "train" in self.splits else "")
            raise ManifestError(
                f"split {split!r} is not in {self.location()} (it has: {', '.join(self.splits) or 'none'}){hint}"
            )
        return self.splits[split]

    def split_size(self, split: str) -> int:
        return sum(r.count for r in self.shards(split))

    def shard_url(self, record: ShardRecord) -> str:
        return join(self.base, record.name)

    def location(self) -> str:
        return join(self.base, MANIFEST_NAME) if self.base else MANIFEST_NAME

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("base")
        d["splits"] = {
            s: {"count": sum(r.count for r in recs), "shards": [asdict(r) for r in recs]}
            for s, recs in self.splits.items()
        }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: str = "") -> Manifest:
        splits = {
            s: [ShardRecord(**r) for r in (v["shards"] if isinstance(v, dict) else v)]
            for s, v in d.get("splits", {}).items()
        }
        known = {k: d[k] for k in ("layout", "source", "options", "version", "skipped", "format") if k in d}
        return cls(dataset=d["dataset"], classes=list(d["classes"]), splits=splits, base=base, **known)


def save_manifest(manifest: Manifest, path: Path) -> None:
    """Write atomically (tmp + rename) so an interrupted write never leaves half a manifest."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def manifest_location(path_or_dir: str | os.PathLike) -> tuple[str, str]:
    """(the manifest's path or URL, the shard folder its names are relative to) for a shard
    folder / URL prefix or the manifest file itself."""
    s = str(path_or_dir)
    if s.endswith(".json"):
        base = s.rsplit("/", 1)[0] if "/" in s else "."
        return s, base if is_remote(s) else str(local_path(s).parent)
    return join(s, MANIFEST_NAME), s


def load_manifest(path_or_dir: str | os.PathLike) -> Manifest:
    """Read a manifest from a shard folder / URL prefix or the manifest file itself."""
    url, base = manifest_location(path_or_dir)
    if not is_remote(url) and not local_path(url).is_file():
        hint = ""
        if local_path(base).is_dir() and (local_path(base) / PARTIAL_NAME).exists():
            hint = " (a manifest.partial.json is there: the write was interrupted; run it again to resume)"
        raise ManifestError(f"no shard manifest at {url}{hint}; write one with `python -m shards.write`")
    try:
        with open_url(url) as f:
            raw = f.read()
    except Exception as e:  # unreadable
        raise ManifestError(f"cannot read shard manifest {url}: {type(e).__name__}: {e}") from e
    return parse_manifest(raw, url, base)


def parse_manifest(raw: bytes, url: str, base: str) -> Manifest:
    """The manifest in `raw` (read from `url`), or a ManifestError naming `url`: not JSON, a
    field missing, or a shard record whose name, count, size or sha256 has the wrong type."""
    try:
        manifest = Manifest.from_dict(json.loads(raw.decode("utf-8")), base=base)
    except Exception as e:  # not UTF-8 / not JSON / wrong fields
        raise ManifestError(f"cannot read shard manifest {url}: {type(e).__name__}: {e}") from e
    for split, records in manifest.splits.items():
        for i, r in enumerate(records):
            if not (isinstance(r.name, str) and isinstance(r.sha256, str)
                    and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (r.count, r.bytes))):
                raise ManifestError(f"shard manifest {url}: shard {i} of split {split!r} needs a name, a count, "
                                    f"a size in bytes and a sha256, got {str(asdict(r))[:200]}")
    return manifest


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file (or URL) streamed in 1 MiB chunks."""
    h = hashlib.sha256()
    with open_url(str(path)) as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


# Shards whose sha256 matched, per process (one per Train worker: once per trial, not per epoch).
# Local: (path, size, mtime_ns) -> sha256, so a rewritten file is hashed again. Remote:
# (url, manifest sha256) -> sha256; a bucket object is not re-downloaded to hash it every epoch.
_VERIFIED: dict[tuple[str, int | str, int], str] = {}


def check_shard(manifest: Manifest, record: ShardRecord, checksum: bool = True) -> None:
    """Raise ShardIntegrityError naming the shard if it is missing, the wrong size or the wrong sha256.

    Remote shards are only checked when `checksum` is set (it downloads them), once per process.
    Local results are cached per process by (path, size, mtime) so each epoch does not re-hash.
    """
    url = manifest.shard_url(record)
    if is_remote(url):
        key = (url, record.sha256, record.bytes)
        if checksum and key not in _VERIFIED:
            try:
                digest = sha256_file(url)
            except Exception as e:
                raise ShardIntegrityError(f"shard {record.name} cannot be read at {url}: {e}") from e
            if digest != record.sha256:
                raise ShardIntegrityError(f"shard {record.name} at {url}: sha256 {digest[:12]}... "
                                          f"!= manifest {record.sha256[:12]}... (corrupted or replaced)")
            _VERIFIED[key] = digest
        return
    p = local_path(url)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ShardIntegrityError(f"shard {record.name} is missing: {p} (listed in {manifest.location()})") from None
    if st.st_size != record.bytes:
        raise ShardIntegrityError(
            f"shard {record.name} at {p} is {st.st_size} bytes, manifest says {record.bytes} (truncated or replaced)")
    if not checksum:
        return
    key = (str(p), st.st_size, st.st_mtime_ns)
    digest = _VERIFIED.get(key) or sha256_file(p)
    if digest != record.sha256:
        raise ShardIntegrityError(
            f"shard {record.name} at {p}: sha256 {digest[:12]}... != manifest {record.sha256[:12]}... (corrupted)")
    _VERIFIED[key] = digest


def verify_split(manifest: Manifest, split: str, checksum: bool = True) -> list[ShardRecord]:
    """The split's shard records, once every one exists (and, with `checksum`, matches its sha256)
    before anything reads it; the error names the first bad shard."""
    recs = manifest.shards(split)
    for rec in recs:
        check_shard(manifest, rec, checksum=checksum)
    return recs
