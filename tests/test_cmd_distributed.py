"""Same global batch on 1 worker vs 2 workers (gloo, DDP, torch.multiprocessing; no Ray): same
loss terms, centers and parameter update.

The comparison runs in float64. In float32 the two runs sum in different orders (batch 8 vs 4
per matmul, one vs two threads, and each CPU's BLAS kernels), and Adam's first step, lr * g / (|g|
+ eps), turns the rounding of a gradient element that cancels to ~0 into an update anywhere in
[-lr, lr]: one element of 9,216 missed a 1e-5 tolerance on an Intel CPU. In float64 the rounding
(unit roundoff u = 1.1e-16, reductions of n <= 1e4 terms of magnitude S <= 1e2 here) moves a
gradient by at most n * u * S ~ 1e-10 and Adam's step by at most lr * that / eps ~ 5e-4 * lr in
the worst case of a gradient at eps; a missing all-reduce or an unaveraged center moves them by
O(lr) and O(1) (checked by `test_the_comparison_sees_a_missing_all_reduce`).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cmd_model.config import LossConfig, OptimConfig
from cmd_model.engine import CMDEngine
from tests.tiny_models import tiny_vit_config

STEPS, B, LR = 2, 4, 0.05  # global batch 2B = 8
PARAM_ATOL = 1e-3 * LR     # see the module docstring: float64 noise <= 5e-4 * LR, a bug ~ LR
VALUE_RTOL = 1e-9          # loss terms and centers: float64 reductions, no Adam in between


def _views(step):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(2 * B, 3, 32, 32, generator=g) for _ in range(2)] + [
        torch.randn(2 * B, 3, 16, 16, generator=g) for _ in range(2)]


def _engine(wrap=None):
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    return CMDEngine(tiny_vit_config(), LossConfig(mil_pooling="attention"),
                     OptimConfig(epochs=2, warmup_epochs=0, lr=LR, freeze_last_layer=0, clip_grad=3.0),
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


def _worker(rank, path, all_reduce):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}.pg", rank=rank, world_size=2)
    try:
        ddp = (lambda m: torch.nn.parallel.DistributedDataParallel(m)) if all_reduce else None
        out = _run(_engine(ddp), rank)
        if rank == 0:
            torch.save(out, path)
    finally:
        dist.destroy_process_group()


def _two_workers(tmp_path, all_reduce=True):
    path = str(tmp_path / "ddp.pt")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(path, all_reduce), nprocs=2, join=True)
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def one_worker():
    torch.set_num_threads(2)
    try:
        return _run(_engine())
    finally:
        torch.set_default_dtype(torch.float32)


def _compare(one, two):
    for m1, m2 in zip(one["metrics"], two["metrics"]):
        for k in ("loss", "loss_image", "loss_region", "loss_mil_student", "loss_mil_teacher",
                  "teacher_entropy", "prototypes_used", "lr"):
            assert abs(m1[k] - m2[k]) <= VALUE_RTOL * max(1.0, abs(m1[k])), (k, m1[k], m2[k])
    torch.testing.assert_close(two["center"], one["center"], rtol=VALUE_RTOL, atol=VALUE_RTOL)
    torch.testing.assert_close(two["center_region"], one["center_region"], rtol=VALUE_RTOL, atol=VALUE_RTOL)
    for k, v in one["student"].items():
        assert two["student"][k].dtype == torch.float64 or not v.is_floating_point(), k
        torch.testing.assert_close(two["student"][k], v, rtol=0, atol=PARAM_ATOL, msg=k)


def test_one_worker_equals_two_workers(tmp_path, one_worker):
    _compare(one_worker, _two_workers(tmp_path))


def test_the_comparison_sees_a_missing_all_reduce(tmp_path, one_worker):
    """Two workers that never average their gradients must fail the same comparison."""
    with pytest.raises(AssertionError):
        _compare(one_worker, _two_workers(tmp_path, all_reduce=False))
