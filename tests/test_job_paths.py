"""Inside Ray's temporary copy of a submitted working dir, relative paths go under ~/cmd-harness."""
from __future__ import annotations

from pathlib import Path

from harness.console import show_events
from harness.job_paths import job_working_copy, outside_job_copy


def test_paths_in_rays_working_dir_copy_move_under_the_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    copy = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    (copy / "harness").mkdir(parents=True)
    assert job_working_copy(copy / "harness") == copy
    home = tmp_path / "home" / "cmd-harness"
    assert outside_job_copy("runs", cwd=copy) == str(home / "runs")
    assert outside_job_copy("data/demo/shards", cwd=copy) == str(home / "data" / "demo" / "shards")
    assert outside_job_copy(str(copy / "runs"), cwd=copy) == str(home / "runs")
    assert outside_job_copy("/srv/studies", cwd=copy) == "/srv/studies"  # chosen by the user: kept
    assert outside_job_copy("s3://bucket/studies", cwd=copy) == "s3://bucket/studies"


def test_an_ordinary_checkout_keeps_its_paths(tmp_path):
    assert job_working_copy(tmp_path) is None
    assert outside_job_copy("runs", cwd=tmp_path) == "runs"
    assert job_working_copy(Path(tmp_path / "_ray_pkg_x")) is None  # the name alone is not enough


def test_a_job_keeps_its_run_folder_and_demo_set_out_of_the_copy(tmp_path, monkeypatch, capsys):
    from harness.config import build_config
    from harness.job_paths import keep_out_of_job_copy

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    copy = tmp_path / "working_dir_files" / "_ray_pkg_0123abcd"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    cfg = build_config({"data": {"shards": "data/demo/shards", "demo": True}, "run": {"storage": "runs"}})
    show_events()  # as every command does: the library's event lines on stdout
    keep_out_of_job_copy(cfg, "[train]")
    home = tmp_path / "home" / "cmd-harness"
    assert (cfg.data.shards, cfg.run.storage) == (str(home / "data/demo/shards"), str(home / "runs"))
    assert f"[train] running in Ray's temporary copy of the working dir ({copy})" in capsys.readouterr().out

    own = build_config({"data": {"shards": "my/shards"}})  # not generated: uploaded with the working dir
    keep_out_of_job_copy(own, "[train]")
    assert own.data.shards == "my/shards"
