"""Where shards live: local folders, file:// URLs, remote URLs and `pipe:` templates.

Kept apart so the manifest, the writer and the loader agree on one rule for turning a
shard folder plus a file name into something webdataset (or fsspec) can open.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from pathlib import Path
from typing import IO
from urllib.parse import urlparse
from urllib.request import url2pathname


def is_pipe(base: str) -> bool:
    """`pipe:CMD` bases hold a `{}` placeholder that is replaced by the file name."""
    return str(base).startswith("pipe:")


def is_remote(base: str | os.PathLike) -> bool:
    """True for anything not on this machine's disk: a URL with a scheme other than file://, or a
    `pipe:` command. A file:// URL is local: it names a path (`local_path`). The one rule the
    shards, the init checkpoint and the study storage are all judged by."""
    s = str(base)
    if is_pipe(s):
        return True
    scheme = urlparse(s).scheme
    return scheme not in ("", "file") and not (len(scheme) == 1 and os.name == "nt")


def local_path(base: str | os.PathLike) -> Path:
    """A local path for a plain path or a file:// URL."""
    s = str(base)
    if s.startswith("file:"):
        return Path(url2pathname(urlparse(s).path))
    return Path(s).expanduser()


def join(base: str | os.PathLike, name: str) -> str:
    """The location of file `name` inside shard folder `base` (path, URL or pipe template)."""
    s = str(base)
    if is_pipe(s):
        if "{}" not in s:
            raise ValueError(f"pipe: shard location needs a '{{}}' placeholder for the file name: {s!r}")
        return s.replace("{}", name)
    if is_remote(s):
        return s.rstrip("/") + "/" + name
    return str(local_path(s) / name)


def open_url(url: str) -> IO[bytes]:
    """Open a path or URL for binary reading: webdataset's gopen where it knows the scheme, else fsspec."""
    if not is_remote(url):
        return open(local_path(url), "rb")
    import importlib

    wgopen = importlib.import_module("webdataset.gopen")  # the module (the package re-exports the function)

    if is_pipe(url):
        return command_output(url[len("pipe:"):])
    scheme = urlparse(url).scheme
    if scheme in wgopen.gopen_schemes and scheme != "__default__":
        return wgopen.gopen(url, "rb")
    import fsspec  # s3://, az://, ... through the matching fsspec backend

    return fsspec.open(url, "rb").open()


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None
# The command runs in the background of a shell that leads its own process group; when the
# shell gets SIGTERM it kills the whole group, so every process the command started goes too.
_GROUP_SCRIPT = "trap 'kill -KILL 0' TERM\n{{ {command}\n}} & wait $!"


def _lead_group_dying_with(parent: int) -> None:
    """Run in the child before it execs: a process group of its own (its `kill 0` reaches the
    command's processes, not this one's), and SIGTERM from the kernel when the thread that
    started it ends, however that ends (SIGKILL included)."""
    os.setpgid(0, 0)
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def command_output(command: str) -> IO[bytes]:
    """The stdout of a shell command (a `pipe:` shard), as webdataset's `pipe:` reads it, but
    started so that on Linux the command and every process it starts die with this process: a
    `pipe:` location that hangs (a bucket client retrying for minutes) is not left running when
    its reader is killed. A thread that starts one must read it to the end or close it.

    Exit status 141 (the command's reader closed early, SIGPIPE) is not an error, as in webdataset.
    """
    import importlib

    if importlib.import_module("webdataset.utils").enforce_security:  # WDS_SECURE=1
        raise ValueError(f"pipe: locations are refused with WDS_SECURE=1: {command!r}")
    from webdataset.gopen import Pipe

    if _LIBC is None:
        return Pipe(command, mode="rb", shell=True, bufsize=8192, ignore_status=[141])  # noqa: S604
    parent = os.getpid()
    return Pipe(_GROUP_SCRIPT.format(command=command), mode="rb", shell=True, bufsize=8192,  # noqa: S604
                ignore_status=[141], preexec_fn=lambda: _lead_group_dying_with(parent))
