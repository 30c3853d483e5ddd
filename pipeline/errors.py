"""Errors a user can act on: the CLI prints them as one line and exits 2 (no traceback).

:class:`UserError` is the base of every error whose message is complete on its own (it names the
file, line, field, model, URL or key at fault). :class:`~pipeline.config.ConfigError` and
:class:`~pipeline.records.RecordError` are user errors too; the CLI catches all three.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

__all__ = ["UserError", "OutputBusy", "storage_error", "storage_errors"]


class UserError(RuntimeError):
    """A failure caused by input, environment or configuration; the message says what and where."""


class OutputBusy(UserError):
    """Another run holds the lock of this output folder or file."""


# How a failed write shows in libraries that wrap the OSError (safetensors, torch's zip writer).
_STORAGE_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded", "Read-only file system",
                 "file write failed")
_STORAGE_ERRNO = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def storage_error(exc: BaseException, where: str | Path) -> UserError | None:
    """A one-line :class:`UserError` naming ``where`` when ``exc`` (or an exception it chains) is a
    failed write to storage (disk full, quota, read-only); ``None`` for anything else."""
    seen: BaseException | None = exc
    for _ in range(8):  # the cause chain, bounded
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in _STORAGE_ERRNO:
            return UserError(f"{where}: cannot write ({seen.strerror or seen})")
        text = str(seen)
        hint = next((h for h in _STORAGE_TEXT if h in text), None)
        if hint is not None:
            return UserError(f"{where}: cannot write ({'No space left on device' if hint == 'os error 28' else hint})")
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def storage_errors(where: str | Path) -> Iterator[None]:
    """Turn a failed write under ``where`` (however a library wrapped it) into one :class:`UserError` line."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        err = storage_error(exc, where)
        if err is None:
            raise
        raise err from exc
