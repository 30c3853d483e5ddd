"""Eval metrics: unbiased pass@k vs the closed form, cons@k voting, bootstrap intervals, rates."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.evaluate.metrics import (Sample, benchmark_metrics, bootstrap_ci, cons_at_k, majority_vote,
                                       pass_at_k, pass_at_k_mean)


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def enumerate_subsets(n: int, c: int, k: int) -> float:
    """Brute force: share of k-subsets of the n samples that hold a correct one."""
    labels = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(labels[i] for i in s) for s in subsets) / len(subsets)


@given(n=st.integers(1, 200), data=st.data())
@settings(max_examples=300, deadline=None)
def test_pass_at_k_matches_closed_form(n, data):
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    assert pass_at_k(n, c, k) == pytest.approx(closed_form(n, c, k), abs=1e-12)


@pytest.mark.parametrize("n,c,k", [(5, 2, 2), (6, 1, 3), (8, 3, 4), (4, 0, 2), (4, 4, 1), (7, 5, 3)])
def test_pass_at_k_matches_subset_enumeration(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(enumerate_subsets(n, c, k))


def test_pass_at_1_is_mean_correctness():
    assert pass_at_k(16, 5, 1) == pytest.approx(5 / 16)
    assert pass_at_k_mean([(4, 1), (4, 3), (4, 0)], 1) == pytest.approx(100 * (0.25 + 0.75 + 0) / 3)


def test_pass_at_k_large_n_is_stable():
    # A naive comb() ratio would overflow floats here; the product form does not.
    v = pass_at_k(1024, 3, 512)
    assert v == pytest.approx(closed_form(1024, 3, 512))
    assert 0.0 < v < 1.0


@pytest.mark.parametrize("n,c,k", [(4, 5, 1), (4, -1, 1), (4, 2, 5), (4, 2, 0)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_majority_vote_groups_equivalent_answers():
    # 0.5 and \frac{1}{2} are one answer (3 votes) and beat "3" (2 votes).
    answers = ["3", "\\frac{1}{2}", "0.5", "3", "\\dfrac12", None, None]
    correct = [False, True, True, False, True, False, False]
    ans, ok, votes = majority_vote(answers, correct)
    assert ans == "\\frac{1}{2}" and ok and votes == 3


@pytest.mark.parametrize("first,second", [
    ("x \\in [-2,7]", "-2 \\le x \\le 7"),   # interval vs inequality: math-verify alone passes one way only
    ("10 weeks", "10"),                         # a unit word vs a bare number
    ("8:34 PM", "20:34"),                       # clock times
    ("1 1/2", "\\frac{3}{2}"),                  # a mixed number
])
def test_majority_vote_groups_the_same_whichever_answer_comes_first(first, second):
    for answers in ([first, second, "3"], [second, first, "3"]):
        _, ok, votes = majority_vote(answers, [True, True, False])
        assert (votes, ok) == (2, True), answers


def test_majority_vote_tie_goes_to_first_seen_and_no_votes_is_wrong():
    ans, ok, votes = majority_vote(["7", "8", "8", "7"], [False, True, True, False])
    assert ans == "7" and not ok and votes == 2
    assert majority_vote([None, None], [False, False]) == (None, False, 0)


def test_cons_at_k_uses_first_k_samples():
    # Samples 0-2 vote "1" (wrong), samples 3-7 vote "2" (right).
    samples = [Sample(correct=i >= 3, extracted="2" if i >= 3 else "1", sample_index=i) for i in range(8)]
    assert cons_at_k([samples], 3) == 0.0
    assert cons_at_k([samples], 8) == 100.0
    # Order on disk does not matter: sample_index decides "first k".
    assert cons_at_k([list(reversed(samples))], 3) == 0.0


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    scores = [1.0] * 30 + [0.0] * 70
    a = bootstrap_ci(scores, resamples=2000, seed=1)
    b = bootstrap_ci(scores, resamples=2000, seed=1)
    assert a == b
    assert a[0] < 30.0 < a[1]
    # Binomial standard error ~4.6 points: a 95% interval is about +-9.
    assert 20.0 < a[0] < 26.0 and 34.0 < a[1] < 40.0
    assert bootstrap_ci([1.0] * 10) == (100.0, 100.0)


def test_benchmark_metrics_rates_and_k_limits():
    def s(i, correct, status, trunc=False, tokens=100, extracted="1"):
        return Sample(correct=correct, extracted=extracted if status in ("correct", "wrong") else None,
                      status=status, truncated=trunc, completion_tokens=tokens, sample_index=i)

    by_problem = {
        "a": [s(0, True, "correct"), s(1, True, "correct"), s(2, False, "wrong", extracted="2"),
              s(3, False, "unclosed_think", trunc=True, tokens=500)],
        "b": [s(0, False, "no_answer"), s(1, False, "wrong", extracted="9"), s(2, False, "wrong", extracted="9"),
              s(3, False, "timeout", extracted="9^{9^9}")],
    }
    m = benchmark_metrics(by_problem, pass_k=[1, 2, 4, 8], bootstrap_resamples=200, seed=0,
                          same=lambda a, b: False)
    assert m["problems"] == 2 and m["samples"] == 8 and (m["n_min"], m["n_max"]) == (4, 4)
    assert m["pass@1"] == pytest.approx(100 * (0.5 + 0.0) / 2)
    assert set(m["pass@k"]) == {"1", "2", "4"}  # 8 > n is not reported
    assert m["pass@k"]["2"] == pytest.approx(100 * (closed_form(4, 2, 2) + 0) / 2)
    assert m["pass@k"]["4"] == pytest.approx(50.0)
    assert m["cons@k"]["4"] == pytest.approx(50.0)  # a: "1" twice wins; b: "9" wins but is wrong
    assert m["truncation_rate"] == pytest.approx(100 / 8)
    assert m["no_answer_rate"] == pytest.approx(100 * 2 / 8)  # no_answer + unclosed_think
    assert m["grading_timeouts"] == 1
    assert m["mean_response_tokens"] == pytest.approx((100 * 7 + 500) / 8)
    lo, hi = m["ci95"]
    assert lo <= m["pass@1"] <= hi
