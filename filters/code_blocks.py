"""Rule ``code_block``: code in a math or science trace (code tasks keep theirs).

R1's cleaning dropped chains of thought with code blocks: for math the student should reason in
prose and LaTeX, not emit programs it cannot run. Detected:

* a fenced block (``` or ~~~ at a line start), or
* an indented block: >= ``min_indented_lines`` (3) consecutive lines indented by 4+ spaces or a
  tab that holds program text. Markdown and LaTeX put math on indented lines too (a numbered step
  with its ``\\[ ... \\]`` display, ``R = \\frac{54}{2} = 27`` under a list item), so:

  - lines inside display math (``\\[..\\]``, ``$$..$$``, ``\\begin{..}..\\end{..}``) and lines with
    LaTeX (a ``\\command``, ``$``, ``^``, ``_{``) are math, never code;
  - a *statement* line (``def``/``class``/``return``/``import``/``print(``/``for .. in``/``while``/
    ``if ..:``/a ``;`` line end, or ``+=``-style updates) makes the block code anywhere;
  - assignments make it code only outside a Markdown list (the block does not follow a ``1.``/
    ``-``/``*`` item), when at least two lines are code-like assignments: a multi-character name
    (``total = 0``) or code tokens (``**``, ``//``, ``range(``, brackets, quotes) on the right. A
    one-letter name (``x = 5``) or a chain (``A = 5 * 3 = 15``) is an equation, and under a list
    item every assignment is the item's equation.

Only records whose domain is in ``domains`` (default math, science) are checked.
"""

from __future__ import annotations

import re

from pipeline.config import PositiveInt, Section

from filters.base import Parsed, Rule


class CodeBlockConfig(Section):
    enabled: bool = True
    domains: list[str] = ["math", "science"]
    min_indented_lines: PositiveInt = 3


_FENCE = re.compile(r"^[ \t]*(?:```|~~~)", re.MULTILINE)
_STATEMENT = re.compile(r"^\s*(?:def |class |return\b|import |from \w+ import|print\(|for \w+ in |while |if .*:\s*$|elif |else:"
                        r"|[A-Za-z_]\w*(?:\[[^\]]*\])?\s*(?:[+\-*/]=)|.*;\s*$)")
# A code-like assignment: a multi-character name (``total = 0``, ``n_apples = 3``) or code tokens on
# the right; a chain ``A = 5 * 3 = 15`` and a one-letter name ``x = 5`` are equations.
_ASSIGNMENT = re.compile(r"^\s*(?:[A-Za-z_]\w*[A-Za-z_0-9]\w*(?:\[[^\]]*\])?\s*=\s*[^=\n]*"
                         r"|[A-Za-z_]\s*=\s*.*(?:\*\*|//|range\(|len\(|\[|['\"]|\bTrue\b|\bFalse\b|\bNone\b).*)$")
_LATEX = re.compile(r"\\[A-Za-z\[\]()]|\$|\^|_\{")
# Display math, never across a blank line (an unclosed ``\begin{align*}`` must not swallow what follows).
_IN_PARAGRAPH = r"(?:(?!\n[ \t]*\n).)*?"
_DISPLAY = re.compile(rf"\\\[{_IN_PARAGRAPH}\\\]|\$\${_IN_PARAGRAPH}\$\$|\\begin\{{(\w+\*?)\}}{_IN_PARAGRAPH}\\end\{{\1\}}",
                      re.DOTALL)
_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*+])\s")


def _blank_display_math(text: str) -> str:
    """``text`` with display-math blocks replaced by as many blank lines (line numbers kept)."""
    return _DISPLAY.sub(lambda m: "\n" * m.group().count("\n"), text) if ("\\[" in text or "$$" in text
                                                                            or "\\begin" in text) else text


def _follows_list_item(text: str, start: int) -> bool:
    """Whether the last non-blank, non-indented line before ``start`` is a Markdown list item."""
    for line in reversed(text[:start].split("\n")):
        if line.strip() and not line.startswith(("    ", "\t")):
            return bool(_LIST_ITEM.match(line))
    return False


def is_code_block(block: str, in_list: bool) -> bool:
    """The rule for one indented block (see the module docstring)."""
    lines = [ln for ln in block.splitlines() if ln.strip() and not _LATEX.search(ln)]
    lines = [_LIST_ITEM.sub("", ln, count=1) if _LIST_ITEM.match(ln) else ln for ln in lines]
    if any(_STATEMENT.match(ln) for ln in lines):
        return True
    return not in_list and sum(1 for ln in lines if ln.count("=") == 1 and _ASSIGNMENT.match(ln)) >= 2


class CodeBlockRule(Rule):
    key, reason, Config, style = "code_blocks", "code_block", CodeBlockConfig, True

    def __init__(self, cfg: CodeBlockConfig):
        self.domains = set(cfg.domains)
        self._indented_block = re.compile(rf"(?:^(?:    |\t)[^\n]*\S[^\n]*\n?){{{max(1, cfg.min_indented_lines)},}}",
                                          re.MULTILINE)

    def applies(self, p: Parsed) -> bool:
        return p.domain in self.domains

    def check(self, p: Parsed) -> str | None:
        text = p.body
        if "```" in text or "~~~" in text:
            if _FENCE.search(text):
                return "fenced code block"
        if "    " in text or "\t" in text:
            text = _blank_display_math(text)
            for m in self._indented_block.finditer(text):
                if is_code_block(m.group(), _follows_list_item(text, m.start())):
                    return f"indented code block ({m.group().count(chr(10)) or 1} lines)"
        return None
