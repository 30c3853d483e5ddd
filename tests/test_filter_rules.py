"""One test per reason code: a trace that trips exactly that rule, and near-misses that must pass."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filters.base import parse
from filters.config import FilterConfig
from filters.runner import BadLine, Verdict, _Worker, build_rules, process_line
from pipeline.config import load_config

EN_PROMPT = "What is the sum of the first four positive odd numbers? Please reason step by step."
ZH_PROMPT = "求前四个正奇数的和。请一步一步地推理，并把最终答案写在 \\boxed{} 中。"
EN_REASONING = (
    "We need the sum of the first four positive odd numbers, which are 1, 3, 5 and 7.\n\n"
    "Adding them in order gives $1 + 3 = 4$, then $4 + 5 = 9$, and finally $9 + 7 = 16$.\n\n"
    "Wait, let me double-check with the formula: the sum of the first $n$ odd numbers is $n^2$, "
    "and with $n = 4$ that is $4^2 = 16$. Both methods agree."
)
EN_FINAL = "The sum is $\\boxed{16}$."


def record(reasoning: str = EN_REASONING, final: str = EN_FINAL, prompt: str = EN_PROMPT, answer="16",
           domain: str | None = None, finish_reason: str = "stop", response: str | None = None, **extra) -> str:
    rec = {"prompt_id": "p1", "sample_index": 0,
           "messages": [{"role": "user", "content": prompt},
                        {"role": "assistant", "content": response if response is not None
                         else f"<think>\n{reasoning}\n</think>\n\n{final}"}],
           "answer": answer, "finish_reason": finish_reason, **extra}
    if domain:
        rec["domain"] = domain
    return json.dumps(rec, ensure_ascii=False)


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> _Worker:
    cfg = load_config(FilterConfig, "configs/filter/r1.yaml",
                      values={"decontam.enabled": False, "dedup.enabled": False})
    return _Worker(cfg.model_dump())


def reasons(worker: _Worker, line: str) -> set[str]:
    res = process_line(worker, line)
    assert isinstance(res, Verdict), res
    return set(res.failed)


def test_clean_trace_passes(worker):
    assert reasons(worker, record()) == set()


# --------------------------------------------------------------------------- format
def test_format_no_extractable_answer(worker):
    assert reasons(worker, record(final="So we are done with the computation.")) == {"format", "wrong_answer"}
    # for a domain without a checkable answer only format applies
    assert reasons(worker, record(final="", domain="science", answer=None)) == {"format"}


def test_format_two_think_blocks(worker):
    line = record(response=f"<think>\n{EN_REASONING}\n</think>\n<think>more</think>\n\n{EN_FINAL}")
    assert reasons(worker, line) == {"format"}


def test_format_near_miss_answer_is_phrase(worker):
    assert reasons(worker, record(final="Therefore the answer is 16.")) == set()


# --------------------------------------------------------------------------- truncated
def test_truncated_by_finish_reason(worker):
    assert reasons(worker, record(finish_reason="length")) == {"truncated"}


def test_truncated_unclosed_think_also_fails_format(worker):
    got = reasons(worker, record(response=f"<think>\n{EN_REASONING}", answer=None))
    assert got == {"truncated", "format"}


# --------------------------------------------------------------------------- mixed_language
def test_mixed_language_chinese_sentence_in_english_trace(worker):
    mixed = EN_REASONING.replace("Both methods agree.", "Both methods agree. 我们再仔细检查一下这个结果是否正确。")
    assert reasons(worker, record(reasoning=mixed)) == {"mixed_language"}


def test_mixed_language_near_miss_monolingual_chinese_with_latex(worker):
    zh = ("前四个正奇数是 $1, 3, 5, 7$。依次相加：$1 + 3 = 4$，$4 + 5 = 9$，$9 + 7 = 16$。\n\n"
          "再用公式验证：前 $n$ 个奇数的和等于 $n^2$，当 $n = 4$ 时为 $\\sum_{k=1}^{4} (2k-1) = 4^2 = 16$。两种方法一致。")
    assert reasons(worker, record(reasoning=zh, final="所以答案是 $\\boxed{16}$。", prompt=ZH_PROMPT)) == set()


def test_mixed_language_near_miss_quoted_term(worker):
    quoted = EN_REASONING.replace("Both methods agree.", "Both methods agree, as the 勾股定理 style identity suggests.")
    assert reasons(worker, record(reasoning=quoted)) == set()


def test_mixed_language_reply_in_other_language_than_prompt(worker):
    assert reasons(worker, record(prompt=ZH_PROMPT)) == {"mixed_language"}


# --------------------------------------------------------------------------- redundancy
def test_redundancy_repeated_paragraph(worker):
    para = "Adding them in order gives $1 + 3 = 4$, then $4 + 5 = 9$, and finally $9 + 7 = 16$."
    assert reasons(worker, record(reasoning=EN_REASONING + "\n\n" + para)) == {"redundancy"}


def test_redundancy_tail_loop(worker):
    assert reasons(worker, record(reasoning=EN_REASONING + "\n\n" + "Wait, let me check. " * 60)) == {"redundancy"}


def test_redundancy_near_miss_tabulation_and_rechecks(worker):
    table = "\n".join(f"n = {i}: {i}^2 + 1 = {i * i + 1}" for i in range(1, 80))
    rechecks = "\n\n".join(f"Wait, let me check. Term {i} is {2 * i - 1}." for i in range(1, 5))
    line = record(reasoning=f"Let me tabulate values first.\n{table}\n\n{EN_REASONING}\n\n{rechecks}")
    assert reasons(worker, line) == set()


# --------------------------------------------------------------------------- long_paragraph
def test_long_paragraph(worker):
    words = " ".join(f"w{i}" for i in range(320))
    assert reasons(worker, record(reasoning=EN_REASONING + "\n\n" + words)) == {"long_paragraph"}


def test_long_paragraph_near_miss(worker):
    words = " ".join(f"w{i}" for i in range(280))
    assert reasons(worker, record(reasoning=EN_REASONING + "\n\n" + words)) == set()


# --------------------------------------------------------------------------- code_block
def test_code_block_in_math(worker):
    code = "```python\nprint(sum([1, 3, 5, 7]))\n```"
    assert reasons(worker, record(reasoning=EN_REASONING + "\n\n" + code)) == {"code_block"}


def test_code_block_indented_in_math(worker):
    code = "    total = 0\n    for k in range(4):\n        total += 2 * k + 1"
    assert reasons(worker, record(reasoning=EN_REASONING + "\n\n" + code)) == {"code_block"}


def test_code_block_near_miss_code_task_keeps_code(worker):
    code = "```python\ndef odd_sum(n):\n    return n * n\n```"
    line = record(reasoning=EN_REASONING, final=f"Here is the function:\n{code}", domain="code", answer=None)
    assert reasons(worker, line) == set()


def test_code_block_near_miss_latex_heavy_math(worker):
    latex = ("\\begin{align*}\n    S &= \\sum_{k=1}^{4} (2k - 1) \\\\\n    &= 2 \\cdot \\frac{4 \\cdot 5}{2} - 4 \\\\\n"
             "    &= 16\n\\end{align*}\n\n$$\\int_0^1 x\\,dx = \\frac{1}{2}, \\quad \\sqrt{16} = 4$$")
    assert reasons(worker, record(reasoning=EN_REASONING + "\n\n" + latex)) == set()


# --------------------------------------------------------------------------- length
def test_length_too_short_reasoning(worker):
    assert reasons(worker, record(reasoning="Sum.")) == {"length"}


def test_length_too_long_by_record_count(worker):
    assert reasons(worker, record(num_tokens={"prompt": 20, "completion": 40000})) == {"length"}


def test_length_near_miss_short_demo_trace(worker):
    assert reasons(worker, record(reasoning="1 + 3 + 5 + 7 = 16, checked twice.")) == set()


# --------------------------------------------------------------------------- wrong_answer
def test_wrong_answer(worker):
    res = process_line(worker, record(final="The sum is $\\boxed{15}$."))
    assert set(res.failed) == {"wrong_answer"} and res.notes["wrong_answer"] == "wrong"


def test_wrong_answer_near_miss_equivalent_form(worker):
    line = record(final="The answer is $\\boxed{\\frac{1}{2}}$.", answer="0.5")
    assert reasons(worker, line) == set()


def test_wrong_answer_no_reference_passes_and_is_noted(worker):
    res = process_line(worker, record(answer=None))
    assert res.failed == {} and res.notes["wrong_answer"] == "no_reference"


# --------------------------------------------------------------------------- contaminated
def test_contaminated_against_given_benchmark(tmp_path):
    bench = tmp_path / "bench.jsonl"
    problem = ("Find the number of ordered pairs of positive integers (a, b) such that a + b = 1000 and "
               "neither a nor b has a zero digit.")
    bench.write_text(json.dumps({"problem": problem, "answer": "738"}) + "\n"
                     + json.dumps({"problem": "Unrelated question about triangles and circles.", "answer": "1"}) + "\n")
    cfg = FilterConfig(decontam={"benchmarks": [str(bench)]}, dedup={"enabled": False})
    w = _Worker(cfg.model_dump())
    hit = process_line(w, record(prompt=f"Solve this. {problem} Think carefully."))
    assert set(hit.failed) == {"contaminated"} and hit.notes["contaminated"] == "bench:1"
    # near miss: shares only a 12-word span (n = 13)
    words = problem.split()
    assert process_line(w, record(prompt=" ".join(words[:12]) + " something else entirely")).failed == {}


def test_contaminated_default_shared_benchmarks(shared_data):
    cfg = FilterConfig(dedup={"enabled": False})
    w = _Worker(cfg.model_dump())
    problem = json.loads((shared_data / "math500.jsonl").read_text().splitlines()[0])["problem"]
    res = process_line(w, record(prompt=problem))
    assert "contaminated" in res.failed and res.notes["contaminated"].startswith("math500:1")
    assert "contaminated" not in process_line(w, record()).failed


# --------------------------------------------------------------------------- robustness
def test_bad_records_are_reported_not_crashed(worker):
    assert isinstance(process_line(worker, "{not json"), BadLine)
    assert isinstance(process_line(worker, "[1, 2]"), BadLine)
    bad = process_line(worker, json.dumps({"messages": [{"role": "user"}]}))
    assert isinstance(bad, BadLine) and bad.field == "messages[0]"
    assert isinstance(process_line(worker, json.dumps({"messages": [{"role": "user", "content": "q"}]})), BadLine)


ALL_RULES = build_rules(FilterConfig(decontam={"benchmarks": []}))
pieces = st.sampled_from(["<think>", "</think>", "\\boxed{", "}", "$", "```", "\n", "\n\n", "    ", "答案", "Wait, ",
                          "the answer is ", "x = 3", "\\frac{1}{2}", "~~~", "\\[", "\\]", "。"])
texts = st.lists(st.one_of(st.text(max_size=30), pieces), max_size=40).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=texts, response=texts, domain=st.sampled_from([None, "math", "code", "science", ""]),
       answer=st.one_of(st.none(), st.text(max_size=10), st.integers()),
       finish=st.sampled_from([None, "stop", "length", 3]))
def test_no_input_string_crashes_a_rule(prompt, response, domain, answer, finish):
    rec = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
           "answer": answer, "finish_reason": finish, "num_tokens": {"completion": "x"}}
    if domain is not None:
        rec["domain"] = domain
    p = parse(rec)
    for rule in ALL_RULES:
        if rule.applies(p):
            out = rule.check(p)
            assert out is None or isinstance(out, str)


# --------------------------------------------------------------------------- issue 14: false rejects and a missed switch
def test_code_block_near_miss_equations_in_a_markdown_list(worker):
    answer = ("To solve it:\n\n1. **Halve the total**:\n    \\[\n    R = \\frac{54}{2} = 27\n    \\]\n"
              "    x = 5\n    y = 27 - 5\n    z = 22\n2. **Add**: the sum is 16.\n\n" + EN_FINAL)
    assert reasons(worker, record(final=answer)) == set()


def test_code_block_near_miss_indented_equations_with_one_letter_names(worker):
    eqs = "So we have:\n\n    a = 1\n    b = 3\n    c = a + b = 4\n    d = 16"
    assert reasons(worker, record(reasoning=EN_REASONING + "\n\n" + eqs)) == set()


def test_code_block_statement_in_a_list_item_is_still_code(worker):
    code = "1. Check by program:\n    total = 0\n    for k in range(4):\n        total += 2 * k + 1"
    assert reasons(worker, record(reasoning=EN_REASONING + "\n\n" + code)) == {"code_block"}
    plain = "Quick check:\n\n    total = 0\n    count = 4\n    result = total + count"
    assert reasons(worker, record(reasoning=EN_REASONING + "\n\n" + plain)) == {"code_block"}


def test_redundancy_near_miss_answer_restates_the_problem(worker):
    # R1's answer section: the problem on its own line, then a summary that reuses the reasoning's steps.
    reasoning = f"Okay, so I need to solve this.\n\n{EN_PROMPT}\n\n{EN_REASONING}"
    steps = EN_REASONING.split("\n\n")
    final = f"**Problem:**\n\n{EN_PROMPT}\n\n**Solution:**\n\n{steps[0]}\n\n{steps[1]}\n\n{EN_FINAL}"
    assert reasons(worker, record(reasoning=reasoning, final=final)) == set()


def test_redundancy_paragraph_pasted_back_inside_the_reasoning_is_still_caught(worker):
    para = "Adding them in order gives $1 + 3 = 4$, then $4 + 5 = 9$, and finally $9 + 7 = 16$."
    reasoning = f"Okay, so I need to solve this: {EN_PROMPT}\n\n{EN_REASONING}\n\n{para}\n\n{para}"
    assert reasons(worker, record(reasoning=reasoning)) == {"redundancy"}


@pytest.mark.parametrize("tail", ["所以答案是", "Итак, ответ", "答案は", "Значит"])
def test_mixed_language_switch_into_another_script_at_the_end(worker, tail):
    assert reasons(worker, record(reasoning=EN_REASONING + "\n\n" + tail)) == {"mixed_language"}
    assert reasons(worker, record(final=EN_FINAL + " " + tail)) == {"mixed_language"}


def test_mixed_language_near_miss_quoted_term_at_the_end_of_a_sentence_and_chinese_trace(worker):
    quoted = EN_REASONING + " This is the 勾股定理 pattern again, nothing more."
    assert reasons(worker, record(reasoning=quoted)) == set()
    zh = ("前四个正奇数是 $1, 3, 5, 7$。依次相加得到 $16$，用 AM-GM 不等式也可以检查。\n\n"
          "再用公式验证：前 $n$ 个奇数的和等于 $n^2$，当 $n = 4$ 时为 $16$。两种方法一致。")
    assert reasons(worker, record(reasoning=zh, final="所以答案是 $\\boxed{16}$。", prompt=ZH_PROMPT)) == set()


def test_mixed_language_sentence_between_two_dollar_amounts_is_caught(worker):
    # An odd number of "$" before the Chinese paragraph: read as math delimiters, "$600 ... $150" hid it.
    reasoning = ("Stock A was worth 300 * 2 = $600 after a year.\n\n我们再仔细检查一下这个结果是否正确，确认每一步都没有错误。\n\n"
                 "Stock B was worth $150, so the total is 750 dollars.\n\n" + EN_REASONING)
    assert reasons(worker, record(reasoning=reasoning)) == {"mixed_language"}
