"""Checks that run in the driver, before Ray starts: a missing dataset or a model the config
cannot build fails in a second, not in every Ray worker."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from harness.config import ConfigError, TrainConfig
from shards.demo import ensure_demo_shards


def is_remote(location: str) -> bool:
    return "://" in location or location.startswith("pipe:")


def prepare_paths(cfg: TrainConfig, source: str) -> TrainConfig:
    """Make local paths absolute (workers run elsewhere) and make sure the shards exist.

    The demo set is generated on first use; any other missing manifest is an error naming the
    folder and the command that writes shards. The model is checked first: it takes a second,
    generating the demo set takes longer.
    """
    check_model_builds(cfg, source)
    if not is_remote(cfg.data.shards):
        shards = Path(cfg.data.shards).expanduser().resolve()
        cfg.data.shards = str(shards)
        if cfg.data.demo:
            ensure_demo_shards(shards)
        elif not (shards / "manifest.json").is_file():
            hint = "no such folder" if not shards.exists() else "no manifest.json in it"
            raise ConfigError(
                f"{source}: 'data.shards' = {shards}: {hint}; write shards first with "
                f"`python -m shards.write imagefolder --root DATASET --out {shards}`"
            )
    if not is_remote(cfg.run.storage):
        cfg.run.storage = str(Path(cfg.run.storage).expanduser().resolve())
    if cfg.model.init_checkpoint:
        cfg.model.init_checkpoint = check_init_checkpoint(cfg.model.init_checkpoint, source)
    return cfg


def check_init_checkpoint(location: str, source: str) -> str:
    """The init checkpoint as every worker will read it: a local path made absolute, or a
    bucket URI (s3://, gs://, file://) checked through pyarrow.fs from the driver."""
    from cmd_model.init_checkpoint import checkpoint_exists, is_uri

    if not is_uri(location):
        location = str(Path(location).expanduser().resolve())
    try:
        found = checkpoint_exists(location)
    except (OSError, ValueError) as exc:  # unknown scheme, no credentials, unreachable bucket
        raise ConfigError(f"{source}: 'model.init_checkpoint' = {location}: {exc}".splitlines()[0]) from None
    if not found:
        raise ConfigError(f"{source}: 'model.init_checkpoint' = {location}: no such file")
    return location


def check_model_builds(cfg: TrainConfig, source: str) -> None:
    """Build the backbone once (random init, no checkpoint: its file is checked above): an unknown
    timm name or kwarg, or model.conv_stem on a Swin, becomes one line naming the file."""
    from cmd_model.backbone import build_backbone

    try:
        build_backbone(replace(cfg.model, init_checkpoint=None))
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
