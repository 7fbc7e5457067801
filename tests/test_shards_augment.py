"""Batched photometric augmentation vs the per-image torchvision recipe; geometric crops."""
from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from scipy.stats import ks_2samp
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from shards.augment import _hue, _jitter, gaussian_blur, multicrop, normalize, photometric, rrc_params, to_model_input
from shards.config import CropConfig


@pytest.fixture(autouse=True)
def _one_thread():
    """Thousands of tiny tensor ops: on a busy 2-core box 2 OpenMP threads are ~10x slower than 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


OFF = dict(color_jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0, 0.0), solarize_p=0.0)


def _images(n: int, size: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, 3, 3, generator=g)
    return torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)


def test_each_op_matches_torchvision():
    x = _images(6)
    for c, fn in ((0, TF.adjust_brightness), (1, TF.adjust_contrast), (2, TF.adjust_saturation)):
        f = {"b": torch.full((6,), 1.3), "c": torch.full((6,), 0.7), "s": torch.full((6,), 1.2)}
        ours = _jitter(x.clone(), f, [c], 1.0)
        ref = torch.stack([fn(im, {0: 1.3, 1: 0.7, 2: 1.2}[c]) for im in x])
        assert torch.allclose(ours, ref, atol=1e-5), c
    for shift in (-0.1, -0.03, 0.05, 0.1):
        ours = _hue(x.clone(), torch.full((6,), shift), 1.0)
        assert torch.allclose(ours, TF.adjust_hue(x, shift), atol=1e-4), shift
    for sigma in (0.3, 1.0, 1.9):
        k = 2 * int(torch.ceil(torch.tensor(3 * sigma))) + 1
        ours = gaussian_blur(x.clone(), torch.full((6,), sigma))
        assert torch.allclose(ours, TF.gaussian_blur(x, [k, k], [sigma, sigma]), atol=1e-5), sigma
    u8 = (x * 255).round().to(torch.uint8)
    cfg = CropConfig(**{**OFF, "solarize_p": 1.0})
    assert torch.equal(photometric([u8, u8], cfg)[1], TF.solarize(u8, 128))
    cfg = CropConfig(**{**OFF, "grayscale_p": 1.0})
    ref = TF.rgb_to_grayscale(x, num_output_channels=3)
    assert torch.allclose(photometric([x], cfg)[0], ref, atol=1e-6)


def _changed(out: torch.Tensor, inp: torch.Tensor) -> float:
    return float(((out.float() - inp.float()).abs().amax(dim=(1, 2, 3)) > 0).float().mean())


def test_selection_rates_match_the_recipe():
    n = 4000
    g = torch.Generator().manual_seed(1)
    colour = torch.tensor([200, 90, 40], dtype=torch.uint8).view(1, 3, 1, 1).expand(n, 3, 4, 4).contiguous()
    views = [colour] * 4  # global 1, global 2, two locals
    tol = 4 * (0.25 / n) ** 0.5
    out = photometric(views, CropConfig(**{**OFF, "color_jitter_p": 0.8}), g)
    assert all(abs(_changed(o, colour) - 0.8) < tol for o in out)
    out = photometric(views, CropConfig(**{**OFF, "grayscale_p": 0.2}), g)
    for o in out:
        grey = (o[:, 0] == o[:, 1]).all(dim=(1, 2)) & (o[:, 1] == o[:, 2]).all(dim=(1, 2))
        assert abs(float(grey.float().mean()) - 0.2) < tol
    out = photometric(views, CropConfig(**{**OFF, "solarize_p": 0.2}), g)
    assert [round(_changed(o, colour), 1) for o in out] == [0.0, 0.2, 0.0, 0.0]
    # float checkerboard: even sigma 0.1 moves a 0 pixel off 0, so every blurred sample shows
    board = ((torch.arange(8).view(8, 1) + torch.arange(8).view(1, 8)) % 2).float().expand(n, 3, 8, 8).contiguous()
    out = photometric([board] * 4, CropConfig(**{**OFF, "blur_p": (1.0, 0.1, 0.5)}), g)
    rates = [_changed(o, board) for o in out]
    for got, want in zip(rates, (1.0, 0.1, 0.5, 0.5)):
        assert abs(got - want) < tol, rates


def test_output_distribution_matches_per_image_torchvision():
    """Same colour in, colour out: the batched recipe and DINO's per-image transforms agree (KS test)."""
    n = 1500
    torch.manual_seed(0)
    base = torch.tensor([0.75, 0.35, 0.2]).view(1, 3, 1, 1).expand(n, 3, 2, 2).contiguous()
    cfg = CropConfig(**{**OFF, "color_jitter_p": 0.8, "grayscale_p": 0.2})
    ours = photometric([base], cfg, torch.Generator().manual_seed(3))[0].mean(dim=(2, 3))
    per_image = T.Compose([T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(0.2)])
    ref = torch.stack([per_image(im) for im in base]).mean(dim=(2, 3))
    for c in range(3):
        assert ks_2samp(ours[:, c].numpy(), ref[:, c].numpy()).pvalue > 1e-3, c


def test_photometric_keeps_inputs_dtype_and_works_without_generator():
    u8 = (_images(5) * 255).to(torch.uint8)
    f = _images(5)
    keep_u8, keep_f = u8.clone(), f.clone()
    cfg = CropConfig(color_jitter_p=1.0, grayscale_p=0.5, blur_p=(1.0, 1.0, 1.0), solarize_p=1.0)
    outs = photometric([u8, u8, u8], cfg) + photometric([f, f], cfg)
    assert torch.equal(u8, keep_u8) and torch.equal(f, keep_f)
    assert [o.dtype for o in outs] == [torch.uint8] * 3 + [torch.float32] * 2
    assert float(outs[3].min()) >= 0 and float(outs[3].max()) <= 1


def test_to_model_input_modes():
    u8 = (_images(4) * 255).to(torch.uint8)
    for mode in ("none", "loader"):
        out = to_model_input([u8], CropConfig(photometric=mode), "cpu")
        assert torch.equal(out[0], normalize(u8))
    out = to_model_input([u8, u8], CropConfig(photometric="step"), "cpu", torch.Generator().manual_seed(0))
    assert out[0].dtype == torch.float32 and not torch.equal(out[0], normalize(u8))
    with pytest.raises(ValueError, match="photometric"):
        to_model_input([u8], CropConfig(photometric="gpu"), "cpu")


def test_crops_shapes_and_rrc_bounds():
    rnd = random.Random(0)
    for _ in range(200):
        h, w = rnd.randint(5, 300), rnd.randint(5, 300)
        top, left, ch, cw = rrc_params(h, w, (0.05, 0.4), rnd)
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0
    img = (torch.rand(3, 50, 70) * 255).to(torch.uint8)
    cfg = CropConfig(global_size=24, local_size=10, local_crops=3)
    g, loc = multicrop(img, cfg, random.Random(1))
    assert [tuple(x.shape) for x in g] == [(3, 24, 24)] * 2 and [tuple(x.shape) for x in loc] == [(3, 10, 10)] * 3
    assert all(x.dtype == torch.uint8 for x in g + loc)
    g2, _ = multicrop(img, dataclasses.replace(cfg), random.Random(1))
    assert torch.equal(g[0], g2[0])
