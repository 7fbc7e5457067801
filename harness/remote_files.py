"""Reaching a remote file from the driver before Ray starts: within a time bound, and one line
saying what failed (no such object, no access, no connection, no answer).

Without it a location that cannot be reached is found by the workers after Ray started, and
slowly: webdataset reads gs:// shards with `gsutil cat`, which retries for 10 minutes and more,
and http(s):// shards with curl, which retries for about 70 s.
"""
from __future__ import annotations

import datetime
import errno
import io
import shutil
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlparse

from shards.urls import is_pipe, is_remote, local_path, open_url

REMOTE_TIMEOUT_S = 20.0  # as long as the GCS client retries (bucket_filesystem)
# The command webdataset reads a scheme's shards with in every worker: it must be installed.
_WORKER_COMMANDS = {"gs": "gsutil", "http": "curl", "https": "curl"}

T = TypeVar("T")


class RemoteFileError(OSError):
    """A remote file that cannot be read: the message is one line naming it and what failed."""


def within(seconds: float, fn: Callable[[], T]) -> T:
    """`fn()`, or TimeoutError once `seconds` have passed: no client's own retries (a bucket
    library's, a command's) hold the command longer. A call left running goes on in a daemon
    thread and ends with the process."""
    outcome: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # handed to the caller
            outcome.append((False, exc))

    thread = threading.Thread(target=run, daemon=True, name="remote-file")
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise TimeoutError(f"no answer within {seconds:g} s")
    ok, value = outcome[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def what_failed(exc: BaseException, seconds: float = REMOTE_TIMEOUT_S) -> str:
    """What `exc`, raised while reaching a remote file, means, in a few words."""
    if isinstance(exc, urllib.error.HTTPError):
        if exc.code in (404, 410):
            return f"no such object (HTTP {exc.code})"
        if exc.code in (401, 403):
            return f"no access: credentials missing or refused (HTTP {exc.code})"
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, TimeoutError):
        return f"no answer within {seconds:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: nothing listens there"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "no route to the host"
    if isinstance(exc, FileNotFoundError):
        return "no such object"
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if any(w in text for w in ("ACCESS_DENIED", "PERMISSION_DENIED", "UNAUTHENTICATED", "credentials")):
        return f"no access: credentials missing or refused ({text})"
    if any(w in text for w in ("NETWORK_CONNECTION", "UNAVAILABLE", "Couldn't connect", "Could not resolve")):
        return f"cannot connect ({text})"
    return f"{type(exc).__name__}: {text}"


def read_remote(url: str, seconds: float = REMOTE_TIMEOUT_S) -> bytes:
    """The bytes of a small remote file (a shard manifest), read within `seconds`, or a
    RemoteFileError saying what failed.

    http(s):// is read with urllib and gs:// with pyarrow (as init checkpoints are), each with a
    timeout, instead of through the curl and gsutil commands webdataset's workers use, whose
    retries cannot be bounded; those commands must be installed. Other schemes (`pipe:`, s3://
    through fsspec) are read as the workers read them.
    """
    scheme = "pipe" if is_pipe(url) else urlparse(url).scheme
    command = _WORKER_COMMANDS.get(scheme)
    if command and shutil.which(command) is None:
        raise RemoteFileError(f"{url}: workers read {scheme}:// shards with `{command}`, which is not installed")

    def read() -> bytes:
        if scheme in ("http", "https"):
            with urllib.request.urlopen(url, timeout=seconds) as response:  # noqa: S310 - http(s) only
                return response.read()
        if scheme == "gs":
            fs, path = bucket_filesystem(url)
            with fs.open_input_stream(path) as stream:
                return stream.read()
        with open_url(url) as stream:
            return stream.read()

    try:
        return within(seconds, read)
    except Exception as exc:  # every failure becomes its one line
        raise RemoteFileError(f"{url}: {what_failed(exc, seconds)}") from None


def bucket_filesystem(location: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path) for a bucket URI (s3://, gs://, ...). GCS gets a retry limit:
    without one, a machine that cannot reach Google retries for minutes before saying so."""
    import pyarrow.fs

    if location.startswith("gs://"):
        fs = pyarrow.fs.GcsFileSystem(retry_time_limit=datetime.timedelta(seconds=REMOTE_TIMEOUT_S))
        return fs, location[len("gs://"):]
    return pyarrow.fs.FileSystem.from_uri(location)


def file_exists(location: str) -> bool:
    """True when `location` (a local path, a file:// URL or a bucket URI) is a file."""
    if not is_remote(location):
        return local_path(location).expanduser().is_file()
    import pyarrow.fs

    fs, path = bucket_filesystem(location)
    return fs.get_file_info(path).type == pyarrow.fs.FileType.File


def read_checkpoint(location: str) -> Any:
    """A model.init_checkpoint as every worker reads it: a local path (or file:// URL) or a bucket
    URI through pyarrow.fs (which Ray installs), loaded by cmd_model's own loader."""
    from cmd_model.init_checkpoint import load_checkpoint

    if not is_remote(location):
        return load_checkpoint(str(local_path(location)), location)
    try:
        fs, path = bucket_filesystem(location)
        with fs.open_input_stream(path) as f:
            data = io.BytesIO(f.read())
    except OSError as exc:  # pyarrow: missing object, no access
        raise FileNotFoundError(f"model.init_checkpoint {location}: cannot be read: {exc}") from exc
    return load_checkpoint(data, location)
