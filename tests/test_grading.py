"""The shared grader (pipeline.grading): extraction, equivalent forms, wrong answers, R1 protocol rules."""

from __future__ import annotations

import pytest

from pipeline.grading import Grade, equivalent, extract_answer, extract_boxed, grade, grade_many, normalize_answer

THINK = "<think>\nLet me work this out carefully.\n</think>\n\n"


def boxed(ans: str) -> str:
    return f"{THINK}So the final answer is $\\boxed{{{ans}}}$."


# (model answer, reference): the same value written differently -> correct
EQUIVALENT = [
    ("\\frac{1}{2}", "0.5"),                       # fraction vs decimal
    ("0.5", "\\frac{1}{2}"),
    ("\\dfrac{3}{4}", "\\frac{3}{4}"),             # \dfrac
    ("\\tfrac34", "\\frac{3}{4}"),
    ("1/3", "\\frac{1}{3}"),
    ("(1, 2)", "(1,2)"),                           # tuples
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("[0, 1)", "[0,1)"),                           # intervals
    ("(-\\infty, 0)", "(-\\infty,0)"),
    ("\\{3, 1, 2\\}", "\\{1,2,3\\}"),              # sets in any order
    ("50\\%", "50"),                               # percentages
    ("50\\%", "0.5"),
    ("1,000", "1000"),                             # thousands separators
    ("1{,}000", "1000"),
    ("1,234,567", "1234567"),
    ("1000", "1{,}000"),
    ("10^\\circ", "10"),                           # degrees
    ("\\$18.00", "18"),                            # currency, trailing zeros
    ("18 \\text{ dollars}", "18"),                 # units in \text
    ("5.0", "5"),
    ("x = 5", "5"),                                # an equation naming the variable
    ("2\\sqrt{3}", "\\sqrt{12}"),                  # symbolic equality
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}"),
    ("\\text{(C)}", "C"),                          # multiple-choice letter
]

# (model answer, reference): a different value -> wrong
DIFFERENT = [
    ("3", "4"),
    ("-5", "5"),
    ("(1, 2)", "(2, 1)"),                          # tuples are ordered
    ("[0, 1]", "[0, 1)"),                          # closed vs half-open
    ("(-\\infty, 0)", "(-\\infty, 0]"),
    ("\\{1, 2\\}", "\\{1, 2, 3\\}"),               # a missing element
    ("0.333", "\\frac{1}{3}"),                     # a rounded decimal is not the fraction
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("1000", "100"),
    ("2\\sqrt{3}", "3\\sqrt{2}"),
]


@pytest.mark.parametrize("answer,reference", EQUIVALENT)
def test_equivalent_forms_are_correct(answer, reference):
    g = grade(boxed(answer), reference)
    assert g == Grade(True, answer, "correct"), g


@pytest.mark.parametrize("answer,reference", DIFFERENT)
def test_different_values_are_wrong(answer, reference):
    g = grade(boxed(answer), reference)
    assert not g.correct and g.status == "wrong" and g.extracted == answer, g


def test_last_box_wins():
    text = f"{THINK}First I thought $\\boxed{{3}}$, but correcting: $\\boxed{{5}}$."
    assert grade(text, "5").correct
    assert not grade(text, "3").correct
    assert extract_answer(text) == "5"


def test_only_text_after_think_is_graded():
    # A box inside the reasoning does not count when the final answer after </think> differs.
    text = "<think>\nmaybe \\boxed{5}\n</think>\n\nThe answer is $\\boxed{6}$."
    g = grade(text, "5")
    assert (g.correct, g.extracted, g.status) == (False, "6", "wrong")


def test_nested_braces_in_box():
    text = f"{THINK}\\boxed{{\\frac{{a^{{2}}}}{{b}}}}"
    assert extract_boxed(text) == "\\frac{a^{2}}{b}"
    assert grade(text, "\\dfrac{a^2}{b}").correct


def test_unclosed_think_is_wrong_even_with_a_right_box():
    text = "<think>\nI think it's \\boxed{5} and I keep thinking"
    g = grade(text, "5")
    assert g == Grade(False, None, "unclosed_think")
    # Without the R1 requirement (e.g. a non-reasoning base model) the same text is graded.
    assert grade(text, "5", require_think=False).correct


def test_no_final_answer_is_wrong():
    g = grade(f"{THINK}I could not finish the problem.", "5")
    assert g == Grade(False, None, "no_answer")
    g = grade(f"{THINK}\\boxed{{}}", "5")
    assert g.status == "no_answer" and not g.correct


def test_gsm8k_style_answers():
    assert grade(f"{THINK}So she makes 18 dollars. The answer is 18.", "18").correct
    assert grade(f"{THINK}Total: 1,234 apples.\n#### 1,234", "1234").correct
    assert extract_answer(f"{THINK}The final answer is: $72$.") == "72"
    assert not grade(f"{THINK}The answer is 17.", "18").correct


def test_pathological_answer_times_out_as_wrong():
    # A power tower sympy would try to expand: bounded by the timeout, counted wrong, reported.
    g = grade(boxed("9^{9^{9^{9^{9}}}}"), "5", timeout_s=1)
    assert not g.correct
    assert g.status == "timeout"


def test_normal_form_is_conservative():
    assert normalize_answer("\\dfrac{1}{2}") == normalize_answer("\\frac{1}{2}")
    assert normalize_answer("1,000") == normalize_answer("1000")
    assert normalize_answer("1, 2") != normalize_answer("12")  # a pair is not a thousands number
    assert normalize_answer("2.50") == normalize_answer("2.5")


def test_equivalent_for_majority_voting():
    assert equivalent("\\frac{1}{2}", "0.5")
    assert equivalent("\\{1,2\\}", "\\{2,1\\}")
    assert not equivalent("1", "2")
    assert not equivalent("9^{9^{9^{9}}}", "1", timeout_s=1)


def test_grade_many_keeps_order_and_matches_grade_in_parallel():
    pairs = []
    for i in range(300):
        if i % 3 == 0:
            pairs.append((boxed(str(i)), str(i)))                # right
        elif i % 3 == 1:
            pairs.append((boxed(str(i + 1)), str(i)))            # wrong
        else:
            pairs.append((f"<think>\nstill thinking about {i}", str(i)))  # truncated
    serial = [grade(r, a) for r, a in pairs]
    parallel = grade_many(pairs, workers=2, timeout_s=5, chunksize=16)
    assert parallel == serial
    assert [g.status for g in parallel[:3]] == ["correct", "wrong", "unclosed_think"]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(a=st.integers(-10**6, 10**6), delta=st.sampled_from([0, 0, 1, -1, 10, 1000]), commas=st.booleans())
@settings(max_examples=60, deadline=None)
def test_integer_fast_path_agrees_with_math_verify(a, delta, commas):
    """Plain integers skip sympy; the verdict must be the one math-verify gives."""
    from pipeline.grading import _mv_equal

    b = a + delta
    pred = f"{a:,}" if commas else str(a)
    assert grade(boxed(pred), str(b)).correct == _mv_equal(str(b), pred, 5.0) == (a == b)
    assert equivalent(pred, str(b)) == (a == b)


def test_integer_answers_with_leading_zeros_and_signs():
    assert grade(boxed("007"), "7").correct           # AIME answers are often written 007
    assert grade(boxed("-0"), "0").correct
    assert not grade(boxed("-7"), "7").correct
