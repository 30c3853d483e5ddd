"""How a sandboxed program is started: the isolation levels and the command line for each.

Levels, strongest first (``auto`` picks the first that works on this machine, checked once per
process by really starting ``/bin/true`` under it):

``bwrap`` (bubblewrap, ``apt-get install bubblewrap``)
    Holds: new user, network, PID, IPC, UTS and cgroup namespaces (``--unshare-all``): no network
    interface but a downed loopback, so nothing can be reached, not even a listener on 127.0.0.1;
    the program sees only its own processes and cannot signal the host's. The file system is a fresh
    root holding read-only binds of ``/usr`` (+ the ``/bin``, ``/lib`` links) and of the Python
    installation running the pipeline, a size-capped ``tmpfs`` on ``/tmp`` (the working folder,
    gone when the sandbox exits) and on ``/dev/shm``, a private ``/proc`` and a minimal ``/dev``;
    every other path (home folders, the repository, ``/etc``, credentials files) does not exist, and
    ``/`` is remounted read-only. The program runs as uid 65534 (``nobody``) inside the namespace
    with no capabilities, in a new session, and dies with its parent (``--die-with-parent``).
    Does not hold: kernel exploits (it is a namespace sandbox, not a VM), CPU-time fairness beyond
    the limits below, reading what the bound Python installation holds.

``unshare`` (util-linux; needs root or unprivileged user namespaces)
    Holds: new network namespace (no network, loopback down) and PID namespace (the program sees
    and signals only its own processes; they all die when its first process does).
    Does not hold: the file system. The program runs as the pipeline's user and can read and write
    anything that user can, outside its working folder included. Use it only where bubblewrap
    cannot be installed.

``none``
    Holds: the resource limits, own process group, empty environment and a fresh working folder
    (which the program can leave). Does not hold: network (the program can connect anywhere),
    file system, other processes. The sandbox logs a warning when it runs at this level.

Every level also gets, from :mod:`pipeline.code.sandbox` and the in-sandbox harness: an empty
environment, a wall-clock timeout that kills the whole process group (and with ``bwrap`` /
``unshare`` the whole PID namespace), ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_FSIZE`` (the
captured-output cap), ``RLIMIT_NOFILE`` and, for process counts, a ``pids`` cgroup when one can be
created (``pids.max``), else ``RLIMIT_NPROC`` (which Linux does not apply to root, so as root
without a writable cgroup a fork bomb is held only by the wall timeout and the PID namespace).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["LEVELS", "detect_level", "command", "HARNESS", "SANDBOX_HARNESS"]

log = logging.getLogger(__name__)
LEVELS = ("bwrap", "unshare", "none")
HARNESS = Path(__file__).with_name("harness.py")
SANDBOX_HARNESS = "/opt/distill_harness.py"  # where bwrap binds the harness


def _python_roots() -> list[str]:
    """Folders the interpreter needs: its prefixes and the real location of its binary."""
    real = Path(os.path.realpath(sys.executable))
    roots = {sys.base_prefix, sys.prefix, sys.exec_prefix, str(real.parent.parent)}
    return sorted(r for r in roots if r and Path(r).is_dir() and not r.startswith("/usr"))


def _bwrap_prefix(tmp_bytes: int) -> list[str]:
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        p = Path("/") / name
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            args += ["--ro-bind", str(p), str(p)]
    for root in _python_roots():
        args += ["--ro-bind", root, root]
    args += ["--ro-bind", str(HARNESS), SANDBOX_HARNESS,
             "--size", str(tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp",
             "--proc", "/proc", "--dev", "/dev", "--size", str(tmp_bytes), "--tmpfs", "/dev/shm",
             "--remount-ro", "/", "--chdir", "/tmp", "--clearenv", "--uid", "65534", "--gid", "65534"]
    return args


def _unshare_prefix() -> list[str]:
    args = ["unshare", "--net", "--pid", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        args.insert(1, "--map-root-user")
    return args


def command(level: str, python: str, tmp_bytes: int, no_site: bool = False) -> list[str]:
    """The argv that starts the harness under ``level`` (its stdin carries the job). ``no_site``:
    skip the ``site`` module (``-S``; it costs ~30 ms of a ~42 ms start in a venv with an editable
    install); the harness then puts the site-packages folders it is given on ``sys.path``."""
    flags = ["-I", "-S"] if no_site else ["-I"]
    if level == "bwrap":
        return _bwrap_prefix(tmp_bytes) + [python, *flags, SANDBOX_HARNESS]
    if level == "unshare":
        return _unshare_prefix() + [python, *flags, str(HARNESS)]
    if level == "none":
        return [python, *flags, str(HARNESS)]
    raise ValueError(f"isolation: unknown level {level!r} (one of {', '.join(LEVELS)}, auto)")


@functools.lru_cache(maxsize=None)
def _works(level: str) -> bool:
    tool = {"bwrap": "bwrap", "unshare": "unshare"}.get(level)
    if tool and shutil.which(tool) is None:
        return False
    argv = command(level, sys.executable, 1 << 20)
    argv = argv[:-3] + [sys.executable, "-I", "-c", "pass"]  # the prefix: everything before [python, -I, harness]
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=30, env={}).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def detect_level(wanted: str = "auto") -> str:
    """``wanted`` if it works here (else an error), or for ``auto`` the strongest level that works."""
    if wanted != "auto":
        if wanted not in LEVELS:
            raise ValueError(f"isolation: unknown level {wanted!r} (one of auto, {', '.join(LEVELS)})")
        if not _works(wanted):
            raise RuntimeError(f"isolation {wanted!r} does not work on this machine "
                               f"({'install bubblewrap' if wanted == 'bwrap' else 'needs root or user namespaces'})")
        return wanted
    for level in LEVELS[:-1]:
        if _works(level):
            return level
    log.warning("sandbox: neither bubblewrap nor unshare works here; programs run at isolation 'none' "
                "(resource limits only: NO network or file-system isolation)")
    return "none"
