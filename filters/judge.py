"""Rule ``judge_rejected``: an LLM judge for answers no rule can check (off by default).

R1 verified answers that rules cannot check with a generative judge (DeepSeek-V3). This rule asks a
judge model behind any OpenAI-compatible endpoint (:mod:`pipeline.judge`: concurrency, retries and
key handling of the OpenAI backend, strict verdicts, an on-disk cache) whether the final answer of a
record in ``domains`` matches its reference ``answer``.

* Scope: records in ``domains`` with a reference that passed every per-record rule (a trace already
  rejected for its format is not worth a request), ``wrong_answer`` aside.
* Where the rule grader could not check the record (free-form science, proofs: ``wrong_answer``
  noted ``free_form``, or the domain is not graded at all), the judge decides: a ``wrong`` or
  ``malformed`` verdict rejects the record with reason ``judge_rejected`` (a malformed verdict is
  never a pass).
* Where the rule grader did grade it (math, multiple choice), the judge is not asked, unless
  ``calibrate`` is on: then the rule's verdict stands and the judge's is recorded beside it, and
  the report's ``agreement`` block (rule vs judge on the same records) calibrates the judge before
  it is trusted with what rules cannot check. Put ``math`` in ``domains`` and set ``calibrate``.
* The verdict and the judge's one-sentence rationale go to the record's ``meta.judge``.
* The judge is asked one input chunk at a time (``chunk_size`` records, up to ``judge.concurrency``
  requests in flight), in the main process, which is the only writer of the verdict cache.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field

from pipeline.judge import Judge, JudgeItem, JudgeSettings, final_answer

from filters.base import BatchRule, Parsed

__all__ = ["JudgeConfig", "JudgeRule"]

RULE_GRADED = "wrong_answer"
UNGRADED = ("free_form", "no_reference", None)


class JudgeConfig(JudgeSettings):
    domains: list[str] = Field(default_factory=lambda: ["science"], description="domains the judge sees")
    calibrate: bool = Field(False, description="also judge records the rule grader decided (math, multiple "
                            "choice) and report rule-vs-judge agreement; costs a request per such record")


class JudgeRule(BatchRule):
    key, reason, Config = "judge", "judge_rejected", JudgeConfig
    after = (RULE_GRADED,)

    def __init__(self, cfg: JudgeConfig, output_dir: Any):
        super().__init__(cfg, output_dir)
        self.domains = set(cfg.domains)
        self.judge = Judge(cfg, Path(output_dir) / "judge_cache")

    def applies(self, p: Parsed, notes: dict[str, str]) -> bool:
        if p.domain not in self.domains or p.reference is None:
            return False
        return self.cfg.calibrate or notes.get(RULE_GRADED) in UNGRADED

    def check_many(self, items: list[tuple[Parsed, dict[str, str]]]) -> list[tuple[str | None, dict[str, Any]]]:
        verdicts = self.judge.judge_many([JudgeItem(p.prompt, final_answer(p.response), p.reference or "")
                                          for p, _ in items])
        out = []
        for (p, notes), v in zip(items, verdicts):
            rule_status = notes.get(RULE_GRADED)
            decides = rule_status in UNGRADED
            meta = {"judge": {**v.meta(self.cfg.model), "decides": decides}}
            if decides:
                notes[self.reason] = v.status
                detail = None if v.correct else f"{v.status}: {v.rationale or 'no parsable verdict'}"[:300]
            else:
                notes[self.reason] = f"{v.status}|rule:{'correct' if rule_status == 'correct' else 'wrong'}"
                detail = None
            out.append((detail, meta))
        return out

    def close(self) -> None:
        self.judge.close()

    @classmethod
    def note_summary(cls, notes: Counter[str]) -> dict[str, Any]:
        """Verdict counts where the judge decided, and rule-vs-judge agreement where both graded."""
        if not notes:
            return {}
        decided = Counter({k: v for k, v in notes.items() if "|" not in k})
        pairs = Counter({tuple(k.split("|rule:")): v for k, v in notes.items() if "|" in k})
        out: dict[str, Any] = {"judged": sum(notes.values()), "statuses": dict(sorted(decided.items()))}
        if pairs:
            both = sum(pairs.values())
            agree = pairs[("correct", "correct")] + pairs[("wrong", "wrong")]
            out["agreement"] = {"records": both, "agree": agree, "rate": round(agree / both, 4),
                                "rule_correct_judge_wrong": pairs[("wrong", "correct")] + pairs[("malformed", "correct")],
                                "rule_wrong_judge_correct": pairs[("correct", "wrong")],
                                "judge_malformed": pairs[("malformed", "correct")] + pairs[("malformed", "wrong")]}
        return out

    @classmethod
    def note_line(cls, entry: dict[str, Any]) -> str | None:
        if "statuses" not in entry:
            return None
        line = f"LLM judge: {entry['judged']} judged; where it decided: " + (", ".join(
            f"{k} {v}" for k, v in entry["statuses"].items()) or "none") + "."
        a = entry.get("agreement")
        if a:
            line += (f" Agreement with the rule grader on {a['records']} records both graded: {100 * a['rate']:.1f}% "
                     f"({a['rule_correct_judge_wrong']} rule-correct judged wrong, {a['rule_wrong_judge_correct']} "
                     f"rule-wrong judged correct, {a['judge_malformed']} malformed).")
        return line
