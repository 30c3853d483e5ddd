"""A ``pids`` cgroup per sandboxed program: the process cap that also holds for root.

``RLIMIT_NPROC`` counts processes per user and Linux skips it for root, so where the pipeline runs
as root (containers, CI) a fork bomb would only be stopped by the wall timeout. A cgroup with
``pids.max`` caps every process the program starts, whatever its uid. Used when the pipeline may
create cgroups (cgroup v1 ``/sys/fs/cgroup/pids`` or a v2 hierarchy with the ``pids`` controller);
otherwise :meth:`PidsCgroups.available` is False and the sandbox falls back to ``RLIMIT_NPROC``.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

__all__ = ["PidsCgroups"]

_CANDIDATES = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))


class PidsCgroups:
    """Creates, fills and removes one cgroup per program under a per-process parent folder."""

    def __init__(self) -> None:
        self.base: Path | None = None
        for root in _CANDIDATES:
            if not (root / "cgroup.procs").exists():
                continue
            if root == Path("/sys/fs/cgroup") and "pids" not in _read(root / "cgroup.controllers"):
                continue
            _sweep_stale(root)
            base = root / f"distill-sandbox-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # one per instance
            try:
                base.mkdir()
                if root == Path("/sys/fs/cgroup"):
                    (base / "cgroup.subtree_control").write_text("+pids")
                probe = self._make(base)
                self._remove(probe)
                self.base = base
                # remove the (empty) parent at exit, also in multiprocessing workers (no atexit there)
                from multiprocessing import util

                util.Finalize(self, _rmdir, args=(base,), exitpriority=10)
                break
            except OSError:
                continue

    @property
    def available(self) -> bool:
        return self.base is not None

    @staticmethod
    def _make(parent: Path, max_pids: int = 8) -> Path:
        path = parent / uuid.uuid4().hex
        path.mkdir()
        (path / "pids.max").write_text(str(max_pids))
        return path

    def create(self, max_pids: int) -> Path:
        """A fresh cgroup; start the program with :meth:`wrap` so it joins before it runs."""
        assert self.base is not None
        return self._make(self.base, max_pids)

    @staticmethod
    def wrap(path: Path, argv: list[str]) -> list[str]:
        """argv that first moves itself into ``path`` (so every descendant is counted), then execs."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(path / "cgroup.procs"), *argv]

    @staticmethod
    def _remove(path: Path) -> None:
        for _ in range(200):
            pids = [int(p) for p in _read(path / "cgroup.procs").split()]
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                path.rmdir()
                return
            except OSError:
                time.sleep(0.01)

    def remove(self, path: Path) -> None:
        """Kill whatever is left in the cgroup and delete it."""
        self._remove(path)

    def close(self) -> None:
        if self.base is not None:
            try:
                self.base.rmdir()
            except OSError:
                pass


def _sweep_stale(root: Path) -> None:
    """Remove what a killed pipeline process left: ``distill-sandbox-<pid>-*`` of processes now gone."""
    for parent in root.glob("distill-sandbox-*"):
        pid = parent.name.split("-")[2]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        for child in parent.iterdir():
            if child.is_dir():
                PidsCgroups._remove(child)
        _rmdir(parent)


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
