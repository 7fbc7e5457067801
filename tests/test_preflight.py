"""Before Ray starts: the shards a config names are read, listed and on disk, a remote manifest
answers within a bound, and the run folder is writable; each failure is one line, exit 2.

Remote locations are real servers on 127.0.0.1 only: a port where nothing listens, an
http.server that answers 404 or serves a manifest, and a socket that never answers.
"""
from __future__ import annotations

import http.server
import json
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness import train, tune
from harness.config import ConfigError, load_config
from harness.preflight import check_shards
from harness.remote_files import RemoteFileError, read_remote
from tests.test_config import one_error_line

ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "tune_spaces/demo.yaml")


@pytest.fixture
def shards(demo_shards, tmp_path) -> Path:
    """A copy of the demo shards this test may damage."""
    return Path(shutil.copytree(demo_shards, tmp_path / "shards"))


def train_args(shards: Path | str, *overrides: str) -> list[str]:
    return ["--config", DEMO, "data.demo=false", f"data.shards={shards}", *overrides]


def edit_manifest(shards: Path, change) -> None:
    path = shards / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------------------------------
# Local shards


def test_a_corrupt_manifest_is_one_line_before_ray(shards, capsys, no_ray):
    (shards / "manifest.json").write_text('{"dataset": "demo", "splits": {"train": ')
    assert train.main(train_args(shards)) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {DEMO}: 'data.shards' = {shards}: cannot read shard manifest {shards}")
    assert "JSONDecodeError" in line


def test_a_manifest_record_of_the_wrong_type_is_one_line(shards, capsys, no_ray):
    edit_manifest(shards, lambda d: d["splits"]["train"]["shards"][0].update(bytes="12"))
    assert train.main(train_args(shards)) == 2
    assert "shard 0 of split 'train' needs a name, a count, a size in bytes and a sha256" in one_error_line(capsys)


@pytest.mark.parametrize("command", ["train", "tune"])
def test_a_deleted_shard_is_one_line_before_ray(shards, command, capsys, no_ray):
    victim = sorted(shards.glob("val-*.tar"))[0]
    victim.unlink()
    if command == "train":
        assert train.main(train_args(shards)) == 2
    else:
        assert tune.main(["--space", DEMO, "--no-baseline", "data.demo=false", f"data.shards={shards}"]) == 2
    line = one_error_line(capsys)
    assert line == (f"error: {DEMO}: 'data.shards' = {shards}: shard {victim.name} is missing: {victim} "
                    f"(listed in {shards / 'manifest.json'})")


def test_a_shard_of_another_size_is_one_line_before_ray(shards, capsys, no_ray):
    victim = sorted(shards.glob("test-*.tar"))[0]  # a split the run does not read is checked too
    size = victim.stat().st_size
    victim.write_bytes(victim.read_bytes()[:1000])
    assert train.main(train_args(shards)) == 2
    assert one_error_line(capsys).endswith(f"shard {victim.name} at {victim} is 1000 bytes, manifest says {size} "
                                           "(truncated or replaced)")


def test_a_changed_shard_is_hashed_when_data_verify_asks(shards, capsys, no_ray):
    victim = sorted(shards.glob("train-*.tar"))[0]
    data = bytearray(victim.read_bytes())
    data[600] ^= 0x55  # same size, other content
    victim.write_bytes(bytes(data))
    assert train.main(train_args(shards)) == 2
    assert f"shard {victim.name} at {victim}: sha256" in one_error_line(capsys)
    with pytest.raises(RuntimeError, match="got as far as starting Ray"):  # data.verify=false: sizes only
        train.main(train_args(shards, "data.verify=false", f"run.storage={shards.parent / 'runs'}"))


@pytest.mark.parametrize("key, split", [("val_split", "val"), ("train_split", "train")])
def test_a_missing_split_is_one_line_naming_the_key(shards, key, split, capsys, no_ray):
    edit_manifest(shards, lambda d: d["splits"].pop(split))
    assert train.main(train_args(shards)) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {DEMO}: 'data.{key}': split '{split}' is not in {shards / 'manifest.json'}")


def test_a_split_without_samples_is_refused(shards):
    edit_manifest(shards, lambda d: d["splits"].update(val={"count": 0, "shards": []}))
    with pytest.raises(ConfigError, match=r"'data.val_split': split 'val' of .* holds no samples"):
        check_shards(load_config(DEMO, ["data.demo=false", f"data.shards={shards}"]).data, DEMO)


def test_a_run_folder_that_cannot_be_written_is_one_line_before_ray(shards, tmp_path, capsys, no_ray):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert train.main(train_args(shards, f"run.storage={blocker / 'runs'}")) == 2
    assert one_error_line(capsys) == f"error: {DEMO}: 'run.storage' = {blocker / 'runs'}: cannot write there: " \
                                     "Not a directory"
    assert tune.main(["--space", DEMO, "--no-baseline", "--storage", str(blocker), "data.demo=false",
                      f"data.shards={shards}"]) == 2
    assert one_error_line(capsys) == f"error: {DEMO}: the study folder = {blocker / 'demo'}: cannot write there: " \
                                     "Not a directory"


def test_a_writable_run_folder_is_checked_and_nothing_is_left(shards, tmp_path, no_ray):
    kept = tmp_path / "kept"
    kept.mkdir()
    for storage in (tmp_path / "new" / "runs", kept):
        with pytest.raises(RuntimeError, match="got as far as starting Ray"):
            train.main(train_args(shards, f"run.storage={storage}"))
    assert not (tmp_path / "new").exists()  # the folders it made are removed; the run makes them
    assert kept.is_dir() and list(kept.iterdir()) == []


# ---------------------------------------------------------------------------------------
# Remote shards: real servers on 127.0.0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def http_server(folder: Path | None) -> Iterator[str]:
    """http://127.0.0.1:PORT serving `folder` (every path 404 when None), in a thread."""
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder or ROOT / "no-such-folder"), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def silent_server() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers a request."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_a_remote_manifest_where_nothing_listens_is_one_line(capsys, no_ray):
    url = f"http://127.0.0.1:{free_port()}/shards"
    assert train.main(train_args(url)) == 2
    assert one_error_line(capsys) == (f"error: {DEMO}: 'data.shards' = {url}: {url}/manifest.json: "
                                      "connection refused: nothing listens there")


def test_a_remote_manifest_that_is_not_there_is_one_line(capsys, no_ray):
    with http_server(None) as base:
        assert train.main(train_args(f"{base}/shards")) == 2
    assert one_error_line(capsys).endswith(f"{base}/shards/manifest.json: no such object (HTTP 404)")


def test_a_remote_manifest_that_never_answers_is_given_up_on():
    with silent_server() as base:
        with pytest.raises(RemoteFileError) as err:
            read_remote(f"{base}/shards/manifest.json", seconds=1)
    assert str(err.value) == f"{base}/shards/manifest.json: no answer within 1 s"


def test_a_served_manifest_is_read_and_its_splits_checked(shards, capsys, no_ray):
    edit_manifest(shards, lambda d: d["splits"].pop("val"))
    with http_server(shards.parent) as base:
        assert train.main(train_args(f"{base}/shards")) == 2
    assert one_error_line(capsys).startswith(
        f"error: {DEMO}: 'data.val_split': split 'val' is not in {base}/shards/manifest.json (it has: test, train)")


def test_gs_shards_need_gsutil_before_anything_is_contacted(monkeypatch, tmp_path):
    """webdataset reads gs:// shards with `gsutil cat`: without it the check stops before any request."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no gsutil (nor anything else) on it
    with pytest.raises(RemoteFileError, match=r"^gs://bucket/shards/manifest.json: workers read gs:// shards "
                                              r"with `gsutil`, which is not installed$"):
        read_remote("gs://bucket/shards/manifest.json")
