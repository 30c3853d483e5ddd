"""Rule ``code_block``: code in a math or science trace (code tasks keep theirs).

R1's cleaning dropped chains of thought with code blocks: for math the student should reason in
prose and LaTeX, not emit programs it cannot run. Detected:

* a fenced block (``` or ~~~ at a line start), or
* an indented block: >= ``min_indented_lines`` (3) consecutive lines indented by 4+ spaces or a
  tab, at least one of which looks like code (``def``/``return``/``import``/``print(``/``for .. in``/
  ``while``/``=``-assignment/``;`` line end). Indented prose or LaTeX alignment is not code.

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
_CODEISH = re.compile(r"^\s*(?:def |class |return\b|import |from \w+ import|print\(|for \w+ in |while |if .*:\s*$|"
                      r"[A-Za-z_]\w*(?:\[[^\]]*\])?\s*(?:[+\-*/]?=)\s*[^=]|.*;\s*$)")


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
            for m in self._indented_block.finditer(text):
                if any(_CODEISH.match(line) for line in m.group().splitlines()):
                    return f"indented code block ({m.group().count(chr(10)) or 1} lines)"
        return None
