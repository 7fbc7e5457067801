"""Data and multi-crop settings, shared by the shard pipeline and the harness config."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CropConfig:
    """Multi-crop recipe. Defaults are the demo's; the paper's are in tune_spaces/cub.yaml.

    Paper/official code (EsViT `DataAugmentationDINO`): 2 global 224 px, scale (0.4, 1.0);
    8 local 96 px, scale (0.05, 0.4); colour jitter p 0.8, grayscale p 0.2, blur, solarize.
    """

    global_size: int = 64
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_crops: int = 6
    local_size: int = 32
    local_scale: tuple[float, float] = (0.05, 0.4)
    # "loader": photometric aug per batch in the DataLoader worker; "step": inside the
    # train step (on the accelerator); "none": geometric crops only.
    photometric: str = "loader"
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # global 1, global 2, locals
    solarize_p: float = 0.2  # global 2 only
    eval_size: int = 64  # center-crop size for probe / kNN features
    eval_resize: int = 73  # resize shorter side before the center crop (256/224 ratio)


@dataclass
class DataConfig:
    """Where the shards are and how they are streamed."""

    shards: str = "data/demo/shards"  # folder (or URL) holding manifest.json
    demo: bool = False  # generate the demo set into `shards` when it is missing
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 32  # per worker
    num_workers: int = 1  # DataLoader workers per Ray Train worker
    samples_per_epoch: int | None = None  # None: the split's size (see shards/README.md)
    shuffle_buffer: int = 256
    verify: bool = True  # sha256 of each shard against the manifest before reading
    fraction: float = 1.0  # fraction of the train split used (multi-fidelity)
    resampled: bool = False  # True: each loader slot draws shards at random with replacement (no exact epochs)
    seed: int = 0
    crops: CropConfig = field(default_factory=CropConfig)
