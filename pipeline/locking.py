"""One writer per output: an exclusive, non-blocking ``flock`` on ``<output>.lock``.

Every stage that writes takes :func:`output_lock` on its output folder (or file) for the whole
run, so a second run on the same output is refused at once with one line instead of interleaving
records. The lock is released by the kernel when the process dies (even by SIGKILL), so a killed
run never leaves a stale lock behind; the lock file itself stays (it is empty and harmless).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import OutputBusy, UserError

__all__ = ["output_lock", "lock_path", "launcher_output_lock"]


def lock_path(output: str | Path) -> Path:
    """The lock file of an output folder (``<dir>/.lock``) or file (``<file>.lock`` beside it)."""
    out = Path(output)
    if out.is_dir() or not out.suffix:
        return out / ".lock"
    return out.with_name(out.name + ".lock")


@contextlib.contextmanager
def output_lock(output: str | Path, what: str = "run") -> Iterator[Path]:
    """Hold the exclusive lock of ``output`` for the ``with`` block; refuse if another process has it."""
    path = lock_path(output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cannot create lock file {path}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputBusy(f"{output}: another {what} is writing here (lock {path} is held); "
                             "wait for it to finish or choose another output") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.close(fd)


def launcher_output_lock(output: str | Path, what: str = "run") -> contextlib.AbstractContextManager:
    """:func:`output_lock` taken by the main process only of a distributed launch (``accelerate launch``,
    ``torchrun``: env ``RANK``), whose other ranks write into the same folder by design."""
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return contextlib.nullcontext(lock_path(output))
    return output_lock(output, what)
