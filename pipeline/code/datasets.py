"""Rows of the public code sets -> (prompt text, tests field): one place for eval sets and prompt sets.

* ``humaneval``: "Complete the following Python function:" and the task's prompt (signature +
  docstring) in a fenced block; tests ``{"format": "humaneval", prompt, test, entry_point}``. A
  response may give the whole function or only its body (:func:`pipeline.code.tests.build_job`).
* ``mbpp``: the task text, then "Your code should pass these tests:" and its asserts (the MBPP
  paper's prompt: the asserts are where the function name is given); tests ``{"format": "mbpp",
  asserts: test_list, setup: test_setup_code}``.
* ``code``: any row with a ``tests`` field (formats in :mod:`pipeline.code.tests`) and a problem column.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CODE_LAYOUTS", "REQUIRED", "code_problem", "decontam_text"]

CODE_LAYOUTS = ("humaneval", "mbpp", "code")
REQUIRED = {"humaneval": ("prompt", "test", "entry_point"), "mbpp": ("text", "test_list")}


def _humaneval(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    text = f"Complete the following Python function:\n\n```python\n{row['prompt'].rstrip()}\n```"
    return text, {"format": "humaneval", "prompt": row["prompt"], "test": row["test"], "entry_point": row["entry_point"]}


def _mbpp(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    asserts = list(row["test_list"])
    text = f"{row['text'].strip()}\nYour code should pass these tests:\n\n" + "\n".join(asserts)
    return text, {"format": "mbpp", "asserts": asserts, "setup": row.get("test_setup_code") or ""}


def code_problem(row: dict[str, Any], layout: str, problem_column: str = "problem") -> tuple[str, Any]:
    """``(prompt text, tests)`` of one row (the caller checked :data:`REQUIRED` fields)."""
    if layout == "humaneval":
        return _humaneval(row)
    if layout == "mbpp":
        return _mbpp(row)
    return str(row[problem_column]), row["tests"]


def decontam_text(row: dict[str, Any], layout: str, problem_column: str = "problem") -> str:
    """The task's own words for n-gram decontamination, without the prompt's boilerplate: a shared
    "Your code should pass these tests" next to a shared phrase would otherwise make a 13-gram
    match between unrelated tasks (seen: 97 of 464 MBPP train/validation tasks against its test split)."""
    if layout == "humaneval":
        return row["prompt"]
    if layout == "mbpp":
        return row["text"].strip() + "\n" + "\n".join(row["test_list"])
    return str(row[problem_column])
