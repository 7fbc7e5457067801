"""Shared fixtures: one real Ray head per test session, and the generated demo shards."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_head():
    """One `ray start --head` on 127.0.0.1 shared by every test that needs Ray."""
    from tests.ray_head import attached, start_head

    with attached(start_head(num_cpus=2)) as head:
        yield head


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    """A small demo set (8 classes, real JPEGs) written as shards once per session."""
    from shards.demo import ensure_demo_shards

    out = tmp_path_factory.mktemp("demo") / "shards"
    ensure_demo_shards(out, train_per_class=24, val_per_class=8)
    return out


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if the command gets as far as starting or joining Ray."""
    import ray

    import harness.ray_session

    def connect(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the command got as far as starting Ray")

    was_up = ray.is_initialized()
    monkeypatch.setattr(harness.ray_session, "connect", connect)
    yield
    assert ray.is_initialized() == was_up
