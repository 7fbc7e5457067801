"""User mistakes end a command with one line on stderr and exit code 2, not a traceback; a full disk
with one line and exit code 1 (harness/disk_full.py); the library modules' event lines are shown on
stdout while the command runs (harness/console.py)."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from harness.config import ConfigError
from harness.disk_full import full_disk_behind, full_disk_line
from shards.errors import DatasetLayoutError, ManifestError, ShardIntegrityError

# Errors whose message already says what is wrong and where; anything else is a bug.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, FileNotFoundError, DatasetLayoutError, ManifestError, ShardIntegrityError,
)


def exit_on_user_error(main: Callable[..., int]) -> Callable[..., int]:
    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        from harness.console import show_events

        show_events()
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted: run the same command again to continue", file=sys.stderr)
            return 130
        except Exception as exc:  # a full disk is no bug either: one line, exit code 1
            full = full_disk_behind(exc)
            if full is None:
                raise
            print(f"error: {full_disk_line(full)}", file=sys.stderr)
            return 1

    return wrapper
