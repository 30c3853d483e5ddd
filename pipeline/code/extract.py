"""Taking the program out of a response.

Rules, in order:

1. Only the final answer counts: the text after the last ``</think>``. A response without
   ``</think>`` has no program when ``require_think`` is set (its "answer" is reasoning cut short,
   the same rule as :mod:`pipeline.grading`); otherwise the whole response is searched.
2. The program is the *last* closed fenced block (```` ``` ```` or ``~~~``, at a line start, closed
   by the same fence) whose info string is empty or names Python (``python``, ``py``, ``python3``,
   ``Python``; anything after the first word is ignored). Blocks in other languages are skipped.
   An unclosed last fence (a truncated answer) does not count.
3. The block's text is kept as written (leading indentation included: a HumanEval completion may be
   an indented function body); only leading and trailing blank lines are dropped.

No block -> no program (status ``no_program``), which the filter and the eval count as failed.
"""

from __future__ import annotations

import re

from pipeline.chat import THINK_CLOSE

__all__ = ["extract_program", "THINK_CLOSE", "PYTHON_TAGS"]

PYTHON_TAGS = {"", "python", "py", "python3", "py3"}
_FENCE_OPEN = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([^\n`]*)$", re.MULTILINE)


def _blocks(text: str) -> list[tuple[str, str]]:
    """``(info, body)`` of every closed fenced block, in order."""
    out: list[tuple[str, str]] = []
    pos = 0
    while True:
        m = _FENCE_OPEN.search(text, pos)
        if m is None:
            return out
        fence, info = m.group(1), m.group(2).strip()
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.MULTILINE)
        c = close.search(text, m.end())
        if c is None:
            return out
        out.append((info, text[m.end() + 1:c.start()]))
        pos = c.end()


def extract_program(response: str, require_think: bool = True) -> tuple[str | None, str]:
    """``(program, "ok")`` or ``(None, reason)`` with reason ``unclosed_think`` or ``no_program``."""
    if THINK_CLOSE in response:
        answer = response.rsplit(THINK_CLOSE, 1)[1]
    elif require_think:
        return None, "unclosed_think"
    else:
        answer = response
    for info, body in reversed(_blocks(answer)):
        tag = info.split()[0].lower() if info.split() else ""
        if tag in PYTHON_TAGS:
            lines = body.split("\n")
            while lines and not lines[0].strip():
                lines.pop(0)
            while lines and not lines[-1].strip():
                lines.pop()
            if lines:
                return "\n".join(lines) + "\n", "ok"
    return None, "no_program"
