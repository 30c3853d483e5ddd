"""The LLM judge against a real chat-completions server on 127.0.0.1 (tests/judge_server.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from judge_server import JudgeServer
from pipeline.judge import Judge, JudgeError, JudgeItem, JudgeSettings, parse_verdict, render_judge_prompt
from pipeline.records import read_jsonl

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-test-DO-NOT-LEAK-7f3a9c"


def settings(server: JudgeServer, **kw) -> JudgeSettings:
    base = dict(enabled=True, model="tiny-judge", base_url=server.url, api_key_env="JUDGE_TEST_KEY",
                retry_backoff_s=0.01, concurrency=4)
    base.update(kw)
    return JudgeSettings(**base)


def assert_no_secret(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f


# --------------------------------------------------------------------------- verdict parsing

@pytest.mark.parametrize("text, expected", [
    ("RATIONALE: same value.\nVERDICT: CORRECT", (True, "same value.")),
    ("RATIONALE: differs\nVERDICT: INCORRECT", (False, "differs")),
    ("<think>\nhmm VERDICT: CORRECT\n</think>\nRATIONALE: equal\nVERDICT: incorrect", (False, "equal")),
    ("**RATIONALE:** equal\n**VERDICT:** **CORRECT**", (True, "equal")),
    ("\n\nRATIONALE: equal\n\nVERDICT: CORRECT\n", (True, "equal")),
])
def test_well_formed_verdicts(text, expected):
    assert parse_verdict(text) == expected


@pytest.mark.parametrize("text", [
    "",
    "It looks right to me.",
    "VERDICT: CORRECT",  # no rationale
    "RATIONALE:\nVERDICT: CORRECT",  # empty rationale
    "VERDICT: CORRECT\nRATIONALE: equal",  # verdict not last
    "RATIONALE: equal\nVERDICT: MOSTLY CORRECT",
    "RATIONALE: equal\nVERDICT: CORRECT\nVERDICT: INCORRECT",
    "RATIONALE: equal\nVERDICT: CORRECT\nBut maybe not.",
    "Sure! RATIONALE: equal\nVERDICT: CORRECT",
])
def test_malformed_verdicts_are_none(text):
    assert parse_verdict(text) is None


def test_template_fills_in_one_pass():
    item = JudgeItem("What is {reference}?", "It is {problem} and 42", "42")
    text = render_judge_prompt("P: {problem}\nR: {reference}\nA: {response}", item)
    assert text == "P: What is {reference}?\nR: 42\nA: It is {problem} and 42"


# --------------------------------------------------------------------------- the judge

def test_judge_verdicts_retries_malformed_cache_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    items = [JudgeItem("Name the organelle.", "The mitochondria.", "mitochondria"),
             JudgeItem("Name the organelle.", "The ribosome.", "mitochondria"),
             JudgeItem("Which gas?", "Oxygen FAIL500x2", "oxygen"),  # two HTTP 500s, then an answer
             JudgeItem("Which gas?", "Oxygen MALFORMED", "oxygen"),  # never a verdict
             JudgeItem("Which gas?", "Oxygen MALFORMED_ONCE", "oxygen")]  # a verdict on the second ask
    with JudgeServer() as server, Judge(settings(server, malformed_retries=2), tmp_path / "cache") as judge:
        verdicts = judge.judge_many(items)
        assert [v.status for v in verdicts] == ["correct", "wrong", "correct", "malformed", "correct"]
        assert verdicts[0].rationale and not verdicts[3].correct and verdicts[3].rationale is None
        assert [v.attempts for v in verdicts] == [1, 1, 1, 3, 2]
        assert judge.backend.retries == 2  # the two 500s, retried by the OpenAI backend
        # 5 first asks + 2 re-asks of MALFORMED + 1 of MALFORMED_ONCE (HTTP retries are not new verdict requests)
        assert judge.requests == 8 and len(server.requests) == 10
        assert {r["auth"] for r in server.requests} == {f"Bearer {SECRET}"}
        seeds = [r["seed"] for r in server.requests]
        assert len(set(seeds)) > 1
    # A second run over the same items: every verdict from the cache, no request at all.
    with JudgeServer() as server2, Judge(settings(server2), tmp_path / "cache") as judge2:
        again = judge2.judge_many(items)
        assert [v.status for v in again] == [v.status for v in verdicts] and all(v.cached for v in again)
        assert judge2.requests == 0 and server2.requests == []
        # Another judge model or template is another key: asked afresh.
    with JudgeServer() as server3, Judge(settings(server3, model="other"), tmp_path / "cache") as judge3:
        judge3.judge_many(items[:1])
        assert len(server3.requests) == 1
    assert_no_secret(tmp_path)


def test_dead_endpoint_is_an_error_not_a_reject(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    with JudgeServer() as server, Judge(settings(server, max_retries=1), tmp_path / "c") as judge:
        with pytest.raises(JudgeError, match="giving up") as exc:
            judge.judge_many([JudgeItem("q", "a FAIL500x9", "a"), JudgeItem("q", "a", "a")])
        assert SECRET not in str(exc.value)
    # The item that was decided is cached; the failed one is not.
    with JudgeServer() as server, Judge(settings(server), tmp_path / "c") as judge:
        assert [v.cached for v in judge.judge_many([JudgeItem("q", "a", "a")])] == [True]


def test_template_without_fields_is_refused(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text("Judge {problem} please")
    with JudgeServer() as server, pytest.raises(JudgeError, match="reference"):
        Judge(settings(server, template=str(bad)), tmp_path / "c")


# --------------------------------------------------------------------------- the filter's judge rule

def _rec(i: int, final: str, answer: str, domain: str = "science") -> dict:
    reasoning = (f"Case {i}: I recall what each candidate does and weigh the evidence for it, variant {i * 17 + 3}; "
                 f"the energy budget of the cell points one way.")
    return {"prompt_id": f"q{i}", "sample_index": 0, "domain": domain, "answer": answer, "finish_reason": "stop",
            "messages": [{"role": "user", "content": f"Question {i}: which organelle makes most of the ATP?"},
                         {"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n{final}"}]}


def _filter_cfg(inp: Path, out: Path, url: str, **extra):
    from filters.config import FilterConfig
    from pipeline.config import load_config

    values = {"inputs": [str(inp)], "output_dir": str(out), "workers": 1, "decontam.enabled": False,
              "dedup.enabled": False, "judge.enabled": True, "judge.model": "tiny-judge", "judge.base_url": url,
              "judge.api_key_env": "JUDGE_TEST_KEY", "judge.retry_backoff_s": 0.01,
              "judge.domains": ["science", "math"], "judge.calibrate": True}
    values.update(extra)
    return load_config(FilterConfig, REPO / "configs/filter/r1.yaml", values=values)


def _corpus() -> list[dict]:
    return [_rec(0, "It is the mitochondria.", "mitochondria"),
            _rec(1, "It is the ribosome.", "mitochondria"),  # free form, judged wrong
            _rec(2, "It is the mitochondria MALFORMED", "mitochondria"),  # judge never answers properly
            _rec(3, "The answer is $\\boxed{16}$.", "16", domain="math"),  # rule correct, judge correct
            _rec(4, "The answer is $\\boxed{15}$.", "16", domain="math"),  # rule wrong, judge wrong
            _rec(5, "The answer is $\\boxed{\\frac{32}{2}}$.", "16", domain="math"),  # rule correct, judge wrong
            _rec(6, "Chloroplast.", "chloroplast", domain="biology")]  # not in the judge's domains


def test_filter_judge_rule_rejects_keeps_meta_and_reports_agreement(tmp_path, monkeypatch):
    from filters.stage import run

    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    inp = tmp_path / "gen.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in _corpus()))
    with JudgeServer() as server:
        report = run(_filter_cfg(inp, tmp_path / "out", server.url))
        first_requests = len(server.requests)
    kept = {r["prompt_id"]: r for r in read_jsonl(tmp_path / "out" / "kept.jsonl")}
    rejected = {r["prompt_id"]: r for r in read_jsonl(tmp_path / "out" / "rejected.jsonl")}
    assert set(kept) == {"q0", "q3", "q5", "q6"} and set(rejected) == {"q1", "q2", "q4"}
    assert rejected["q1"]["reject_reasons"] == ["judge_rejected"]
    assert rejected["q2"]["reject_reasons"] == ["judge_rejected"]
    assert rejected["q2"]["reject_details"]["judge_rejected"].startswith("malformed")
    assert rejected["q4"]["reject_reasons"] == ["wrong_answer"]  # the rule decides math; the judge only agrees
    j = kept["q0"]["meta"]["judge"]
    assert j["verdict"] == "correct" and j["rationale"] and j["model"] == "tiny-judge" and j["decides"] is True
    assert kept["q3"]["meta"]["judge"]["decides"] is False and "judge" not in kept["q6"].get("meta", {})
    entry = report["rules"]["judge_rejected"]
    assert entry["statuses"] == {"correct": 1, "malformed": 1, "wrong": 1}
    assert entry["agreement"] == {"records": 3, "agree": 2, "rate": 0.6667, "rule_correct_judge_wrong": 1,
                                  "rule_wrong_judge_correct": 0, "judge_malformed": 0}
    assert "Agreement with the rule grader" in (tmp_path / "out" / "report.md").read_text()
    # A fresh run over the same records: verdicts from the cache, zero requests.
    with JudgeServer() as server:
        again = run(_filter_cfg(inp, tmp_path / "out", server.url, overwrite=True))
        assert server.requests == [] and first_requests == 6 + 2
    assert again["rules"]["judge_rejected"] == entry
    # Without calibrate, records the rule grader decided cost no request: only the 3 free-form ones.
    with JudgeServer() as server:
        plain = run(_filter_cfg(inp, tmp_path / "out2", server.url, **{"judge.calibrate": False}))
        assert len({r["prompt"] for r in server.requests}) == 3
    assert "agreement" not in plain["rules"]["judge_rejected"]
    assert_no_secret(tmp_path)


KILL_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[4])
from test_judge import _filter_cfg
from filters.stage import run
from pathlib import Path
run(_filter_cfg(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], chunk_size=4, checkpoint_every=4,
                **{"judge.concurrency": 2}))
"""


def test_filter_with_judge_resumes_after_sigkill_exactly_once(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    recs = [_rec(i, f"It is the {'mitochondria' if i % 3 else 'ribosome'} SLOW.", "mitochondria") for i in range(24)]
    inp = tmp_path / "gen.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-c", KILL_SCRIPT, str(inp), str(out), "", str(Path(__file__).parent)]
    with JudgeServer(slow_s=0.15) as server:
        cmd[5] = server.url
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while len(server.requests) < 10 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = len(server.requests)
        assert 10 <= killed_at < 24, proc.stderr.read().decode()[-2000:]
        assert not (out / "report.json").exists()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        total = len(server.requests)
    kept, rejected = read_jsonl(out / "kept.jsonl"), read_jsonl(out / "rejected.jsonl")
    ids = sorted(r["prompt_id"] for r in kept + rejected)
    assert ids == sorted(r["prompt_id"] for r in recs)  # every record exactly once
    assert len(rejected) == 8 and all(r["reject_reasons"] == ["judge_rejected"] for r in rejected)
    assert all(r["meta"]["judge"]["verdict"] == "correct" for r in kept)
    # Verdicts decided before the kill were not asked again: at most the requests in flight were lost.
    assert total - 24 <= 2
    assert_no_secret(tmp_path)


# --------------------------------------------------------------------------- eval with the judge

def test_eval_score_with_the_judge(tmp_path, monkeypatch):
    from pipeline.evaluate.stage import ScoreConfig, score

    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    rows = []
    for i in range(6):
        for j in range(2):
            right = j == 0 or i % 2 == 0
            rows.append({"benchmark": "open_bio", "problem_id": f"p{i}", "sample_index": j, "answer": f"organelle{i}",
                         "problem": f"Name organelle number {i}.",
                         "response": f"<think>\nthinking\n</think>\n\nIt is {'organelle' if right else 'nothing'}{i}."})
    rows.append({"benchmark": "open_bio", "problem_id": "p6", "sample_index": 0, "answer": "x",
                 "response": "<think>\nno end"})  # unclosed: wrong without asking
    inp = tmp_path / "responses.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with JudgeServer() as server:
        cfg = ScoreConfig(inputs=[str(inp)], output_dir=str(tmp_path / "o"), pass_k=[1, 2], progress=False,
                          grader="judge", grading_workers=1,
                          judge=settings(server).model_dump())
        m = score(cfg)["benchmarks"]["open_bio"]
        assert len(server.requests) == 9  # 12 asked; 3 pairs of identical samples share one verdict
    assert m["pass@1"] == pytest.approx(100 * (3 * 1.0 + 3 * 0.5) / 7)
    assert m["statuses"] == {"correct": 9, "wrong": 3, "unclosed_think": 1}
    scored = read_jsonl(tmp_path / "o" / "scored.jsonl")
    assert all(s["judge"]["verdict"] in ("correct", "wrong") for s in scored if s["problem_id"] != "p6")
    with pytest.raises(ValueError, match="judge.enabled"):
        ScoreConfig(inputs=[str(inp)], grader="judge")
    assert_no_secret(tmp_path)


def test_distill_eval_benchmark_graded_by_the_judge(tiny_model_dir, tmp_path, monkeypatch):
    from pipeline.evaluate.stage import EvalConfig, run

    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    bench = tmp_path / "open.jsonl"
    bench.write_text("".join(json.dumps({"problem": f"Name organelle {i}.", "answer": f"organelle {i}"}) + "\n"
                             for i in range(4)))
    with JudgeServer() as server:
        cfg = EvalConfig.model_validate(dict(
            model=str(tiny_model_dir), label="tiny", backend="transformers", require_think=False,
            benchmarks=[{"name": "open_sci", "path": str(bench), "grader": "judge"}],
            sampling={"n": 2, "max_tokens": 16, "seed": 1}, pass_k=[1, 2], output_dir=str(tmp_path / "eval"),
            grading_workers=1, progress=False, transformers={"device": "cpu", "batch_size": 8}, batch_size=8,
            judge=settings(server).model_dump()))
        m = run(cfg)["benchmarks"]["open_sci"]
        assert 1 <= len(server.requests) <= 8
    assert m["samples"] == 8 and set(m["statuses"]) <= {"correct", "wrong"}
    assert m["grader"]["judge"] == "tiny-judge"
    samples = read_jsonl(tmp_path / "eval" / "open_sci" / "samples.jsonl")
    assert all(s["judge"]["model"] == "tiny-judge" and s["judge"]["verdict"] == s["grade_status"] for s in samples)
    with pytest.raises(ValueError, match="judge.enabled"):
        EvalConfig.model_validate(dict(model="m", benchmarks=[{"name": "x", "path": str(bench), "grader": "judge"}]))
    assert_no_secret(tmp_path)
