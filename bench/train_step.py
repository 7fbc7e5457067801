"""Train-step throughput: the full harness step on Ray Train vs a bare loop of the same model, same run.

    python bench/train_step.py --quick       # 2 harness rounds, about 3 minutes on 2 idle CPU cores (demo workload)
    python bench/train_step.py               # 3 harness rounds of 2 timed epochs x 20 steps
    python bench/train_step.py --gpu         # CUDA: ViT-S/16 and Swin-T, paper crops, bf16, MFU

(harness) the real Ray Train path: a private `ray start --head` (free ports, dashboard on; stopped
          by its own processes, never `ray stop`), `harness.train.run` -> TorchTrainer with 1 worker
          (world size 1: the process group is up, so the step's all-reduces run) -> the real
          `harness.train_loop.train_loop_per_worker`: shard loader (decode + multi-crop) ->
          `to_model_input` -> `CMDEngine.train_step`. Ray start-up and the first epoch (warm-up,
          loader start) are excluded: images/s is the worker's own per-epoch meter
          (images / epoch wall time, loader waits included) over epochs 2.., read from the final
          checkpoint's history; its `data_wait` / `step_time` split says what bounds it.
(bare)    `CMDEngine.train_step` in this process, same config, batch, crops and torch threads, on
          views made once before timing (one real loader batch through `to_model_input`): no
          loader, no Ray, no process group, as many steps as a harness run times; in a plain
          child process of its own, as the Ray Train worker has its own.
(rounds)  bare, harness, bare, harness, ..., bare: each harness round is a whole Ray Train run and
          its ratio is against the mean of the bare rounds either side (the machine is shared: a
          load swing hits both sides of one ratio). The median ratio is the result; min and max
          show how far one round can be trusted.

Prints both images/s and harness/bare (goal >= 0.9), plus the step's FLOPs (one whole train step
counted with torch.utils.flop_counter.FlopCounterMode: teacher forward on the 2 global crops,
student forward + backward on all crops, heads and loss) as achieved FLOP/s, and with --gpu the
MFU against --peak-tflops. Results are recorded in bench/README.md ("## train_step").
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the repo root importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cmd_model.engine import CMDEngine  # noqa: E402
from harness.checkpoint import read_state  # noqa: E402
from harness.config import TrainConfig, build_config, load_config, to_dict  # noqa: E402
from shards.augment import to_model_input  # noqa: E402
from shards.pipeline import train_loader  # noqa: E402

CPU_CONFIG = ROOT / "tune_spaces" / "demo.yaml"  # the CPU workload users run (make demo)
GPU_CONFIG = ROOT / "tune_spaces" / "recipes" / "paper.yaml"  # paper crops 2x224 + 8x96
GPU_BACKBONES = {  # name -> backbone_kwargs (None: the recipe's own, Swin-T/W14 as in EsViT)
    "vit_small_patch16_224": {},
    "swin_tiny_patch4_window7_224": None,
}


# ------------------------------------------------------------------------------------- setup

def make_shards(folder: Path, image_size: int, train_per_class: int, val_per_class: int) -> Path:
    from shards.demo import ensure_demo_shards

    shards = folder / "shards"
    ensure_demo_shards(shards, shard_size=32, workers=min(8, os.cpu_count() or 1), classes=8,
                       train_per_class=train_per_class, val_per_class=val_per_class, size=image_size)
    return shards


def bench_config(path: Path, shards: Path, storage: Path, args: argparse.Namespace, gpu: bool,
                 backbone: str | None = None, backbone_kwargs: dict | None = None) -> TrainConfig:
    """The config file's workload with the bench's batch, steps, epochs and resources."""
    ov: dict = {
        "data.shards": str(shards), "data.demo": False, "optim.epochs": args.epochs,
        "eval.probe_every": args.epochs, "eval.probe_epochs": 10,  # one short probe at the end, not timed
        "run.storage": str(storage), "run.max_failures": 0, "run.checkpoint_every_steps": 0,
        "run.log_every_steps": 0, "run.stop_after_epoch": 0,
        "scaling.num_workers": 1, "scaling.use_gpu": gpu, "scaling.amp": "bf16" if gpu else "none",
    }
    if args.batch:
        ov["data.batch_size"] = args.batch
    if args.threads:
        ov["scaling.cpus_per_worker"] = args.threads
    if args.loader_workers is not None:
        ov["data.num_workers"] = args.loader_workers
    if gpu:
        ov.update({"model.backbone": backbone, "data.val_split": "val", "eval.probe_feature": "avgpool",
                   "optim.freeze_last_layer": 0})
        if backbone_kwargs is not None:
            ov["model.backbone_kwargs"] = backbone_kwargs
    cfg = load_config(path, ov)
    cfg.data.samples_per_epoch = args.steps * cfg.data.batch_size  # exactly `steps` batches per epoch
    return cfg


def premade_views(cfg: TrainConfig, device: torch.device) -> list[torch.Tensor]:
    """One real multi-crop batch through to_model_input: the bare loop's fixed input."""
    batch = next(iter(train_loader(cfg.data, 0, 1, 0)))
    gen = torch.Generator(device="cpu").manual_seed(0)
    return to_model_input(batch["globals"] + batch["locals"], cfg.data.crops, device, gen)


def new_engine(cfg: TrainConfig, device: torch.device) -> CMDEngine:
    from harness.train_loop import amp_dtype

    torch.manual_seed(cfg.run.seed)
    return CMDEngine(cfg.model, cfg.loss, cfg.optim, steps_per_epoch=cfg.data.samples_per_epoch // cfg.data.batch_size,
                     global_batch=cfg.data.batch_size, device=device,
                     amp_dtype=amp_dtype(cfg.scaling.amp, device))


def step_flops(cfg: TrainConfig, views: list[torch.Tensor], device: torch.device) -> float:
    """FLOPs of one whole train step (matmuls, convolutions, attention) on a fresh engine."""
    from torch.utils.flop_counter import FlopCounterMode

    engine = new_engine(cfg, device)
    engine.train_step(views, 0, 0)  # lazy init outside the count
    with FlopCounterMode(display=False) as counter:
        engine.train_step(views, 1, 0)
    return float(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------- the two paths

def bare_loop(engine: CMDEngine, views: list[torch.Tensor], steps: int, start_it: int) -> float:
    """images/s of `steps` train steps on fixed views, after one untimed warm-up step."""
    engine.train_step(views, start_it, 0)
    _sync(engine.device)
    t = time.perf_counter()
    for i in range(steps):
        engine.train_step(views, start_it + 1 + i, 0)
    _sync(engine.device)
    return steps * views[0].shape[0] / (time.perf_counter() - t)


def harness_run(cfg: TrainConfig, name: str) -> dict[str, float]:
    """The real Ray Train run; steady-state numbers from the worker's per-epoch meters (epochs 2..)."""
    from harness.train import run

    t = time.perf_counter()
    metrics = run(cfg, name)
    wall = time.perf_counter() - t
    state = read_state(metrics["checkpoint_path"])
    steady = [h for h in state["history"] if h["epoch"] >= 2] or state["history"]
    mean = lambda key: statistics.fmean(h[key] for h in steady)  # noqa: E731
    return {"images_per_s": mean("images_per_s"), "step_time": mean("step_time"),
            "data_wait": mean("data_wait"), "epochs_used": float(len(steady)), "fit_wall_s": wall,
            "first_epoch_images_per_s": state["history"][0]["images_per_s"]}


_BARE: dict = {}  # the bare loop's engine and views, in its own process


def _bare_setup(cfg_dict: dict, device: str, threads: int) -> None:
    torch.set_num_threads(threads)
    cfg = build_config(cfg_dict, source="bench")
    _BARE.update(engine=new_engine(cfg, torch.device(device)), views=premade_views(cfg, torch.device(device)))


def _bare_round(steps: int, start_it: int) -> float:
    return bare_loop(_BARE["engine"], _BARE["views"], steps, start_it)


def measure(cfg: TrainConfig, device: torch.device, steps: int, rounds: int, name: str, peak: float | None) -> dict:
    """Bare and harness rounds interleaved: bare, harness, bare, ... harness, bare.

    Each harness round is a whole Ray Train run; its ratio is against the mean of the bare rounds
    either side of it, so a load change on the shared machine hits both sides of one ratio. The
    bare loop runs in a plain child process (no Ray), as the Ray Train worker runs in its own: this
    process is the Ray driver, whose threads slowed a bare loop run here (harness/bare up to 1.4).
    """
    threads = cfg.run.torch_threads or max(1, int(cfg.scaling.cpus_per_worker))
    torch.set_num_threads(threads)  # as the Ray Train worker does
    flops = step_flops(cfg, premade_views(cfg, device), device)
    timed = steps * (cfg.optim.epochs - 1)  # as many steps as a harness round times
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn, initializer=_bare_setup,
                             initargs=(to_dict(cfg), device.type, threads)) as pool:
        bare_runs = [pool.submit(_bare_round, timed, 0).result()]
        print(f"  bare    round 0: {bare_runs[0]:8.1f} images/s", flush=True)
        harness_runs, ratios = [], []
        for r in range(1, rounds + 1):
            h = harness_run(cfg, f"{name}-round{r}")
            bare_runs.append(pool.submit(_bare_round, timed, r * (timed + 1)).result())
            harness_runs.append(h)
            ratios.append(h["images_per_s"] / statistics.fmean(bare_runs[-2:]))
            print(f"  harness round {r}: {h['images_per_s']:8.1f} images/s (data wait {h['data_wait'] * 1e3:.0f} ms, "
                  f"step {h['step_time'] * 1e3:.0f} ms); bare round {r}: {bare_runs[-1]:8.1f} images/s; "
                  f"ratio {ratios[-1]:.3f}", flush=True)
    mean = lambda key: statistics.fmean(h[key] for h in harness_runs)  # noqa: E731
    bare = statistics.fmean(bare_runs)
    batch = cfg.data.batch_size
    out = {"bare": bare, "bare_runs": bare_runs, "harness": mean("images_per_s"), "ratios": ratios,
           "ratio": statistics.median(ratios), "step_time": mean("step_time"), "data_wait": mean("data_wait"),
           "epochs_used": harness_runs[0]["epochs_used"], "fit_wall_s": mean("fit_wall_s"),
           "first_epoch_images_per_s": mean("first_epoch_images_per_s"), "flops_per_step": flops,
           "threads": threads, "timed_steps": timed}
    out["compute_only"] = batch / out["step_time"]
    out["wait_share"] = out["data_wait"] / (out["data_wait"] + out["step_time"])
    out["flops_per_image"] = flops / batch
    out["bare_flops_s"] = bare * flops / batch
    out["harness_flops_s"] = out["harness"] * flops / batch
    if peak:
        out["bare_mfu"] = out["bare_flops_s"] / peak
        out["harness_mfu"] = out["harness_flops_s"] / peak
    return out


def report(label: str, cfg: TrainConfig, r: dict, peak: float | None) -> None:
    c = cfg.data.crops
    print(f"\n{label}: {cfg.model.backbone} {cfg.model.backbone_kwargs}, crops 2x{c.global_size} + "
          f"{c.local_crops}x{c.local_size}, batch {cfg.data.batch_size}, {r['threads']} torch thread(s), "
          f"loader workers {cfg.data.num_workers}, amp {cfg.scaling.amp}")
    print(f"  step FLOPs {r['flops_per_step'] / 1e9:.2f} G ({r['flops_per_image'] / 1e9:.3f} GFLOP/image)")
    print(f"  bare     {r['bare']:8.1f} images/s  (rounds " + ", ".join(f"{b:.1f}" for b in r["bare_runs"])
          + f"; {r['timed_steps']} steps each); {r['bare_flops_s'] / 1e9:.1f} GFLOP/s"
          + (f", MFU {r['bare_mfu']:.1%}" if peak else ""))
    print(f"  harness  {r['harness']:8.1f} images/s  (mean of {len(r['ratios'])} rounds, epochs "
          f"2..{int(r['epochs_used']) + 1} of each Ray Train run; epoch 1 {r['first_epoch_images_per_s']:.1f}); "
          f"{r['harness_flops_s'] / 1e9:.1f} GFLOP/s" + (f", MFU {r['harness_mfu']:.1%}" if peak else ""))
    wait_ms = r["data_wait"] * 1e3
    print(f"  harness per step: data wait {wait_ms:.0f} ms ({r['wait_share']:.0%}), "
          f"to_model_input + train_step {r['step_time'] * 1e3:.0f} ms "
          f"(= {r['compute_only']:.1f} images/s, {r['compute_only'] / r['bare']:.2f} x bare); "
          f"fit() wall incl. Ray start-up {r['fit_wall_s']:.0f} s")
    if cfg.data.num_workers == 0:
        print(f"  the data wait is loader work (decode, crops{', photometric' if c.photometric == 'loader' else ''}) "
              f"on the step's own core: it costs {r['wait_share']:.0%} of the throughput; overlapping it needs a "
              f"core the step does not use (data.num_workers >= 1 and one more CPU per worker), which a study "
              f"that already fills every core with trials does not have")
    ratios = sorted(r["ratios"])
    print(f"  ratio harness/bare = {r['ratio']:.2f} median of {len(ratios)} rounds "
          f"(min {ratios[0]:.2f}, max {ratios[-1]:.2f})   (goal >= 0.9)", flush=True)


# ------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and epochs (CPU: 1-3 minutes)")
    p.add_argument("--steps", type=int, help="timed steps per harness epoch "
                                             "(default 20, --quick 10; --gpu 30, --quick 10)")
    p.add_argument("--rounds", type=int, help="harness rounds, each between two bare rounds (default 3, --quick 2)")
    p.add_argument("--epochs", type=int, help="harness epochs, the first one untimed (default 3, --quick 2)")
    p.add_argument("--batch", type=int, help="images per step (default: the config's, 32 on CPU; --gpu 64)")
    p.add_argument("--threads", type=int, help="CPUs (= torch threads) of the Ray Train worker and the "
                                               "bare loop (default: the config's scaling.cpus_per_worker)")
    p.add_argument("--loader-workers", type=int, help="DataLoader workers (default: the config's "
                                                      "data.num_workers; --gpu: min(8, CPUs - 2))")
    p.add_argument("--data", help="folder for the generated demo shards, reused when present "
                                   "(default: a temporary folder, removed at the end)")
    p.add_argument("--image-size", type=int, help="side of the generated demo JPEGs (default 80 as the "
                                                   "demo set; --gpu 384): larger images cost more decode")
    p.add_argument("--gpu", action="store_true", help="CUDA: ViT-S/16 and Swin-T, crops 2x224 + 8x96, bf16")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="the GPU's peak dense bf16 TFLOP/s for MFU (default 989: H100 SXM)")
    p.add_argument("--models", nargs="+", default=list(GPU_BACKBONES), help="--gpu backbones (timm names)")
    args = p.parse_args(argv)
    if args.gpu and not torch.cuda.is_available():
        p.error("--gpu needs CUDA; none is available here")
    args.steps = args.steps or ((10 if args.quick else 30) if args.gpu else (10 if args.quick else 20))
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.epochs = args.epochs or (2 if args.quick else 3)
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (epoch 1 is warm-up)")
    if args.gpu:
        args.batch = args.batch or 64
        if args.loader_workers is None:
            args.loader_workers = max(1, min(8, (os.cpu_count() or 4) - 2))
        args.threads = args.threads or args.loader_workers + 1
    device = torch.device("cuda" if args.gpu else "cpu")
    peak = args.peak_tflops * 1e12 if args.gpu else None

    where = torch.cuda.get_device_name(0) if args.gpu else f"{os.cpu_count()} CPU cores"
    load = os.getloadavg()
    print(f"train_step bench: {platform.machine()}, {where}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
          f"{args.rounds} harness rounds of {args.steps} steps x epochs 2..{args.epochs}, interleaved with "
          f"{args.rounds + 1} bare rounds of as many steps", flush=True)
    from tests.ray_head import attached, start_head  # a private head on free ports, stopped by its own processes

    with tempfile.TemporaryDirectory(prefix="step-bench-") as tmp:
        tmp_path = Path(tmp)
        t = time.perf_counter()
        data = Path(args.data) if args.data else tmp_path
        if args.gpu:
            size = args.image_size or 384
            shards = make_shards(data / f"gpu{size}", image_size=size, train_per_class=32, val_per_class=8)
        else:
            size = args.image_size or 80
            shards = make_shards(data / f"cpu{size}", image_size=size, train_per_class=16, val_per_class=4)
        print(f"shards ready in {time.perf_counter() - t:.0f} s", flush=True)
        cfgs = []
        if args.gpu:
            for name in args.models:
                kw = GPU_BACKBONES.get(name, {})
                cfgs.append((name, bench_config(GPU_CONFIG, shards, tmp_path / "runs", args, True, name, kw)))
        else:
            base = bench_config(CPU_CONFIG, shards, tmp_path / "runs", args, False)
            args.batch = base.data.batch_size
            cfgs.append(("cpu", base))
        need = max(int(c.scaling.cpus_per_worker) for _, c in cfgs)
        t = time.perf_counter()
        head = start_head(num_cpus=max(2, need) if not args.gpu else (os.cpu_count() or need))
        print(f"private Ray head {head.gcs_address} up in {time.perf_counter() - t:.0f} s", flush=True)
        results = []
        with attached(head):
            for i, (label, cfg) in enumerate(cfgs):
                print(f"\n[{label}] measuring ...", flush=True)
                r = measure(cfg, device, args.steps, args.rounds, f"bench-{i}", peak)
                results.append((label, cfg, r))
                report(label, cfg, r, peak)
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    print("summary: " + "; ".join(f"{label} harness {r['harness']:.1f} / bare {r['bare']:.1f} images/s, "
                                   f"ratio median {r['ratio']:.2f} (min {min(r['ratios']):.2f}, "
                                   f"max {max(r['ratios']):.2f})"
                                   + (f" (MFU {r['harness_mfu']:.1%} / {r['bare_mfu']:.1%})" if peak else "")
                                   for label, _, r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
