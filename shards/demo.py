"""A bundled, seeded fine-grained demo set: same-looking "birds" told apart only by a small mark.

Every class draws the same bird (body, head, wing, tail, beak, eye) in the same colour
ranges on random clutter, with random pose, scale and position. The class is the SHAPE
of one small mark (circle, square, triangle, cross) and the PART it sits on (head or
wing): 4 x 2 = 8 classes. Colour is never a class cue, because the SSL recipe's colour
jitter would erase it; a backbone has to attend to a small part to tell classes apart,
which is what fine-grained pretraining (CMD) is about.

CLI: python -m shards.demo --out data/demo [--preview sheet.png]
"""
from __future__ import annotations

import argparse
import io
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoStyle:
    """How hard the demo is. The defaults were chosen so that a few CPU-minutes of CMD
    pretraining can move a linear probe (docs/lab-notes.md); the mark stays a
    small part (about 19 px across in an 80-px image, 3% of its area) and colour is never the
    class cue; muted backgrounds and faint clutter keep them from being the main thing that tells
    one image from another, which is what self-supervision learns first."""

    mark_radius: float = 0.12  # mark radius, fraction of the bird's scale
    max_distractors: int = 0  # loose marks in the background (0: none)
    max_rotation: float = 10.0  # degrees
    position_jitter: float = 0.04  # fraction of the image
    scale_range: tuple[float, float] = (0.95, 1.05)
    clutter_range: tuple[int, int] = (2, 6)  # background lines / rings / patches
    clutter_alpha: tuple[int, int] = (20, 70)  # clutter opacity, 0..255: faint, so it is not the main instance cue
    background_range: tuple[int, int] = (90, 150)  # background base colour per channel: muted, all alike


DEMO_SHARD_SIZE = 128  # samples per shard of the generated demo set


@dataclass(frozen=True)
class DemoSize:
    """How many images the demo set has, of what size, from which seed: the one place its defaults
    are written (the CLI's and `ensure_demo_shards`' defaults are these)."""

    classes: int = 8
    train_per_class: int = 120
    val_per_class: int = 80
    test_per_class: int | None = None  # None: as many as val
    size: int = 80  # image side in pixels
    seed: int = 0

    def per_split(self) -> dict[str, int]:
        """Images per class of each split, in the order their seeds are numbered."""
        tests = self.val_per_class if self.test_per_class is None else self.test_per_class
        return {"train": self.train_per_class, "val": self.val_per_class, "test": tests}

    def images(self) -> int:
        return self.classes * sum(self.per_split().values())


MARKS = ("circle", "square", "triangle", "cross")
PARTS = ("head", "wing")
SS = 3  # supersampling factor for smooth edges
JPEG_QUALITY = 90


def class_names(classes: int = 8) -> list[str]:
    """Class folder names, e.g. '0_circle_head'; the index prefix keeps the label order = mark order."""
    if not 1 <= classes <= len(MARKS) * len(PARTS):
        raise ValueError(f"the demo has 1..{len(MARKS) * len(PARTS)} classes, got {classes}")
    pairs = [(m, p) for p in PARTS for m in MARKS][:classes]
    return [f"{i}_{m}_{p}" for i, (m, p) in enumerate(pairs)]


def _jit(rng: np.random.Generator, base: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in base)  # type: ignore


def _draw_mark(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple) -> None:
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        q = r * 0.85
        d.rectangle([cx - q, cy - q, cx + q, cy + q], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r * 1.1), (cx - r * 1.05, cy + r * 0.8), (cx + r * 1.05, cy + r * 0.8)], fill=fill)
    elif shape == "cross":
        w = r * 0.38
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        raise ValueError(shape)


def _background(rng: np.random.Generator, n: int, style: DemoStyle) -> Image.Image:
    """Muted random colour with a gradient, pixel noise and random clutter (lines, shapes, dots)."""
    base = rng.integers(*style.background_range, size=3)
    grad = rng.normal(0, 25, size=3)
    t = np.linspace(-1, 1, n)[:, None, None]
    arr = base[None, None, :] + grad[None, None, :] * t
    img = Image.fromarray(np.broadcast_to(np.clip(arr, 0, 255).astype(np.uint8), (n, n, 3)).copy())
    d = ImageDraw.Draw(img, "RGBA")
    for _ in range(int(rng.integers(style.clutter_range[0], style.clutter_range[1] + 1))):
        col = tuple(int(c) for c in rng.integers(0, 256, size=3)) + (int(rng.integers(*style.clutter_alpha)),)
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(-0.1 * n, 1.1 * n, size=4))
        kind = rng.integers(0, 3)
        if kind == 0:
            d.line([x0, y0, x1, y1], fill=col, width=int(rng.integers(1, 4)) * SS)
        elif kind == 1:
            d.ellipse([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=col, width=SS * 2)
        else:
            d.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=col[:3] + (50,))
    for _ in range(int(rng.integers(0, style.max_distractors + 1))):  # a loose mark is not the class
        col = tuple(int(c) for c in rng.integers(0, 256, size=3)) + (255,)
        _draw_mark(d, MARKS[int(rng.integers(0, len(MARKS)))], *rng.uniform(0, n, size=2), 0.05 * n, col)
    return img


def render_sample(label: int, rng: np.random.Generator, size: int = DemoSize.size,
                  style: DemoStyle = DemoStyle()) -> Image.Image:
    """One RGB image of class `label` (see class_names) drawn with the random state `rng`."""
    mark, part = MARKS[label % len(MARKS)], PARTS[label // len(MARKS)]
    n = size * SS
    img = _background(rng, n, style).convert("RGBA")

    layer = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    s = n * rng.uniform(*style.scale_range)
    c = n / 2
    a, b = 0.22 * s, 0.13 * s  # body semi-axes
    body = _jit(rng, (150, 110, 70), 35)
    wing = tuple(int(v * 0.7) for v in body)
    head = tuple(int(min(255, v * 1.08)) for v in body)
    hr = 0.095 * s
    hx, hy = c + a * 0.95, c - b * 0.85
    leg = (60, 45, 30)
    for lx in (c - a * 0.25, c + a * 0.2):  # legs
        d.line([lx, c + b * 0.8, lx + rng.uniform(-0.03, 0.03) * s, c + b + 0.1 * s], fill=leg, width=SS * 2)
    d.polygon([(c - a * 0.8, c - b * 0.2), (c - a - 0.16 * s, c - b * 0.9 + rng.uniform(-0.04, 0.04) * s),
               (c - a - 0.16 * s, c + b * 0.3)], fill=wing)  # tail
    d.ellipse([c - a, c - b, c + a, c + b], fill=body)
    d.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=head)
    d.polygon([(hx + hr * 0.8, hy - hr * 0.35), (hx + hr * 0.8, hy + hr * 0.35), (hx + hr * 1.9, hy + hr * 0.1)],
              fill=(220, 170, 40))  # beak
    wx, wy, wa, wb = c - a * 0.12, c - b * 0.05, a * 0.55, b * 0.55
    d.ellipse([wx - wa, wy - wb, wx + wa, wy + wb], fill=wing)
    d.ellipse([hx + hr * 0.2, hy - hr * 0.45, hx + hr * 0.55, hy - hr * 0.1], fill=(15, 15, 15))  # eye
    palette = ((240, 240, 235), (20, 20, 25), (235, 215, 60), (40, 170, 200))
    mcol = _jit(rng, palette[int(rng.integers(0, len(palette)))], 15)
    mr = style.mark_radius * s
    if part == "head":
        mx, my = hx - hr * 0.25, hy + hr * 0.25
    else:
        mx, my = wx - wa * 0.15, wy + wb * 0.1
    _draw_mark(d, mark, mx, my, mr, mcol)

    if rng.random() < 0.5:
        layer = layer.transpose(Image.FLIP_LEFT_RIGHT)
    box = int(c - 0.42 * s), int(c - 0.42 * s), int(c + 0.42 * s), int(c + 0.42 * s)
    bird = layer.crop(box).rotate(float(rng.uniform(-style.max_rotation, style.max_rotation)), resample=Image.BILINEAR)
    dx, dy = (int(v) for v in rng.uniform(-style.position_jitter * n, style.position_jitter * n, size=2))
    x, y = box[0] + dx, box[1] + dy
    img.alpha_composite(bird, (max(0, x), max(0, y)), (max(0, -x), max(0, -y)))
    out = np.asarray(img.convert("RGB").resize((size, size), Image.LANCZOS), dtype=np.int16)
    out = out + rng.normal(0, 6, size=out.shape).astype(np.int16)  # sensor-like noise, at final size
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def _rng(seed: int, split: int, label: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, split, label, i])


def make_demo_imagefolder(root: Path, **size: Any) -> Path:
    """Write ROOT/{train,val,test}/<class>/*.jpg for `DemoSize(**size)`; same arguments -> same bytes.

    val is what a study selects on; test is touched only by `python -m harness.final`. Each split
    draws from its own seeds, so adding test left the train and val images as they were.
    """
    root = Path(root)
    demo = DemoSize(**size)
    names = class_names(demo.classes)
    for si, (split, per) in enumerate(demo.per_split().items()):
        for label, name in enumerate(names):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per):
                buf = io.BytesIO()
                render_sample(label, _rng(demo.seed, si, label, i), demo.size).save(buf, "JPEG", quality=JPEG_QUALITY)
                (d / f"{name}_{i:04d}.jpg").write_bytes(buf.getvalue())
    return root


def ensure_demo_shards(shards_dir: Path, shard_size: int = DEMO_SHARD_SIZE, workers: int = 1, **size: Any) -> Path:
    """Make the demo shards of `DemoSize(**size)` if `shards_dir/manifest.json` is missing; returns
    the manifest path.

    Images go to `shards_dir.parent / "images"`. A file lock makes concurrent callers
    (several Ray Train workers on one machine) wait for one writer instead of racing.
    """
    from .manifest import MANIFEST_NAME
    from .write import write_dataset

    shards_dir = Path(shards_dir)
    manifest = shards_dir / MANIFEST_NAME
    if manifest.is_file():
        return manifest
    shards_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(shards_dir.parent / ".demo.lock", "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no lock, single caller assumed
            pass
        if manifest.is_file():
            return manifest
        images = shards_dir.parent / "images"
        demo = DemoSize(**size)
        log.info(f"demo: generating {demo.images()} images ({demo.classes} classes) in {images} and shards in "
                 f"{shards_dir}")
        make_demo_imagefolder(images, **size)
        return write_dataset("imagefolder", images, shards_dir, shard_size=shard_size, workers=workers,
                             progress=False, name="demo-birds")


def contact_sheet(root: Path, out: Path, per_class: int = 8, scale: int = 2) -> Path:
    """A PNG grid, one row per class (train split), to eyeball that classes differ only by the mark."""
    rows = sorted(p for p in (Path(root) / "train").iterdir() if p.is_dir())
    first = Image.open(next(rows[0].glob("*.jpg")))
    w, h = first.size[0] * scale, first.size[1] * scale
    label_w = 110
    sheet = Image.new("RGB", (label_w + per_class * (w + 2), len(rows) * (h + 2)), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for r, cd in enumerate(rows):
        d.text((4, r * (h + 2) + h // 2 - 5), cd.name, fill=(0, 0, 0))
        for c, f in enumerate(sorted(cd.glob("*.jpg"))[:per_class]):
            tile = Image.open(f).convert("RGB").resize((w, h), Image.NEAREST)
            sheet.paste(tile, (label_w + c * (w + 2), r * (h + 2)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shards.demo",
                                description="Generate the seeded fine-grained demo set and write it as shards.")
    p.add_argument("--out", type=Path, default=Path("data/demo"),
                   help="demo folder: images go to OUT/images, shards to OUT/shards (default data/demo)")
    p.add_argument("--classes", type=int, default=DemoSize.classes,
                   help="number of classes, 1..8 (default %(default)s)")
    p.add_argument("--train-per-class", type=int, default=DemoSize.train_per_class,
                   help="train images per class (default %(default)s)")
    p.add_argument("--val-per-class", type=int, default=DemoSize.val_per_class,
                   help="val (and test) images per class (default %(default)s)")
    p.add_argument("--size", type=int, default=DemoSize.size, help="image side in pixels (default %(default)s)")
    p.add_argument("--seed", type=int, default=DemoSize.seed, help="random seed (default %(default)s)")
    p.add_argument("--shard-size", type=int, default=DEMO_SHARD_SIZE, help="samples per shard (default %(default)s)")
    p.add_argument("--preview", type=Path, default=None, help="also save a contact sheet PNG here")
    a = p.parse_args(argv)
    m = ensure_demo_shards(a.out / "shards", shard_size=a.shard_size, classes=a.classes,
                           train_per_class=a.train_per_class, val_per_class=a.val_per_class, size=a.size,
                           seed=a.seed)
    if a.preview:
        print(contact_sheet(a.out / "images", a.preview))
    print(m)
    return 0


if __name__ == "__main__":
    sys.exit(main())
