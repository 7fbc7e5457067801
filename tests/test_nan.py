"""A NaN loss on a real Ray head: the trial fails naming epoch, step and term, leaves no
checkpoint, and the study records the reason and goes on.

The non-finite loss comes from a legitimate config value: `loss.student_temp=1e-40` (> 0, so the
config accepts it) is a float32 subnormal, so `logits / student_temp` overflows to +-inf and the
log-softmax of the first step is NaN in every student term (checked deterministically on the tiny
config: loss_image, loss_region and loss_mil_student are NaN at epoch 1, step 0).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.tiny import write_tiny_study

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

NAN_TEMP = "1.0e-40"  # YAML needs the dot to read it as a float
TERMS = ("loss_image", "loss_region", "loss_mil_student")


def assert_names_nan_epoch_step_term(message: str) -> None:
    low = message.lower()
    assert "non-finite" in low or "nan" in low, message
    assert re.search(r"epoch 1 step 0\b", message), message
    assert any(term in message for term in TERMS), message


def test_nan_trial_errors_and_study_records_the_reason(ray_head, demo_shards, tmp_path):
    space = write_tiny_study(tmp_path / "nan.yaml", demo_shards, tmp_path / "runs", num_samples=1)
    proc = subprocess.run(
        [sys.executable, "harness/tune.py", "--space", str(space), "--no-baseline",
         f"loss.student_temp={NAN_TEMP}"],
        cwd=ROOT, env=ray_head.env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]  # the study ran, but no trial succeeded
    assert "ERROR" in proc.stdout, out[-4000:]

    frame = pd.read_parquet(tmp_path / "runs" / "tiny" / "results.parquet")
    assert len(frame) == 1, frame
    row = frame.iloc[0]
    assert row["status"] == "ERROR"
    assert row["stop_reason"] == "error"
    assert_names_nan_epoch_step_term(row["error"])
    assert f"errored {row['trial_id']}" in proc.stdout, proc.stdout[-3000:]
    runs = list((tmp_path / "runs" / "tiny" / "train").glob("train-*"))
    assert runs and not list(runs[0].glob("checkpoint_*")), "a NaN step must not be checkpointed"
