"""A full disk ends a command with one line saying where, not a traceback, and costs no committed work.

A checkpoint counts only once committed (harness/checkpoint.py), so a write cut short by a full
disk leaves the run's last committed checkpoint as it was, and the same command resumes from it
once space is freed. The error reaches the command wrapped: Ray Train 2.60 hands a worker's
exception to the driver inside a `WorkerGroupError` (per rank, a `UserExceptionWithTraceback`
holding the raised exception), and pyarrow's error names no path. So the writer names the path
(`naming_full_disk`) and the command looks for the ENOSPC behind what it caught (`full_disk_behind`).
"""
from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager


class StorageFullError(OSError):
    """ENOSPC while writing something named in the message (`strerror`)."""


@contextmanager
def naming_full_disk(what: str) -> Iterator[None]:
    """Turn an ENOSPC raised inside into a StorageFullError naming `what` (e.g. 'checkpoint PATH')."""
    try:
        yield
    except StorageFullError:
        raise
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise StorageFullError(errno.ENOSPC, f"no space left on device writing {what}") from exc


def full_disk_behind(error: BaseException) -> OSError | None:
    """The ENOSPC error behind `error`: itself, its causes, a Ray task's cause, or a failed Train
    worker's exception (`_base_exc`: Ray 2.60 keeps the raised exception there); None if none."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return exc
        todo += [exc.__cause__, exc.__context__, getattr(exc, "cause", None), getattr(exc, "_base_exc", None)]
        failures = getattr(exc, "worker_failures", None)
        if isinstance(failures, dict):
            todo += failures.values()
    return None


def full_disk_line(exc: OSError) -> str:
    """What to print for an ENOSPC error: what was being written, and what to do."""
    if isinstance(exc, StorageFullError):
        what = exc.strerror
    else:
        what = "no space left on device" + (f" writing {exc.filename}" if exc.filename else "")
    return f"{what}: free space there and run the same command again to continue"
