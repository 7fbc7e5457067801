"""One rule for "is this location on this machine's disk?", used by shards, the init checkpoint
and the study storage: a file:// URL is a local path, a bucket URI or a `pipe:` command is not."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.job_paths import outside_job_copy
from harness.preflight import check_init_checkpoint
from shards.urls import is_remote, join, local_path


@pytest.mark.parametrize("location, remote", [
    ("data/demo/shards", False),
    ("/srv/shards", False),
    ("~/shards", False),
    ("file:///srv/shards", False),
    ("file:/srv/shards", False),
    ("s3://bucket/shards", True),
    ("gs://bucket/shards", True),
    ("https://host/shards", True),
    ("pipe:aws s3 cp s3://bucket/{} -", True),
])
def test_remote_means_not_on_this_machines_disk(location, remote):
    assert is_remote(location) is remote


def test_a_file_url_is_the_path_it_names(tmp_path):
    folder = tmp_path / "a b"  # a space is percent-encoded in the URL
    assert local_path(folder.as_uri()) == folder
    assert join(folder.as_uri(), "x.tar") == str(folder / "x.tar")
    assert join("s3://bucket/shards/", "x.tar") == "s3://bucket/shards/x.tar"


def test_file_urls_are_local_for_the_study_storage_and_the_init_checkpoint(tmp_path):
    # the study storage: harness.tune resolves a local folder, a bucket URI goes to pyarrow as it is
    assert outside_job_copy((tmp_path / "runs").as_uri(), cwd=tmp_path) == str(tmp_path / "runs")
    assert outside_job_copy("s3://bucket/runs", cwd=tmp_path) == "s3://bucket/runs"
    checkpoint = tmp_path / "checkpoint.pth"
    checkpoint.write_bytes(b"")
    assert check_init_checkpoint(checkpoint.as_uri(), "study.yaml") == str(checkpoint)
    assert Path(check_init_checkpoint(str(checkpoint), "study.yaml")) == checkpoint


def test_report_reads_tune_state_where_the_study_wrote_it(tmp_path):
    """`harness.report RUN_DIR --storage S` reads Tune's state from S/NAME (a bucket study keeps its
    results files in runs/NAME and Tune's state in the bucket), RUN_DIR itself without --storage."""
    from harness.report import tune_state

    folder = tmp_path / "runs" / "cub"
    assert tune_state(folder, None) == str(folder)
    assert tune_state(folder, "s3://bucket/studies/") == "s3://bucket/studies/cub"
    assert tune_state(folder, (tmp_path / "studies").as_uri()) == str(tmp_path / "studies" / "cub")


@pytest.mark.parametrize("command", ["sleep 300", "sh -c 'sleep 301 | cat'"])
def test_a_pipe_command_and_what_it_started_die_with_a_killed_reader(command):
    """A `pipe:` location read by a process that is then killed (SIGKILL: nothing of it runs)
    leaves none of the processes the command started behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    root = Path(__file__).resolve().parent.parent
    reader = ("import sys, time\nfrom shards.urls import open_url\nstream = open_url(sys.argv[1])\n"
              "print(stream.proc.pid, flush=True)\ntime.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-c", reader, f"pipe:{command}"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(root)})
    try:
        int(proc.stdout.readline())
        expected = {"sleep"} | ({"cat"} if "cat" in command else set())
        deadline = time.monotonic() + 60
        while not expected <= {p.name() for p in psutil.Process(proc.pid).children(recursive=True)}:
            assert time.monotonic() < deadline, "the command did not start"
            time.sleep(0.1)
        started = psutil.Process(proc.pid).children(recursive=True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def running(p: psutil.Process) -> bool:
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 60
    while any(running(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [f"{p.pid} {p.name()}" for p in started if running(p)]
    for p in started:
        if running(p):
            p.kill()
    assert left == []
