"""Checks that run in the driver, before Ray starts: a missing dataset, a damaged shard, a
location that cannot be reached or written, or a model the config cannot build fails in
seconds with one line, not in every Ray worker."""
from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path

from harness.config import ConfigError, TrainConfig
from harness.remote_files import REMOTE_TIMEOUT_S, RemoteFileError, file_exists, read_remote, what_failed, within
from shards.config import DataConfig
from shards.demo import ensure_demo_shards
from shards.errors import ManifestError, ShardIntegrityError
from shards.manifest import Manifest, check_shard, load_manifest, manifest_location, parse_manifest
from shards.urls import is_remote, local_path

# Shards hashed before Ray starts when data.verify is on, in bytes; a larger set is checked for
# presence and size here and hashed by the workers, as they always do with data.verify.
PREFLIGHT_HASH_BYTES = 256 * 2**20


def prepare_paths(cfg: TrainConfig, source: str) -> TrainConfig:
    """Make local paths absolute (workers run elsewhere) and make sure the shards are there.

    The demo set is generated on first use; any other missing manifest is an error naming the
    folder and the command that writes shards. The model is checked first: it takes a second,
    generating the demo set takes longer. Where runs are written is checked by the command
    that writes there (`check_writable`).
    """
    check_model_builds(cfg, source)
    if not is_remote(cfg.data.shards):
        shards = local_path(cfg.data.shards).resolve()
        cfg.data.shards = str(shards)
        if cfg.data.demo:
            ensure_demo_shards(shards)
        elif not (shards / "manifest.json").is_file():
            hint = "no such folder" if not shards.exists() else "no manifest.json in it"
            raise ConfigError(
                f"{source}: 'data.shards' = {shards}: {hint}; write shards first with "
                f"`python -m shards.write imagefolder --root DATASET --out {shards}`"
            )
    check_shards(cfg.data, source)
    if not is_remote(cfg.run.storage):
        cfg.run.storage = str(local_path(cfg.run.storage).resolve())
    if cfg.model.init_checkpoint:
        cfg.model.init_checkpoint = check_init_checkpoint(cfg.model.init_checkpoint, source)
    return cfg


def check_shards(data: DataConfig, source: str) -> Manifest:
    """The manifest of `data.shards`, once it reads (a remote one within REMOTE_TIMEOUT_S), holds
    samples in the train and val splits the config names and, for local shards, lists only
    files that are there at their recorded size (and sha256 with data.verify, for sets up to
    PREFLIGHT_HASH_BYTES): what a worker would otherwise find after Ray started."""
    where = f"{source}: 'data.shards' = {data.shards}"
    try:
        if is_remote(data.shards):
            url, base = manifest_location(data.shards)
            manifest = parse_manifest(read_remote(url), url, base)
        else:
            manifest = load_manifest(data.shards)
    except (ManifestError, RemoteFileError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    for key in ("train_split", "val_split"):
        split = getattr(data, key)
        try:
            records = manifest.shards(split)
        except ManifestError as exc:
            raise ConfigError(f"{source}: 'data.{key}': {exc}") from None
        if not any(r.count for r in records):
            raise ConfigError(f"{source}: 'data.{key}': split {split!r} of {manifest.location()} holds no samples")
    if not is_remote(data.shards):
        records = [r for recs in manifest.splits.values() for r in recs]
        checksum = data.verify and sum(r.bytes for r in records) <= PREFLIGHT_HASH_BYTES
        try:
            for record in records:
                check_shard(manifest, record, checksum=checksum)
        except ShardIntegrityError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return manifest


def check_writable(folder: str, what: str, source: str) -> None:
    """Write and remove a file in the local folder `folder`, so a run folder that cannot be
    written fails here, in one line, not when the first checkpoint is saved. Folders it had to
    create are removed again: a run refused later (say, by the cluster) leaves nothing behind."""
    path = Path(folder)
    created = [p for p in (path, *path.parents) if not p.exists()]
    probe = path / f".write-check-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{source}: {what} = {folder}: cannot write there: "
                          f"{exc.strerror or type(exc).__name__}") from None
    finally:
        for made in created:  # deepest first
            if made.is_dir() and not any(made.iterdir()):
                made.rmdir()


def check_init_checkpoint(location: str, source: str) -> str:
    """The init checkpoint as every worker will read it: a local path made absolute, or a
    bucket URI (s3://, gs://) checked through pyarrow.fs from the driver within REMOTE_TIMEOUT_S."""
    from harness.checkpoint import COMMIT_FILE, STATE_FILE, damage

    if not is_remote(location):
        location = str(local_path(location).resolve())
    try:
        found = within(REMOTE_TIMEOUT_S, lambda: file_exists(location))
    except Exception as exc:  # unknown scheme, no credentials, unreachable bucket, no answer
        raise ConfigError(f"{source}: 'model.init_checkpoint' = {location}: {what_failed(exc)}") from None
    if not found:
        raise ConfigError(f"{source}: 'model.init_checkpoint' = {location}: no such file")
    folder = Path(location).parent
    if not is_remote(location) and Path(location).name == STATE_FILE and (folder / COMMIT_FILE).exists():
        problem = damage(folder)  # a run's checkpoint: as committed, as a resume would require
        if problem:
            raise ConfigError(f"{source}: 'model.init_checkpoint' = {location}: {problem}")
    return location


def check_model_builds(cfg: TrainConfig, source: str) -> None:
    """Build the student, the teacher and the loss once (random init, no checkpoint: its file is
    checked above), run one small batch of the configured crops through them, and take the probe
    feature of one eval crop. An unknown timm name or kwarg, model.conv_stem on a Swin, a crop
    size the backbone cannot take or a probe feature it has no (last4cls on a Swin) becomes one
    line naming the file, not an error in every Ray worker."""
    import torch

    from cmd_model.loss import CMDLoss, NonFiniteLossError
    from cmd_model.network import build_networks

    crops = cfg.data.crops
    # the 2 global views and one local view (the others have its shape); BatchNorm needs 2 images
    sizes = [crops.global_size] * 2 + [crops.local_size] * min(crops.local_crops, 1)
    batch = 2 if cfg.model.use_bn_in_head else 1
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            student, teacher = build_networks(replace(cfg.model, init_checkpoint=None), cfg.loss)
            loss = CMDLoss(cfg.model.out_dim, cfg.loss)
            views = [torch.zeros(batch, 3, s, s) for s in sizes]
            # This checks what is built, not the values: a non-finite loss is the train loop's to
            # report, with its epoch, step and term (harness/train_loop.py).
            with contextlib.suppress(NonFiniteLossError):
                loss(student(views), teacher(views[:2]), cfg.loss.teacher_temp)
            eval_crop = torch.zeros(1, 3, crops.eval_size, crops.eval_size)
            teacher.backbone.features(eval_crop, cfg.eval.probe_feature)
    except (ValueError, RuntimeError, AssertionError) as exc:  # timm asserts on input sizes
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{source}: {first}") from exc
