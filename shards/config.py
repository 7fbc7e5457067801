"""Data and multi-crop settings, shared by the shard pipeline and the harness config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, get_args

from annotated_types import Ge, Gt, Interval

# "loader": photometric aug per batch in the DataLoader worker; "step": inside the train step
# (on the accelerator); "none": geometric crops only.
Photometric = Literal["loader", "step", "none"]
PHOTOMETRIC_MODES = get_args(Photometric)


@dataclass
class CropConfig:
    """Multi-crop recipe. The defaults are small CPU-sized crops with DINO's photometric recipe; the demo's
    values are in tune_spaces/demo.yaml, the paper's in tune_spaces/recipes/paper.yaml.

    Paper/official code (EsViT `DataAugmentationDINO`): 2 global 224 px, scale (0.4, 1.0);
    8 local 96 px, scale (0.05, 0.4); colour jitter p 0.8, grayscale p 0.2, blur, solarize.
    """

    global_size: Annotated[int, Gt(0)] = 64
    global_scale: tuple[Annotated[float, Interval(gt=0, le=1)], Annotated[float, Interval(gt=0, le=1)]] = (0.4, 1.0)
    local_crops: Annotated[int, Ge(0)] = 6
    local_size: Annotated[int, Gt(0)] = 32
    local_scale: tuple[Annotated[float, Interval(gt=0, le=1)], Annotated[float, Interval(gt=0, le=1)]] = (0.05, 0.4)
    photometric: Photometric = "loader"
    color_jitter_p: Annotated[float, Interval(ge=0, le=1)] = 0.8
    grayscale_p: Annotated[float, Interval(ge=0, le=1)] = 0.2
    blur_p: tuple[Annotated[float, Interval(ge=0, le=1)], Annotated[float, Interval(ge=0, le=1)],
                  Annotated[float, Interval(ge=0, le=1)]] = (1.0, 0.1, 0.5)  # global 1, global 2, locals
    solarize_p: Annotated[float, Interval(ge=0, le=1)] = 0.2  # global 2 only
    eval_size: Annotated[int, Gt(0)] = 64  # center-crop size for probe / kNN features
    eval_resize: Annotated[int, Gt(0)] = 73  # resize shorter side before the center crop (256/224 ratio)

    def __post_init__(self) -> None:
        # The harness checks every field with the config file's name (harness/config.py); this one
        # check also holds for a CropConfig made in code, since an unknown mode would silently skip
        # the photometric recipe.
        if self.photometric not in PHOTOMETRIC_MODES:
            raise ValueError(f"crops.photometric must be one of {PHOTOMETRIC_MODES}, got {self.photometric!r}")


@dataclass
class DataConfig:
    """Where the shards are and how they are streamed."""

    shards: str = "data/demo/shards"  # folder (or URL) holding manifest.json
    demo: bool = False  # generate the demo set into `shards` when it is missing
    train_split: str = "train"
    val_split: str = "val"
    batch_size: Annotated[int, Gt(0)] = 32  # per worker
    num_workers: Annotated[int, Ge(0)] = 1  # DataLoader workers per Ray Train worker
    samples_per_epoch: Annotated[int, Gt(0)] | None = None  # None: the split's size (see shards/README.md)
    shuffle_buffer: Annotated[int, Ge(0)] = 256
    verify: bool = True  # sha256 of each shard against the manifest before reading
    fraction: Annotated[float, Interval(gt=0, le=1)] = 1.0  # fraction of the train split used (multi-fidelity)
    resampled: bool = False  # True: each loader slot draws shards at random with replacement (no exact epochs)
    seed: int = 0
    crops: CropConfig = field(default_factory=CropConfig)
