"""JPEG bytes -> uint8 (3,H,W) tensor.

torchvision.io.decode_jpeg (libjpeg-turbo) is used: it decodes faster than Pillow, and the crops
that follow are faster on the tensor (bicubic, antialiased) than with PIL's resize(box=...); the
measurements are in shards/README.md, "Decode and geometric work". Pillow is the fallback for
non-JPEG bytes (PNG etc.), through shards/rgb.py so 16-bit grey PNGs are scaled, not clipped.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from torch import Tensor

try:  # the op behind torchvision.io.decode_jpeg (which warns it is deprecated since 0.29, per call)
    import torchvision.io  # noqa: F401  (registers torch.ops.image)
    from torchvision.io import ImageReadMode

    _JPEG = torch.ops.image.decode_jpeg
    _RGB = ImageReadMode.RGB.value
except Exception:  # torchvision without image ops: Pillow decodes everything
    _JPEG = None


class UndecodableImage(ValueError):
    """The bytes are not a complete, decodable image (truncated, corrupt, empty)."""


def decode_image(data: bytes) -> Tensor:
    """Decode image bytes to RGB uint8 (3,H,W); raises UndecodableImage on truncated/corrupt data."""
    if not data:
        raise UndecodableImage("empty image")
    if data[:2] == b"\xff\xd8" and _JPEG is not None:
        try:
            return _JPEG(torch.frombuffer(bytearray(data), dtype=torch.uint8), _RGB, False)
        except RuntimeError as e:
            raise UndecodableImage(f"JPEG decode failed: {str(e).splitlines()[-1][:200]}") from None
    try:
        from PIL import Image

        from .rgb import to_rgb

        with Image.open(io.BytesIO(data)) as im:
            arr = np.array(to_rgb(im))
    except Exception as e:
        raise UndecodableImage(f"{type(e).__name__}: {e}") from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
