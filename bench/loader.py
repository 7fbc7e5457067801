"""Multi-crop loader throughput: this repo's shard loader vs the official DINO way, same run.

    python bench/loader.py            # ~5 minutes on 2 CPU cores (3 interleaved rounds)
    python bench/loader.py --quick    # ~1 minute

Measures multi-crop samples/s (paper crops: 2 x 224 + 8 x 96) with 1 and 2 DataLoader workers for
  (a1) shards.pipeline.train_loader, full photometric recipe in the loader (crops.photometric="loader")
  (a2) shards.pipeline.train_loader, photometric deferred to the train step ("step")
  (b)  torchvision ImageFolder + PIL + per-image torchvision transforms (DINO's DataAugmentationDINO)
  (c)  decode + geometric crops only (map-style dataset over the JPEG files, same decode and crops as a2)
and prints (a1)/(b) (goal >= 1.5) and (a2)/(c) (goal >= 0.8). Images are 500x375 JPEGs generated
once into a temporary folder. Results are recorded in bench/README.md.
"""
from __future__ import annotations

import argparse
import gc
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import DataLoader, Dataset

from shards.augment import multicrop
from shards.config import CropConfig, DataConfig
from shards.decode import decode_image
from shards.pipeline import train_loader
from shards.write import write_dataset

PAPER = dict(global_size=224, global_scale=(0.4, 1.0), local_crops=8, local_size=96, local_scale=(0.05, 0.4))


def make_images(root: Path, n: int, classes: int = 4, seed: int = 0) -> Path:
    """n photo-like 500x375 JPEGs (smooth colour fields + texture + noise) in ROOT/train/<class>/."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(low).resize((500, 375), Image.BICUBIC), dtype=np.float32)
        img += rng.normal(0, 12, img.shape)
        d = root / "train" / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:05d}.jpg", quality=90)
    return root


# ---------------------------------------------------------------- (b) the official DINO way, per image
class GaussianBlur:
    """DINO utils.GaussianBlur: PIL blur with radius U(0.1, 2) applied with probability p."""

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.prob, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() > self.prob:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


class Solarization:
    """DINO utils.Solarization: PIL solarize with probability p."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img


class DataAugmentationDINO:
    """The official DINO / EsViT multi-crop transform (main_dino.py), verbatim in structure."""

    def __init__(self, global_crops_scale, local_crops_scale, local_crops_number, gsize=224, lsize=96,
                 photometric: bool = True) -> None:
        from torchvision import transforms

        flip_and_color_jitter = transforms.Compose([
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomApply([transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)],
                                   p=0.8),
            transforms.RandomGrayscale(p=0.2),
        ])
        normalize = transforms.Compose([transforms.ToTensor(),
                                        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
        rrc = lambda size, scale: transforms.RandomResizedCrop(size, scale=scale,  # noqa: E731
                                                                interpolation=Image.BICUBIC)
        self.global_transfo1 = transforms.Compose([rrc(gsize, global_crops_scale), flip_and_color_jitter,
                                                   GaussianBlur(1.0), normalize])
        self.global_transfo2 = transforms.Compose([rrc(gsize, global_crops_scale), flip_and_color_jitter,
                                                   GaussianBlur(0.1), Solarization(0.2), normalize])
        self.local_crops_number = local_crops_number
        self.local_transfo = transforms.Compose([rrc(lsize, local_crops_scale), flip_and_color_jitter,
                                                 GaussianBlur(p=0.5), normalize])

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        crops = [self.global_transfo1(image), self.global_transfo2(image)]
        crops += [self.local_transfo(image) for _ in range(self.local_crops_number)]
        return crops


# ---------------------------------------------------------------- (c) decode + geometric crops only
class DecodeCrops(Dataset):
    """Map-style: read a JPEG file, decode, the same geometric multi-crop as the shard loader."""

    def __init__(self, files: list[Path], crops: CropConfig) -> None:
        self.files, self.crops = files, crops

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        img = decode_image(self.files[i].read_bytes())
        g, loc = multicrop(img, self.crops, random.Random(i))
        return g + loc


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the DataLoader workers, once joined)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _measure(make_loader, batches: int, batch: int) -> tuple[float, float]:
    """(samples/s of wall time after the first batch, samples per CPU-second over the whole run).

    Wall throughput on a shared machine swings with other people's load; CPU-seconds per sample
    (workers included, counted once they are joined) is the load-robust number.
    """
    c0 = _cpu()
    it = iter(make_loader())
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    wall = batches * batch / (time.perf_counter() - t)
    del it
    gc.collect()
    return wall, (batches + 1) * batch / (_cpu() - c0)


def run(quick: bool, workers_list: list[int], batch: int, rounds: int) -> dict[tuple[str, int], list]:
    n_images = batch * (5 if quick else 10) + batch
    batches = n_images // batch - 2
    res: dict[tuple[str, int], list] = {}
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        root = make_images(Path(tmp) / "images", n_images)
        shards = Path(tmp) / "shards"
        write_dataset("imagefolder", root, shards, shard_size=max(8, n_images // 8), progress=False)
        files = sorted(root.rglob("*.jpg"))
        print(f"{n_images} JPEGs 500x375 ({sum(f.stat().st_size for f in files) / n_images / 1e3:.0f} kB avg), "
              f"batch {batch}, {batches} timed batches per run, {rounds} rounds", flush=True)
        from torchvision import datasets

        def ours(mode: str, w: int):
            crops = CropConfig(**PAPER, photometric=mode)
            data = DataConfig(shards=str(shards), batch_size=batch, num_workers=w, crops=crops,
                              shuffle_buffer=64, samples_per_epoch=n_images)
            return lambda: train_loader(data, 0, 1, 0)

        def dino(w: int):
            ds = datasets.ImageFolder(str(root / "train"), transform=DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 8))
            return lambda: DataLoader(ds, batch_size=batch, shuffle=True, num_workers=w, drop_last=True)

        def geometric(w: int):
            ds = DecodeCrops(files, CropConfig(**PAPER))
            return lambda: DataLoader(ds, batch_size=batch, shuffle=True, num_workers=w, drop_last=True)

        for r in range(rounds):  # interleaved, so load swings hit every variant alike
            for w in workers_list:
                for key, make in (("a1", ours("loader", w)), ("b", dino(w)), ("a2", ours("step", w)),
                                  ("c", geometric(w))):
                    wall, per_cpu = _measure(make, batches, batch)
                    res.setdefault((key, w), []).append((wall, per_cpu))
                    print(f"  round {r + 1} ({key:2s}) workers={w}: {wall:7.1f} samples/s wall, "
                          f"{per_cpu:7.1f} samples/CPU-s", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer batches (about a minute)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker counts (default 1 2)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved repetitions (default 3, --quick 1)")
    a = p.parse_args(argv)
    rounds = a.rounds or (1 if a.quick else 3)
    torch.set_num_threads(1)  # the main process only collects batches; workers use 1 thread each
    print(f"loader bench: {platform.machine()}, {torch.get_num_threads()} main thread, torch {torch.__version__}, "
          f"crops 2x{PAPER['global_size']} + {PAPER['local_crops']}x{PAPER['local_size']}")
    res = run(a.quick, a.workers, a.batch, rounds)
    best = {k: max(x[0] for x in v) for k, v in res.items()}
    cpu = {k: statistics.median(x[1] for x in v) for k, v in res.items()}
    print("\nsamples/s (best wall of the rounds) | samples per CPU-second (median)")
    print("workers      a1      a2       b       c |      a1      a2       b       c")
    for w in a.workers:
        print(f"{w:7d} " + " ".join(f"{best[(k, w)]:7.1f}" for k in ("a1", "a2", "b", "c")) + " | "
              + " ".join(f"{cpu[(k, w)]:7.1f}" for k in ("a1", "a2", "b", "c")))
    print("\nratios   wall (a1)/(b)  (a2)/(c) | per CPU-s (a1)/(b)  (a2)/(c)   goals >= 1.5, >= 0.8")
    for w in a.workers:
        print(f"{w:7d}  {best[('a1', w)] / best[('b', w)]:13.2f}  {best[('a2', w)] / best[('c', w)]:8.2f} | "
              f"{cpu[('a1', w)] / cpu[('b', w)]:18.2f}  {cpu[('a2', w)] / cpu[('c', w)]:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
