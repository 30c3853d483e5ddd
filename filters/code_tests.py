"""Rule ``failed_tests``: code traces are kept only when their program passes the record's tests.

For records whose domain is in ``domains`` (default ``code``) and that carry tests (the ``tests``
field, or ``meta.tests`` as the generate stage writes a prompt row's extra fields; formats in
:mod:`pipeline.code.tests`), the program of the final answer (the last fenced Python block after
``</think>``, :mod:`pipeline.code.extract`) is run against all of them in the sandbox
(:mod:`pipeline.code.sandbox`, isolation and limits from ``sandbox``). Anything but ``passed`` is
rejected: a failed test, a timeout, a crash, a memory or output limit, no program at all. The
detail says which test failed and how (expected vs got, the error, the stderr tail).

Code records without tests cannot be verified: they are noted ``unverified`` in the report and
kept, unless ``require_tests`` is on (then rejected here with detail ``unverified``). A
``sandbox_error`` (the sandbox itself failed) is rejected too but counted apart in the report, so
a broken installation shows up as such instead of as bad programs.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import Field

from pipeline.code.sandbox import Sandbox, SandboxConfig
from pipeline.code.tests import TestsError, parse_tests
from pipeline.code.verify import verify
from pipeline.config import Section

from filters.base import Parsed, Rule

__all__ = ["CodeTestsConfig", "CodeTestsRule", "tests_of"]


class CodeTestsConfig(Section):
    enabled: bool = True
    domains: list[str] = ["code"]
    require_tests: bool = Field(False, description="reject code records that carry no tests (else kept, noted unverified)")
    require_think: bool = Field(True, description="the program must follow a closed </think> (R1 format)")
    sandbox: SandboxConfig = Field(default_factory=lambda: SandboxConfig(timeout_s=10.0),
                                   description="isolation and limits for each program (one at a time per filter worker)")


def tests_of(record: dict[str, Any]) -> Any:
    """The record's tests value: top-level ``tests``, else ``meta.tests``; None when absent."""
    if record.get("tests") is not None:
        return record["tests"]
    meta = record.get("meta")
    return meta.get("tests") if isinstance(meta, dict) else None


class CodeTestsRule(Rule):
    key, reason, Config = "code_tests", "failed_tests", CodeTestsConfig

    def __init__(self, cfg: CodeTestsConfig):
        super().__init__(cfg)
        self.domains = set(cfg.domains)
        self._sandbox: Sandbox | None = None  # made on the first code record of this worker

    def applies(self, p: Parsed) -> bool:
        if p.domain not in self.domains:
            return False
        if tests_of(p.record) is None:
            p.notes[self.reason] = "unverified"
            return self.cfg.require_tests
        return True

    def check(self, p: Parsed) -> str | None:
        value = tests_of(p.record)
        if value is None:
            return "unverified: the record carries no tests (code_tests.require_tests is on)"
        try:
            spec = parse_tests(value)
        except TestsError as exc:
            p.notes[self.reason] = "bad_tests"
            return f"bad tests field ({exc.field}): {exc}"[:300]
        if self._sandbox is None:
            self._sandbox = Sandbox(self.cfg.sandbox)
        out = verify(p.response, spec, self._sandbox, require_think=self.cfg.require_think)
        # the outcome, and the isolation level a program that ran ran under (the report shows both)
        ran = "extract" not in out.extra
        p.notes[self.reason] = f"{out.status},isolation:{self._sandbox.level}" if ran else out.extra["extract"]
        return None if out.ok else out.summary()[:600]

    @classmethod
    def note_summary(cls, notes: Counter[str]) -> dict[str, Any]:
        """Code records run, their outcomes, and how many carried no tests."""
        if not notes:
            return {}
        levels = {k.split(":", 1)[1]: v for k, v in notes.items() if k.startswith("isolation:")}
        outcomes = {k: v for k, v in sorted(notes.items()) if not k.startswith("isolation:")}
        return {"run": sum(levels.values()),
                "unverified": notes.get("unverified", 0), "outcomes": outcomes, "isolation": levels}

    @classmethod
    def note_line(cls, entry: dict[str, Any]) -> str | None:
        if "outcomes" not in entry:
            return None
        levels = ", ".join(f"{k} {v}" for k, v in entry.get("isolation", {}).items()) or "none run"
        return (f"Code tests: {entry['run']} programs run (isolation: {levels}), {entry['unverified']} code records "
                f"without tests (unverified); outcomes: " + ", ".join(f"{k} {v}" for k, v in entry["outcomes"].items()) + ".")
