"""Error types of the shard package, so callers can catch data problems by kind."""
from __future__ import annotations


class DatasetLayoutError(ValueError):
    """A dataset folder is missing or is not in the layout asked for (message names path + expectation)."""


class ManifestError(ValueError):
    """A manifest is missing, unreadable, or lacks the split asked for."""


class ShardIntegrityError(RuntimeError):
    """A shard is missing, or its sha256 / size differs from the manifest (message names the shard)."""


class ShardFolderInUseError(ValueError):
    """A shard writer's output folder holds another dataset's shards (message names both datasets)."""


class ShardReadError(ShardIntegrityError):
    """Reading a shard failed (missing at its URL, or part-way); `reason` says why without naming it again."""

    def __init__(self, shard: str, url: str, reason: str) -> None:
        super().__init__(f"shard {shard} at {url} {reason}")
        self.reason = reason
