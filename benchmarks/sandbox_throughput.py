"""Programs verified per second: the code sandbox vs the obvious subprocess-per-test runner.

    DISTILL_DATA_DIR=../shared/data python benchmarks/sandbox_throughput.py          # all 974 MBPP tasks, 2 workers
    python benchmarks/sandbox_throughput.py --data ../shared/data/mbpp.jsonl --limit 300 --workers 2

Both runners verify the same MBPP reference solutions (``code`` + ``test_setup_code`` + its three
asserts), ``--workers`` programs at a time, in the same run:

* **sandbox**: :class:`pipeline.code.sandbox.Sandbox` at the strongest isolation available here
  (``bwrap`` when installed): one sandboxed process per program runs all its tests;
* **baseline**: the obvious implementation, no isolation at all: one ``python -c`` subprocess per
  test (program + setup + that one assert), a thread pool of ``--workers``.

Printed: programs/s and tests/s of each, the ratio, how many passed (they must agree), and the
fixed cost per program (a trivial program, run ``--fixed-n`` times one after the other) of bare
``python -c pass``, of the baseline's one test, and of the sandbox at every isolation level that
works here. Results go to ``benchmarks/results/sandbox_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.code import isolation  # noqa: E402
from pipeline.code.sandbox import Sandbox, SandboxConfig  # noqa: E402


def _tasks(path: Path, limit: int | None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def _job(row: dict) -> dict:
    return {"kind": "asserts", "code": row["code"], "setup": row["test_setup_code"], "asserts": row["test_list"]}


def run_sandbox(rows: list[dict], workers: int, timeout_s: float, level: str = "auto") -> dict:
    with Sandbox(SandboxConfig(isolation=level, timeout_s=timeout_s, workers=workers)) as sb:
        t = time.perf_counter()
        outs = list(sb.run_many([_job(r) for r in rows], workers=workers))
        dt = time.perf_counter() - t
        return {"seconds": dt, "passed": sum(o.ok for o in outs), "isolation": sb.level,
                "statuses": {s: sum(o.status == s for o in outs) for s in {o.status for o in outs}}}


def _one_test(row: dict, test: str, timeout_s: float) -> bool:
    src = row["code"] + "\n" + row["test_setup_code"] + "\n" + test + "\n"
    try:
        return subprocess.run([sys.executable, "-c", src], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=timeout_s).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _baseline_program(row: dict, timeout_s: float) -> bool:
    return all(_one_test(row, t, timeout_s) for t in row["test_list"])


def run_baseline(rows: list[dict], workers: int, timeout_s: float) -> dict:
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ok = list(pool.map(lambda r: _baseline_program(r, timeout_s), rows))
    return {"seconds": time.perf_counter() - t, "passed": sum(ok)}


def fixed_costs(n: int) -> dict:
    """Seconds per trivial program, one after the other."""
    trivial = {"kind": "asserts", "code": "x = 1\n", "setup": "", "asserts": ["assert x == 1"]}
    out = {}
    t = time.perf_counter()
    for _ in range(n):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    out["python -c pass"] = (time.perf_counter() - t) / n
    row = {"code": "x = 1\n", "test_setup_code": ""}
    t = time.perf_counter()
    for _ in range(n):
        _one_test(row, "assert x == 1", 10)
    out["baseline, one test"] = (time.perf_counter() - t) / n
    for level in isolation.LEVELS:
        if level != "none" and not isolation._works(level):
            continue
        with Sandbox(SandboxConfig(isolation=level)) as sb:
            sb.run(trivial)  # warm
            t = time.perf_counter()
            for _ in range(n):
                assert sb.run(trivial).ok
            out[f"sandbox {level}" + (" + pids cgroup" if sb.cgroups else "")] = (time.perf_counter() - t) / n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="mbpp.jsonl (default: $DISTILL_DATA_DIR/mbpp.jsonl)")
    ap.add_argument("--limit", type=int, default=None, help="first N tasks (default: all 974)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=30.0, help="per program (sandbox) / per test (baseline)")
    ap.add_argument("--fixed-n", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "sandbox_throughput.json")
    args = ap.parse_args()
    data = args.data or Path(os.environ.get("DISTILL_DATA_DIR", "../shared/data")) / "mbpp.jsonl"
    rows = _tasks(data, args.limit)
    tests = sum(len(r["test_list"]) for r in rows)
    print(f"{len(rows)} MBPP programs, {tests} tests, {args.workers} workers, cores here: {os.cpu_count()}")
    sandbox = run_sandbox(rows, args.workers, args.timeout)
    base = run_baseline(rows, args.workers, args.timeout)
    for name, r in (("sandbox (" + sandbox["isolation"] + ", one process per program)", sandbox),
                    ("baseline (no isolation, one subprocess per test)", base)):
        r["programs_per_s"], r["tests_per_s"] = len(rows) / r["seconds"], tests / r["seconds"]
        print(f"  {name}: {r['programs_per_s']:.1f} programs/s, {r['tests_per_s']:.1f} tests/s, "
              f"{r['passed']}/{len(rows)} passed, {r['seconds']:.1f} s")
    ratio = sandbox["programs_per_s"] / base["programs_per_s"]
    print(f"  sandbox / baseline: {ratio:.2f}x programs/s")
    fixed = fixed_costs(args.fixed_n)
    print("fixed cost per program (trivial program, sequential):")
    for name, s in fixed.items():
        print(f"  {name}: {1000 * s:.1f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"programs": len(rows), "tests": tests, "workers": args.workers,
                                    "sandbox": sandbox, "baseline": base, "ratio_programs_per_s": ratio,
                                    "fixed_cost_s": fixed}, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
