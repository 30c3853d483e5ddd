"""Run untrusted programs against their tests: one sandboxed process per program, typed outcomes.

Used by the filter rule ``failed_tests`` and by the code benchmarks of ``distill eval`` alike.

Per program (:meth:`Sandbox.run`):

* one process runs the program against *all* its tests (:mod:`pipeline.code.harness`), so the fixed
  cost of a sandbox (namespaces, interpreter start) is paid once per program, not once per test;
* the isolation layer of :mod:`pipeline.code.isolation` (``bwrap`` > ``unshare`` > ``none``; what
  each holds is written there), its own session and process group, an empty environment, a fresh
  working folder that is removed afterwards (a ``tmpfs`` inside ``bwrap``; a host temp folder
  otherwise), stdin carrying the job and then fed per test or closed;
* limits: wall clock (the parent kills the whole group and the PID namespace), CPU seconds,
  address space (a 10 GB allocation raises ``MemoryError``), processes (a ``pids`` cgroup, else
  ``RLIMIT_NPROC``), file size (which caps each test's captured stdout) and the bytes the parent
  reads from the program's stderr;
* an :class:`Outcome` with one of :data:`STATUSES`: ``passed``, ``failed`` (which test, expected vs
  got, truncated), ``timeout``, ``runtime_error`` (stderr tail), ``memory_limit``, ``output_limit``,
  ``sandbox_error`` (the sandbox itself failed: never blamed on the program).

Many programs: :meth:`Sandbox.run_many` keeps ``workers`` sandboxes busy (a bounded thread pool;
the threads only wait on pipes, the work happens in the sandboxed processes) and yields outcomes in
input order.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import Field

from pipeline.code import isolation
from pipeline.code.cgroup import PidsCgroups
from pipeline.config import Section

__all__ = ["SandboxConfig", "Sandbox", "Outcome", "STATUSES"]

log = logging.getLogger(__name__)
STATUSES = ("passed", "failed", "timeout", "runtime_error", "memory_limit", "output_limit", "sandbox_error")
_TAIL = 2000  # characters of stderr kept


class SandboxConfig(Section):
    """Limits and isolation for running programs."""

    isolation: Literal["auto", "bwrap", "unshare", "none"] = Field(
        "auto", description="strongest available by default (bwrap > unshare > none); see pipeline/code/isolation.py")
    timeout_s: float = Field(10.0, gt=0, description="wall clock per program (all its tests); past it: timeout")
    cpu_s: int | None = Field(None, ge=1, description="CPU seconds per program (default: timeout_s rounded up)")
    memory_mb: int = Field(2048, ge=64, description="address-space limit per process (MiB)")
    max_processes: int = Field(32, ge=1, description="processes and threads the program may have at once")
    max_output_kb: int = Field(1024, ge=1, description="cap on one test's stdout and on the program's stderr (KiB)")
    tmp_mb: int = Field(64, ge=1, description="size of the program's /tmp working folder (bwrap)")
    workers: int = Field(0, ge=0, description="programs run at once (0: every core)")
    python: str | None = Field(None, description="interpreter for programs (default: the pipeline's own)")


@dataclass
class Outcome:
    """What happened to one program. ``test`` is the 0-based index of the test that decided it."""

    status: str
    passed: int = 0
    total: int = 0
    test: int | None = None
    detail: str = ""
    expected: str | None = None
    got: str | None = None
    input: str | None = None
    stderr: str = ""
    seconds: float = 0.0
    isolation: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: v for k, v in d.items() if v not in (None, "", {})}

    def summary(self) -> str:
        """One line for reject details and logs."""
        where = f" test {self.test + 1}/{self.total}" if self.test is not None else ""
        s = f"{self.status}{where}: {self.detail}".rstrip(": ")
        if self.expected is not None or self.got is not None:
            s += f"; expected {self.expected!s:.200} got {self.got!s:.200}"
        if self.status == "runtime_error" and self.stderr and self.stderr not in s:
            s += f"; stderr: {self.stderr[-300:]}"
        return s


@dataclass
class _Exchange:
    stdout: bytes
    stderr: bytes
    timed_out: bool
    over_cap: bool
    returncode: int


class Sandbox:
    """Runs jobs (``{"kind": ..., "code": ..., ...}`` from :mod:`pipeline.code.tests`)."""

    def __init__(self, cfg: SandboxConfig | None = None):
        self.cfg = cfg or SandboxConfig()
        self.level = isolation.detect_level(self.cfg.isolation)
        self.python = self.cfg.python or sys.executable
        self.cgroups = PidsCgroups() if self.level != "none" or os.geteuid() == 0 else None
        if self.cgroups is not None and not self.cgroups.available:
            self.cgroups = None
        # The pipeline's own interpreter: skip `site` and hand the harness its site-packages folders
        # (their .pth files are not run: packages importable only through a .pth are not available).
        self._site_dirs = _site_dirs() if self.python == sys.executable else None
        self._argv = isolation.command(self.level, self.python, self.cfg.tmp_mb << 20,
                                       no_site=self._site_dirs is not None)

    def describe(self) -> dict[str, Any]:
        """The isolation in force, for logs and reports."""
        return {"isolation": self.level, "process_cap": "pids cgroup" if self.cgroups else "RLIMIT_NPROC",
                "timeout_s": self.cfg.timeout_s, "memory_mb": self.cfg.memory_mb,
                "max_processes": self.cfg.max_processes, "max_output_kb": self.cfg.max_output_kb}

    def _limits(self) -> dict[str, int]:
        c = self.cfg
        lim = {"cpu_s": c.cpu_s or int(c.timeout_s + 0.999), "as_bytes": c.memory_mb << 20,
               "fsize_bytes": c.max_output_kb << 10, "nofile": 256}
        if self.cgroups is None and os.geteuid() != 0:
            lim["nproc"] = c.max_processes + _user_processes()
        return lim

    # ------------------------------------------------------------------ one program

    def run(self, job: dict[str, Any]) -> Outcome:
        """Run one program against its tests; never raises for anything the program does."""
        start = time.perf_counter()
        total = len(job.get("asserts") or job.get("cases") or [])
        nonce = secrets.token_hex(8)
        data = json.dumps({**job, "nonce": nonce, "limits": self._limits(), "site_dirs": self._site_dirs}).encode()
        workdir = cgroup = None
        try:
            argv = list(self._argv)
            if self.level != "bwrap":
                workdir = tempfile.mkdtemp(prefix="distill-sandbox-")
            if self.cgroups is not None:
                cgroup = self.cgroups.create(self.cfg.max_processes)
                argv = self.cgroups.wrap(cgroup, argv)
            ex = self._exchange(argv, data, workdir)
        except OSError as exc:
            return Outcome("sandbox_error", total=total, detail=f"could not start the sandbox: {exc}",
                           seconds=time.perf_counter() - start, isolation=self.level)
        finally:
            if cgroup is not None:
                self.cgroups.remove(cgroup)
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        out = _outcome(ex, nonce, total, self.cfg)
        out.seconds = time.perf_counter() - start
        out.isolation = self.level
        return out

    def _exchange(self, argv: list[str], data: bytes, cwd: str | None) -> _Exchange:
        cap = self.cfg.max_output_kb << 10
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=cwd, env={}, start_new_session=True, close_fds=True)
        try:
            return _pump(proc, data, self.cfg.timeout_s, cap)
        finally:
            _kill_group(proc)

    # ------------------------------------------------------------------ many programs

    def run_many(self, jobs: Iterable[dict[str, Any] | Outcome], workers: int | None = None) -> Iterator[Outcome]:
        """Outcomes in input order, ``workers`` programs at a time (default ``cfg.workers``); an
        :class:`Outcome` given in place of a job (decided without running) passes through in order."""
        n = workers if workers is not None else self.cfg.workers
        if n <= 0:
            n = len(os.sched_getaffinity(0))
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="sandbox") as pool:
            pending: list = []
            for job in jobs:
                if isinstance(job, Outcome):
                    done: Future = Future()
                    done.set_result(job)
                    pending.append(done)
                else:
                    pending.append(pool.submit(self.run, job))
                if len(pending) >= 4 * n:
                    yield pending.pop(0).result()
            for fut in pending:
                yield fut.result()

    def close(self) -> None:
        if self.cgroups is not None:
            self.cgroups.close()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- process plumbing

def _pump(proc: subprocess.Popen, data: bytes, timeout_s: float, cap: int) -> _Exchange:
    """Feed stdin, read stdout/stderr (each at most ``cap`` bytes) until exit or the deadline."""
    deadline = time.monotonic() + timeout_s
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    sel = selectors.DefaultSelector()
    in_fd = proc.stdin.fileno()
    os.set_blocking(in_fd, False)
    sel.register(in_fd, selectors.EVENT_WRITE)
    for fd in bufs:
        sel.register(fd, selectors.EVENT_READ)
    view, timed_out, over = memoryview(data), False, False
    while len(sel.get_map()) > 0:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for key, _ in sel.select(min(left, 1.0)):
            fd = key.fd
            if fd == in_fd:
                try:
                    view = view[os.write(fd, view[:65536]):]
                except (BrokenPipeError, OSError):
                    view = view[:0]
                if not view:
                    sel.unregister(fd)
                    proc.stdin.close()
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                sel.unregister(fd)
                continue
            bufs[fd] += chunk
            if len(bufs[fd]) > cap:
                over = True
                break
        if over:
            break
    sel.close()
    if timed_out or over:
        _kill_group(proc)
    rc = proc.wait()
    return _Exchange(bytes(bufs[out_fd]), bytes(bufs[err_fd]), timed_out, over, rc)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for fh in (proc.stdin, proc.stdout, proc.stderr):
        if fh is not None and not fh.closed:
            try:
                fh.close()
            except OSError:
                pass
    proc.wait()


def _site_dirs() -> list[str]:
    import site

    dirs = list(site.getsitepackages())
    return [d for d in dirs if os.path.isdir(d)]


def _user_processes() -> int:
    """Processes this user already has (``RLIMIT_NPROC`` counts them too)."""
    uid, n = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                n += entry.stat().st_uid == uid
            except OSError:
                pass
    return n


def _parse(stdout: bytes, nonce: str) -> tuple[int | None, dict[str, Any] | None]:
    """The last test started and the result line, from the harness's private channel."""
    started, result = None, None
    for line in stdout.decode("utf-8", "replace").splitlines():
        parts = line.split(" ", 2)
        if len(parts) < 3 or parts[0] != nonce:
            continue
        if parts[1] == "start" and parts[2].isdigit():
            started = int(parts[2])
        elif parts[1] == "result":
            try:
                result = json.loads(parts[2])
            except json.JSONDecodeError:
                pass
    return started, result


def _outcome(ex: _Exchange, nonce: str, total: int, cfg: SandboxConfig) -> Outcome:
    started, result = _parse(ex.stdout, nonce)
    tail = ex.stderr.decode("utf-8", "replace")[-_TAIL:]
    if result is not None and not ex.timed_out:
        status = result.get("status", "sandbox_error")
        if status not in STATUSES:
            status = "sandbox_error"
        passed = total if status == "passed" else int(result.get("passed") or 0)
        return Outcome(status, passed=passed, total=total, test=result.get("test"), detail=result.get("detail", ""),
                       expected=result.get("expected"), got=result.get("got"), input=result.get("input"), stderr=tail)
    where = f" (running test {started + 1})" if started is not None else ""
    passed = started or 0
    if ex.timed_out:
        return Outcome("timeout", passed=passed, total=total, test=started,
                       detail=f"wall clock past {cfg.timeout_s:g} s{where}", stderr=tail)
    if ex.over_cap:
        return Outcome("output_limit", passed=passed, total=total, test=started,
                       detail=f"more than {cfg.max_output_kb} KiB on stderr{where}", stderr=tail[-500:])
    rc = ex.returncode
    sig = -rc if rc < 0 else rc - 128 if rc > 128 else 0
    if sig == signal.SIGXCPU:
        return Outcome("timeout", passed=passed, total=total, test=started,
                       detail=f"CPU time past {cfg.cpu_s or int(cfg.timeout_s + 0.999)} s{where}", stderr=tail)
    if "bwrap:" in tail[:300] or "unshare:" in tail[:300] or rc == 127:
        return Outcome("sandbox_error", total=total, detail=f"isolation layer failed (exit {rc})", stderr=tail)
    try:
        how = f"killed by signal {signal.Signals(sig).name}" if sig > 0 else f"exit status {rc}"
    except ValueError:
        how = f"exit status {rc}"
    return Outcome("runtime_error", passed=passed, total=total, test=started,
                   detail=f"the process ended without a result ({how}){where}", stderr=tail)
