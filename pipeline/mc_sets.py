"""Multiple-choice sets: rows -> questions with options (optionally shuffled by a seed) and a letter.

Two layouts:

* ``choices``: a question column, a list of options, and the answer as a letter (``"C"``), an
  index (``2``) or the right option's text (MMLU, ``../shared/data/mmlu_stem.jsonl``; MMLU-Pro).
* ``gpqa``: the GPQA release's columns ``Question``, ``Correct Answer``, ``Incorrect Answer 1..3``
  (CSV or JSONL or a hub copy). The right answer always comes first there, so these are shuffled.

Shuffling (``shuffle=True``): the right option's position is *balanced*, not drawn per question:
positions ``0..k-1`` are repeated to the set's length and shuffled with ``random.Random(seed)``, so
with 4 options and 198 questions each letter is right 49 or 50 times. lighteval's GPQA task draws
``random.randint(0, 3)`` per question (even only in expectation, and unseeded); simple-evals draws
a permutation per question from ``Random(0)``. The distractors' order comes from
``Random(f"{seed}:{id}")``, so a question's options do not depend on the other rows. The
permutation is kept: option ``i`` as shown is option ``permutation[i]`` of the source row.

Every question becomes a problem text ``question + "\\n\\n" + "A) ...\\nB) ..."``; the science
prompt template (``prompts/science.txt``) then says how to answer (the letter in ``\\boxed{}``).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.choices import LETTERS, format_options, letter_of
from pipeline.records import RecordError

__all__ = ["MCQuestion", "GPQA_COLUMNS", "balanced_positions", "file_rows", "read_questions", "to_problem_text",
           "write_prompt_file"]

GPQA_COLUMNS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


@dataclass(frozen=True)
class MCQuestion:
    id: str
    question: str
    choices: tuple[str, ...]  # as shown to the model (after any shuffle)
    answer: str  # the right letter among ``choices``
    permutation: tuple[int, ...]  # choices[i] is the source row's option permutation[i]
    line: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_problem_text(self) -> str:
        return to_problem_text(self.question, self.choices)


def to_problem_text(question: str, choices: Iterable[str]) -> str:
    return f"{question.strip()}\n\n{format_options(list(choices))}"


def file_rows(path: str, split_column: str | None = None, split: str | None = None
              ) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """``(source, line, row)`` of a CSV (the GPQA release) or JSONL/JSON/Parquet file; with
    ``split_column``, only the rows whose value there equals ``split``."""
    from pipeline.prompts import _iter_csv
    from pipeline.records import iter_records

    locs = _iter_csv(Path(path)) if str(path).endswith(".csv") else iter_records(path)
    for loc in locs:
        if split_column and str(loc.record.get(split_column)) != split:
            continue
        yield loc.path, loc.line, loc.record


def balanced_positions(n: int, k: int, seed: int) -> list[int]:
    """``n`` positions in ``0..k-1``, each used ``n // k`` or ``n // k + 1`` times, shuffled by ``seed``."""
    pos = [i % k for i in range(n)]
    random.Random(seed).shuffle(pos)
    return pos


@dataclass
class _Raw:
    src: str
    line: int
    id: str
    question: str
    options: list[str]
    gold: int  # index into options
    extra: dict[str, Any]


def _text(row: dict[str, Any], col: str, src: str, line: int) -> str:
    val = row.get(col)
    if val is None or (isinstance(val, str) and not val.strip()) or isinstance(val, (list, dict)):
        raise RecordError(src, line, f"missing or empty (columns here: {', '.join(map(str, sorted(row)))})", field=col)
    return str(val).strip()


def _raw_gpqa(src: str, line: int, row: dict[str, Any], pid: str) -> _Raw:
    q, *opts = (_text(row, c, src, line) for c in GPQA_COLUMNS)
    extra = {k: row[k] for k in ("Subdomain", "High-level domain") if k in row}
    return _Raw(src, line, pid, q, opts, 0, extra)


def _raw_choices(src: str, line: int, row: dict[str, Any], pid: str, question_column: str, choices_column: str,
                 answer_column: str) -> _Raw:
    q = _text(row, question_column, src, line)
    opts = row.get(choices_column)
    if not isinstance(opts, list) or not 2 <= len(opts) <= len(LETTERS) or any(
            o is None or not str(o).strip() for o in opts):
        raise RecordError(src, line, f"must be a list of 2-{len(LETTERS)} non-empty options", field=choices_column)
    opts = [str(o).strip() for o in opts]
    ans = row.get(answer_column)
    letter = letter_of(ans, opts) if ans is not None else None
    if letter is None or LETTERS.index(letter) >= len(opts):
        raise RecordError(src, line, f"answer {ans!r} is not a letter, index or text of the {len(opts)} options",
                          field=answer_column)
    extra = {k: row[k] for k in ("subject", "category") if k in row}
    return _Raw(src, line, pid, q, opts, LETTERS.index(letter), extra)


def read_questions(rows: Iterable[tuple[str, int, dict[str, Any]]], layout: str = "choices", *,
                   question_column: str = "question", choices_column: str = "choices", answer_column: str = "answer",
                   id_column: str | None = None, shuffle: bool = False, seed: int = 0,
                   limit: int | None = None) -> list[MCQuestion]:
    """Questions from ``(source, line, row)`` triples, first ``limit``, validated, options placed.

    A bad row is a :class:`RecordError` naming source, line and column.
    """
    raws: list[_Raw] = []
    seen: dict[str, int] = {}
    for n, (src, line, row) in enumerate(rows):
        if limit is not None and len(raws) >= limit:
            break
        if id_column and row.get(id_column) is None:
            raise RecordError(src, line, "missing question id", field=id_column)
        pid = str(row[id_column]) if id_column else str(n)
        if pid in seen:
            raise RecordError(src, line, f"duplicate question id {pid!r} (first at line {seen[pid]})",
                              field=id_column or "id")
        seen[pid] = line
        raws.append(_raw_gpqa(src, line, row, pid) if layout == "gpqa" else
                    _raw_choices(src, line, row, pid, question_column, choices_column, answer_column))
    sizes = {len(r.options) for r in raws}
    targets = balanced_positions(len(raws), min(sizes), seed) if shuffle and raws else []
    out = []
    for i, r in enumerate(raws):
        perm = list(range(len(r.options)))
        if shuffle:
            others = [j for j in perm if j != r.gold]
            random.Random(f"{seed}:{r.id}").shuffle(others)
            perm = others[:targets[i]] + [r.gold] + others[targets[i]:]
        choices = tuple(r.options[j] for j in perm)
        out.append(MCQuestion(r.id, r.question, choices, LETTERS[perm.index(r.gold)], tuple(perm), r.line, r.extra))
    return out


def write_prompt_file(questions: Iterable[MCQuestion], path: str | Path, domain: str = "science") -> int:
    """A ``distill generate`` prompt file: ``id``, ``problem`` (question + options), ``answer`` (the
    letter), ``domain``, and ``choices`` / ``permutation``, which generate keeps in each record's
    ``meta`` so the filter grades the letter (and an option's text) against them."""
    from pipeline.records import write_text_atomic

    rows = [{"id": q.id, "problem": q.to_problem_text(), "answer": q.answer, "domain": domain,
             "choices": list(q.choices), "permutation": list(q.permutation), **q.extra} for q in questions]
    write_text_atomic(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.mc_sets --layout gpqa --input gpqa_main.csv --output prompts.jsonl``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pipeline.mc_sets", description=main.__doc__)
    ap.add_argument("--input", required=True, help="CSV/JSONL/JSON/Parquet file of questions")
    ap.add_argument("--output", required=True, help="prompt file to write (JSONL)")
    ap.add_argument("--layout", choices=["gpqa", "choices"], default="gpqa")
    ap.add_argument("--question-column", default="question")
    ap.add_argument("--choices-column", default="choices")
    ap.add_argument("--answer-column", default="answer")
    ap.add_argument("--id-column", default=None, help="default: Record ID for gpqa, else the row number")
    ap.add_argument("--split", default=None, help="keep rows whose `split` column equals this (e.g. val)")
    ap.add_argument("--no-shuffle", action="store_true", help="keep the source order of the options")
    ap.add_argument("--seed", type=int, default=0, help="seed of the balanced option shuffle")
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args(argv)
    qs = read_questions(file_rows(a.input, "split" if a.split else None, a.split), a.layout, question_column=a.question_column, choices_column=a.choices_column,
                        answer_column=a.answer_column, shuffle=not a.no_shuffle, seed=a.seed, limit=a.limit,
                        id_column=a.id_column or ("Record ID" if a.layout == "gpqa" else None))
    n = write_prompt_file(qs, a.output)
    print(f"{n} questions -> {a.output} (right letter: " + ", ".join(
        f"{k} {v}" for k, v in sorted(Counter(q.answer for q in qs).items())) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
