"""Multi-crop augmentation: per-sample geometric crops and BATCHED photometric jitter.

Geometric work (RandomResizedCrop + flip) runs per sample in the loader worker on uint8
tensors, right after decode, so only the small crops travel on. Photometric work (the
DINO/EsViT recipe: colour jitter, grayscale, Gaussian blur, solarize) runs on whole
batches with per-sample random parameters: only the samples a draw selects are touched,
which is several times cheaper than per-image PIL transforms and works the same on CPU
(in the loader) or on the accelerator (inside the train step).
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .config import CropConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RATIO = (3 / 4, 4 / 3)
JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue (DINO / EsViT)
BLUR_SIGMA = (0.1, 2.0)  # DINO GaussianBlur radius range
_GRAY = (0.2989, 0.587, 0.114)  # torchvision rgb_to_grayscale weights


# ----------------------------------------------------------------------------- geometric

def rrc_params(h: int, w: int, scale: tuple[float, float], rnd: random.Random,
               ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params with a local RNG: (top, left, height, width)."""
    area = h * w
    lr = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rnd.uniform(scale[0], scale[1])
        ar = math.exp(rnd.uniform(*lr))
        cw = int(round(math.sqrt(target * ar)))
        ch = int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            return rnd.randint(0, h - ch), rnd.randint(0, w - cw), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _channels_last(img: Tensor) -> Tensor:
    """(3,H,W) -> (1,3,H,W) in channels_last memory: torch's uint8 antialiased resize kernels are
    vectorised for that layout (faster crops than on the decoder's CHW tensor: shards/README.md,
    "Decode and geometric work")."""
    x = img.unsqueeze(0) if img.dim() == 3 else img
    return x.contiguous(memory_format=torch.channels_last)


def resized_crop(img: Tensor, size: int, scale: tuple[float, float], rnd: random.Random) -> Tensor:
    """One RandomResizedCrop (bicubic, antialiased, as DINO) + horizontal flip p 0.5 on a uint8 image.

    `img` is (3,H,W), or (1,3,H,W) already in channels_last (see multicrop); returns contiguous (3,size,size).
    """
    x = img if img.dim() == 4 else _channels_last(img)
    top, left, ch, cw = rrc_params(x.shape[-2], x.shape[-1], scale, rnd)
    out = F.interpolate(x[:, :, top:top + ch, left:left + cw], size=(size, size), mode="bicubic",
                        antialias=True, align_corners=False)[0]
    if rnd.random() < 0.5:
        out = out.flip(-1)
    return out.contiguous()


def multicrop(img: Tensor, cfg: CropConfig, rnd: random.Random) -> tuple[list[Tensor], list[Tensor]]:
    """2 global + cfg.local_crops local uint8 crops of one decoded (3,H,W) image."""
    x = _channels_last(img)
    g = [resized_crop(x, cfg.global_size, tuple(cfg.global_scale), rnd) for _ in range(2)]
    loc = [resized_crop(x, cfg.local_size, tuple(cfg.local_scale), rnd) for _ in range(cfg.local_crops)]
    return g, loc


def eval_view(img: Tensor, cfg: CropConfig) -> Tensor:
    """Deterministic eval view: shorter side -> eval_resize (bicubic), center crop eval_size, uint8."""
    out = TF.resize(img, [cfg.eval_resize], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(out, [cfg.eval_size, cfg.eval_size])


# ----------------------------------------------------------------------------- photometric

def _uniform(n: int, lo: float, hi: float, gen: torch.Generator | None) -> Tensor:
    dev = gen.device if gen is not None else "cpu"
    return torch.rand(n, generator=gen, device=dev) * (hi - lo) + lo


def _gray(x: Tensor) -> Tensor:
    """(n,3,H,W) float -> (n,1,H,W) luma with torchvision's weights."""
    return (x[:, 0:1] * _GRAY[0]).add_(x[:, 1:2], alpha=_GRAY[1]).add_(x[:, 2:3], alpha=_GRAY[2])


def _col(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def _hue(x: Tensor, shift: Tensor, top: float) -> Tensor:
    """Rotate the HSV hue of float (n,3,H,W) by `shift` (fraction of a turn) per sample, in place.

    torchvision's adjust_hue maths (v = max and s kept, h += shift mod 1), as in-place plane ops
    on 6 scratch planes instead of a full RGB->HSV->RGB round trip with fresh tensors per step.
    """
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc = torch.maximum(r, g)
    torch.maximum(maxc, b, out=maxc)
    minc = torch.minimum(r, g)
    torch.minimum(minc, b, out=minc)
    chroma = torch.sub(maxc, minc)
    inv = torch.clamp(chroma, min=1e-6).reciprocal_()  # chroma 0 -> numerator 0 -> hue 0, as torchvision
    h = torch.sub(r, g).add_(chroma, alpha=4.0)  # max is b: 4 + (r - g) / C
    tmp = torch.sub(b, r).add_(chroma, alpha=2.0)  # max is g: 2 + (b - r) / C
    mask = torch.eq(maxc, g)
    torch.where(mask, tmp, h, out=h)
    torch.sub(g, b, out=tmp)  # max is r (takes precedence, as torchvision): (g - b) / C
    torch.eq(maxc, r, out=mask)
    torch.where(mask, tmp, h, out=h)
    h.mul_(inv).add_(shift.view(-1, 1, 1), alpha=6.0)  # hue in sextants, in [-1.6, 5.6)
    torch.lt(h, 0.0, out=mask)
    h.add_(mask, alpha=6.0)  # wrap to [0, 6)
    # HSV -> RGB: channel = min + C * profile(h); R = |h-3|-1, G = 2-|h-2|, B = 2-|h-4|, clamped to [0, 1]
    centre, sign, off = (torch.tensor(v, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
                         for v in ((3.0, 2.0, 4.0), (1.0, -1.0, -1.0), (-1.0, 2.0, 2.0)))
    prof = torch.sub(h.unsqueeze(1), centre).abs_().mul_(sign).add_(off).clamp_(0.0, 1.0)
    x.copy_(prof.mul_(chroma.unsqueeze(1)).add_(minc.unsqueeze(1)))
    return x.clamp_(0.0, top)


def _gaussian_kernels(sigma: Tensor, radius: int) -> Tensor:
    """(n, 2*radius+1) normalised 1-D Gaussians."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=sigma.device)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Per-sample Gaussian blur of float (n,3,H,W), in place: separable, reflect padding.

    Samples are grouped by kernel radius ceil(3 sigma), so each gets a kernel sized for its own
    sigma (sigma ~ U(0.1, 2) gives 3..13 taps). Each pass is a sum of shifted slices times
    per-sample weights (addcmul): on CPU faster than a grouped conv2d, whose oneDNN set-up is
    redone for every new bucket size (shards/README.md, "Photometric work").
    """
    n, c, h, w = x.shape
    sigma = sigma.to(x.device, torch.float32)
    radius = torch.ceil(3.0 * sigma).clamp_(min=1).to(torch.int64)
    for r in radius.unique().tolist():
        idx = torch.nonzero(radius == r).flatten()
        whole = idx.numel() == n
        sub = x if whole else x.index_select(0, idx)
        taps = _gaussian_kernels(sigma[idx], r).to(x.dtype).t().contiguous().view(2 * r + 1, -1, 1, 1, 1)
        mode = "reflect" if r < min(h, w) else "replicate"
        p = F.pad(sub, (r, r, 0, 0), mode=mode)
        y = p[..., :, 0:w] * taps[0]
        for t in range(1, 2 * r + 1):
            y.addcmul_(p[..., :, t:t + w], taps[t])
        p = F.pad(y, (0, 0, r, r), mode=mode)
        y = p[..., 0:h, :] * taps[0]
        for t in range(1, 2 * r + 1):
            y.addcmul_(p[..., t:t + h, :], taps[t])
        if whole:
            x.copy_(y)
        else:
            x.index_copy_(0, idx, y)
    return x


def _jitter(x: Tensor, f: dict[str, Tensor], order: list[int], top: float) -> Tensor:
    """ColorJitter ops on float (n,3,H,W) in [0, top], in place, with per-sample factors `f`."""
    for op in order:
        if op == 0:
            x.mul_(_col(f["b"])).clamp_(0.0, top)
        elif op == 1:  # blend with the image's mean grey level
            gw = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3)
            mean = (x.mean(dim=(2, 3)) * gw).sum(dim=1)
            x.mul_(_col(f["c"])).add_(_col(mean * (1 - f["c"]))).clamp_(0.0, top)
        elif op == 2:  # blend with the grey image
            grey = _gray(x).mul_(_col(1 - f["s"]))
            x.mul_(_col(f["s"])).add_(grey).clamp_(0.0, top)
        else:
            _hue(x, f["h"], top)
    return x


def _jitter_params(n: int, gen: torch.Generator | None,
                   strength: Sequence[float] = JITTER) -> tuple[dict[str, Tensor], list[int]]:
    """Per-sample factors, and one op order per batch drawn uniformly from the 24 permutations
    (each sample's order is then uniform, as in the per-image transform; ops with strength 0 are left out)."""
    bri, con, sat, hue = strength
    f = {"b": _uniform(n, 1 - bri, 1 + bri, gen), "c": _uniform(n, 1 - con, 1 + con, gen),
         "s": _uniform(n, 1 - sat, 1 + sat, gen), "h": _uniform(n, -hue, hue, gen)}
    order = torch.randperm(4, generator=gen, device=gen.device if gen is not None else "cpu").tolist()
    return f, [op for op in order if strength[op]]


def _chunk(x_shape: torch.Size, device: torch.device) -> int:
    """Samples per chunk: on CPU ~4 MB of float per chunk keeps the ops' data in cache (faster than
    whole-batch ops: shards/README.md, "Photometric work"); on an accelerator the whole batch at once."""
    if device.type != "cpu":
        return max(1, x_shape[0])
    return max(1, (1 << 20) // max(1, x_shape[1] * x_shape[2] * x_shape[3]))


def photometric(views: list[Tensor], cfg: CropConfig, generator: torch.Generator | None = None,
                n_global: int = 2) -> list[Tensor]:
    """The DINO/EsViT photometric recipe on batched views [global1, global2, locals...].

    Per sample and view: colour jitter (0.4, 0.4, 0.2, 0.1) with p cfg.color_jitter_p, grayscale
    p cfg.grayscale_p, Gaussian blur sigma U(0.1, 2) with p cfg.blur_p (global 1, global 2, locals),
    solarize (threshold 128) p cfg.solarize_p on global 2 only. Views are uint8 (0..255) or float
    (0..1), on any device; random parameters come from `generator` (on its own device), and only
    the samples a draw selects are computed. Inputs are not modified; outputs keep dtype and device.
    """
    out = []
    for i, v in enumerate(views):
        n, dev = v.shape[0], v.device
        blur_p = cfg.blur_p[0] if i == 0 else cfg.blur_p[1] if i < n_global else cfg.blur_p[2]
        jit = _uniform(n, 0, 1, generator) < cfg.color_jitter_p
        f, order = _jitter_params(n, generator)
        gray = _uniform(n, 0, 1, generator) < cfg.grayscale_p
        blur = _uniform(n, 0, 1, generator) < blur_p
        sigma = _uniform(n, *BLUR_SIGMA, generator)
        sol = _uniform(n, 0, 1, generator) < (cfg.solarize_p if i == 1 else 0.0)
        any_op = jit | gray | blur | sol
        if not bool(any_op.any()):
            out.append(v)
            continue
        masks = [m.to(dev) for m in (jit, gray, blur, sol)]
        f = {k: t.to(dev) for k, t in f.items()}
        sigma = sigma.to(dev)
        is_u8 = v.dtype == torch.uint8
        top = 255.0 if is_u8 else 1.0
        res = v.clone()  # a private copy: inputs stay untouched
        step = _chunk(v.shape, dev)
        for a in range(0, n, step):
            sl = slice(a, min(n, a + step))
            mj, mg, mb, ms = (m[sl] for m in masks)
            if not bool((mj | mg | mb | ms).any()):
                continue
            x = v[sl].to(torch.float32, copy=True)
            _on(x, mj, lambda s, idx: _jitter(s, {k: t[sl][idx] for k, t in f.items()}, order, top))  # noqa: B023 (applied at once, in this iteration)
            _on(x, mg, lambda s, idx: _gray(s).expand(-1, 3, -1, -1))
            _on(x, mb, lambda s, idx: gaussian_blur(s, sigma[sl][idx]))  # noqa: B023
            thr = 128.0 if is_u8 else 0.5  # PIL ImageOps.solarize(threshold=128): invert pixels >= 128
            _on(x, ms, lambda s, idx: torch.where(s >= thr, top - s, s))  # noqa: B023
            res[sl] = x.add_(0.5).clamp_(0, 255) if is_u8 else x  # rounds on the uint8 cast
        out.append(res)
    return out


def _on(x: Tensor, mask: Tensor, fn) -> None:
    """fn(samples, their indices) on the masked samples of float x, written back in place."""
    idx = torch.nonzero(mask).flatten()
    if idx.numel() == 0:
        return
    if idx.numel() == x.shape[0]:
        y = fn(x, idx)
        if y.data_ptr() != x.data_ptr():
            x.copy_(y)
        return
    x.index_copy_(0, idx, fn(x.index_select(0, idx), idx))


def normalize(view: Tensor) -> Tensor:
    """uint8 (0..255) or float (0..1) -> float32 normalised with ImageNet mean/std."""
    x = view.float()
    scale = 255.0 if view.dtype == torch.uint8 else 1.0
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1) * scale
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1) * scale
    return x.sub_(mean).div_(std)


def to_model_input(views: list[Tensor], cfg: CropConfig, device: torch.device | str,
                   generator: torch.Generator | None = None) -> list[Tensor]:
    """What the train step calls on a batch's views: to device, photometric if mode "step", normalise.

    With cfg.photometric == "step" the recipe runs here (on the accelerator when `device` is
    one); `generator` defaults to a fresh one on `device` seeded from torch's global RNG.
    """
    dev = torch.device(device)
    out = [v.to(dev, non_blocking=True) for v in views]
    if cfg.photometric == "step":
        if generator is None:
            generator = torch.Generator(device=dev)
            generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        out = photometric(out, cfg, generator)
    return [normalize(v) for v in out]
