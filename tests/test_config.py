"""The typed config: bad keys, types and values fail with the key and file named."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.config import ConfigError, load_config, parse_overrides, to_dict, build_config

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_demo_space_base_loads_with_overrides():
    cfg = load_config(ROOT / "tune_spaces/demo.yaml", ["loss.mil_weight=0.25", "data.crops.local_crops=2"])
    assert cfg.loss.mil_weight == 0.25
    assert cfg.data.crops.local_crops == 2
    assert cfg.model.backbone_kwargs["patch_size"] == 8


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, {"loss": {"mil_wieght": 1.0}})
    with pytest.raises(ConfigError, match=r"cfg.yaml.*'loss.mil_wieght'"):
        load_config(path)


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, {"data": {"batch_size": "big"}})
    with pytest.raises(ConfigError, match=r"'data.batch_size' must be int, got str"):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("loss.method=byol", "'loss.method' must be one of"),
    ("loss.student_temp=0", "'loss.student_temp' must be > 0"),
    ("data.crops.local_scale=[0.5,0.2]", "'data.crops.local_scale' must satisfy"),
    ("optim.momentum_teacher=1.5", "'optim.momentum_teacher' must be in [0, 1]"),
])
def test_out_of_range_values(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(ROOT / "tune_spaces/demo.yaml", [override])


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["loss.mil_weight"])


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(ROOT / "tune_spaces/demo.yaml")
    path = write(tmp_path, to_dict(cfg))
    assert to_dict(load_config(path)) == to_dict(cfg)
    assert build_config(to_dict(cfg)) == cfg


@pytest.mark.parametrize("args, message", [
    (["--config", "tune_spaces/demo.yaml", "loss.nope=1"], "unknown key 'loss.nope'"),
    (["--config", "tune_spaces/demo.yaml", "optim.epochs=two"], "'optim.epochs' must be int"),
    (["--config", "tune_spaces/demo.yaml", "data.demo=false", "data.shards=/no/such/folder"],
     "'data.shards' = /no/such/folder: no such folder"),
    (["--config", "tune_spaces/demo.yaml", "model.backbone=swin_tiny_patch4_window7_224",
      "model.backbone_kwargs={img_size: 48, window_size: 6}"], "model.conv_stem is for ViT backbones"),
])
def test_train_cli_one_line_error_before_ray(args, message):
    proc = subprocess.run([sys.executable, "harness/train.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
