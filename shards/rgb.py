"""Pillow image -> 8-bit RGB, shared by the shard writer and the decoder.

Pillow's convert("RGB") clips 16-bit grey (modes I;16, I;16B, I;16L, I from 16-bit PNG, TIFF and
PGM files) at 255, so most such images come out white. Their values span 0..65535 (Pillow
scales a PGM's maxval to that range), so the top byte (value >> 8) is the 8-bit image: the
mapping keeps absolute brightness, as 16-bit RGB PNGs already get from Pillow. Stretching each
image to its own min..max was rejected: it would brighten a dark photo, change contrast per
image and divide by zero on a flat one.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(im: Image.Image) -> Image.Image:
    """`im` as 8-bit RGB; 16-bit grey is scaled (value >> 8), not clipped."""
    if im.mode in SIXTEEN_BIT_GREY:
        values = np.asarray(im).astype(np.int64).clip(0, 65535)
        im = Image.fromarray((values >> 8).astype(np.uint8))  # 2-D uint8: mode L
    return im.convert("RGB")
