"""What the commands print by default: one line per event, none twice, no Ray internals."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.console import PRINT_PATCH_ENV
from shards.write import main as write_main
from tests.shard_fixtures import make_imagefolder
from tests.tiny import tiny_base

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
def test_train_prints_each_epoch_once_and_no_report_dicts(ray_head, demo_shards, tmp_path):
    config = tiny_base(demo_shards)
    config["optim"]["epochs"] = 2
    config["run"] = {"storage": str(tmp_path / "runs")}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))

    # Attached to the session's head, whose workers get the driver's settings only through Ray Train.
    proc = subprocess.run([sys.executable, "harness/train.py", "--config", str(tmp_path / "tiny.yaml"),
                           "--name", "quiet"], cwd=ROOT, env=ray_head.env, capture_output=True,
                          text=True, timeout=600, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    epochs = re.findall(r"\[train\] epoch (\d+)/2 loss", output)
    assert epochs == ["1", "2"], output
    assert "Reporting training result" not in output
    assert "metrics={" not in output
    # stdout is ours alone: the run's start, which Ray, each epoch (from the worker), the result
    ours = re.compile(r"(\(RayTrainWorker pid=\d+\) )?\[(train|ray)\] ")
    lines = [ANSI.sub("", line) for line in proc.stdout.splitlines() if line.strip()]
    assert [line for line in lines if not ours.match(line)] == []
    assert len(lines) == 5, proc.stdout
