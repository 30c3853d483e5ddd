"""Program extraction, the ``tests`` field's formats, and each format run for real in the sandbox."""

from __future__ import annotations

import pytest

from pipeline.code.extract import extract_program
from pipeline.code.sandbox import Sandbox, SandboxConfig
from pipeline.code.tests import TestsError, build_job, parse_tests
from pipeline.code.verify import verify, verify_many


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout_s=5.0)) as sb:
        yield sb


def test_extract_takes_the_last_python_block_after_think():
    resp = ("<think>\n```python\nprint('draft')\n```\n</think>\n\nFirst:\n```python\nx = 1\n```\n"
            "A shell line:\n```bash\nls\n```\nFinal:\n```py\n\n    return 2\n\n```\n")
    assert extract_program(resp) == ("    return 2\n", "ok")  # indentation kept, blank lines dropped


def test_extract_rules_for_missing_programs():
    assert extract_program("```python\nx = 1\n```") == (None, "unclosed_think")
    assert extract_program("```python\nx = 1\n```", require_think=False) == ("x = 1\n", "ok")
    assert extract_program("<think>\n```python\nx = 1\n```\n</think>\nno code here") == (None, "no_program")
    assert extract_program("<think>a</think>\n```python\nx = 1\n") == (None, "no_program")  # unclosed fence
    assert extract_program("<think>a</think>\n```cpp\nint main(){}\n```") == (None, "no_program")
    assert extract_program("<think>a</think>\n~~~~python3 title\ny = 2\n~~~~\n") == ("y = 2\n", "ok")


@pytest.mark.parametrize("value, field", [
    ({"format": "nope"}, "tests.format"),
    ({"format": "mbpp", "asserts": []}, "tests.asserts"),
    ({"format": "stdio", "cases": [{"input": "1"}]}, "tests.cases[0]"),
    ({"format": "stdio", "cases": [{"input": 1, "output": "1"}]}, "tests.cases[0].input"),
    ({"format": "humaneval", "prompt": "def f():", "test": "", "entry_point": "f"}, "tests.test"),
    ({"format": "call", "fn_name": "f", "cases": [{"input": "not json", "output": "1"}]}, "tests.cases[0].input"),
    ("[1, 2", "tests"),
    (["a"], "tests"),
])
def test_bad_tests_name_the_field(value, field):
    with pytest.raises(TestsError) as ei:
        parse_tests(value)
    assert ei.value.field == field


def test_apps_input_output_is_read_as_stdio_or_call():
    spec = parse_tests('{"inputs": ["1 2\\n"], "outputs": ["3\\n"]}')
    assert spec.format == "stdio" and spec.count == 1
    spec = parse_tests({"inputs": [[1, 2]], "outputs": [[3]], "fn_name": "add"})
    assert spec.format == "call" and spec.data["cases"] == [{"input": [1, 2], "output": 3}]


def _answer(code: str) -> str:
    return f"<think>\nworking\n</think>\n\n```python\n{code}\n```\n"


def test_stdio_program_with_every_way_of_reading_stdin(sandbox):
    tests = {"format": "stdio", "cases": [{"input": "1 2\n", "output": "3\n"}, {"input": "10 5", "output": "15"},
                                          {"input": "0.1 0.2\n", "output": "0.3000000001 \n\n"}]}
    for code in ("a, b = map(float, input().split())\nprint(f'{a + b:g}')",
                 "import sys\na, b = map(float, sys.stdin.read().split())\nprint(f'{a + b:g}')",
                 "a, b = map(float, open(0).read().split())\nprint(f'{a + b:g}')",
                 "import sys\ndef main():\n    a, b = map(float, sys.stdin.buffer.readline().split())\n"
                 "    sys.stdout.write(f'{a + b:g}\\n')\nif __name__ == '__main__':\n    main()"):
        out = verify(_answer(code), tests, sandbox)
        assert out.ok, (code, out.summary())
    out = verify(_answer("print(int(sum(map(float, input().split()))) + 1)"), tests, sandbox)
    assert (out.status, out.test, out.expected.strip(), out.got.strip()) == ("failed", 0, "3", "4")


def test_call_format_function_solution_class_and_livecodebench_text(sandbox):
    fn = {"format": "call", "fn_name": "pair", "cases": [{"input": [1, 2], "output": [1, 2]},
                                                         {"input": [0.1, 0.2], "output": [0.1, 0.2000000001]}]}
    assert verify(_answer("def pair(a, b):\n    return (a, b)"), fn, sandbox).ok
    lcb = {"format": "call", "fn_name": "twoSum",
           "cases": [{"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]"}, {"input": "[3, 3]\n6", "output": "[0, 1]"}]}
    sol = ("class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
           "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
           "                return [seen[target - x], i]\n            seen[x] = i\n")
    assert verify(_answer(sol), lcb, sandbox).ok
    out = verify(_answer("class Solution:\n    def twoSum(self, nums, target):\n        return [1, 0]"), lcb, sandbox)
    assert (out.status, out.test, out.got) == ("failed", 0, "[1, 0]")
    out = verify(_answer("def other():\n    pass"), lcb, sandbox)
    assert out.status == "failed" and "twoSum" in out.detail


def test_humaneval_completion_or_whole_function(sandbox):
    tests = {"format": "humaneval", "entry_point": "add",
             "prompt": "from typing import List\n\n\ndef add(xs: List[int]) -> int:\n    \"\"\"Sum.\"\"\"\n",
             "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n"}
    assert verify(_answer("    return sum(xs)"), tests, sandbox).ok  # a body completing the prompt
    assert verify(_answer("def add(xs: List[int]) -> int:\n    return sum(xs)"), tests, sandbox).ok  # prompt imports kept
    out = verify(_answer("def add(xs):\n    return sum(xs) if xs else 1"), tests, sandbox)
    assert out.status == "failed" and "candidate([]) == 0" in out.detail


def test_mbpp_setup_and_program_missing(sandbox):
    tests = {"format": "mbpp", "setup": "import math", "asserts": ["assert root(4) == 2", "assert root(9) == 3"]}
    assert verify(_answer("def root(x):\n    return int(math.sqrt(x))"), tests, sandbox).ok
    out = verify("<think>no end", tests, sandbox)
    assert out.status == "failed" and out.extra["extract"] == "unclosed_think"
    outs = list(verify_many([(_answer("def root(x):\n    return x"), tests), ("<think>x</think> none", tests)] * 2,
                            sandbox, workers=2))
    assert [o.status for o in outs] == ["failed"] * 4 and outs[0].test == 0 and outs[1].extra["extract"] == "no_program"


def test_build_job_for_each_format():
    spec = parse_tests({"format": "mbpp", "asserts": ["assert f() == 1"]})
    assert build_job(spec, "def f():\n    return 1\n")["kind"] == "asserts"


def test_stdio_input_larger_than_the_output_cap(tmp_path):
    with Sandbox(SandboxConfig(timeout_s=10.0, max_output_kb=64)) as sb:
        big = "1\n" * (1 << 20)  # 2 MiB of input, 64 KiB output cap
        tests = {"format": "stdio", "cases": [{"input": big, "output": str(1 << 20)}]}
        out = verify(_answer("import sys\nprint(sum(map(int, sys.stdin.read().split())))"), tests, sb)
        assert out.ok, out.summary()
