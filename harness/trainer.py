"""TorchTrainer wiring: the config's scaling and run sections turned into Ray Train objects."""
from __future__ import annotations

from typing import Any

import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from harness.config import TrainConfig, to_dict
from harness.node_loss import fit_through_node_loss
from shards.urls import is_remote, local_path


def storage_uri(storage: str) -> str:
    """Ray needs absolute local paths; bucket URIs (s3://, gs://) pass through."""
    return storage if is_remote(storage) else str(local_path(storage).resolve())


def worker_resources(cfg: TrainConfig) -> dict[str, float]:
    """Per-worker resources: CPUs and GPUs from the config plus any custom resources."""
    resources: dict[str, float] = {"CPU": cfg.scaling.cpus_per_worker, **cfg.scaling.resources_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = cfg.scaling.worker_gpus
    return resources


def lazy_train_loop(config: dict[str, Any]) -> None:
    """The Train workers' entry point. The model code (timm, torchvision, cmd_model) is imported
    here, on the worker: a trial's driver, which only builds the trainer, never pays for it."""
    from harness.train_loop import train_loop_per_worker

    train_loop_per_worker(config)


def build_trainer(cfg: TrainConfig, name: str, callbacks: list[Any] | None = None,
                  verbose: bool = False) -> TorchTrainer:
    """One run = one TorchTrainer; rerun with the same storage and `name` resumes it.

    Ray Train's own INFO logs (placement, per-report lines) only with `verbose`.
    """
    return TorchTrainer(
        lazy_train_loop,
        train_loop_config=to_dict(cfg),
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker=worker_resources(cfg),
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_uri(cfg.run.storage),
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            # Keep the two latest measured epochs (Train keeps the latest checkpoint besides):
            # the objective's checkpoint is the last measured one (harness/objective.py).
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="probed_epoch", checkpoint_score_order="max"
            ),
            callbacks=callbacks or [],
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        ),
    )



def fit(cfg: TrainConfig, name: str, callbacks: list[Any] | None = None, verbose: bool = False) -> ray.train.Result:
    """Run (or resume) the TorchTrainer named `name`, through up to `run.max_node_losses` lost nodes."""
    return fit_through_node_loss(lambda: build_trainer(cfg, name, callbacks, verbose), cfg.run.max_node_losses, name)
