"""The Ray Train loop run by every worker: stream crops, CMD step, probe, report, checkpoint.

Every rank calls `ray.train.report` once per epoch (and at step checkpoints): the call is a
barrier, and only rank 0's metrics reach Tune (Ray 2.60), so rank 0 also runs the probe. What an
epoch measured is harness/epoch_meter.py, its report and checkpoint harness/epoch_report.py,
its TensorBoard events and benchmark marks harness/run_logs.py.
"""
from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import ray.train
import ray.train.torch
import torch

from cmd_model.engine import CMDEngine
from cmd_model.loss import NonFiniteLossError
from harness.backbone_eval import evaluate_backbone
from harness.checkpoint import rng_state, set_rng_state
from harness.config import TrainConfig, build_config
from harness.epoch_meter import EpochMeter, progress_line
from harness.epoch_report import report, restore, run_state
from harness.gpu_check import require_usable_gpu
from harness.objective import EVAL_METRICS, is_probed
from harness.remote_files import read_checkpoint
from harness.run_logs import EpochLog, TimeMarks
from shards.augment import to_model_input
from shards.pipeline import steps_per_epoch, train_loader


class NonFiniteTrainingError(RuntimeError):
    """A loss went NaN/inf: the run stops, and the message names epoch, step and term."""


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision per the config: bf16 where the GPU has it, fp16 with a scaler before."""
    if setting == "none" or device.type != "cuda":
        return None
    if setting == "bf16" or (setting == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: `config` is `to_dict(TrainConfig)`, already validated."""
    cfg: TrainConfig = build_config(config, source="train_loop_config")
    if cfg.scaling.use_gpu:  # a driver too old for this torch fails here in one line, not mid-step
        require_usable_gpu()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    marks = TimeMarks(cfg.run.storage, context.get_experiment_name(), rank, cfg.run.time_marks)
    device = ray.train.torch.get_device()
    threads = cfg.run.torch_threads or max(1, int(cfg.scaling.cpus_per_worker))
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.run.seed)  # identical init on every rank before DDP broadcasts

    steps = steps_per_epoch(cfg.data, world)
    global_batch = cfg.data.batch_size * world * cfg.optim.accumulate
    engine = CMDEngine(cfg.model, cfg.loss, cfg.optim, steps_per_epoch=steps,
                       global_batch=global_batch, device=device,
                       wrap_student=ray.train.torch.prepare_model,
                       amp_dtype=amp_dtype(cfg.scaling.amp, device), read_checkpoint=read_checkpoint)
    views_rng = torch.Generator(device="cpu")
    marks.mark("engine_ready")

    start_epoch, start_step, best, history = 0, 0, 0.0, []
    saved = restore(engine, config, rank)
    if saved is not None:
        start_epoch, start_step = saved["epoch"], saved["step"]
        best, history = saved["best_probe_top1"], list(saved["history"])
        set_rng_state(saved["epoch_rng"] if start_step else saved["rng"])
        if rank == 0:
            print(f"[train] resumed at epoch {start_epoch + 1}, step {start_step}", flush=True)

    if saved is not None and start_epoch >= cfg.optim.epochs and history:
        # Resumed after its last epoch (e.g. a study's driver died just as the run ended):
        # report the final metrics again so Tune sees them, then stop.
        report(history[-1], None, rank, cfg.run.checkpoint_upload)
        return
    log = EpochLog(cfg.run.storage, context.get_experiment_name(), rank)
    for epoch in range(start_epoch, cfg.optim.epochs):
        epoch_rng = rng_state()
        t_epoch = time.time()
        loader = iter(train_loader(cfg.data, rank, world, epoch))
        t_loader = time.time()
        first = start_step if epoch == start_epoch else 0
        for _ in range(first):  # mid-epoch resume: replay the loader to its position
            next(loader)
        if first and saved is not None:
            set_rng_state(saved["rng"])
        step_state = functools.partial(run_state, engine, cfg, epoch, best=best, history=history, epoch_rng=epoch_rng)
        meter = _train_epoch(engine, cfg, loader, epoch, range(first, steps), views_rng, rank, world, device,
                             marks, step_state)
        epoch_metrics = meter.summary()
        t_steps_end = time.time()
        done = epoch + 1
        # Only a measured epoch carries probe values; others report NaN, never an older value
        # (harness/objective.py). `probed_epoch` ranks checkpoints, so the last measured one is kept.
        probed = is_probed(done, cfg.eval.probe_every, cfg.optim.epochs)
        evaluation = _measure(engine, cfg, device) if probed and rank == 0 else {}
        probe_s = evaluation.get("probe_seconds", 0.0)
        best = max(best, evaluation.get("probe_top1", 0.0))
        epoch_metrics.update(evaluation)
        epoch_metrics.update(epoch=done, best_probe_top1=best, probed_epoch=done if probed else -1)
        for key in EVAL_METRICS:
            epoch_metrics.setdefault(key, float("nan"))
        history.append({k: float(v) for k, v in epoch_metrics.items()})
        state = run_state(engine, cfg, done, 0, best, history, rng_state())
        log.write(done, epoch_metrics)
        if rank == 0:
            print("[train] " + progress_line(done, cfg.optim.epochs, epoch_metrics), flush=True)
        t_report = time.time()
        report(epoch_metrics, state, rank, cfg.run.checkpoint_upload)
        marks.epoch(epoch=done, start=t_epoch, loader_ready=t_loader, steps_end=t_steps_end, step_s=meter.step_time,
                    wait_s=meter.data_wait, probe_s=probe_s, report_start=t_report, report_end=time.time())
        if done == cfg.run.stop_after_epoch and done < cfg.optim.epochs:
            if rank == 0:
                print(f"[train] stopping after epoch {done} as asked (run.stop_after_epoch); "
                      "rerun without it to continue", flush=True)
            return


def _train_epoch(engine: CMDEngine, cfg: TrainConfig, loader: Any, epoch: int, steps: range,
                 views_rng: torch.Generator, rank: int, world: int, device: torch.device, marks: TimeMarks,
                 step_state: Callable[[int], dict[str, Any]]) -> EpochMeter:
    """The train steps of one epoch (from a resumed step on), with step checkpoints when
    `run.checkpoint_every_steps` asks; a non-finite loss stops the run naming epoch, step and term."""
    meter = EpochMeter()
    total = steps.stop
    for step in steps:
        t0 = time.perf_counter()
        batch = next(loader)
        t1 = time.perf_counter()
        marks.mark("first_step_start")
        views_rng.manual_seed(hash((cfg.run.seed, epoch, step, rank)) % 2**63)  # resumable
        views = to_model_input(batch["globals"] + batch["locals"], cfg.data.crops, device, views_rng)
        try:
            metrics = engine.train_step(views, epoch * total + step, epoch)
        except NonFiniteLossError as exc:  # names the term; add where it happened
            raise NonFiniteTrainingError(f"epoch {epoch + 1} step {step}: {exc}") from exc
        if not math.isfinite(metrics.get("loss", 0.0)):
            raise NonFiniteTrainingError(f"epoch {epoch + 1} step {step}: loss is {metrics['loss']}")
        meter.add(metrics, images=len(batch["label"]) * world, wait=t1 - t0,
                  step=time.perf_counter() - t1, skipped=int(batch.get("skipped", 0)))
        every = cfg.run.checkpoint_every_steps
        if every and (step + 1) % every == 0 and step + 1 < total:
            report({"epoch": epoch + (step + 1) / total, **dict.fromkeys(EVAL_METRICS, float("nan")),
                    "probed_epoch": -1, **meter.summary()}, step_state(step + 1), rank, cfg.run.checkpoint_upload)
        if cfg.run.log_every_steps and rank == 0 and (step + 1) % cfg.run.log_every_steps == 0:
            print(f"[train] epoch {epoch + 1} step {step + 1}/{total} loss {metrics['loss']:.4f}", flush=True)
    return meter


def _measure(engine: CMDEngine, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """Rank 0's evaluation of the frozen teacher after an epoch (harness/backbone_eval.py)."""
    return evaluate_backbone(engine.teacher_backbone, cfg.data, cfg.eval, device, seed=cfg.run.seed)
