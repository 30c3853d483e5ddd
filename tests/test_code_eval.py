"""Code Pass@1: HumanEval and MBPP through `distill eval score` (real CLI, real sandbox)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _wrap(code: str) -> str:
    return f"<think>\nLet me write it.\n</think>\n\nHere is the solution.\n\n```python\n{code.rstrip()}\n```\n"


def _humaneval_tests(row: dict) -> dict:
    return {"format": "humaneval", "prompt": row["prompt"], "test": row["test"], "entry_point": row["entry_point"]}


def _mbpp_tests(row: dict) -> dict:
    return {"format": "mbpp", "asserts": row["test_list"], "setup": row["test_setup_code"]}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _score(inputs: list[Path], out: Path, *sets: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline.cli", "eval", "score", "--input", *map(str, inputs), "--output", str(out),
           "--set", "progress=false", *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.slow
def test_every_reference_solution_passes_through_eval_score(shared_data, tmp_path):
    he = [{"benchmark": "humaneval", "problem_id": r["task_id"], "response": _wrap(r["canonical_solution"]),
           "tests": _humaneval_tests(r)} for r in _rows(shared_data / "humaneval.jsonl")]
    mb = [{"benchmark": "mbpp", "problem_id": r["task_id"], "response": _wrap(r["code"]), "tests": _mbpp_tests(r)}
          for r in _rows(shared_data / "mbpp.jsonl")]
    assert (len(he), len(mb)) == (164, 974)
    inputs = [_write(tmp_path / "humaneval.jsonl", he), _write(tmp_path / "mbpp.jsonl", mb)]
    # MBPP task 123 needs ~9 s on a quiet core; the per-program limit leaves room for a busy machine.
    _score(inputs, tmp_path / "scored", "sandbox.timeout_s=120")
    res = json.loads((tmp_path / "scored" / "results.json").read_text())
    for name, n in (("humaneval", 164), ("mbpp", 974)):
        m = res["benchmarks"][name]
        assert (m["problems"], m["pass@1"], m["statuses"]) == (n, 100.0, {"passed": n}), (name, m["statuses"])
    assert res["grading"]["sandbox"]["isolation"] in ("bwrap", "unshare", "none")


BROKEN = {
    "failed": "def {fn}(*args, **kwargs):\n    return 'surely wrong'",
    "timeout": "def {fn}(*args, **kwargs):\n    while True:\n        pass",
    "runtime_error": "def {fn}(*args, **kwargs):\n    raise ValueError('broken')",
    "memory_limit": "def {fn}(*args, **kwargs):\n    return bytearray(10 * 1024 ** 3)",
    "output_limit": "def {fn}(*args, **kwargs):\n    while True:\n        print('x' * 65536)",
}


def test_broken_variants_fail_with_the_right_outcome(shared_data, tmp_path):
    he = _rows(shared_data / "humaneval.jsonl")[:3]
    mb = [r for r in _rows(shared_data / "mbpp.jsonl") if r["split"] == "test"][:3]
    rows = []
    for kind, body in BROKEN.items():
        for r in he:
            rows.append({"benchmark": "humaneval", "problem_id": r["task_id"], "kind": kind,
                         "response": _wrap(body.format(fn=r["entry_point"])), "tests": _humaneval_tests(r)})
        for r in mb:
            fn = r["code"].split("def ", 1)[1].split("(", 1)[0].strip()
            rows.append({"benchmark": "mbpp", "problem_id": r["task_id"], "kind": kind,
                         "response": _wrap(body.format(fn=fn)), "tests": _mbpp_tests(r)})
    r0 = he[0]
    rows.append({"benchmark": "humaneval", "problem_id": r0["task_id"], "kind": "no_program",
                 "response": "<think>\nhmm\n</think>\n\nI could not write it.", "tests": _humaneval_tests(r0)})
    rows.append({"benchmark": "humaneval", "problem_id": r0["task_id"], "kind": "unclosed_think",
                 "response": "<think>\n```python\n" + r0["prompt"] + r0["canonical_solution"] + "```",
                 "tests": _humaneval_tests(r0)})
    _score([_write(tmp_path / "broken.jsonl", rows)], tmp_path / "scored", "sandbox.timeout_s=2",
           "sandbox.max_output_kb=64", "sandbox.memory_mb=1024")
    scored = _rows(tmp_path / "scored" / "scored.jsonl")
    assert len(scored) == len(rows)
    wrong = [(s["kind"], s["grade_status"]) for s in scored if s["grade_status"] != s["kind"]]
    assert not wrong and not any(s["correct"] for s in scored)
    failed = next(s for s in scored if s["kind"] == "failed" and s["benchmark"] == "mbpp")
    assert failed["code"]["test"] == 0 and failed["code"]["got"] == "'surely wrong'"
    res = json.loads((tmp_path / "scored" / "results.json").read_text())
    assert res["benchmarks"]["mbpp"]["timeout_rate"] == pytest.approx(100 * 3 / 15)
    assert res["benchmarks"]["humaneval"]["pass@1"] == 0.0


def test_known_code_benchmarks_load(shared_data, monkeypatch):
    from pipeline.evaluate.benchmarks import load_problems

    monkeypatch.setenv("DISTILL_DATA_DIR", str(shared_data))
    mbpp = load_problems("mbpp", hf_fallback=False)
    assert len(mbpp) == 500 and (mbpp[0].id, mbpp[-1].id) == ("11", "510")
    assert mbpp[0].meta["tests"]["format"] == "mbpp" and "Your code should pass these tests" in mbpp[0].problem
    he = load_problems("humaneval", hf_fallback=False)
    assert len(he) == 164 and he[0].meta["tests"]["entry_point"] == "has_close_elements"


def test_bad_tests_field_names_file_line_and_field(tmp_path):
    bad = _write(tmp_path / "bad.jsonl", [{"response": _wrap("x = 1"), "tests": {"format": "mbpp", "asserts": ["assert 1"]}},
                                          {"response": _wrap("x = 1"), "tests": {"format": "stdio", "cases": [{"input": 1}]}}])
    proc = _score([bad], tmp_path / "scored", check=False)
    assert proc.returncode != 0
    assert f"{bad}:2" in proc.stderr and "tests.cases[0]" in proc.stderr


def test_sigkill_mid_scoring_resumes_exactly_once(shared_data, tmp_path):
    mb = [r for r in _rows(shared_data / "mbpp.jsonl") if r["split"] == "train"][:48]
    rows = [{"benchmark": "mbpp", "problem_id": r["task_id"], "response": _wrap(r["code"]), "tests": _mbpp_tests(r)}
            for r in mb]
    inp = _write(tmp_path / "resp.jsonl", rows)
    out = tmp_path / "scored"
    cmd = [sys.executable, "-m", "pipeline.cli", "eval", "score", "--input", str(inp), "--output", str(out),
           "--set", "progress=false", "--set", "grading_batch=4", "--set", "grading_workers=1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    scored = out / "scored.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if scored.exists() and scored.read_text().count("\n") >= 8:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = scored.read_text().count("\n")
    assert 8 <= first < len(rows), "the kill must land mid-run"
    _score([inp], out)
    lines = _rows(scored)
    assert Counter(r["scored_from"] for r in lines) == Counter(f"{inp}:{i}" for i in range(1, len(rows) + 1))
    assert all(r["correct"] for r in lines)


def test_responses_to_builtin_code_sets_need_no_tests_field(shared_data, tmp_path):
    he = _rows(shared_data / "humaneval.jsonl")[:2]
    mb = [r for r in _rows(shared_data / "mbpp.jsonl") if r["split"] == "train"][:2]
    rows = [{"benchmark": "humaneval", "problem_id": r["task_id"], "response": _wrap(r["canonical_solution"])} for r in he]
    rows += [{"benchmark": "mbpp", "problem_id": r["task_id"], "response": _wrap(r["code"])} for r in mb]
    rows.append({"benchmark": "mbpp", "problem_id": mb[0]["task_id"], "response": _wrap("def nothing():\n    pass")})
    _score([_write(tmp_path / "resp.jsonl", rows)], tmp_path / "scored", "sandbox.timeout_s=10")
    scored = _rows(tmp_path / "scored" / "scored.jsonl")
    assert [s["correct"] for s in scored] == [True, True, True, True, False]
    bad = _write(tmp_path / "bad.jsonl", [{"benchmark": "mbpp", "problem_id": 9999, "response": _wrap("x = 1")}])
    proc = _score([bad], tmp_path / "scored_bad", check=False)
    assert proc.returncode != 0 and "not a task of mbpp" in proc.stderr and "problem_id" in proc.stderr
