"""Reading a mix source: which files, chunked raw lines in a fixed order, and each record's facts.

A source is a ``distill filter`` output folder (its ``kept.jsonl`` is read, ``report.json`` feeds
the dataset card) or any files/folders of records. Both passes of the mix read a source through
:func:`read_chunks`, so record ordinals (the n-th non-blank line) agree between them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.records import RecordError, expand_inputs, iter_records, messages_of, parse_record_line

__all__ = ["source_files", "filter_report", "read_chunks", "Chunk", "Facts", "facts_of", "load_record", "EMPTY_THINK"]

EMPTY_THINK = "<think>\n\n</think>"


def source_files(path: str | Path) -> list[Path]:
    """A filter output folder -> its kept.jsonl; anything else -> the records it holds."""
    p = Path(path)
    if p.is_dir() and (p / "kept.jsonl").is_file():
        return [p / "kept.jsonl"]
    return expand_inputs([p])


def filter_report(path: str | Path) -> dict[str, Any] | None:
    """The source's filter ``report.json`` (folder sources only), or None."""
    p = Path(path)
    report = p / "report.json" if p.is_dir() else p.parent / "report.json"
    if not report.is_file():
        return None
    try:
        return json.loads(report.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RecordError(report, None, f"not valid JSON ({exc})") from None


@dataclass
class Chunk:
    """Consecutive raw records of one file: ``lines[i]`` is at ``path:line_numbers[i]``."""

    path: str
    line_numbers: list[int]
    lines: list[bytes]


def _jsonl_chunks(path: Path, chunk_bytes: int) -> Iterator[Chunk]:
    line = 0
    with open(path, "rb") as fh:
        while True:
            raw = fh.readlines(chunk_bytes)
            if not raw:
                return
            nums, keep = [], []
            for b in raw:
                line += 1
                if b.strip():
                    nums.append(line)
                    keep.append(b.rstrip(b"\r\n"))
            if keep:
                yield Chunk(str(path), nums, keep)


def _parsed_chunks(path: Path, chunk_bytes: int) -> Iterator[Chunk]:
    nums: list[int] = []
    lines: list[bytes] = []
    size = 0
    for loc in iter_records(path):
        b = json.dumps(loc.record, ensure_ascii=False, default=str).encode("utf-8")
        nums.append(loc.line)
        lines.append(b)
        size += len(b)
        if size >= chunk_bytes:
            yield Chunk(str(path), nums, lines)
            nums, lines, size = [], [], 0
    if lines:
        yield Chunk(str(path), nums, lines)


def read_chunks(files: list[Path], chunk_bytes: int) -> Iterator[Chunk]:
    """Every record of ``files`` as raw JSON bytes, in file then line order, in chunks of ~``chunk_bytes``."""
    for f in files:
        yield from (_jsonl_chunks(f, chunk_bytes) if f.suffix == ".jsonl" else _parsed_chunks(f, chunk_bytes))


@dataclass
class Facts:
    """What the mix needs to know about one record, derived the same way in every pass."""

    rid: str  # the record's id (or a content hash when it has none)
    prompt: str
    response: str
    domain: str
    kind: str  # reasoning | non_reasoning
    teacher: str
    completion_tokens: int


def _kind(record: dict[str, Any], response: str) -> str:
    kind = record.get("kind")
    if kind in ("reasoning", "non_reasoning"):
        return kind
    return "non_reasoning" if response.lstrip().startswith(EMPTY_THINK) else "reasoning"


def _teacher(record: dict[str, Any]) -> str:
    t = record.get("teacher")
    if isinstance(t, dict):
        t = t.get("model")
    return str(t) if t else "unknown"


def load_record(raw: bytes, path: str, line: int) -> dict[str, Any]:
    """Parse and validate one raw record; a :class:`RecordError` names file, line and field."""
    rec = parse_record_line(raw, path, line)
    msgs = messages_of(rec, (path, line))
    if not any(m["role"] == "assistant" for m in msgs):
        raise RecordError(path, line, "no assistant turn", field="messages")
    return rec


def facts_of(rec: dict[str, Any], raw: bytes) -> Facts:
    """The facts of a validated record (``raw``: its JSON bytes, hashed when it has no id)."""
    from filters.base import estimate_tokens, parse

    p = parse(rec)
    rid = rec.get("id")
    rid = str(rid) if rid is not None else hashlib.blake2b(raw, digest_size=8).hexdigest()
    tokens = p.completion_tokens if p.completion_tokens is not None else estimate_tokens(p.response)
    return Facts(rid=rid, prompt=p.prompt, response=p.response, domain=p.domain, kind=_kind(rec, p.response),
                 teacher=_teacher(rec), completion_tokens=int(tokens))
