"""The one table of filter rules, in run order. Everything else derives from it.

``RULES`` lists every rule class in the order the runner applies them, in three kinds (see
:mod:`filters.base`): per-record rules (:class:`Rule`, in the worker processes; cheap structural
checks first), then batch rules (:class:`BatchRule`, many records at once in the main process: the
LLM judge), then corpus rules (:class:`CorpusRule`, dedup), which judge a record only after it
passed every other rule. From this table come:

* the config: one ``<rule.key>:`` section per rule in :class:`filters.config.FilterConfig`;
* the runner: the per-record rules built in the workers, the batch and corpus rules in the main
  process;
* the report: the reason codes in order (``reject_reasons``, the funnel), each rule's extra
  report fields (``note_summary``, ``note_line``);
* the enable switches (``enabled_reasons``) and the demo's style rules (``style = True``).

One name per rule: its module is ``filters/<key>.py`` and its config section is ``<key>:``; the
reason code(s) it writes are declared on the class (``reason`` / ``reasons``) and listed below.

Adding a rule
-------------
1. Write ``filters/<key>.py`` with a ``<Name>Config(Section)`` (``enabled: bool = True`` plus its
   thresholds, each validated with ``Field(ge=..., le=...)``) and a ``<Name>Rule(Rule)`` declaring
   ``key, reason, Config`` and a docstring stating the rule, its threshold and why.
   Implement ``check(p)`` (and ``applies(p)`` to limit its scope, e.g. by ``p.domain``).
2. Add the class to ``RULES`` below, at the position it should run.
3. Optionally document the section in ``configs/filter/r1.yaml``, and add a rule-level test in
   ``tests/test_filter_rule_units.py`` (one rule, one parsed record, the exact reason).

No other file changes: the config section, the CLI's ``--set <key>.…``, the report and the
funnel pick the rule up from this table.
"""

from __future__ import annotations

from typing import Any

from filters.answer import AnswerRule
from filters.base import BaseRule, BatchRule, CorpusRule, Rule
from filters.code_blocks import CodeBlockRule
from filters.code_tests import CodeTestsRule
from filters.decontam import DecontamRule
from filters.dedup import DedupRule
from filters.format import FormatRule
from filters.judge import JudgeRule
from filters.language import LanguageRule
from filters.length import LengthRule
from filters.paragraphs import ParagraphRule
from filters.redundancy import RedundancyRule
from filters.truncation import TruncationRule

__all__ = ["RULES", "record_rules", "batch_rules", "corpus_rules", "reason_order", "enabled_reasons", "rule_of",
           "style_keys", "style_reasons"]

#             class              key            reason code(s)
RULES: tuple[type[BaseRule], ...] = (
    FormatRule,      # format       format
    TruncationRule,  # truncation   truncated
    LengthRule,      # length       length
    LanguageRule,    # language     mixed_language   (style)
    RedundancyRule,  # redundancy   redundancy       (style)
    ParagraphRule,   # paragraphs   long_paragraph
    CodeBlockRule,   # code_blocks  code_block       (style)
    AnswerRule,      # answer       wrong_answer
    CodeTestsRule,   # code_tests   failed_tests
    DecontamRule,    # decontam     contaminated
    JudgeRule,       # judge        judge_rejected   (batch: LLM judge, off by default)
    DedupRule,       # dedup        duplicate, near_duplicate, prompt_cap
)


_KINDS = (Rule, BatchRule, CorpusRule)  # the order the runner applies them in


def _check_table() -> None:
    keys: set[str] = set()
    reasons: set[str] = set()
    kind = 0
    for cls in RULES:
        if not cls.key or not cls.reasons or cls.Config is None:
            raise TypeError(f"{cls.__name__}: a rule declares key, reason(s) and Config")
        if cls.key in keys or reasons & set(cls.reasons):
            raise TypeError(f"{cls.__name__}: key {cls.key!r} or a reason code of {cls.reasons} is taken")
        mine = next((i for i, k in enumerate(_KINDS) if issubclass(cls, k)), None)
        if mine is None or mine < kind:
            raise TypeError(f"{cls.__name__}: the table lists per-record, then batch, then corpus rules")
        kind = mine
        keys.add(cls.key)
        reasons.update(cls.reasons)


_check_table()


def record_rules() -> list[type[Rule]]:
    return [cls for cls in RULES if issubclass(cls, Rule)]


def batch_rules() -> list[type[BatchRule]]:
    return [cls for cls in RULES if issubclass(cls, BatchRule)]


def corpus_rules() -> list[type[CorpusRule]]:
    return [cls for cls in RULES if issubclass(cls, CorpusRule)]


def reason_order() -> list[str]:
    """Every reason code, in run order (the order of ``reject_reasons`` and the funnel)."""
    return [r for cls in RULES for r in cls.reasons]


def enabled_reasons(cfg: Any) -> list[str]:
    """The reason codes the rules switched on in ``cfg`` (a FilterConfig) can write, in run order."""
    return [r for cls in RULES for r in cls.enabled_reasons(getattr(cfg, cls.key))]


def rule_of(reason: str) -> type[BaseRule] | None:
    return next((cls for cls in RULES if reason in cls.reasons), None)


def style_keys() -> list[str]:
    """Config keys of the style rules (what the demo's fault probe keeps switched on)."""
    return [cls.key for cls in RULES if cls.style]


def style_reasons() -> list[str]:
    return [r for cls in RULES if cls.style for r in cls.reasons]
