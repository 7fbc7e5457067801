"""Same global batch on 1 worker vs 2 workers (gloo, DDP, torch.multiprocessing; no Ray): same
loss terms, centers and parameter update within float tolerance."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cmd_model.config import LossConfig, OptimConfig
from cmd_model.engine import CMDEngine
from cmd_model.tiny import tiny_vit_config

STEPS, B = 2, 4  # global batch 2B = 8


def _views(step):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(2 * B, 3, 32, 32, generator=g) for _ in range(2)] + [
        torch.randn(2 * B, 3, 16, 16, generator=g) for _ in range(2)]


def _engine(wrap=None):
    torch.manual_seed(0)
    # No qkv bias: the key bias has an exactly-zero true gradient, so its float noise differs between
    # 1 and 2 workers and Adam's first step (g / |g|) blows that noise up to +-lr.
    model = tiny_vit_config()
    model.backbone_kwargs = dict(model.backbone_kwargs, qkv_bias=False)
    return CMDEngine(model, LossConfig(mil_pooling="attention"),
                     OptimConfig(epochs=2, warmup_epochs=0, lr=0.05, freeze_last_layer=0, clip_grad=3.0),
                     steps_per_epoch=STEPS, global_batch=2 * B, wrap_student=wrap)


def _run(engine, rank=None):
    metrics = []
    for step in range(STEPS):
        views = _views(step)
        if rank is not None:
            views = [v[rank * B:(rank + 1) * B] for v in views]
        metrics.append(engine.train_step(views, step, 0))
    return {"metrics": metrics, "student": engine.student_module.state_dict(),
            "center": engine.loss.center.clone(), "center_region": engine.loss.center_region.clone()}


def _worker(rank, path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}.pg", rank=rank, world_size=2)
    try:
        out = _run(_engine(lambda m: torch.nn.parallel.DistributedDataParallel(m)), rank)
        if rank == 0:
            torch.save(out, path)
    finally:
        dist.destroy_process_group()


def test_one_worker_equals_two_workers(tmp_path):
    path = str(tmp_path / "ddp.pt")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(path,), nprocs=2, join=True)
    two = torch.load(path, weights_only=True)
    torch.set_num_threads(2)
    one = _run(_engine())
    for m1, m2 in zip(one["metrics"], two["metrics"]):
        for k in ("loss", "loss_image", "loss_region", "loss_mil_student", "loss_mil_teacher",
                  "teacher_entropy", "prototypes_used", "lr"):
            assert abs(m1[k] - m2[k]) <= 1e-5 * max(1.0, abs(m1[k])), (k, m1[k], m2[k])
    torch.testing.assert_close(two["center"], one["center"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(two["center_region"], one["center_region"], rtol=1e-5, atol=1e-6)
    for k, v in one["student"].items():
        torch.testing.assert_close(two["student"][k], v, rtol=1e-4, atol=1e-5, msg=k)
