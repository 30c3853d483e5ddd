"""Eval metrics: pass@1 (mean over k samples), unbiased pass@k, cons@k, bootstrap intervals.

Rules (DeepSeek-R1 protocol, Chen et al. 2021 for pass@k):

* **pass@1** of a problem with ``n`` samples of which ``c`` are correct is ``c / n``; a benchmark's
  pass@1 is the mean over problems. This is the R1 paper's "pass@1 with k samples".
* **pass@k** is the unbiased estimator ``1 - C(n-c, k) / C(n, k)`` per problem (defined only for
  ``k <= n``), averaged over problems. Computed as a running product, never with huge binomials.
* **cons@k** is majority voting over the *extracted* answers of the first ``k`` samples
  (``sample_index < k``): equivalent answers are grouped (normal form first, then
  :func:`pipeline.grading.equivalent`, which is symmetric, so the groups do not depend on which
  sample came first; an answer joins the first group whose first answer it equals), samples
  without an answer do not vote, ties go to the answer seen first; the problem counts as solved when the winning group's samples were graded
  correct. A problem whose samples give no answer at all is unsolved.
* **ci95** is a seeded percentile bootstrap over problems (problems are resampled with
  replacement, each keeping its own per-problem score), so it reflects how many problems the
  benchmark has, which dominates the uncertainty on 30-problem sets like AIME.

All rates are returned as percentages (0-100), as the R1 paper reports them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Sample", "pass_at_k", "pass_at_k_mean", "majority_vote", "cons_at_k", "cons_at_ks", "bootstrap_ci",
           "benchmark_metrics"]


@dataclass(frozen=True)
class Sample:
    """One graded response: what the metrics need."""

    correct: bool
    extracted: str | None = None
    status: str = "wrong"
    truncated: bool = False
    completion_tokens: int | None = None
    sample_index: int = 0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: probability that at least one of ``k`` draws (without
    replacement) from ``n`` samples with ``c`` correct is correct."""
    if not (0 <= c <= n):
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not (1 <= k <= n):
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def pass_at_k_mean(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems given ``(n, c)`` per problem, as a percentage."""
    if not counts:
        return float("nan")
    return 100.0 * sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def majority_vote(answers: Sequence[str | None], correct: Sequence[bool],
                  same: Callable[[str, str], bool] | None = None) -> tuple[str | None, bool, int]:
    """Group equivalent answers and return ``(winning answer, winner correct, votes)``.

    ``same(a, b)`` decides equivalence of two answers with different normal forms (default:
    :func:`pipeline.grading.equivalent`). The winner's correctness is the majority of its members'
    grades (members are equivalent, so they normally agree).
    """
    from pipeline.grading import equivalent, normalize_answer

    same = same or equivalent
    # Cheap pass: identical normal forms are one group, in order of first appearance.
    by_norm: dict[str, list[int]] = {}
    for i, ans in enumerate(answers):
        if ans is None:
            continue
        by_norm.setdefault(normalize_answer(ans), []).append(i)
    # Merge groups whose representatives math-verify calls equal.
    groups: list[list[int]] = []
    for members in by_norm.values():
        rep = answers[members[0]]
        for g in groups:
            if same(answers[g[0]], rep):  # type: ignore[arg-type]
                g.extend(members)
                break
        else:
            groups.append(list(members))
    if not groups:
        return None, False, 0
    # Most votes; ties -> the group whose first member came first.
    best = max(groups, key=lambda g: (len(g), -min(g)))
    n_ok = sum(1 for i in best if correct[i])
    return answers[min(best)], n_ok * 2 > len(best), len(best)


def _problem_votes(job: tuple[list[str | None], list[bool], list[int], Callable[[str, str], bool] | None]
                   ) -> dict[int, bool]:
    """Majority-vote verdicts of one problem for several k, sharing equivalence checks across k."""
    answers, correct, ks, same = job
    if same is None:
        from pipeline.grading import equivalent as same
    memo: dict[tuple[str, str], bool] = {}

    def cached(a: str, b: str) -> bool:
        if (a, b) not in memo:
            memo[(a, b)] = memo[(b, a)] = same(a, b)
        return memo[(a, b)]

    return {k: majority_vote(answers[:k], correct[:k], cached)[1] for k in ks}


def cons_at_ks(samples_by_problem: Sequence[Sequence[Sample]], ks: Sequence[int],
               same: Callable[[str, str], bool] | None = None, map_fn: Callable = map) -> dict[int, float]:
    """cons@k (percentages) for every k in ``ks``: majority vote over each problem's first ``k`` samples.

    ``map_fn`` may be a process pool's ``map`` (then ``same`` must be picklable, e.g. a
    ``functools.partial`` of :func:`pipeline.grading.equivalent`): voting on many distinct
    non-integer answers costs a math-verify call per pair of answer groups.
    """
    if not samples_by_problem:
        return {k: float("nan") for k in ks}
    jobs = []
    for samples in samples_by_problem:
        ordered = sorted(samples, key=lambda s: s.sample_index)
        jobs.append(([s.extracted for s in ordered], [s.correct for s in ordered], list(ks), same))
    verdicts = list(map_fn(_problem_votes, jobs))
    return {k: 100.0 * sum(v[k] for v in verdicts) / len(verdicts) for k in ks}


def cons_at_k(samples_by_problem: Sequence[Sequence[Sample]], k: int,
              same: Callable[[str, str], bool] | None = None) -> float:
    """cons@k over problems (percentage): majority vote over the first ``k`` samples of each."""
    return cons_at_ks(samples_by_problem, [k], same)[k]


def bootstrap_ci(per_problem: Sequence[float], resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval (percentages) of the mean of per-problem scores in [0, 1]."""
    import numpy as np

    x = np.asarray(per_problem, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return 100.0 * float(lo), 100.0 * float(hi)


@dataclass
class _Counts:
    samples: int = 0
    truncated: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)


def benchmark_metrics(samples_by_problem: dict[str, Sequence[Sample]], pass_k: Sequence[int] = (1,),
                      cons_k: Sequence[int] | None = None, bootstrap_resamples: int = 1000, seed: int = 0,
                      same: Callable[[str, str], bool] | None = None, map_fn: Callable = map) -> dict:
    """All metrics of one benchmark from its graded samples, keyed by problem id.

    ``pass@k`` and ``cons@k`` are reported for every requested ``k`` that every problem has
    enough samples for (``k <= min n``); the largest available ``n`` is always included in
    cons@k (``cons@n``, the R1 paper's cons@64 when n=64). Problems may have different ``n``
    (e.g. a resumed run that is not finished): ``n_min``/``n_max`` show it.
    """
    problems = [list(s) for s in samples_by_problem.values() if s]
    counts = [(len(s), sum(1 for x in s if x.correct)) for s in problems]
    n_min = min((n for n, _ in counts), default=0)
    n_max = max((n for n, _ in counts), default=0)
    per_problem = [c / n for n, c in counts]
    tot = _Counts()
    for s in problems:
        for x in s:
            tot.samples += 1
            tot.truncated += x.truncated
            tot.statuses[x.status] = tot.statuses.get(x.status, 0) + 1
            if x.completion_tokens is not None:
                tot.tokens.append(x.completion_tokens)
    out: dict = {
        "problems": len(problems),
        "samples": tot.samples,
        "n_min": n_min,
        "n_max": n_max,
        "pass@1": 100.0 * sum(per_problem) / len(per_problem) if per_problem else float("nan"),
        "ci95": list(bootstrap_ci(per_problem, bootstrap_resamples, seed)),
        "std_over_problems": _std(per_problem) * 100.0,
        "pass@k": {},
        "cons@k": {},
    }
    for k in sorted(set(pass_k)):
        if 1 <= k <= n_min:
            out["pass@k"][str(k)] = pass_at_k_mean(counts, k)
    ks = sorted({k for k in (cons_k if cons_k is not None else pass_k) if 1 <= k <= n_min} | ({n_min} if n_min else set()))
    if ks:
        out["cons@k"] = {str(k): v for k, v in cons_at_ks(problems, ks, same, map_fn).items()}
    denom = max(1, tot.samples)
    st = tot.statuses
    out["statuses"] = dict(sorted(st.items()))
    out["truncation_rate"] = 100.0 * tot.truncated / denom
    # No final answer: a closed think block with no box / "answer is", or no closed think block.
    out["no_answer_rate"] = 100.0 * (st.get("no_answer", 0) + st.get("unclosed_think", 0) + st.get("no_program", 0)) / denom
    out["timeout_rate"] = 100.0 * st.get("timeout", 0) / denom  # grading or (code) program timeouts: all wrong
    out["unclosed_think_rate"] = 100.0 * st.get("unclosed_think", 0) / denom
    out["grading_timeouts"] = st.get("timeout", 0)
    out["grading_errors"] = st.get("error", 0)
    out["mean_response_tokens"] = sum(tot.tokens) / len(tot.tokens) if tot.tokens else None
    return out


def _std(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5
