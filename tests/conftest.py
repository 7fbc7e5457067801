"""Shared fixtures: one real Ray head per test session, and the generated demo shards."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_head():
    """One `ray start --head` on 127.0.0.1 shared by every test that needs Ray."""
    from tests.ray_head import start_head

    head = start_head(num_cpus=2)
    old = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    os.environ["RAY_ADDRESS"] = head.gcs_address
    os.environ["RAY_AUTH_MODE"] = "disabled"
    yield head
    import ray

    if ray.is_initialized():
        ray.shutdown()
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    head.stop()


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    """A small demo set (8 classes, real JPEGs) written as shards once per session."""
    from shards.demo import ensure_demo_shards

    out = tmp_path_factory.mktemp("demo") / "shards"
    ensure_demo_shards(out, train_per_class=24, val_per_class=8)
    return out
