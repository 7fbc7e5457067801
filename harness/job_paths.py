"""Where a command started by `ray job submit --working-dir .` writes: never into Ray's copy.

Ray runs a submitted entrypoint in a temporary copy of the working dir
(`<Ray temp dir>/session_*/runtime_resources/working_dir_files/_ray_pkg_<hash>`, Ray 2.60),
which a Ray restart discards and whose git-ignored folders (runs/, data/) were not uploaded.
Relative paths the command writes to are therefore taken under `~/cmd-harness` on the node
the job runs on (the head), with the repository's layout (`runs/NAME`, `data/demo/shards`), so
the same submit command finds and resumes the same study.
"""
from __future__ import annotations

from pathlib import Path

JOB_HOME = "~/cmd-harness"


def job_working_copy(cwd: Path | None = None) -> Path | None:
    """Ray's temporary copy of a submitted working dir when `cwd` is in one, else None."""
    cwd = (cwd or Path.cwd()).resolve()
    for folder in (cwd, *cwd.parents):
        if folder.name.startswith("_ray_pkg_") and folder.parent.name == "working_dir_files":
            return folder
    return None


def outside_job_copy(path: str, cwd: Path | None = None) -> str:
    """`path`, or where it goes under ~/cmd-harness when it would resolve into Ray's copy."""
    copy = job_working_copy(cwd)
    if copy is None or "://" in path:
        return path
    resolved = ((cwd or Path.cwd()) / Path(path).expanduser()).resolve()
    try:
        inside = resolved.relative_to(copy)
    except ValueError:  # an absolute path elsewhere: already stable
        return path
    return str(Path(JOB_HOME).expanduser() / inside)
