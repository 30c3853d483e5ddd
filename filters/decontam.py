"""Rule ``contaminated``: the prompt shares a word n-gram with a benchmark problem.

The standard decontamination test (GPT-3 / open-r1 style): lowercase, split on non-word characters,
and flag a prompt that shares any ``n``-word sequence with a benchmark problem. ``n`` = 13 is the
GPT-3 / open-r1 default (long enough that shared boilerplate such as "what is the value of" never
matches); 8 is stricter and catches paraphrases that keep a long exact span. A benchmark problem
shorter than ``n`` words matches when the prompt contains all of it.

``benchmarks`` lists short names (``math500``, ``aime24``, ``amc23``, ``gsm8k``: the default;
found in ``$DISTILL_DATA_DIR`` or on the Hugging Face hub, as ``distill eval`` finds them) or
JSONL/JSON/Parquet files with a ``problem`` (or ``question``) field, relative to the current folder.
A benchmark that cannot be loaded is an error, never a warning: a run asked to decontaminate that
silently skipped a set would keep contaminated records behind a clean-looking report. The report
names every set's file (or hub dataset) and its sha256 (:func:`benchmark_sources`). Each rejected record's details name the benchmark items it hit; the runner totals the
hits per benchmark item.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from pipeline.config import PositiveInt, Section

from filters.base import Parsed, Rule

__all__ = ["DecontamConfig", "DecontamRule", "BenchmarkIndex", "DEFAULT_BENCHMARKS", "benchmark_sources"]

DEFAULT_BENCHMARKS = ["math500", "aime24", "amc23", "gsm8k"]
_WORD_SPLIT = re.compile(r"[\W_]+", re.UNICODE)


class DecontamConfig(Section):
    enabled: bool = True
    n: PositiveInt = 13
    benchmarks: list[str] = list(DEFAULT_BENCHMARKS)


def words_of(text: str) -> list[str]:
    return [w for w in _WORD_SPLIT.split(text.lower()) if w]


def benchmark_sources(section: DecontamConfig) -> list[dict[str, Any]]:
    """Name, file (or hub dataset), sha256 and size of every benchmark ``section`` decontaminates
    against, for the report; raises ``BenchmarkNotFound`` when one cannot be loaded."""
    if not section.enabled:
        return []
    return [vars(BenchmarkIndex.load(entry)[0]) for entry in section.benchmarks]


class BenchmarkIndex:
    """Word n-grams of benchmark problems -> the items holding them."""

    @staticmethod
    def load(entry: str):
        from pipeline.evaluate.benchmarks import problem_texts

        return problem_texts(entry)

    def __init__(self, entries: list[str], n: int):
        self.n = n
        self.items: list[str] = []  # "math500:17" (file stem : 1-based row)
        self.grams: dict[str, list[int]] = {}
        self.short: dict[int, dict[str, list[int]]] = {}  # problems with fewer than n words, by length
        self.sources = []
        for entry in entries:
            source, problems = self.load(entry)
            self.sources.append(source)
            for name, text in problems:
                words = words_of(text)
                if not words:
                    continue
                item = len(self.items)
                self.items.append(name)
                if len(words) < n:
                    self.short.setdefault(len(words), {}).setdefault(" ".join(words), []).append(item)
                    continue
                for i in range(len(words) - n + 1):
                    bucket = self.grams.setdefault(" ".join(words[i:i + n]), [])
                    if not bucket or bucket[-1] != item:
                        bucket.append(item)

    def hits(self, text: str) -> list[str]:
        """Benchmark items sharing an n-gram with ``text`` (sorted)."""
        words = words_of(text)
        found: set[int] = set()
        n = self.n
        for i in range(len(words) - n + 1):
            bucket = self.grams.get(" ".join(words[i:i + n]))
            if bucket:
                found.update(bucket)
        for k, table in self.short.items():
            for i in range(len(words) - k + 1):
                bucket = table.get(" ".join(words[i:i + k]))
                if bucket:
                    found.update(bucket)
        return sorted(self.items[i] for i in found)


class DecontamRule(Rule):
    key, reason, Config = "decontam", "contaminated", DecontamConfig

    def __init__(self, cfg: DecontamConfig):
        self.index = BenchmarkIndex(cfg.benchmarks, cfg.n)
        self._cache: dict[str, list[str]] = {}  # samples of one prompt arrive together

    def check(self, p: Parsed) -> str | None:
        hits = self._cache.get(p.prompt)
        if hits is None:
            hits = self.index.hits(p.prompt)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[p.prompt] = hits
        if not hits:
            return None
        p.notes[self.reason] = ",".join(hits)
        return f"shares a {self.index.n}-word span with {', '.join(hits[:5])}" + (" ..." if len(hits) > 5 else "")

    @classmethod
    def note_summary(cls, notes: Counter[str]) -> dict[str, Any]:
        """Hits per benchmark file and per benchmark item (``stem:line``)."""
        per_bench: Counter[str] = Counter()
        for item, n in notes.items():
            per_bench[item.split(":")[0]] += n
        return {"benchmark_hits": dict(sorted(per_bench.items())), "items_hit": dict(sorted(notes.items()))}

    @classmethod
    def note_line(cls, entry: dict[str, Any]) -> str | None:
        if not entry.get("benchmark_hits"):
            return None
        return "Decontamination hits per benchmark: " + ", ".join(f"{k} {v}" for k, v in entry["benchmark_hits"].items()) + "."
