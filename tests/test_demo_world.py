"""The demo world: disjoint splits, correct traces, and faults that the R1 filter rules catch by name."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pipeline.demo.world import FAULTS, R1_MATH_TEMPLATE, faulty_trace, make_splits, render_prompt, teacher_corpus, trace
from pipeline.grading import grade

REPO = Path(__file__).resolve().parents[1]


def test_splits_are_disjoint_and_seeded():
    train, test = make_splits(500, 100, seed=3)
    assert len(train) == 500 and len(test) == 100
    assert not {p.key for p in train} & {p.key for p in test}
    assert not {p.problem for p in train} & {p.problem for p in test}
    again_train, again_test = make_splits(500, 100, seed=3)
    assert [p.key for p in again_test] == [p.key for p in test] and [p.key for p in again_train] == [p.key for p in train]
    assert [p.key for p in make_splits(500, 100, seed=4)[1]] != [p.key for p in test]


def test_prompt_is_the_r1_math_template():
    # the same text prompts/math.txt renders for real math problems
    template = (REPO / "prompts" / "math.txt").read_text(encoding="utf-8").strip()
    assert template == R1_MATH_TEMPLATE.replace("{{}}", "{}").strip()
    assert render_prompt("What is 1 + 2?").endswith("put your final answer within \\boxed{}.")


@pytest.mark.parametrize("seed", [0, 1])
def test_clean_traces_grade_correct_and_wrong_answer_faults_grade_wrong(seed):
    train, _ = make_splits(300, 10, seed=seed, min_digits=1, max_digits=4)
    rng = random.Random(seed)
    for p in train:
        t = trace(p)
        assert t.startswith("<think>\n") and "</think>" in t
        assert grade(t, p.answer).correct, t
        assert not grade(faulty_trace(p, "wrong_answer", rng), p.answer).correct
        for fault in ("repetition", "code_block", "mixed_language"):  # style faults keep the right answer
            assert grade(faulty_trace(p, fault, rng), p.answer).correct


def test_subtraction_never_negative_and_borrows_shown():
    train, _ = make_splits(300, 10, seed=0, ops=["-"])
    assert all(int(p.answer) >= 0 for p in train)
    assert any("borrow 1" in trace(p) for p in train)


def test_fault_rate_and_bad_arguments():
    train, _ = make_splits(400, 10)
    corpus = teacher_corpus(train, 0.2, seed=0)
    faults = [r["meta"]["fault"] for r in corpus]
    assert sum(f is not None for f in faults) == 80
    assert {f for f in faults if f} == set(FAULTS)
    with pytest.raises(ValueError, match="fault_rate"):
        teacher_corpus(train, 1.0)
    with pytest.raises(ValueError, match="ops"):
        make_splits(10, 10, ops=["*"])
    with pytest.raises(ValueError, match="widen"):
        make_splits(10_000, 10, min_digits=1, max_digits=1)


def test_the_r1_filter_rejects_each_fault_for_its_reason(tmp_path):
    """Every fault the trace program writes is removed by the R1 preset, for the reason named after it."""
    from filters.config import FilterConfig
    from filters.stage import run
    from pipeline.config import load_config

    train, test = make_splits(120, 20, seed=0)
    corpus = teacher_corpus(train, 0.5, seed=0)
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in corpus), encoding="utf-8")
    test_path = tmp_path / "test.jsonl"
    test_path.write_text("".join(json.dumps({"problem": p.problem, "answer": p.answer}) + "\n" for p in test))
    cfg = load_config(FilterConfig, REPO / "configs" / "filter" / "r1.yaml",
                      values={"inputs": [str(path)], "output_dir": str(tmp_path / "out"), "workers": 1,
                              "decontam.benchmarks": [str(test_path)]})
    run(cfg)
    expected = {"wrong_answer": "wrong_answer", "repetition": "redundancy", "code_block": "code_block",
                "mixed_language": "mixed_language"}
    fault_of = {r["id"]: r["meta"]["fault"] for r in corpus}
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    kept = [json.loads(line) for line in (tmp_path / "out" / "kept.jsonl").read_text().splitlines()]
    assert {r["id"] for r in kept} == {i for i, f in fault_of.items() if f is None}
    for r in rejected:
        fault = fault_of[r["id"]]
        assert fault is not None and expected[fault] in r["reject_reasons"], (fault, r["reject_reasons"])
