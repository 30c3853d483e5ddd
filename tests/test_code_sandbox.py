"""The code sandbox with real processes: isolation, limits, typed outcomes (short limits, fast)."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from pipeline.code import isolation
from pipeline.code.sandbox import Sandbox, SandboxConfig

LEVELS = [lvl for lvl in isolation.LEVELS if lvl == "none" or isolation._works(lvl)]


def _job(code: str, asserts: list[str] | None = None) -> dict:
    return {"kind": "asserts", "code": code, "setup": "", "asserts": asserts or ["assert True"]}


@pytest.fixture(scope="module", params=LEVELS)
def sandbox(request):
    with Sandbox(SandboxConfig(isolation=request.param, timeout_s=1.5, memory_mb=512, max_processes=16,
                               max_output_kb=256)) as sb:
        yield sb


@pytest.fixture(scope="module")
def strongest():
    with Sandbox(SandboxConfig(timeout_s=2.0, memory_mb=512, max_processes=16, max_output_kb=256)) as sb:
        yield sb


def _procs() -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def _descendants() -> set[int]:
    """Live processes started (directly or not) by this test process: what a sandbox could leave."""
    parent: dict[int, int] = {}
    for pid in _procs():
        try:
            with open(f"/proc/{pid}/stat") as fh:
                parent[pid] = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            pass
    mine, grew = {os.getpid()}, True
    while grew:
        new = {p for p, pp in parent.items() if pp in mine and p not in mine}
        grew = bool(new)
        mine |= new
    return mine - {os.getpid()}


def test_auto_picks_bubblewrap_when_installed():
    import shutil

    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap not installed (CI installs it)")
    if not isolation._works("bwrap"):
        pytest.skip("bubblewrap is installed but cannot create its namespaces on this machine")
    assert isolation.detect_level("auto") == "bwrap"


def test_passing_and_failing_program(sandbox):
    ok = sandbox.run(_job("def f(x):\n    return x + 1\n", ["assert f(1) == 2", "assert f(2) == 3"]))
    assert ok.status == "passed" and ok.passed == ok.total == 2
    bad = sandbox.run(_job("def f(x):\n    return x + 1\n", ["assert f(1) == 2", "assert f(2) == 4"]))
    assert (bad.status, bad.test, bad.passed, bad.expected, bad.got) == ("failed", 1, 1, "4", "3")
    assert "assert f(2) == 4" in bad.detail


def test_infinite_loop_times_out(sandbox):
    t = time.monotonic()
    out = sandbox.run(_job("while True:\n    pass\n"))
    assert out.status == "timeout" and time.monotonic() - t < 6


def test_sleeping_child_is_killed_with_the_group(sandbox):
    out = sandbox.run(_job("import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                           "import time\ntime.sleep(60)\n"))
    assert out.status == "timeout"
    time.sleep(0.2)
    assert not _descendants()


def test_fork_bomb_is_contained(strongest):
    if strongest.cgroups is None and os.geteuid() == 0:
        pytest.skip("root without a writable pids cgroup: only the wall timeout holds a fork bomb")
    out = strongest.run(_job("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"))
    assert out.status in ("timeout", "runtime_error")
    time.sleep(0.3)
    assert not _descendants()  # nothing left behind
    assert strongest.run(_job("x = 1")).ok  # the machine still runs programs


def test_huge_allocation_fails_cleanly(sandbox):
    out = sandbox.run(_job("x = bytearray(10 * 1024 ** 3)\n"))
    assert out.status == "memory_limit", out.summary()


def test_write_outside_the_temp_dir_does_not_happen(strongest, tmp_path):
    if strongest.level != "bwrap":
        pytest.skip("only the bwrap level isolates the file system")
    target = tmp_path / "escaped.txt"
    code = (f"for p in [{str(target)!r}, '/etc/distill_escape', '/escaped']:\n"
            "    try:\n        open(p, 'w').write('x')\n    except OSError:\n        pass\n"
            "open('inside.txt', 'w').write('ok')\n")
    out = strongest.run(_job(code, ["assert open('inside.txt').read() == 'ok'"]))
    assert out.ok, out.summary()
    assert not target.exists() and not os.path.exists("/etc/distill_escape") and not os.path.exists("/escaped")


def test_no_connection_to_a_local_listener(sandbox):
    if sandbox.level == "none":
        pytest.skip("level none has no network isolation (documented)")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    accepted: list = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                accepted.append(srv.accept())
            except (socket.timeout, OSError):
                pass

    th = threading.Thread(target=accept)
    th.start()
    try:
        code = (f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\n"
                "s.sendall(b'leak')\n")
        out = sandbox.run(_job(code))
        time.sleep(0.3)  # a connection in flight would be accepted by now
    finally:
        done.set()
        th.join()
        srv.close()
    assert out.status == "runtime_error" and not accepted, out.summary()


def test_environment_secrets_are_not_visible(sandbox, monkeypatch):
    monkeypatch.setenv("DISTILL_TEST_SECRET", "s3cr3t-value")
    code = "import os\nenv = dict(os.environ)\nprocenv = open('/proc/self/environ', 'rb').read()\n"
    out = sandbox.run(_job(code, ["assert 'DISTILL_TEST_SECRET' not in env and b's3cr3t' not in procenv",
                                  "assert 'HOME' not in env and 'PATH' not in env"]))
    assert out.ok, out.summary()


def test_closing_stdout_is_a_typed_outcome(sandbox):
    out = sandbox.run(_job("import os\nos.close(1)\nprint('hi')\n"))
    assert out.status == "runtime_error"
    out = sandbox.run({"kind": "stdio", "code": "import sys\nsys.stdout.close()\n", "cases": [{"input": "", "output": "x"}]})
    assert out.status in ("runtime_error", "failed")


def test_printing_a_gigabyte_is_capped(sandbox):
    t = time.monotonic()
    out = sandbox.run(_job("chunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    print(chunk)\n"))
    assert out.status == "output_limit" and time.monotonic() - t < 6
    out = sandbox.run(_job("import sys\nchunk = 'y' * (1 << 20)\nfor _ in range(1024):\n    sys.stderr.write(chunk)\n"))
    assert out.status == "output_limit" and len(out.stderr) <= 2000


def test_runtime_error_carries_the_stderr_tail(sandbox):
    out = sandbox.run(_job("import sys\nsys.stderr.write('about to fail\\n')\nraise ValueError('boom')\n"))
    assert out.status == "runtime_error" and "ValueError" in out.detail and "about to fail" in out.stderr


def test_machine_stays_healthy_after_everything(strongest):
    time.sleep(0.2)
    assert not _descendants()
    if strongest.cgroups is not None:
        assert not [d for d in os.listdir(strongest.cgroups.base) if os.path.isdir(strongest.cgroups.base / d)]
    outs = list(strongest.run_many([_job(f"x = {i}", [f"assert x == {i}"]) for i in range(8)], workers=2))
    assert [o.status for o in outs] == ["passed"] * 8


def test_unstartable_sandbox_is_a_sandbox_error(tmp_path):
    sb = Sandbox(SandboxConfig(isolation="none", python=str(tmp_path / "no-such-python")))
    out = sb.run(_job("x = 1"))
    assert out.status == "sandbox_error"


def test_closing_one_sandbox_leaves_another_working():
    first, second = Sandbox(SandboxConfig(timeout_s=5)), Sandbox(SandboxConfig(timeout_s=5))
    first.close()
    del first
    import gc

    gc.collect()
    assert second.run(_job("x = 1", ["assert x == 1"])).ok
    second.close()
