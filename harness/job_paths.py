"""Where a command started by `ray job submit --working-dir .` writes: never into Ray's copy.

Ray runs a submitted entrypoint in a temporary copy of the working dir
(`<Ray temp dir>/session_*/runtime_resources/working_dir_files/_ray_pkg_<hash>`, Ray 2.60),
which a Ray restart discards and whose git-ignored folders (runs/, data/) were not uploaded.
Relative paths the command writes to are therefore taken under `~/cmd-harness` on the node
the job runs on (the head), with the repository's layout (`runs/NAME`, `data/demo/shards`), so
the same submit command finds and resumes the same study.
"""
from __future__ import annotations

import logging
from pathlib import Path

from harness.config import TrainConfig
from shards.urls import is_remote, local_path

log = logging.getLogger(__name__)

JOB_HOME = "~/cmd-harness"


def job_working_copy(cwd: Path | None = None) -> Path | None:
    """Ray's temporary copy of a submitted working dir when `cwd` is in one, else None."""
    cwd = (cwd or Path.cwd()).resolve()
    for folder in (cwd, *cwd.parents):
        if folder.name.startswith("_ray_pkg_") and folder.parent.name == "working_dir_files":
            return folder
    return None


def outside_job_copy(path: str, cwd: Path | None = None) -> str:
    """`path` (a file:// URL as the path it names), or where it goes under ~/cmd-harness when it
    would resolve into Ray's copy. A bucket URI is returned as it is."""
    if is_remote(path):
        return path
    path = str(local_path(path))
    copy = job_working_copy(cwd)
    if copy is None:
        return path
    resolved = ((cwd or Path.cwd()) / Path(path).expanduser()).resolve()
    try:
        inside = resolved.relative_to(copy)
    except ValueError:  # an absolute path elsewhere: already stable
        return path
    return str(Path(JOB_HOME).expanduser() / inside)


def keep_out_of_job_copy(cfg: TrainConfig, prefix: str) -> None:
    """Inside Ray's copy: move `run.storage` and a generated demo set under ~/cmd-harness and say so.

    The demo set is generated once there, not in every submit's fresh copy; other shards are
    left alone (they may have been uploaded with the working dir)."""
    copy = job_working_copy()
    if copy is None:
        return
    cfg.run.storage = outside_job_copy(cfg.run.storage)
    if cfg.data.demo:
        cfg.data.shards = outside_job_copy(cfg.data.shards)
    log.info(f"{prefix} running in Ray's temporary copy of the working dir ({copy}): relative paths "
             f"are taken under {JOB_HOME} on this node")
