"""An LLM judge for answers no rule can check (free-form science, proofs, open questions).

A judge model behind any OpenAI-compatible endpoint (``vllm serve``, SGLang, a hosted API) is asked
whether a response's final answer matches the reference. Used by the filter (:mod:`filters.judge`)
and by the eval stage (benchmarks with ``grader: judge``). Off by default everywhere.

Rules:

* Transport is the generate stage's :class:`~pipeline.generate.backends.openai.OpenAIBackend`: its
  thread pool (``concurrency`` requests in flight), its retries (429/5xx/timeouts, exponential
  backoff) and its key handling (the key is read from the env var named by ``api_key_env`` and
  sent only as a header; it is never written to a record, cache, log or config).
* The prompt is a template (``prompts/judge.txt`` by default) with ``{problem}``, ``{reference}``
  and ``{response}``, filled in one pass (a response that contains ``{reference}`` stays literal).
  Only the final answer (text after ``</think>``) is sent, cut to ``max_response_chars``.
* The verdict is parsed strictly: after any ``<think>`` block of a reasoning judge, exactly one
  ``RATIONALE:`` line and exactly one ``VERDICT: CORRECT|INCORRECT`` line, the verdict last.
  Anything else is *malformed*: re-asked up to ``malformed_retries`` times (at temperature >= 0.7
  and another seed, so a greedy judge does not repeat itself), then kept as status ``malformed``,
  which is never a pass. A request that fails for good (retries exhausted) raises
  :class:`JudgeError`: a dead endpoint must stop the run, not reject every record.
* Verdicts are cached in ``<cache_dir>/verdicts.jsonl`` (crash-safe, append-only) keyed by
  sha256 of (problem, response, reference, judge model, template hash): a rerun, or a resumed run
  after a kill, asks the server only for what it has not decided yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from pipeline.config import Section
from pipeline.errors import UserError

__all__ = ["JudgeSettings", "JudgeItem", "JudgeVerdict", "JudgeError", "Judge", "parse_verdict", "render_judge_prompt",
           "final_answer", "STATUSES"]

log = logging.getLogger(__name__)
STATUSES = ("correct", "wrong", "malformed")
_FIELDS_RE = re.compile(r"\{(problem|reference|response)\}")
_THINK_RE = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
_LINE_RE = re.compile(r"^\s*\**\s*(RATIONALE|VERDICT)\s*\**\s*:\s*\**\s*(.*?)\s*\**\s*$", re.IGNORECASE)


class JudgeSettings(Section):
    """The judge model and how to reach it (an OpenAI-compatible endpoint)."""

    enabled: bool = Field(False, description="ask the judge (off by default)")
    model: str = Field("judge", description="model name the endpoint serves")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="API base URL (…/v1)")
    api_key_env: str = Field("OPENAI_API_KEY", description="env var holding the API key (the key is never written)")
    template: str = Field("judge", description="prompt template with {problem}, {reference}, {response}")
    concurrency: int = Field(16, ge=1, description="requests in flight at once")
    max_retries: int = Field(6, ge=0, description="retries per request on 429/5xx/timeouts/connection errors")
    retry_backoff_s: float = Field(1.0, ge=0.0, description="first backoff; doubles per retry (with jitter)")
    timeout_s: float = Field(300.0, gt=0.0, description="per-request timeout")
    malformed_retries: int = Field(2, ge=0, description="re-asks after a malformed verdict; then status malformed")
    temperature: float = Field(0.0, ge=0.0, description="sampling temperature of the first ask")
    max_tokens: int = Field(1024, ge=16, description="most tokens of a verdict (more for reasoning judges)")
    max_response_chars: int = Field(4000, ge=100, description="the final answer sent is cut to this many characters")
    send_seed: bool = Field(True, description="send a per-request seed (some hosted APIs reject it)")
    extra_body: dict = Field(default_factory=dict, description="extra JSON fields for every request")
    cache_dir: str | None = Field(None, description="verdict cache folder (default: <output>/judge_cache)")


class JudgeError(UserError):
    """The judge endpoint failed for good, or its template is unusable."""


@dataclass(frozen=True)
class JudgeItem:
    problem: str
    response: str  # the final answer (text after </think>)
    reference: str


@dataclass(frozen=True)
class JudgeVerdict:
    status: str  # correct | wrong | malformed
    rationale: str | None
    cached: bool = False
    attempts: int = 0

    @property
    def correct(self) -> bool:
        return self.status == "correct"

    def meta(self, model: str) -> dict[str, Any]:
        return {"verdict": self.status, "rationale": self.rationale, "model": model}


def final_answer(response: str) -> str:
    """The text after the last ``</think>`` (the whole response when there is none)."""
    return response.rsplit("</think>", 1)[1].strip() if "</think>" in response else response.strip()


def render_judge_prompt(template: str, item: JudgeItem, max_response_chars: int = 4000) -> str:
    values = {"problem": item.problem.strip(), "reference": item.reference.strip(),
              "response": item.response[:max_response_chars].strip()}
    return _FIELDS_RE.sub(lambda m: values[m.group(1)], template)


def parse_verdict(text: str) -> tuple[bool, str] | None:
    """``(correct, rationale)`` from a judge's reply, or None when it is malformed (see the module rules)."""
    body = _THINK_RE.sub("", text or "", count=1).strip()
    lines = [ln for ln in body.splitlines() if ln.strip()]
    found = [(m.group(1).upper(), m.group(2)) for m in (_LINE_RE.match(ln) for ln in lines) if m]
    if len(found) != 2 or len(lines) != 2 or [k for k, _ in found] != ["RATIONALE", "VERDICT"]:
        return None
    rationale, verdict = found[0][1].strip(" *"), found[1][1].strip(" *").upper()
    if not rationale or verdict not in ("CORRECT", "INCORRECT"):
        return None
    return verdict == "CORRECT", rationale[:500]


def load_judge_template(name: str) -> str:
    from prompts import TemplateError, load_template

    try:
        text = load_template(name)
    except TemplateError as exc:
        raise JudgeError(f"judge.template: {exc}") from None
    missing = [f for f in ("{reference}", "{response}") if text.count(f) != 1]
    if missing:
        raise JudgeError(f"judge.template {name!r}: needs {', '.join(missing)} exactly once")
    return text


class VerdictCache:
    """``key -> verdict`` on disk: one JSONL line per decided verdict, written durably."""

    def __init__(self, folder: Path):
        from pipeline.records import ShardWriter, iter_records

        path = folder / "verdicts.jsonl"
        self._writer = ShardWriter(path, key=lambda r: r["key"])
        self.entries: dict[str, dict[str, Any]] = {}
        if path.exists() and path.stat().st_size:
            self.entries = {loc.record["key"]: loc.record for loc in iter_records(path)}

    def put(self, rows: list[dict[str, Any]]) -> None:
        self._writer.write(rows)
        self.entries.update((r["key"], r) for r in rows)

    def close(self) -> None:
        self._writer.close()


class Judge:
    """Ask the judge about many items at once; cached, concurrent, strict. Use as a context manager."""

    def __init__(self, settings: JudgeSettings, cache_dir: str | Path):
        from pipeline.generate.backends.openai import OpenAIBackend

        self.settings = settings
        self.template = load_judge_template(settings.template)
        self.template_hash = hashlib.sha256(self.template.encode("utf-8")).hexdigest()[:16]
        self.cache = VerdictCache(Path(settings.cache_dir or cache_dir))
        self.backend = OpenAIBackend(settings.model, settings.base_url, api_key_env=settings.api_key_env,
                                     concurrency=settings.concurrency, max_retries=settings.max_retries,
                                     retry_backoff_s=settings.retry_backoff_s, timeout_s=settings.timeout_s,
                                     send_seed=settings.send_seed, extra_body=settings.extra_body)
        self.requests = 0  # verdict requests sent by this object (cache hits send none)

    def key(self, item: JudgeItem) -> str:
        blob = json.dumps([item.problem, item.response[:self.settings.max_response_chars], item.reference,
                           self.settings.model, self.template_hash], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _sampling(self, attempt: int) -> Any:
        from pipeline.generate.config import SamplingConfig

        temp = self.settings.temperature if attempt == 0 else max(self.settings.temperature, 0.7)
        return SamplingConfig(n=1, temperature=temp, top_p=1.0, max_tokens=self.settings.max_tokens)

    def _ask(self, pending: dict[str, JudgeItem], attempt: int) -> tuple[dict[str, tuple[bool, str]], dict[str, str]]:
        """One concurrent round: ``(parsed verdicts, raw text of the malformed ones)`` by key."""
        from pipeline.generate.backends.base import PromptInput
        from pipeline.generate.backends.openai import OpenAIError

        sampling = self._sampling(attempt)
        futures = {}
        for key, item in pending.items():
            text = render_judge_prompt(self.template, item, self.settings.max_response_chars)
            prompt = PromptInput(messages=[{"role": "user", "content": text}], seed=int(key[:7], 16))
            futures[key] = self.backend.submit(prompt, attempt, sampling)
        self.requests += len(futures)
        parsed, malformed, failed = {}, {}, None
        for key, fut in futures.items():
            try:
                text = fut.result().text
            except OpenAIError as exc:
                failed = failed or exc
                continue
            got = parse_verdict(text)
            if got is None:
                malformed[key] = text
            else:
                parsed[key] = got
        self._store({k: ("correct" if ok else "wrong", why, attempt + 1) for k, (ok, why) in parsed.items()})
        if failed is not None:
            raise JudgeError(f"judge {self.settings.model}: {failed}")
        return parsed, malformed

    def _store(self, decided: dict[str, tuple[str, str | None, int]]) -> None:
        self.cache.put([{"key": k, "status": s, "rationale": why, "attempts": n, "model": self.settings.model,
                         "template": self.template_hash} for k, (s, why, n) in decided.items()])

    def judge_many(self, items: list[JudgeItem]) -> list[JudgeVerdict]:
        """A verdict per item, in order; cached ones cost no request."""
        keys = [self.key(it) for it in items]
        pending = {k: it for k, it in zip(keys, items) if k not in self.cache.entries}
        fresh = set(pending)
        malformed: dict[str, str] = {}
        for attempt in range(self.settings.malformed_retries + 1):
            if not pending:
                break
            _, malformed = self._ask(pending, attempt)
            pending = {k: pending[k] for k in malformed}
        if malformed:
            log.warning("judge: %d malformed verdict(s) after %d tries, e.g. %r", len(malformed),
                        self.settings.malformed_retries + 1, next(iter(malformed.values()))[:200])
            self._store({k: ("malformed", None, self.settings.malformed_retries + 1) for k in malformed})
        out = []
        for k in keys:
            e = self.cache.entries[k]
            out.append(JudgeVerdict(e["status"], e.get("rationale"), cached=k not in fresh, attempts=e.get("attempts", 0)))
        return out

    def close(self) -> None:
        self.backend.close()
        self.cache.close()

    def __enter__(self) -> "Judge":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
