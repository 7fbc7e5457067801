"""Checks that run in the driver, before Ray starts: a missing dataset or a model the config
cannot build fails in a second, not in every Ray worker."""
from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

from harness.config import ConfigError, TrainConfig
from shards.demo import ensure_demo_shards
from shards.urls import is_remote, local_path


def prepare_paths(cfg: TrainConfig, source: str) -> TrainConfig:
    """Make local paths absolute (workers run elsewhere) and make sure the shards exist.

    The demo set is generated on first use; any other missing manifest is an error naming the
    folder and the command that writes shards. The model is checked first: it takes a second,
    generating the demo set takes longer.
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
    if not is_remote(cfg.run.storage):
        cfg.run.storage = str(local_path(cfg.run.storage).resolve())
    if cfg.model.init_checkpoint:
        cfg.model.init_checkpoint = check_init_checkpoint(cfg.model.init_checkpoint, source)
    return cfg


def check_init_checkpoint(location: str, source: str) -> str:
    """The init checkpoint as every worker will read it: a local path made absolute, or a
    bucket URI (s3://, gs://) checked through pyarrow.fs from the driver."""
    from cmd_model.init_checkpoint import checkpoint_exists
    from harness.checkpoint import COMMIT_FILE, STATE_FILE, damage

    if not is_remote(location):
        location = str(local_path(location).resolve())
    try:
        found = checkpoint_exists(location)
    except (OSError, ValueError) as exc:  # unknown scheme, no credentials, unreachable bucket
        raise ConfigError(f"{source}: 'model.init_checkpoint' = {location}: {exc}".splitlines()[0]) from None
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
