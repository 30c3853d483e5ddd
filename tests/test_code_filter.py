"""The filter rule ``failed_tests``: code traces run against their tests in the sandbox."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from filters.config import FilterConfig
from filters.stage import run
from pipeline.config import load_config
from pipeline.records import read_jsonl

REPO = Path(__file__).resolve().parents[1]
R1 = REPO / "configs/filter/r1.yaml"
TESTS = {"format": "mbpp", "asserts": ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(-1, 1) == 0"]}


def _code_rec(i: int, program: str | None, tests=TESTS, in_meta: bool = False) -> dict:
    final = "Here it is.\n\n" + (f"```python\n{program}\n```" if program is not None else "No code, sorry.")
    words = ["carefully", "slowly", "twice", "again", "stepwise", "mentally", "backwards", "directly"]
    reasoning = (f"Attempt {i}: adding two numbers {words[i % len(words)]} with variant {i * 13 + 1}; "
                 f"the plus operator {words[(i * 3) % len(words)]} does it, checked {i} times.")
    rec = {"prompt_id": f"c{i}", "sample_index": 0, "domain": "code",
           "messages": [{"role": "user", "content": f"Task {i}: write add(a, b) returning the sum."},
                        {"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n{final}"}],
           "answer": None, "finish_reason": "stop", "meta": {}}
    if tests is not None:
        if in_meta:
            rec["meta"]["tests"] = tests
        else:
            rec["tests"] = tests
    return rec


def _write(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


def _cfg(inp: Path, out: Path, **values) -> FilterConfig:
    base = {"inputs": [str(inp)], "output_dir": str(out), "workers": 1, "decontam.enabled": False,
            "code_tests.sandbox.timeout_s": 2.0}
    base.update(values)
    return load_config(FilterConfig, R1, values=base)


def test_code_records_are_kept_only_when_their_program_passes(tmp_path):
    recs = [_code_rec(0, "def add(a, b):\n    return a + b"),
            _code_rec(1, "def add(a, b):\n    return a + b", in_meta=True),  # tests as generate writes them
            _code_rec(2, "def add(a, b):\n    return a * b"),
            _code_rec(3, "def add(a, b):\n    while True:\n        pass"),
            _code_rec(4, "def add(a, b):\n    return undefined_name"),
            _code_rec(5, None),
            _code_rec(6, "def add(a, b):\n    return a + b", tests=None),
            _code_rec(7, "def add(a, b):\n    return a + b", tests={"format": "stdio", "cases": [{"input": "1"}]})]
    inp = _write(tmp_path / "gen.jsonl", recs)
    report = run(_cfg(inp, tmp_path / "out"))
    kept = {r["prompt_id"] for r in read_jsonl(tmp_path / "out" / "kept.jsonl")}
    assert kept == {"c0", "c1", "c6"}
    rejected = {r["prompt_id"]: r for r in read_jsonl(tmp_path / "out" / "rejected.jsonl")}
    assert all(r["reject_reasons"] == ["failed_tests"] for r in rejected.values())
    details = {pid: r["reject_details"]["failed_tests"] for pid, r in rejected.items()}
    assert details["c2"].startswith("failed test 1/3") and "expected 3 got 2" in details["c2"]
    assert details["c3"].startswith("timeout")
    assert details["c4"].startswith("runtime_error") and "NameError" in details["c4"]
    assert "no program" in details["c5"]
    assert details["c7"].startswith("bad tests field (tests.cases[0])")
    rule = report["rules"]["failed_tests"]
    assert rule["unverified"] == 1 and rule["run"] == 5
    assert rule["outcomes"] == {"bad_tests": 1, "failed": 1, "no_program": 1, "passed": 2, "runtime_error": 1,
                                "timeout": 1, "unverified": 1}
    from pipeline.code.isolation import detect_level

    level = detect_level("auto")
    assert rule["isolation"] == {level: 5}  # the programs that ran (not: no program, a bad tests field)
    assert f"Code tests: 5 programs run (isolation: {level} 5), 1 code records without tests (unverified)" in \
        (tmp_path / "out" / "report.md").read_text()
    strict = run(_cfg(inp, tmp_path / "strict", **{"code_tests.require_tests": True}))
    kept = {r["prompt_id"] for r in read_jsonl(tmp_path / "strict" / "kept.jsonl")}
    assert kept == {"c0", "c1"} and strict["rules"]["failed_tests"]["unverified"] == 1


def test_sigkill_mid_code_filter_resumes_exactly_once(tmp_path):
    # every program sleeps a little so the kill lands mid-run; a third fail their tests
    recs = [_code_rec(i, "import time\ntime.sleep(0.15)\ndef add(a, b):\n    return a + b" + (" + 1" if i % 3 == 0 else ""))
            for i in range(30)]
    inp = _write(tmp_path / "gen.jsonl", recs)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline.cli", "filter", "--config", str(R1), "--inputs", str(inp),
           "--output", str(out), "--workers", "1", "--set", "decontam.enabled=false",
           "--set", "checkpoint_every=4", "--set", "chunk_size=2"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = out / ".partial" / "checkpoint.pkl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not ckpt.exists():
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "report.json").exists(), "the kill must land mid-run"
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    kept = [r["prompt_id"] for r in read_jsonl(out / "kept.jsonl")]
    rejected = [r["prompt_id"] for r in read_jsonl(out / "rejected.jsonl")]
    assert Counter(kept + rejected) == Counter(f"c{i}" for i in range(30))
    assert sorted(rejected) == sorted(f"c{i}" for i in range(0, 30, 3))
