"""Where shards live: local folders, file:// URLs, remote URLs and `pipe:` templates.

Kept apart so the manifest, the writer and the loader agree on one rule for turning a
shard folder plus a file name into something webdataset (or fsspec) can open.
"""
from __future__ import annotations

import os
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

    scheme = "pipe" if is_pipe(url) else urlparse(url).scheme
    if scheme in wgopen.gopen_schemes and scheme != "__default__":
        return wgopen.gopen(url, "rb")
    import fsspec  # s3://, az://, ... through the matching fsspec backend

    return fsspec.open(url, "rb").open()
