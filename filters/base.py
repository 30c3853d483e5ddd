"""The parsed record shared by every rule, and the rule interface.

One pass per record: :func:`parse` splits the assistant response into reasoning and final answer
once, and every rule reads the same :class:`Parsed` object (datatrove style: one rule per class,
one reason code per rule, counters kept by the runner, never by the rule).

Every rule class carries what the rest of the stage derives from it (see :mod:`filters.registry`
for the one table of rules, in run order):

* ``key``: its config section and its module (``filters/<key>.py``, ``<key>:`` in the YAML);
* ``Config``: the config section class (a :class:`~pipeline.config.Section` with ``enabled``);
* ``reason`` (a per-record rule) or ``reasons`` (a corpus rule): the reason code(s) written into
  ``reject_reasons`` and the report;
* ``style``: a style rule (judged on model outputs by the demo's fault probe).

A per-record :class:`Rule` answers two questions:

* ``applies(p)``: is the record in scope (e.g. the code-block rule skips ``domain: code``)? Records
  out of scope are not counted as *checked*.
* ``check(p)``: ``None`` when the record passes, else a short human-readable detail (the measured
  value and the threshold) that lands in ``reject_details`` next to the reason code.

A rule may also record a note in ``p.notes[rule.reason]`` (e.g. the grader's status; a
comma-separated list counts each item), which the runner tallies; the rule's ``note_summary`` and
``note_line`` turn the tally into report.json fields and a report.md line.

A :class:`CorpusRule` judges a record against the records kept before it (dedup): the workers
compute a ``signature`` per record, the main process holds the rule's state (saved with the run's
checkpoint) and calls ``check`` then ``admit`` on records that passed every per-record rule.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.chat import THINK_CLOSE, THINK_OPEN, split_think
from pipeline.config import Section
from pipeline.records import assistant_text, user_text

__all__ = ["Parsed", "BaseRule", "Rule", "CorpusRule", "BatchRule", "parse", "estimate_tokens", "DEFAULT_DOMAIN"]

DEFAULT_DOMAIN = "math"  # a record without ``domain`` is a math record (the contract)


@dataclass
class Parsed:
    """A record split once: prompt, response, reasoning (None when no closed think block), answer."""

    record: dict[str, Any]
    prompt: str
    response: str
    domain: str
    reasoning: str | None  # text inside the first <think>...</think>; None when not closed
    answer: str  # text after the first </think> ('' when not closed)
    n_open: int
    n_close: int
    opens_first: bool  # the response (ignoring leading whitespace) starts with <think>
    finish_reason: str | None
    reference: str | None
    completion_tokens: int | None  # the record's own num_tokens.completion when present
    kind: str = "reasoning"  # the record's `kind`: reasoning, or non_reasoning (an empty think block by design)
    notes: dict[str, str] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict)

    @property
    def body(self) -> str:
        """Reasoning + answer (the whole response without think tags)."""
        if "body" not in self._cache:
            if self.reasoning is None:
                self._cache["body"] = self.response.replace(THINK_OPEN, "", 1)
            else:
                self._cache["body"] = self.reasoning + "\n\n" + self.answer
        return self._cache["body"]

    @property
    def reasoning_text(self) -> str:
        """The reasoning, or for an unclosed block everything after <think> (for content rules)."""
        if self.reasoning is not None:
            return self.reasoning
        i = self.response.find(THINK_OPEN)
        return self.response[i + len(THINK_OPEN):] if i >= 0 else self.response


def parse(record: dict[str, Any]) -> Parsed:
    """Split a chat record once. Never raises on odd content (validation is the runner's job)."""
    prompt, response = (t if isinstance(t, str) else "" for t in (user_text(record), assistant_text(record)))
    n_open = response.count(THINK_OPEN)
    n_close = response.count(THINK_CLOSE)
    reasoning, answer = split_think(response)
    domain = record.get("domain")
    domain = domain.strip().lower() if isinstance(domain, str) and domain.strip() else DEFAULT_DOMAIN
    ref = record.get("answer")
    reference = None if ref is None or isinstance(ref, (dict, list)) or str(ref).strip() == "" else str(ref)
    nt = record.get("num_tokens")
    comp = nt.get("completion") if isinstance(nt, dict) else None
    fr = record.get("finish_reason")
    kind = "non_reasoning" if record.get("kind") == "non_reasoning" else "reasoning"
    return Parsed(record=record, prompt=prompt, response=response, domain=domain, reasoning=reasoning,
                  answer=answer, n_open=n_open, n_close=n_close, opens_first=response.lstrip().startswith(THINK_OPEN),
                  finish_reason=fr if isinstance(fr, str) else None, reference=reference,
                  completion_tokens=comp if isinstance(comp, int) and not isinstance(comp, bool) and comp >= 0 else None,
                  kind=kind)


_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def estimate_tokens(text: str) -> int:
    """A fast BPE token-count estimate: ~4 ASCII chars per token, ~1 token per CJK/other char.

    Measured against Qwen2-style tokenizers this is within ~15% on English math and Chinese text;
    use ``length.tokenizer`` when exact counts matter.
    """
    n = len(text)
    if text.isascii():
        return (n + 3) // 4
    non_ascii = len(_NON_ASCII.findall(text))
    return (n - non_ascii + 3) // 4 + non_ascii


class BaseRule:
    """What every rule declares: its config section, reason codes and role (see the module docstring)."""

    key: ClassVar[str] = ""
    Config: ClassVar[type[Section]] = Section
    reasons: ClassVar[tuple[str, ...]] = ()
    style: ClassVar[bool] = False

    @classmethod
    def enabled_reasons(cls, section: Any) -> tuple[str, ...]:
        """The reason codes this rule can write under ``section`` (none when it is off)."""
        return cls.reasons if section.enabled else ()

    @classmethod
    def note_summary(cls, notes: Counter[str]) -> dict[str, Any]:
        """Extra report.json fields for this rule from its tallied notes (none by default)."""
        return {}

    @classmethod
    def note_line(cls, entry: dict[str, Any]) -> str | None:
        """An extra report.md sentence from this rule's report.json entry (none by default)."""
        return None


class Rule(BaseRule):
    """A per-record rule: one reason code, a scope test and a check. Stateless after construction."""

    reason: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.reasons = (cls.reason,)

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def applies(self, p: Parsed) -> bool:
        return True

    def check(self, p: Parsed) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError


class CorpusRule(BaseRule):
    """A rule over the kept corpus so far; its state lives in the main process and in checkpoints."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.active = self.enabled_reasons(cfg)

    @classmethod
    def signature(cls, p: Parsed, cfg: Any) -> Any:  # pragma: no cover - interface
        """What ``check`` needs of one record, computed in a worker process (picklable)."""
        raise NotImplementedError

    def check(self, sig: Any) -> dict[str, str]:  # pragma: no cover - interface
        """``{reason: detail}`` for each of its reasons the record fails (empty: it passes)."""
        raise NotImplementedError

    def admit(self, sig: Any, kept_index: int) -> None:  # pragma: no cover - interface
        """Record a kept record (one that passed every rule) in the rule's state."""
        raise NotImplementedError


class BatchRule(BaseRule):
    """A rule that checks many records at once in the main process (an LLM judge: many requests in
    flight). It sees the records that passed every per-record rule except those in ``after``, before
    the corpus rules. Built per run (it may hold connections), never pickled into checkpoints."""

    reason: ClassVar[str] = ""
    #: reason codes a record may already have failed and still be checked (e.g. for calibration)
    after: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.reasons = (cls.reason,)

    def __init__(self, cfg: Any, output_dir: Any):
        self.cfg = cfg

    def applies(self, p: Parsed, notes: dict[str, str]) -> bool:
        return True

    def check_many(self, items: list[tuple[Parsed, dict[str, str]]]) -> list[tuple[str | None, dict[str, Any]]]:
        """Per ``(parsed, notes so far)``: ``(reject detail or None, additions to the record's meta)``."""
        raise NotImplementedError  # pragma: no cover - interface

    def close(self) -> None:
        pass

