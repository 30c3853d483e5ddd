"""The in-sandbox harness: runs one program against all of its tests in one process.

Started by :mod:`pipeline.code.sandbox` as ``python -I harness.py`` inside the isolation layer; the
standard library only (it must not import the pipeline). Protocol:

* stdin carries one JSON job, read to EOF before anything else; then fd 0 is re-pointed per test.
* The harness sets its resource limits (``limits``) before any untrusted code runs.
* fd 1 is kept privately for results: ``<nonce> start <i>`` before test ``i`` and one final
  ``<nonce> result <json>`` line. The program's own stdout goes to a capture file per test
  (capped by ``RLIMIT_FSIZE``); its stderr goes to the sandbox's stderr pipe (capped by the parent).

Job kinds: ``asserts`` (``code`` + ``setup`` run once, then each string of ``asserts`` in the same
namespace: MBPP, HumanEval's ``check(entry_point)``), ``stdio`` (``code`` run afresh per case with
the case's ``input`` on fd 0; stdout compared with ``output``) and ``call`` (``code`` run once, then
``fn_name`` called per case with ``input`` as the argument list; a ``Solution`` class, LeetCode style,
is used when present). The program runs as ``__main__`` for ``stdio`` and as ``__solution__`` for
the others (so a ``if __name__ == "__main__"`` demo does not run against the tests).

What this does not defend: the program shares the harness's interpreter, so a program written to
forge the harness's verdict could; the sandbox keeps the machine safe, the verdict is as honest
as a non-adversarial program makes it.
"""

import builtins
import errno
import json
import math
import os
import resource
import signal
import sys

_RES_FD = None
_NONCE = ""
_CAP = 2000  # characters of expected/got/traceback kept in a result


def _emit(kind, payload):
    os.write(_RES_FD, f"{_NONCE} {kind} {payload}\n".encode("utf-8", "replace"))


def _cut(text, cap=_CAP):
    text = text if isinstance(text, str) else repr(text)
    return text if len(text) <= cap else text[: cap // 2] + f" …[{len(text) - cap} chars cut]… " + text[-cap // 2:]


def _limits(lim):
    pairs = [("cpu_s", resource.RLIMIT_CPU, 1), ("as_bytes", resource.RLIMIT_AS, 0),
             ("fsize_bytes", resource.RLIMIT_FSIZE, 0), ("nofile", resource.RLIMIT_NOFILE, 0),
             ("nproc", resource.RLIMIT_NPROC, 0)]
    for key, which, slack in pairs:
        if lim.get(key):
            v = int(lim[key])
            resource.setrlimit(which, (v, v + slack))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap raises EFBIG instead of killing


def _classify(exc, where):
    """(status, detail) for an exception escaping the program or a test."""
    if isinstance(exc, MemoryError):
        return "memory_limit", f"MemoryError {where}"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return "output_limit", f"output past the file-size cap {where}"
    import traceback  # imported on failure only: every import is paid once per program

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])
    return "runtime_error", f"{type(exc).__name__} {where}: {_cut(tb)}"


def _point(target, path, flags):
    """Make fd ``target`` refer to ``path`` (the program may have closed it: then open may return it)."""
    fd = os.open(path, flags, 0o600)
    if fd != target:
        os.dup2(fd, target)
        os.close(fd)


def _redirect_out(path):
    _point(1, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)


def _write_inputs(job):
    """Each stdio case's input as a file, before the limits: the file-size cap is for the program's
    output, and a test input may be larger (CodeContests has multi-MB inputs)."""
    for i, case in enumerate(job.get("cases") or []):
        with open(f"stdin_{i}.txt", "w", encoding="utf-8") as fh:
            fh.write(case["input"])


def _redirect_in(i):
    _point(0, f"stdin_{i}.txt", os.O_RDONLY)
    sys.stdin = open(0, "r", encoding="utf-8", closefd=False)


def _failed_line(exc, sources):
    """The source line of the deepest test frame an exception passed through."""
    import traceback

    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        src = sources.get(frame.f_code.co_filename)
        if src is not None:
            lines = src.splitlines()
            if 0 < lineno <= len(lines):
                line = lines[lineno - 1].strip()
    return line


def _assert_got(test, ns):
    """For ``assert A == B``: (repr(B), repr(A)) evaluated again, else (None, None)."""
    import ast

    try:
        node = ast.parse(test.strip()).body[0]
        cmp = node.test if isinstance(node, ast.Assert) else None
        if isinstance(cmp, ast.Compare) and len(cmp.ops) == 1 and isinstance(cmp.ops[0], ast.Eq):
            got = eval(compile(ast.Expression(cmp.left), "<got>", "eval"), ns)
            exp = eval(compile(ast.Expression(cmp.comparators[0]), "<expected>", "eval"), ns)
            return _cut(repr(exp)), _cut(repr(got))
    except BaseException:  # noqa: BLE001 - best effort only
        pass
    return None, None


def run_asserts(job):
    ns = {"__name__": "__solution__", "__builtins__": builtins}
    sources = {"<program>": job["code"], "<setup>": job.get("setup") or ""}
    _redirect_out("stdout.txt")
    try:
        exec(compile(job["code"], "<program>", "exec"), ns)
        if job.get("setup"):
            exec(compile(job["setup"], "<setup>", "exec"), ns)
    except SystemExit:
        return {"status": "failed", "test": None, "detail": "the program exited before the tests ran"}
    except BaseException as exc:  # noqa: BLE001
        status, detail = _classify(exc, "while loading the program")
        return {"status": status, "test": None, "detail": detail}
    tests = job["asserts"]
    for i, test in enumerate(tests):
        _emit("start", i)
        name = f"<test {i}>"
        sources[name] = test
        try:
            exec(compile(test, name, "exec"), ns)
            sys.stdout.flush()
        except AssertionError as exc:
            expected, got = _assert_got(test, ns)
            line = _failed_line(exc, sources) or test.strip()
            return {"status": "failed", "test": i, "passed": i, "detail": _cut(f"assertion failed: {line}"),
                    "expected": expected, "got": got}
        except SystemExit:
            return {"status": "failed", "test": i, "passed": i, "detail": "the program exited during the test"}
        except BaseException as exc:  # noqa: BLE001
            status, detail = _classify(exc, f"in test {i + 1} ({_cut(test.strip(), 200)})")
            return {"status": status, "test": i, "passed": i, "detail": detail}
    return {"status": "passed", "passed": len(tests)}


def _tokens_equal(a, b, tol):
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=tol, abs_tol=tol)


def stdio_equal(got, expected, tol=1e-6):
    """Whitespace-tolerant comparison: line by line, tokens split on whitespace, blank lines at the
    end ignored, numbers equal within ``tol`` (relative or absolute)."""
    def lines(text):
        out = [ln.split() for ln in text.replace("\r\n", "\n").split("\n")]
        while out and not out[-1]:
            out.pop()
        return out

    g, e = lines(got), lines(expected)
    return len(g) == len(e) and all(len(a) == len(b) and all(_tokens_equal(x, y, tol) for x, y in zip(a, b))
                                    for a, b in zip(g, e))


def run_stdio(job):
    try:
        code = compile(job["code"], "<program>", "exec")
    except BaseException as exc:  # noqa: BLE001
        return dict(zip(("status", "detail"), _classify(exc, "while compiling the program")), test=None)
    for i, case in enumerate(job["cases"]):
        _emit("start", i)
        _redirect_in(i)
        _redirect_out("stdout.txt")
        try:
            try:
                exec(code, {"__name__": "__main__", "__builtins__": builtins})
            except SystemExit as exc:
                if exc.code not in (None, 0):
                    return {"status": "runtime_error", "test": i, "passed": i, "detail": f"exit status {exc.code}"}
            sys.stdout.flush()
        except BaseException as exc:  # noqa: BLE001
            status, detail = _classify(exc, f"in test {i + 1}")
            return {"status": status, "test": i, "passed": i, "detail": detail}
        with open("stdout.txt", encoding="utf-8", errors="replace") as fh:
            got = fh.read()
        if not stdio_equal(got, case["output"]):
            return {"status": "failed", "test": i, "passed": i, "detail": f"wrong output on test {i + 1}",
                    "input": _cut(case["input"]), "expected": _cut(case["output"]), "got": _cut(got)}
    return {"status": "passed", "passed": len(job["cases"])}


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def values_equal(got, expected, tol=1e-6):
    got, expected = _plain(got), _plain(expected)
    if isinstance(got, float) or isinstance(expected, float):
        try:
            return math.isclose(float(got), float(expected), rel_tol=tol, abs_tol=tol)
        except (TypeError, ValueError):
            return False
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(values_equal(a, b, tol) for a, b in zip(got, expected))
    return got == expected


def run_call(job):
    ns = {"__name__": "__solution__", "__builtins__": builtins}
    _redirect_out("stdout.txt")
    try:
        exec(compile(job["code"], "<program>", "exec"), ns)
    except BaseException as exc:  # noqa: BLE001
        status, detail = _classify(exc, "while loading the program")
        return {"status": status, "test": None, "detail": detail}
    name = job["fn_name"]
    cls = ns.get("Solution")
    if not (isinstance(cls, type) and hasattr(cls, name)) and not callable(ns.get(name)):
        return {"status": "failed", "test": None, "detail": f"the program defines no {name!r} (nor Solution.{name})"}
    for i, case in enumerate(job["cases"]):
        _emit("start", i)
        try:
            fn = getattr(cls(), name) if isinstance(cls, type) and hasattr(cls, name) else ns[name]
            got = fn(*case["input"])
        except BaseException as exc:  # noqa: BLE001
            status, detail = _classify(exc, f"in test {i + 1}")
            return {"status": status, "test": i, "passed": i, "detail": detail}
        if not values_equal(got, case["output"]):
            return {"status": "failed", "test": i, "passed": i, "detail": f"wrong return value on test {i + 1}",
                    "input": _cut(repr(case["input"])), "expected": _cut(repr(case["output"])), "got": _cut(repr(got))}
    return {"status": "passed", "passed": len(job["cases"])}


def main():
    global _RES_FD, _NONCE
    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    _NONCE = job.pop("nonce")
    for d in job.get("site_dirs") or []:  # started with -S: site-packages without running .pth files
        if d not in sys.path:
            sys.path.append(d)
    _RES_FD = os.dup(1)
    os.set_inheritable(_RES_FD, False)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    if job["kind"] == "stdio":
        _write_inputs(job)
    _limits(job.get("limits") or {})
    # numeric libraries start one thread per core at import: on a 64-core machine that alone passes
    # the process cap; one thread each (the environment is otherwise empty).
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    runner = {"asserts": run_asserts, "stdio": run_stdio, "call": run_call}[job["kind"]]
    try:
        result = runner(job)
    except BaseException as exc:  # noqa: BLE001 - e.g. a MemoryError inside the harness's own bookkeeping
        status, detail = _classify(exc, "in the harness")
        result = {"status": status, "detail": detail}
    try:
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001
        pass
    _emit("result", json.dumps(result))
    os._exit(0)


if __name__ == "__main__":
    main()
