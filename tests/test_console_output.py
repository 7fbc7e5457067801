"""What the commands print by default: one line per event, none twice, no Ray internals."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from harness.console import PRINT_PATCH_ENV
from shards.write import main as write_main
from tests.shard_fixtures import make_imagefolder

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the prefix of a worker's lines


def test_write_quiet_prints_nothing_but_the_path_without_it(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "img", {"train": {"a": 2, "b": 2}})
    args = ["imagefolder", "--root", str(root), "--workers", "1", "--val-fraction", "0"]

    assert write_main([*args, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")

    assert write_main([*args, "--out", str(tmp_path / "loud")]) == 0
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / "loud" / "manifest.json")]


def test_ray_train_internals_the_quiet_console_adjusts_are_still_there():
    """harness/console.py works around two Ray 2.60 details; an upgrade that changes either
    must fail here, not quietly bring the noise back (or leave a workaround for nothing)."""
    from ray.train.v2._internal import constants
    from ray.train.v2._internal.execution import context

    assert constants.ENABLE_PRINT_PATCH_ENV_VAR == PRINT_PATCH_ENV
    assert PRINT_PATCH_ENV in constants.ENV_VARS_TO_PROPAGATE  # reaches workers on any cluster
    assert context.logger.name == context.__file__  # outside `ray.train.*`: LoggingConfig misses it


@pytest.mark.slow
def assert_train_prints_each_epoch_once(proc: subprocess.CompletedProcess, epochs: int) -> None:
    """What `harness/train.py` printed, attached to a head whose workers get the driver's settings
    only through Ray Train: its start, which Ray, each epoch once (from the worker), the result;
    no report dicts. (tests/test_e2e_study.py runs the command: one Train run serves both.)"""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert re.findall(rf"\[train\] epoch (\d+)/{epochs} loss", output) == [str(e) for e in range(1, epochs + 1)], output
    assert "Reporting training result" not in output
    assert "metrics={" not in output
    ours = re.compile(r"(\(RayTrainWorker pid=\d+\) )?\[(train|ray)\] ")
    lines = [ANSI.sub("", line) for line in proc.stdout.splitlines() if line.strip()]
    assert [line for line in lines if not ours.match(line)] == []
    assert len(lines) == 3 + epochs, proc.stdout
