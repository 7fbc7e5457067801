"""The Ray Train loop run by every worker: stream crops, CMD step, probe, report, checkpoint.

Every rank calls `ray.train.report` once per epoch (and at step checkpoints): the call is a
barrier, and only rank 0's metrics reach Tune (Ray 2.60), so rank 0 also runs the probe.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from cmd_model.engine import CMDEngine
from cmd_model.loss import NonFiniteLossError
from harness.backbone_eval import evaluate_backbone
from harness.checkpoint import (
    detached_copy,
    restore_newest_intact,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from harness.config import TrainConfig, build_config, to_dict
from harness.disk_full import naming_full_disk
from harness.gpu_check import require_usable_gpu
from harness.objective import EVAL_METRICS, is_probed
from harness.remote_files import read_checkpoint
from shards.augment import to_model_input
from shards.pipeline import steps_per_epoch, train_loader
from shards.urls import is_remote, local_path


class NonFiniteTrainingError(RuntimeError):
    """A loss went NaN/inf: the run stops, and the message names epoch, step and term."""


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision per the config: bf16 where the GPU has it, fp16 with a scaler before."""
    if setting == "none" or device.type != "cuda":
        return None
    if setting == "bf16" or (setting == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


class EpochMeter:
    """Averages step metrics over an epoch and times data wait vs compute."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.steps = 0
        self.images = 0
        self.data_wait = 0.0
        self.step_time = 0.0
        self.skipped = 0
        self.start = time.perf_counter()

    def add(self, metrics: dict[str, float], images: int, wait: float, step: float, skipped: int) -> None:
        for key, value in metrics.items():
            self.sums[key] += float(value)
        self.steps += 1
        self.images += images
        self.data_wait += wait
        self.step_time += step
        self.skipped += skipped

    def summary(self) -> dict[str, float]:
        n = max(self.steps, 1)
        elapsed = time.perf_counter() - self.start
        out = {key: value / n for key, value in self.sums.items()}
        out.update(
            images_per_s=self.images / max(elapsed, 1e-9),
            step_time=self.step_time / n,
            data_wait=self.data_wait / n,
            skipped_samples=float(self.skipped),
            epoch_seconds=elapsed,
        )
        return out


class EpochLog:
    """Rank 0's per-epoch metrics as TensorBoard events in the run folder (local storage)."""

    def __init__(self, storage: str, run_name: str, rank: int) -> None:
        self.writer = None
        if rank == 0 and not is_remote(storage):
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(local_path(storage) / run_name / "tensorboard"))

    def write(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()


class TimeMarks:
    """Wall-clock marks of rank 0's start-up and epochs in `timing-<pid>.json` of the run folder.

    Read by bench/goodput.py to say where a trial's time goes; local storage only, never read back
    by training, one small file write per epoch.
    """

    def __init__(self, storage: str, run_name: str, rank: int) -> None:
        import psutil

        local = rank == 0 and not is_remote(storage)
        self.path = local_path(storage) / run_name / f"timing-{os.getpid()}.json" if local else None
        self.marks: dict[str, float] = {"process_start": psutil.Process().create_time(), "loop_start": time.time()}
        self.epochs: list[dict[str, float]] = []

    def mark(self, key: str) -> None:
        self.marks.setdefault(key, time.time())

    def write(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"marks": self.marks, "epochs": self.epochs}))


def _restore(engine: CMDEngine, config: dict[str, Any], rank: int) -> dict[str, Any] | None:
    """The latest checkpoint's state, or the newest intact one when the latest is damaged."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    state, fallback = restore_newest_intact(checkpoint, config)
    if fallback and rank == 0:
        print(f"[train] {fallback}", flush=True)
    engine.load_state_dict(state["engine"])
    return state


def _report(metrics: dict[str, Any], state: dict[str, Any] | None, rank: int, upload: str) -> None:
    """Report on every rank (a barrier); rank 0 attaches the checkpoint.

    With `run.checkpoint_upload: async` the step only pays for a CPU copy of the state: Ray
    Train's upload thread writes and commits `state.pt`, then uploads it, and the metrics reach
    Tune once it is stored (Ray 2.60 `CheckpointUploadMode.ASYNC` with a `checkpoint_upload_fn`;
    Train waits for pending uploads before the run ends).
    """
    if state is None or rank != 0:
        ray.train.report(metrics)
        return
    if upload == "sync":
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(Path(tmp), state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_upload_fn=persist_checkpoint)
        return
    snapshot, folder = detached_copy(state), Path(tempfile.mkdtemp(prefix="cmd-checkpoint-"))

    def write_then_upload(checkpoint: ray.train.Checkpoint, name: str) -> ray.train.Checkpoint:
        save_checkpoint(folder, snapshot)
        return persist_checkpoint(checkpoint, name)

    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                     checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
                     checkpoint_upload_fn=write_then_upload)


def persist_checkpoint(checkpoint: ray.train.Checkpoint, name: str) -> ray.train.Checkpoint:
    """Ray Train's own upload of a local checkpoint folder into the run's storage, a full disk
    there named in one line (harness/disk_full.py). Its only entry point is the StorageContext
    (a DeveloperAPI in Ray 2.60); used here alone."""
    storage = ray.train.get_context().get_storage()
    with naming_full_disk(f"checkpoint {storage.build_checkpoint_path_from_name(name)}"):
        return storage.persist_current_checkpoint(checkpoint, name)


def _progress_line(epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    return (
        f"epoch {epoch}/{epochs} loss {metrics.get('loss', float('nan')):.4f} "
        f"probe_top1 {metrics.get('probe_top1', float('nan')):.3f} "
        f"knn {metrics.get('knn_top1', float('nan')):.3f} "
        f"img/s {metrics.get('images_per_s', 0.0):.1f} wait {metrics.get('data_wait', 0.0) * 1e3:.0f}ms "
        f"lr {metrics.get('lr', 0.0):.2e} t_temp {metrics.get('teacher_temp', 0.0):.3f}"
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: `config` is `to_dict(TrainConfig)`, already validated."""
    cfg: TrainConfig = build_config(config, source="train_loop_config")
    if cfg.scaling.use_gpu:  # a driver too old for this torch fails here in one line, not mid-step
        require_usable_gpu()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    marks = TimeMarks(cfg.run.storage, context.get_experiment_name(), rank)
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
    saved = _restore(engine, config, rank)
    if saved is not None:
        start_epoch, start_step = saved["epoch"], saved["step"]
        best, history = saved["best_probe_top1"], list(saved["history"])
        set_rng_state(saved["epoch_rng"] if start_step else saved["rng"])
        if rank == 0:
            print(f"[train] resumed at epoch {start_epoch + 1}, step {start_step}", flush=True)

    if saved is not None and start_epoch >= cfg.optim.epochs and history:
        # Resumed after its last epoch (e.g. a study's driver died just as the run ended):
        # report the final metrics again so Tune sees them, then stop.
        _report(history[-1], None, rank, cfg.run.checkpoint_upload)
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
        meter = EpochMeter()
        for step in range(first, steps):
            t0 = time.perf_counter()
            batch = next(loader)
            t1 = time.perf_counter()
            marks.mark("first_step_start")
            views_rng.manual_seed(hash((cfg.run.seed, epoch, step, rank)) % 2**63)  # resumable
            views = to_model_input(batch["globals"] + batch["locals"], cfg.data.crops, device, views_rng)
            it = epoch * steps + step
            try:
                metrics = engine.train_step(views, it, epoch)
            except NonFiniteLossError as exc:  # names the term; add where it happened
                raise NonFiniteTrainingError(f"epoch {epoch + 1} step {step}: {exc}") from exc
            if not math.isfinite(metrics.get("loss", 0.0)):
                raise NonFiniteTrainingError(f"epoch {epoch + 1} step {step}: loss is {metrics['loss']}")
            meter.add(metrics, images=len(batch["label"]) * world, wait=t1 - t0,
                      step=time.perf_counter() - t1, skipped=int(batch.get("skipped", 0)))
            every = cfg.run.checkpoint_every_steps
            if every and (step + 1) % every == 0 and step + 1 < steps:
                state = _state(engine, cfg, epoch, step + 1, best, history, epoch_rng)
                _report({"epoch": epoch + (step + 1) / steps, **dict.fromkeys(EVAL_METRICS, float("nan")),
                         "probed_epoch": -1, **meter.summary()}, state, rank, cfg.run.checkpoint_upload)
            if cfg.run.log_every_steps and rank == 0 and (step + 1) % cfg.run.log_every_steps == 0:
                print(f"[train] epoch {epoch + 1} step {step + 1}/{steps} loss {metrics['loss']:.4f}", flush=True)

        epoch_metrics = meter.summary()
        t_steps_end = time.time()
        done = epoch + 1
        # Only a measured epoch carries probe values; others report NaN, never an older value
        # (harness/objective.py). `probed_epoch` ranks checkpoints, so the last measured one is kept.
        probed = is_probed(done, cfg.eval.probe_every, cfg.optim.epochs)
        evaluation = (evaluate_backbone(engine.teacher_backbone, cfg.data, cfg.eval, device, seed=cfg.run.seed)
                      if probed and rank == 0 else {})
        probe_s = evaluation.get("probe_seconds", 0.0)
        best = max(best, evaluation.get("probe_top1", 0.0))
        epoch_metrics.update(evaluation)
        epoch_metrics.update(epoch=done, best_probe_top1=best, probed_epoch=done if probed else -1)
        for key in EVAL_METRICS:
            epoch_metrics.setdefault(key, float("nan"))
        history.append({k: float(v) for k, v in epoch_metrics.items()})
        state = _state(engine, cfg, done, 0, best, history, rng_state())
        log.write(done, epoch_metrics)
        if rank == 0:
            print("[train] " + _progress_line(done, cfg.optim.epochs, epoch_metrics), flush=True)
        t_report = time.time()
        _report(epoch_metrics, state, rank, cfg.run.checkpoint_upload)
        marks.epochs.append({"epoch": done, "start": t_epoch, "loader_ready": t_loader, "steps_end": t_steps_end,
                             "step_s": meter.step_time, "wait_s": meter.data_wait, "probe_s": probe_s,
                             "report_start": t_report, "report_end": time.time()})
        marks.write()
        if done == cfg.run.stop_after_epoch and done < cfg.optim.epochs:
            if rank == 0:
                print(f"[train] stopping after epoch {done} as asked (run.stop_after_epoch); "
                      "rerun without it to continue", flush=True)
            return


def _state(engine: CMDEngine, cfg: TrainConfig, epoch: int, step: int, best: float,
           history: list[dict[str, float]], epoch_rng: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run needs: (epoch, step) is the next step to run."""
    return {
        "engine": engine.state_dict(),
        "epoch": epoch,
        "step": step,
        "best_probe_top1": best,
        "history": history,
        "rng": rng_state(),
        "epoch_rng": epoch_rng,
        "config": to_dict(cfg),
    }
