"""The grader against public graders' own test suites (tests/data/grader_cases.jsonl; skipped cases and
why: tests/data/grader_cases_skipped.md). Prints the agreement figure and every disagreement."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.grader_suite import agreement, load_cases, reference_of
from pipeline.grading import equivalent

CASES = Path(__file__).parent / "data" / "grader_cases.jsonl"
TARGET = 0.97


def test_agreement_with_public_grader_suites(capsys):
    cases = load_cases(CASES)
    assert len(cases) >= 200
    assert len({c.source.split("@")[0] for c in cases}) >= 5  # Math-Verify, MARIO_EVAL, MATH, NeMo-Skills, lighteval
    rate, wrong = agreement(cases)
    with capsys.disabled():
        print(f"\ngrader agreement with public suites: {rate:.1%} ({len(cases) - len(wrong)}/{len(cases)} cases)")
        for c, ours in wrong:
            print(f"  disagree: {c.source} label={int(c.label)} ours={int(ours)} gold={c.gold[:50]!r} pred={c.pred[-50:]!r}")
    assert rate >= TARGET, f"agreement {rate:.1%} < {TARGET:.0%}"


def test_equivalence_is_symmetric_on_every_bare_answer_pair():
    """cons@k groups answers with ``equivalent``: it must not depend on which answer came first."""
    pairs = [c for c in load_cases(CASES) if c.mode == "answer"]
    for c in pairs[::3]:  # every third pair keeps this test in seconds; the benchmark checks all of them
        if c.mode == "answer":
            a, b = reference_of(c.gold), c.pred.strip().strip("$")
            assert equivalent(a, b) == equivalent(b, a), c.source


def test_suite_has_both_labels():
    cases = load_cases(CASES)
    assert sum(c.label for c in cases) > 20 and sum(not c.label for c in cases) > 20


def test_bad_case_line_names_file_and_line(tmp_path):
    f = tmp_path / "cases.jsonl"
    f.write_text('{"gold": "1", "pred": "1", "label": 1, "mode": "answer", "source": "x"}\n{"gold": "1"}\n')
    with pytest.raises(ValueError, match=r"cases.jsonl:2"):
        load_cases(f)
