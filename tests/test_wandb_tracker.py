"""The W&B tracker in a real Tune study: with the study file's `trackers: {wandb: {mode: offline}}`
and no W&B account or WANDB_* settings, each trial leaves one complete offline run in the study
folder, holding every metric it reported.

A fast function trainable stands in for a trial; its probe value is a known function of the config
and the epoch. The runs' record logs (`run-<id>.wandb`, LevelDB's log format of W&B's protobuf
records: offline runs write no summary file) are read directly, without W&B's API.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import pytest
from ray import tune

from harness.study_file import load_study
from harness.study_storage import load_trials_study
from harness.tuner import build_tuner
from tests.tiny import write_tiny_study

pytestmark = pytest.mark.slow

MAX_T = 2
WEIGHTS = (0.5, 1.5)  # loss.mil_weight of the two trials


def probe(weight: float, epoch: int) -> float:
    return weight / 10 + epoch / 100


def trainable(config: dict) -> None:
    for epoch in range(1, MAX_T + 1):
        tune.report({"epoch": epoch, "probe_top1": probe(config["loss.mil_weight"], epoch)})


def read_records(path: Path) -> list:
    """The protobuf records of a W&B run file: a 7-byte file header, then blocks of 32 KiB holding
    chunks (crc32 of type + data, length, type: full, first, middle, last), a record in one or more
    chunks; a block's tail too short for a chunk header is padding."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(bytes([kind]) + chunk) == crc and len(chunk) == length, f"{path}: torn record at {pos}"
        pos += 7 + length
        pending += chunk
        if kind in (1, 4):  # full or last
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def run_contents(path: Path) -> tuple[str, str, bool, list[dict]]:
    """A run file's run id, project, whether the run was finished (its exit record), and its
    history rows."""
    records = read_records(path)
    kinds = [r.WhichOneof("record_type") for r in records]
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert runs, f"{path}: no run record in {len(path.read_bytes())} bytes"
    run = runs[0]
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    return run.run_id, run.project, "exit" in kinds, history


def test_offline_runs_hold_each_trials_metrics_in_the_study_folder(ray_head, tmp_path, monkeypatch):
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(key, raising=False)
    space = write_tiny_study(tmp_path / "s.yaml", tmp_path / "no-shards", tmp_path / "runs", max_t=MAX_T,
                             points_to_evaluate=[{"loss.mil_weight": w, "data.crops.local_crops": 2} for w in WEIGHTS],
                             search={"sampler": "random", "num_samples": len(WEIGHTS), "max_concurrent": 2,
                                     "seed": 0},
                             scheduler={"type": "none", "max_t": MAX_T}, trackers={"wandb": {"mode": "offline"}})
    study = load_study(space)
    folder = tmp_path / "runs" / "tiny"
    build_tuner(study, str(folder), folder, trainable=trainable).fit()

    weights = {t.user_attrs["tune_trial_id"]: t.params["loss.mil_weight"] for t in load_trials_study(folder).trials}
    assert sorted(weights.values()) == list(WEIGHTS)
    runs = sorted((folder / "wandb").glob("offline-run-*/run-*.wandb"))
    contents = {}
    for run in runs:
        run_id, project, finished, history = run_contents(run)
        contents[run_id] = (project, finished, history)
    assert len(runs) == len(contents) and set(contents) == set(weights)  # one run per trial, named by it
    for trial_id, (project, finished, history) in contents.items():
        assert project == study.name and finished, trial_id
        assert [(row["epoch"], row["probe_top1"]) for row in history] == \
            [(epoch, pytest.approx(probe(weights[trial_id], epoch))) for epoch in range(1, MAX_T + 1)], trial_id
    assert "WANDB_MODE" not in os.environ  # the tracker's mode did not leak into the driver's environment
