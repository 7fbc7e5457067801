"""The random-init baseline is measured once per data + model + eval config, not on every submit."""
from __future__ import annotations

import json

from harness.study_file import load_study
from harness.tune import BASELINE_FILE, baseline_key, random_init_baseline
from tests.tiny import write_tiny_study


def test_baseline_is_reused_for_the_same_config_and_measured_for_another(demo_shards, tmp_path):
    study = load_study(write_tiny_study(tmp_path / "s.yaml", demo_shards, tmp_path / "runs"))
    folder = tmp_path / "runs" / "tiny"
    first = random_init_baseline(study, folder)
    assert 0.0 <= first["probe_top1"] <= 1.0

    cache = folder / BASELINE_FILE
    stored = json.loads(cache.read_text())
    assert list(stored) == [baseline_key(study)]
    stored[baseline_key(study)]["probe_top1"] = -1.0  # a value no measurement gives: read, not measured
    cache.write_text(json.dumps(stored))
    assert random_init_baseline(study, folder)["probe_top1"] == -1.0

    other = load_study(write_tiny_study(tmp_path / "s.yaml", demo_shards, tmp_path / "runs"),
                       {"model.out_dim": 64, "eval.probe_epochs": 5})
    assert baseline_key(other) != baseline_key(study)
    assert 0.0 <= random_init_baseline(other, folder)["probe_top1"] <= 1.0
    assert len(json.loads(cache.read_text())) == 2


def test_regenerated_shards_change_the_key(demo_shards, tmp_path):
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(demo_shards, shards)
    study = load_study(write_tiny_study(tmp_path / "s.yaml", shards, tmp_path / "runs"))
    before = baseline_key(study)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["regenerated"] = True
    (shards / "manifest.json").write_text(json.dumps(manifest))
    assert baseline_key(study) != before
