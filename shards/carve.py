"""A validation split carved from the training split, for datasets released without one.

CUB-200-2011 and Stanford Cars ship train and test only; a study that chose hyperparameters on
test would report optimistically biased numbers. The carve is stratified by class and seeded, so
the same command gives the same split, and it is recorded in the manifest (`options.val_carved`).
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace

from .layouts import DatasetIndex, Item

VAL, TRAIN = "val", "train"


def carve_validation(index: DatasetIndex, fraction: float, seed: int) -> DatasetIndex:
    """`index` with `fraction` of each class of its train split moved to a new val split.

    Nothing changes when the dataset has a val split of its own (FGVC-Aircraft), no train split,
    or `fraction` is 0. Each class with at least 2 train images gives at least one and keeps one.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0 or VAL in index.splits or TRAIN not in index.splits:
        return index
    by_class: dict[int, list[Item]] = defaultdict(list)
    for item in index.splits[TRAIN]:
        by_class[item.label].append(item)
    train, val = [], []
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda it: str(it.path))
        random.Random(f"{seed}:val:{label}").shuffle(items)
        n = min(max(round(fraction * len(items)), 1), len(items) - 1) if len(items) >= 2 else 0
        val += items[:n]
        train += items[n:]
    splits = {**index.splits, TRAIN: train, VAL: val}
    record = {"from": TRAIN, "fraction": fraction, "seed": seed, "count": len(val), "stratified_by": "class"}
    return replace(index, splits=splits, options={**index.options, "val_carved": record})
