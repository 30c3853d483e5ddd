"""The ``tests`` record field: the test formats the field uses, validated, turned into sandbox jobs.

A code record (``domain: code``) may carry ``tests``, one JSON object in one of these formats::

    {"format": "humaneval", "prompt": "<signature + docstring>", "test": "def check(candidate): ...",
     "entry_point": "has_close_elements"}
    {"format": "mbpp", "asserts": ["assert f(1) == 2", ...], "setup": "<optional code run first>"}
    {"format": "stdio", "cases": [{"input": "1 2\\n", "output": "3\\n"}, ...]}
    {"format": "call", "fn_name": "twoSum", "cases": [{"input": [[2, 7, 11], 9], "output": [0, 1]}, ...]}

* ``humaneval``: ``prompt + program`` when the program is a completion (it does not define
  ``entry_point``), else ``prompt`` then the program (the prompt's imports and helpers stay
  available); then ``test`` and ``check(entry_point)``, the HumanEval harness's own order.
* ``mbpp``: the program, then ``setup``, then each assert in the same namespace; each assert is
  one test (which one failed, and for ``assert A == B`` what ``A`` gave, are reported).
* ``stdio`` (APPS, CodeContests, TACO, LiveCodeBench stdin tests): the program runs afresh per case
  with ``input`` on stdin (``input()``, ``sys.stdin`` and ``open(0)`` all work); stdout must equal
  ``output`` line by line and token by token, whitespace-tolerant, numbers within 1e-6.
* ``call`` (LiveCodeBench functional tests, APPS call-based): ``fn_name`` (a top-level function,
  or a method of class ``Solution``) is called per case with ``input`` as the argument list; the
  return value must equal ``output`` (tuples as lists, floats within 1e-6). LiveCodeBench's text
  form is accepted too: ``input`` a string of newline-separated JSON arguments, ``output`` a JSON
  string.

APPS/TACO ``input_output`` objects (``{"inputs": [...], "outputs": [...], "fn_name"?}``, or that
object as a JSON string) are read as ``call`` when ``fn_name`` is given, else ``stdio``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["TestSpec", "parse_tests", "build_job", "FORMATS", "TestsError"]

FORMATS = ("humaneval", "mbpp", "stdio", "call")


class TestsError(ValueError):
    """A malformed ``tests`` value; ``field`` is the path inside it (e.g. ``tests.cases[2].output``)."""

    __test__ = False  # not a pytest class

    def __init__(self, message: str, field: str = "tests"):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class TestSpec:
    __test__ = False  # not a pytest class
    format: str
    data: dict[str, Any]

    @property
    def count(self) -> int:
        if self.format == "humaneval":
            return 1
        return len(self.data["asserts"] if self.format == "mbpp" else self.data["cases"])


def _need_str(d: dict[str, Any], key: str, path: str, allow_empty: bool = False) -> str:
    v = d.get(key)
    if not isinstance(v, str) or (not allow_empty and not v.strip()):
        raise TestsError(f"needs a {'string' if allow_empty else 'non-empty string'}", f"{path}.{key}")
    return v


def _json_value(v: Any, path: str) -> Any:
    if isinstance(v, str):
        try:
            return json.loads(v)
        except json.JSONDecodeError as exc:
            raise TestsError(f"not JSON ({exc.msg})", path) from None
    return v


def _call_args(v: Any, path: str) -> list[Any]:
    if isinstance(v, str):  # LiveCodeBench: one JSON value per line
        return [_json_value(line, path) for line in v.split("\n") if line.strip()]
    if not isinstance(v, list):
        raise TestsError("needs the argument list (or newline-separated JSON arguments)", path)
    return v


def _cases(d: dict[str, Any], call: bool) -> list[dict[str, Any]]:
    cases = d.get("cases")
    if not isinstance(cases, list) or not cases:
        raise TestsError("needs a non-empty list of {input, output}", "tests.cases")
    out = []
    for i, c in enumerate(cases):
        path = f"tests.cases[{i}]"
        if not isinstance(c, dict) or "input" not in c or "output" not in c:
            raise TestsError("needs input and output", path)
        if call:  # LiveCodeBench's text form (input a string) has a JSON output string too
            text_form = isinstance(c["input"], str)
            out.append({"input": _call_args(c["input"], f"{path}.input"),
                        "output": _json_value(c["output"], f"{path}.output") if text_form else c["output"]})
        else:
            for key in ("input", "output"):
                if not isinstance(c[key], str):
                    raise TestsError("needs a string", f"{path}.{key}")
            out.append({"input": c["input"], "output": c["output"]})
    return out


def _from_io(d: dict[str, Any]) -> dict[str, Any]:
    """APPS/TACO ``input_output`` -> a stdio or call spec."""
    ins, outs = d.get("inputs"), d.get("outputs")
    if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs):
        raise TestsError("inputs and outputs must be lists of the same length", "tests.inputs")
    if d.get("fn_name"):
        outs = [o[0] if isinstance(o, list) and len(o) == 1 else o for o in outs]  # APPS wraps returns in a list
        return {"format": "call", "fn_name": d["fn_name"],
                "cases": [{"input": i, "output": o} for i, o in zip(ins, outs)]}
    as_text = (lambda v: "\n".join(map(str, v)) if isinstance(v, list) else str(v))
    return {"format": "stdio", "cases": [{"input": as_text(i), "output": as_text(o)} for i, o in zip(ins, outs)]}


def parse_tests(value: Any) -> TestSpec:
    """A validated :class:`TestSpec`; raises :class:`TestsError` naming the bad sub-field."""
    value = _json_value(value, "tests") if isinstance(value, str) else value
    if not isinstance(value, dict):
        raise TestsError(f"expected an object, got {type(value).__name__}")
    if "format" not in value and "inputs" in value:
        value = _from_io(value)
    fmt = value.get("format")
    if fmt not in FORMATS:
        raise TestsError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})", "tests.format")
    if fmt == "humaneval":
        data = {k: _need_str(value, k, "tests") for k in ("prompt", "test", "entry_point")}
    elif fmt == "mbpp":
        asserts = value.get("asserts")
        if not isinstance(asserts, list) or not asserts or not all(isinstance(a, str) and a.strip() for a in asserts):
            raise TestsError("needs a non-empty list of assert statements", "tests.asserts")
        setup = value.get("setup") or ""
        if not isinstance(setup, str):
            raise TestsError("needs a string", "tests.setup")
        data = {"asserts": list(asserts), "setup": setup}
    elif fmt == "stdio":
        data = {"cases": _cases(value, call=False)}
    else:
        data = {"fn_name": _need_str(value, "fn_name", "tests"), "cases": _cases(value, call=True)}
    return TestSpec(fmt, data)


def build_job(spec: TestSpec, program: str) -> dict[str, Any]:
    """The sandbox job that runs ``program`` against ``spec``."""
    d = spec.data
    if spec.format == "humaneval":
        defines = re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(d['entry_point'])}\s*\(", program, re.MULTILINE)
        code = d["prompt"] + "\n\n" + program if defines else d["prompt"] + program
        return {"kind": "asserts", "code": code, "setup": d["test"], "asserts": [f"check({d['entry_point']})"]}
    if spec.format == "mbpp":
        return {"kind": "asserts", "code": program, "setup": d["setup"], "asserts": d["asserts"]}
    if spec.format == "stdio":
        return {"kind": "stdio", "code": program, "cases": d["cases"]}
    return {"kind": "call", "code": program, "fn_name": d["fn_name"], "cases": d["cases"]}
