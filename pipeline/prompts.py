"""Prompt sources: local JSONL / JSON / Parquet / CSV files (or folders of them), or a Hugging Face dataset.

Rules:

* Columns are mapped by config: ``problem_column`` (required, a non-empty string),
  ``answer_column`` (optional; the reference answer, always stored as a string or ``None``),
  ``id_column`` (optional; else the id is a content hash), ``domain_column`` (optional; else
  ``default_domain``). The row's other fields go to ``meta`` (always a dict).
* Every prompt gets a stable id: the given id (as a string), or ``sha256(domain + problem)``
  truncated to 16 hex digits, so the same prompt gets the same id on every machine and every run.
* Duplicates (the same problem text in the same domain) are reported; with ``drop_duplicates``
  the first occurrence is kept. Two different problems under one given id are an error.
* Bad input raises :class:`~pipeline.records.RecordError` naming file, line and field, before any
  output is written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from pipeline.config import Section
from pipeline.records import Located, RecordError, expand_inputs, iter_records

__all__ = ["PromptSourceConfig", "Prompt", "PromptSet", "load_prompts", "load_prompt_set", "content_id",
           "shard_of"]

log = logging.getLogger(__name__)
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


class PromptSourceConfig(Section):
    """Where the prompts come from and which columns hold what."""

    path: str | None = Field(None, description="local file or folder (.jsonl, .json, .parquet, .csv)")
    dataset: str | None = Field(None, description="Hugging Face dataset name (used when `path` is not set; needs hub access)")
    dataset_config: str | None = Field(None, description="Hugging Face dataset config (subset) name")
    split: str = Field("train", description="dataset split (Hugging Face datasets only)")
    problem_column: str = Field("problem", description="column holding the problem text")
    answer_column: str | None = Field("answer", description="column holding the reference answer (null: none)")
    id_column: str | None = Field(None, description="column holding a stable prompt id (null: content hash)")
    domain_column: str | None = Field(None, description="column holding the domain (null: default_domain)")
    default_domain: str = Field("math", description="domain of prompts without a domain column/value")
    require_answer: bool = Field(False, description="error when a prompt has no reference answer")
    drop_duplicates: bool = Field(True, description="keep only the first of prompts with the same problem text")
    limit: int | None = Field(None, ge=1, description="use only the first N prompts (after de-duplication)")
    layout: Literal["columns", "mbpp", "humaneval", "code"] = Field(
        "columns", description="columns: the mapped columns; mbpp / humaneval: those sets' own fields made into a "
        "code prompt plus a `tests` field (pipeline/code/datasets.py); code: problem_column plus a `tests` field, "
        "validated. Code layouts default to domain `code`")
    splits: list[str] | None = Field(None, description="keep only rows whose `split` field is one of these "
                                     "(e.g. [train, validation] of mbpp.jsonl; its test split is an eval set)")


@dataclass(frozen=True)
class Prompt:
    """One prompt. ``meta`` holds the source row's other fields; ``source`` is ``path:line``."""

    id: str
    problem: str
    answer: str | None
    domain: str
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""


@dataclass
class PromptSet:
    """The loaded prompts plus what was found on the way (for stats.json)."""

    prompts: list[Prompt]
    duplicates: int = 0
    duplicate_examples: list[dict[str, str]] = field(default_factory=list)


def content_id(problem: str, domain: str) -> str:
    """Stable id of a prompt without a given one: 16 hex digits of sha256(domain, problem)."""
    return hashlib.sha256(f"{domain}\x00{problem.strip()}".encode("utf-8")).hexdigest()[:16]


def shard_of(prompt_id: str, num_shards: int) -> int:
    """Deterministic shard of a prompt: sha256 of its id modulo ``num_shards`` (machine independent)."""
    if num_shards <= 1:
        return 0
    return int(hashlib.sha256(prompt_id.encode("utf-8")).hexdigest()[:16], 16) % num_shards


def _iter_csv(path: Path) -> Any:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # never silently replaced by U+FFFD
        raise RecordError(path, raw.count(b"\n", 0, exc.start) + 1,
                          f"invalid UTF-8 (byte 0x{raw[exc.start]:02x})") from None
    with io.StringIO(text, newline="") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            # reader.line_num is the physical line the row ended on (header is line 1).
            if None in row:
                raise RecordError(path, reader.line_num, "more cells than header columns")
            yield Located(str(path), reader.line_num, dict(row))


def _iter_local(path: str) -> Any:
    files = _expand_with_csv(Path(path)) if Path(path).is_dir() else expand_inputs([path])
    for file in files:
        if file.suffix == ".csv":
            yield from _iter_csv(file)
        elif file.suffix in (".jsonl", ".json", ".parquet"):
            yield from iter_records(file)
        else:
            raise RecordError(file, None, f"unsupported prompt file type {file.suffix!r} (use {', '.join(LOCAL_SUFFIXES)})")


def _expand_with_csv(folder: Path) -> list[Path]:
    found = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix in LOCAL_SUFFIXES
                   and not f.name.startswith((".", "_")))
    if not found:
        raise RecordError(folder, None, f"folder holds no prompt files ({', '.join(LOCAL_SUFFIXES)})")
    return found


def _iter_hub(cfg: PromptSourceConfig) -> Any:
    name = f"{cfg.dataset}[{cfg.dataset_config}]" if cfg.dataset_config else str(cfg.dataset)
    try:
        import datasets

        ds = datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=cfg.split)
    except Exception as exc:  # offline, unknown name, unknown split: say which and why
        raise RecordError(f"hf://{name}", None, f"could not load split {cfg.split!r} from the Hugging Face hub "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                          "set input.path to a local file instead when the hub is unreachable") from None
    for i, row in enumerate(ds, start=1):
        yield Located(f"hf://{name}:{cfg.split}", i, dict(row))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _to_prompt(loc: Located, cfg: PromptSourceConfig) -> Prompt:
    rec = loc.record
    if cfg.problem_column not in rec:
        raise RecordError(loc.path, loc.line, f"missing (columns present: {', '.join(map(str, rec)) or 'none'})",
                          field=cfg.problem_column)
    problem = rec[cfg.problem_column]
    if not isinstance(problem, str):
        raise RecordError(loc.path, loc.line, f"must be a string, got {type(problem).__name__}", field=cfg.problem_column)
    if not problem.strip():
        raise RecordError(loc.path, loc.line, "empty prompt", field=cfg.problem_column)
    answer = _text(rec.get(cfg.answer_column)) if cfg.answer_column else None
    if answer is not None and not answer.strip():
        answer = None
    if cfg.require_answer and answer is None:
        raise RecordError(loc.path, loc.line, "missing or empty reference answer (input.require_answer is set)",
                          field=cfg.answer_column or "answer")
    domain = cfg.default_domain
    if cfg.domain_column:
        given = rec.get(cfg.domain_column)
        if given is not None and not isinstance(given, str):
            raise RecordError(loc.path, loc.line, f"must be a string, got {type(given).__name__}", field=cfg.domain_column)
        domain = given.strip() if given and given.strip() else cfg.default_domain
    if cfg.id_column:
        pid = _text(rec.get(cfg.id_column))
        if pid is None or not pid.strip():
            raise RecordError(loc.path, loc.line, "missing or empty prompt id", field=cfg.id_column)
    else:
        pid = content_id(problem, domain)
    mapped = {cfg.problem_column, cfg.answer_column, cfg.id_column, cfg.domain_column}
    meta = {k: v for k, v in rec.items() if k not in mapped}
    return Prompt(id=pid, problem=problem, answer=answer, domain=domain, meta=meta, source=f"{loc.path}:{loc.line}")


_CONSUMED = {"mbpp": ("text", "code", "test_list", "test_setup_code"),
             "humaneval": ("prompt", "canonical_solution", "test", "entry_point")}


def _code_row(loc: Located, cfg: PromptSourceConfig) -> Located:
    """A code set's row as a prompt row: ``problem_column`` = the prompt text, ``tests`` validated
    (the reference solution and the raw test fields are dropped, so they never reach a record)."""
    from pipeline.code.datasets import REQUIRED, code_problem
    from pipeline.code.tests import TestsError, parse_tests

    row = loc.record
    for col in REQUIRED.get(cfg.layout, (cfg.problem_column, "tests")):
        if not row.get(col):
            raise RecordError(loc.path, loc.line, f"missing or empty (input.layout {cfg.layout})", field=col)
    text, tests = code_problem(row, cfg.layout, cfg.problem_column)
    try:
        parse_tests(tests)
    except TestsError as exc:
        raise RecordError(loc.path, loc.line, str(exc), field=exc.field) from None
    out = {k: v for k, v in row.items() if k not in _CONSUMED.get(cfg.layout, ())}
    out.update({cfg.problem_column: text, "tests": tests})
    return Located(loc.path, loc.line, out)


def load_prompt_set(cfg: PromptSourceConfig) -> PromptSet:
    """Load, validate, de-duplicate and (optionally) truncate the prompts; see the module rules."""
    if cfg.path:
        rows = _iter_local(cfg.path)
    elif cfg.dataset:
        rows = _iter_hub(cfg)
    else:
        raise RecordError("<config>", None, "no prompt source: set input.path (local file) or input.dataset (hub name)",
                          field="input.path")
    out: list[Prompt] = []
    by_id: dict[str, Prompt] = {}
    by_content: dict[str, Prompt] = {}
    result = PromptSet(prompts=out)
    if cfg.layout != "columns" and "default_domain" not in cfg.model_fields_set:
        cfg = cfg.model_copy(update={"default_domain": "code"})
    for loc in rows:
        if cfg.splits is not None and str(loc.record.get("split")) not in cfg.splits:
            continue
        if cfg.layout != "columns":
            loc = _code_row(loc, cfg)
        p = _to_prompt(loc, cfg)
        first = by_id.get(p.id)
        if first is not None and first.problem.strip() != p.problem.strip():
            raise RecordError(loc.path, loc.line, f"id {p.id!r} is already used by a different prompt at {first.source}",
                              field=cfg.id_column or "id")
        key = content_id(p.problem, p.domain)
        dup_of = first or by_content.get(key)
        if dup_of is not None:
            result.duplicates += 1
            if len(result.duplicate_examples) < 20:
                result.duplicate_examples.append({"id": p.id, "at": p.source, "first": dup_of.source})
            if cfg.drop_duplicates:
                continue
            if first is not None:  # same id and same text twice: keeping both would collide on disk
                continue
        by_id[p.id] = p
        by_content.setdefault(key, p)
        out.append(p)
        if cfg.limit is not None and len(out) >= cfg.limit:
            break
    if not out:
        raise RecordError(cfg.path or f"hf://{cfg.dataset}", None, "no prompts found")
    if result.duplicates:
        log.warning("%d duplicated prompt(s) %s (first: %s, duplicate of %s)", result.duplicates,
                    "dropped" if cfg.drop_duplicates else "kept", result.duplicate_examples[0]["at"],
                    result.duplicate_examples[0]["first"])
    return result


def load_prompts(cfg: PromptSourceConfig) -> list[Prompt]:
    """The prompts of ``cfg`` (see :func:`load_prompt_set` for duplicate reporting)."""
    return load_prompt_set(cfg).prompts
