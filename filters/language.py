"""Rule ``mixed_language``: Han and Latin script mixed in one trace, or a reply in the wrong language.

DeepSeek-R1 (sec. 2.3.2) found its RL traces mixing languages and dropped them from the SFT data.
What counts (after removing LaTeX/math, code, URLs and digits, which are language-neutral):

* units: one Han/kana/hangul character, or one Latin word of >= 2 letters (single letters are
  variables: "let x be", "设 x 为");
* for the reasoning and for the final answer separately, the dominant script and the minority
  share ``minority / (han + latin)``.

Rejects when, in the reasoning or the answer:

1. the minority share exceeds ``max_minority_share`` (0.10) and the minority has at least the run
   length below in units (a quoted foreign term, e.g. an English trace naming 勾股定理 or a
   Chinese trace naming "Cauchy-Schwarz", can exceed 10% of a 30-word trace, but never reaches
   8 Han characters / 5 Latin words; a half-translated trace does both), or
2. a foreign *run* appears: >= ``min_han_run`` (8) consecutive Han characters inside Latin-dominant
   text (a Chinese clause is rarely shorter; most named terms, e.g. 中国剩余定理, are 4-6), or
   >= ``min_latin_run`` (5) consecutive Latin words inside Han-dominant text (a term like
   "Cauchy-Schwarz inequality" is 2-3 words, a sentence like "Wait, let me check this" is 5), or
3. ``match_prompt`` is on and the reasoning's dominant script differs from the prompt's (R1's
   language-consistency goal), when the prompt has at least ``min_units`` units.

4. a Latin-script reasoning or answer *ends* in another script (Han/kana/hangul, Cyrillic, Greek,
   Hebrew/Arabic, Devanagari, Thai): the last unit is foreign and the foreign units among the last
   ``tail_units`` (3) hold at least ``min_tail_chars`` (3) characters ("... so the answer is 16.
   所以答案是", "... Итак, ответ"). R1's language-consistency reward scores exactly this drift,
   and a run too short for rules 1-2 lets it through. A quoted term inside the text ("the 勾股定理
   identity gives ...") is followed by Latin words, so it is not a tail.

Texts with fewer than ``min_units`` units (pure LaTeX answers like ``\\boxed{42}``) are not judged.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pipeline.config import Fraction, NonNegativeInt, PositiveInt, Section

from filters.base import Parsed, Rule

__all__ = ["LanguageConfig", "LanguageRule", "script_counts", "strip_neutral"]

_HAN_CLASS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_HAN = re.compile(f"[{_HAN_CLASS}]")
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f]{2,}")
# Language-neutral spans, removed in one pass (inline ``$..$`` never spans a blank line: "$300 ...
# $600" written as currency must not hide the paragraphs between two amounts): code fences, inline code, display/inline math,
# LaTeX environments and commands (with a braced argument for \text-like ones kept out), URLs.
_NEUTRAL = re.compile(
    r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|`[^`\n]*`"
    r"|\$\$.*?\$\$|\$[^$\n]*(?:\n(?![ \t]*\n)[^$\n]*)*\$|\\\[.*?\\\]|\\\(.*?\\\)"
    r"|\\begin\{(\w+\*?)\}.*?\\end\{\1\}"
    r"|\\[A-Za-z]+|https?://\S+",
    re.DOTALL,
)
_HAN_RUN = re.compile(f"[{_HAN_CLASS}](?:[{_HAN_CLASS}\\s\u3000-\u303f\uff00-\uffef0-9·、，。；：？！“”‘’（）《》]*[{_HAN_CLASS}])?")
_LATIN_RUN_SEP = r"[\s,.;:!?'’\"()\-]+"


class LanguageConfig(Section):
    enabled: bool = True
    max_minority_share: Fraction = 0.10
    min_han_run: PositiveInt = 8
    min_latin_run: PositiveInt = 5
    match_prompt: bool = True
    min_units: NonNegativeInt = 10
    tail_units: PositiveInt = 3
    min_tail_chars: PositiveInt = 3


_OTHER_SCRIPTS = "\u0370-\u03ff\u0400-\u04ff\u0590-\u06ff\u0900-\u097f\u0e00-\u0e7f"
_ANY_UNIT = re.compile(f"[{_HAN_CLASS}]|[{_OTHER_SCRIPTS}]{{2,}}|[A-Za-z\u00c0-\u024f]{{2,}}")


def foreign_tail(clean: str, k: int = 3, min_chars: int = 3,
                 context: Callable[[], str] | None = None) -> str | None:
    """The foreign text a Latin-script text ends in, or None (see rule 4 in the module docstring).

    ``context`` (default: ``clean`` itself) returns the text that decides whether this is a
    Latin-script text: the whole response for a short answer section. Only called on a foreign end.
    """
    if clean.isascii():
        return None
    last = _ANY_UNIT.findall(clean[-600:])[-k:]
    if not last or _LATIN_WORD.fullmatch(last[-1]):  # the common case: ends in Latin (or no units)
        return None
    foreign = "".join(u for u in last if not _LATIN_WORD.fullmatch(u))
    if len(foreign) < min_chars:
        return None
    every = _ANY_UNIT.findall(context() if context is not None else clean)
    latin = sum(1 for u in every if _LATIN_WORD.fullmatch(u))
    if latin < 2 or latin <= len(every) - latin:  # not a Latin-script text
        return None
    return foreign


def strip_neutral(text: str) -> str:
    """Text without LaTeX, math, code and URLs (the parts that carry no natural language)."""
    if "$" not in text and "\\" not in text and "`" not in text and "~~~" not in text and "http" not in text:
        return text
    return _NEUTRAL.sub(" ", text)


def script_counts(text: str) -> tuple[int, int]:
    """``(han_units, latin_units)`` of already-stripped text."""
    han = len(_HAN.findall(text)) if not text.isascii() else 0
    latin = len(_LATIN_WORD.findall(text))
    return han, latin


class LanguageRule(Rule):
    key, reason, Config, style = "language", "mixed_language", LanguageConfig, True

    def __init__(self, cfg: LanguageConfig):
        self.cfg = cfg
        k = max(1, cfg.min_latin_run)
        self._latin_run = re.compile(rf"(?:[A-Za-z\u00c0-\u024f]{{2,}}{_LATIN_RUN_SEP}){{{k - 1}}}[A-Za-z\u00c0-\u024f]{{2,}}")

    def _judge(self, text: str, part: str, context: str | None = None) -> tuple[str | None, str | None]:
        """``(dominant_script or None, rejection detail or None)`` for one part of the response."""
        clean = strip_neutral(text)
        tail = foreign_tail(clean, self.cfg.tail_units, self.cfg.min_tail_chars,
                            None if context is None else lambda: strip_neutral(context))
        if tail:
            return "latin", f"{part}: a Latin-script text that ends in another script: {tail!r}"
        han = len(_HAN.findall(clean)) if not clean.isascii() else 0
        if han == 0:  # fast path (most English traces): Latin-only, only "enough units?" matters
            latin = 0
            for _ in _LATIN_WORD.finditer(clean):
                latin += 1
                if latin >= self.cfg.min_units:
                    return "latin", None
            return None, None
        latin = len(_LATIN_WORD.findall(clean))
        total = han + latin
        if total < self.cfg.min_units:
            return None, None
        dominant = "han" if han > latin else "latin"
        share = min(han, latin) / total
        minority_floor = self.cfg.min_han_run if dominant == "latin" else self.cfg.min_latin_run
        if share > self.cfg.max_minority_share and min(han, latin) >= minority_floor:
            return dominant, f"{part}: minority script share {share:.2f} > {self.cfg.max_minority_share}"
        if dominant == "latin" and han >= self.cfg.min_han_run:
            for m in _HAN_RUN.finditer(clean):
                run = len(_HAN.findall(m.group()))
                if run >= self.cfg.min_han_run:
                    return dominant, f"{part}: a run of {run} Han characters in Latin text"
        if dominant == "han" and latin >= self.cfg.min_latin_run:
            m = self._latin_run.search(clean)
            if m:
                return dominant, f"{part}: a run of >= {self.cfg.min_latin_run} Latin words in Han text: {m.group()[:40]!r}"
        return dominant, None

    def check(self, p: Parsed) -> str | None:
        dom_r, why = self._judge(p.reasoning_text, "reasoning")
        if why:
            return why
        dom_a, why = self._judge(p.answer, "answer", context=p.body)
        if why:
            return why
        if self.cfg.match_prompt and (dom_r or dom_a):
            han, latin = script_counts(strip_neutral(p.prompt))
            if han + latin >= self.cfg.min_units:
                dom_p = "han" if han > latin else "latin"
                for part, dom in (("reasoning", dom_r), ("answer", dom_a)):
                    if dom and dom != dom_p:
                        return f"{part} is {dom}-script but the prompt is {dom_p}-script"
        return None
