"""Benchmark loaders: MATH-500, AIME 2024, AMC 2023, GSM8K test, MMLU STEM, GPQA, HumanEval, MBPP, or
any set with problem/answer columns, multiple-choice options or code tests.

A benchmark is named by a short name (``math500``, ``aime24``, ``amc23``, ``gsm8k``, ``mmlu_stem``,
``gpqa``) or given in full as a :class:`BenchmarkSpec` (``{name, path, problem_column,
answer_column, limit}``). Multiple-choice sets (``layout: choices`` or ``gpqa``) are read by
:mod:`pipeline.mc_sets`: options listed under the question, the answer a letter, graded by
:mod:`pipeline.choices`. Code sets (``humaneval``, ``mbpp``: its 500-task test split, or ``layout:
code`` with a ``tests`` field) are read by :mod:`pipeline.evaluate.code_sets` and graded by running
the program in the sandbox (:mod:`pipeline.code`). ``mmlu_stem`` is the test split of ``mmlu_stem.jsonl`` in upstream option
order; ``gpqa`` is the GPQA release's CSV (``gpqa_diamond.csv``, or any path) with options shuffled
so the right letter is balanced over A-D.

Where a short name is looked up, in order (nothing else: an installed package knows no repo layout):

1. ``$DISTILL_DATA_DIR/<file>`` (e.g. ``math500.jsonl``);
2. the Hugging Face dataset it came from, only when ``hf_fallback`` is on and the hub is reachable.

When neither works the error (:class:`BenchmarkNotFound`) says what was tried. The same lookup
serves decontamination (:func:`problem_texts`), whose reports name each set's file and sha256.

``path`` may be a JSONL/JSON/Parquet file, a folder of them, or ``hf:<dataset>[:<config>]`` for a
hub dataset. Every problem needs a non-empty problem and answer; a bad row is an error naming the
file, the line and the field. GSM8K-style answers (``"... #### 72"``) keep the number after ``####``
with thousands separators removed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from pipeline.config import ConfigError, Section
from pipeline.errors import UserError
from pipeline.records import RecordError, iter_records


class BenchmarkNotFound(UserError):
    """A benchmark set could not be found or loaded; the message lists every place tried."""

__all__ = ["BenchmarkSpec", "Problem", "KNOWN", "resolve_spec", "load_problems", "data_dirs", "BenchmarkNotFound",
           "BenchmarkSource", "problem_texts"]


class BenchmarkSpec(Section):
    """One benchmark: a short name, or a name plus where and how to read it."""

    name: str = Field(description="display name and output sub-folder (short names: math500, aime24, amc23, gsm8k)")
    path: str | None = Field(None, description="JSONL/JSON/Parquet file or folder, or hf:<dataset>[:<config>]; "
                                               "default: the known file for a short name")
    split: str = Field("test", description="split, for hf: datasets")
    problem_column: str = Field("problem", description="column holding the problem text")
    answer_column: str = Field("answer", description="column holding the reference answer")
    id_column: str | None = Field(None, description="column with a stable problem id (default: the known one, "
                                                    "else the row number)")
    limit: int | None = Field(None, ge=1, description="use only the first N problems")
    n: int | None = Field(None, ge=1, description="samples per problem for this benchmark (default: sampling.n); "
                                           "the R1 paper uses more samples on small sets such as AIME")
    layout: Literal["answer", "choices", "gpqa", "humaneval", "mbpp", "code"] = Field(
        "answer", description="answer: problem + reference answer; choices: question + options list + answer "
        "letter/index (MMLU); gpqa: Question, Correct Answer, Incorrect Answer 1-3; humaneval / mbpp: those "
        "sets' own fields; code: problem_column + a `tests` field (graded by running the program)")
    choices_column: str = Field("choices", description="column holding the options (layout: choices)")
    shuffle_choices: bool | None = Field(None, description="shuffle the options, the right letter balanced over "
                                         "A-D by choices_seed (null: yes for gpqa, no for choices)")
    choices_seed: int = Field(0, description="seed of the option shuffle")
    split_column: str | None = Field(None, description="local files: keep only rows whose split_column equals split")
    template: str | None = Field(None, description="prompt template for this benchmark (default: eval's template; "
                                 "multiple-choice sets: science)")
    grader: Literal["rule", "judge"] = Field("rule", description="rule: math-verify / option letter; judge: the "
                                             "LLM judge (eval's judge section), for answers no rule can check")


@dataclass(frozen=True)
class _Known:
    file: str
    id_column: str | None
    hf: str  # hf:<dataset>[:<config>]
    hf_split: str
    hf_problem: str
    hf_answer: str
    hf_id: str | None  # stable id column of the hub dataset (None: the 0-based row, like the local idx)
    paper_key: str  # key in reference.PAPER
    defaults: dict[str, Any] = field(default_factory=dict)  # spec fields for this set unless the user set them


_MMLU = {"layout": "choices", "problem_column": "question", "split_column": "split", "template": "science"}
_GPQA = {"layout": "gpqa", "template": "science", "shuffle_choices": True, "id_column": "Record ID"}
_CODE = {"template": "code_function", "id_column": "task_id"}
KNOWN: dict[str, _Known] = {
    "math500": _Known("math500.jsonl", "unique_id", "hf:HuggingFaceH4/MATH-500", "test", "problem", "answer",
                      "unique_id", "math500"),
    "aime24": _Known("aime24.jsonl", "id", "hf:HuggingFaceH4/aime_2024", "train", "problem", "answer", "id", "aime24"),
    "amc23": _Known("amc23.jsonl", "id", "hf:math-ai/amc23", "test", "question", "answer", "id", "amc23"),
    # openai/gsm8k (config main) has only `question` and `answer` ("... #### 72"): no id column.
    "gsm8k": _Known("gsm8k_test.jsonl", "idx", "hf:openai/gsm8k:main", "test", "question", "answer", None, "gsm8k"),
    "mmlu_stem": _Known("mmlu_stem.jsonl", "id", "", "test", "question", "answer", "id", "mmlu_stem", _MMLU),
    # GPQA is not republished (its authors ask so): give its CSV as `path` or put it in DISTILL_DATA_DIR.
    "gpqa": _Known("gpqa_diamond.csv", "Record ID", "hf:Idavidrein/gpqa:gpqa_diamond", "train", "Question",
                   "Correct Answer", "Record ID", "gpqa", _GPQA),
    "humaneval": _Known("humaneval.jsonl", "task_id", "hf:openai/openai_humaneval", "test", "prompt",
                        "canonical_solution", "task_id", "humaneval", {**_CODE, "layout": "humaneval"}),
    "mbpp": _Known("mbpp.jsonl", "task_id", "hf:google-research-datasets/mbpp:full", "test", "text", "code", "task_id",
                   "mbpp", {**_CODE, "layout": "mbpp", "split_column": "split"}),
}
ALIASES = {
    "math-500": "math500", "math_500": "math500",
    "aime2024": "aime24", "aime_2024": "aime24", "aime-2024": "aime24", "aime": "aime24",
    "amc2023": "amc23", "amc_2023": "amc23", "amc-2023": "amc23", "amc": "amc23",
    "gsm8k_test": "gsm8k", "gsm8k-test": "gsm8k",
    "mmlu-stem": "mmlu_stem", "gpqa_diamond": "gpqa", "gpqa-diamond": "gpqa",
}


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str
    line: int  # 1-based row in the source (for messages)
    choices: tuple[str, ...] | None = None  # multiple choice: the options as shown (answer is a letter)
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. the option permutation, subject


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    return ALIASES.get(key, key)


def data_dirs() -> list[Path]:
    """Folders searched for the known benchmark files: ``$DISTILL_DATA_DIR`` when set."""
    env = os.environ.get("DISTILL_DATA_DIR")
    return [Path(env).expanduser()] if env else []


def _local_tried(file: str) -> str:
    dirs = data_dirs()
    return f"{dirs[0] / file} (not found)" if dirs else f"DISTILL_DATA_DIR (not set; it names a folder holding {file})"


def _with_defaults(spec: BenchmarkSpec, known: _Known | None) -> BenchmarkSpec:
    """The known set's own settings (layout, columns, template) for the fields the user left unset."""
    if known is None:
        return spec
    return spec.model_copy(update={k: v for k, v in known.defaults.items() if k not in spec.model_fields_set})


def resolve_spec(item: str | BenchmarkSpec | dict[str, Any], hf_fallback: bool = True) -> BenchmarkSpec:
    """A full spec (with ``path``) for a short name or a partial spec."""
    if isinstance(item, str):
        spec = BenchmarkSpec(name=item)
    elif isinstance(item, dict):
        spec = BenchmarkSpec.model_validate(item)
    else:
        spec = item
    known = KNOWN.get(canonical_name(spec.name))
    spec = _with_defaults(spec, known)
    if spec.path:
        return spec
    key = canonical_name(spec.name)
    if known is None:
        raise ConfigError(f"benchmarks: {spec.name!r} is not a known benchmark (known: {', '.join(KNOWN)}); "
                          f"give it a path: {{name: {spec.name}, path: file.jsonl, problem_column: ..., answer_column: ...}}")
    for d in data_dirs():
        f = d / known.file
        if f.is_file():
            return spec.model_copy(update={"name": key, "path": str(f), "id_column": spec.id_column or known.id_column})
    if not hf_fallback or not known.hf:
        why = "the Hugging Face hub is off (hf_fallback: false)" if known.hf else "this set has no hub copy"
        raise BenchmarkNotFound(f"benchmark {spec.name}: tried {_local_tried(known.file)}; {why}. "
                                "Set DISTILL_DATA_DIR or give the benchmark a path")
    return spec.model_copy(update={"name": key, "path": known.hf, "split": known.hf_split, "problem_column": known.hf_problem,
                                   "answer_column": known.hf_answer, "id_column": spec.id_column or known.hf_id,
                                   "split_column": None})  # a hub split is chosen by `split`, not by a column


_GSM8K_RE = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def clean_answer(ans: Any) -> str:
    """Reference answers as strings; GSM8K's ``#### N`` tail kept, thousands commas dropped."""
    text = str(ans).strip()
    m = _GSM8K_RE.search(text)
    if m:
        text = m.group(1).strip()
        if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
            text = text.replace(",", "")
    return text


def _rows(spec: BenchmarkSpec):
    """``(source, line, row)`` for a local path or an ``hf:`` dataset."""
    assert spec.path
    if spec.path.startswith("hf:"):
        name, _, config = spec.path[3:].partition(":")
        try:
            import datasets

            ds = datasets.load_dataset(name, config or None, split=spec.split)
        except Exception as exc:  # offline, unknown name, no such split
            known = KNOWN.get(canonical_name(spec.name))
            tried = f"{_local_tried(known.file)}, then " if known else ""
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise BenchmarkNotFound(f"benchmark {spec.name}: tried {tried}the Hugging Face dataset {name!r} "
                                    f"(split {spec.split!r}): {reason}. Set DISTILL_DATA_DIR or give a path") from None
        for i, row in enumerate(ds, start=1):
            yield f"hf:{name}[{spec.split}]", i, row
        return
    from pipeline.mc_sets import file_rows

    yield from file_rows(spec.path, spec.split_column, spec.split)


def _load_choices(spec: BenchmarkSpec) -> list[Problem]:
    """A multiple-choice set (layout ``choices`` or ``gpqa``) as problems whose answer is a letter."""
    from pipeline.mc_sets import read_questions

    shuffle = spec.shuffle_choices if spec.shuffle_choices is not None else spec.layout == "gpqa"
    qs = read_questions(_rows(spec), spec.layout, question_column=spec.problem_column,
                        choices_column=spec.choices_column, answer_column=spec.answer_column,
                        id_column=spec.id_column, shuffle=shuffle, seed=spec.choices_seed, limit=spec.limit)
    return [Problem(q.id, q.to_problem_text(), q.answer, q.line, q.choices,
                    {"permutation": list(q.permutation), "choices_seed": spec.choices_seed if shuffle else None,
                     **q.extra}) for q in qs]


def load_problems(spec: BenchmarkSpec | str, hf_fallback: bool = True) -> list[Problem]:
    """The benchmark's problems in file order (first ``limit``), validated."""
    spec = resolve_spec(spec, hf_fallback)
    if spec.layout in ("humaneval", "mbpp", "code"):
        from pipeline.evaluate.code_sets import load_code_problems

        out = [Problem(t.id, t.text, "", t.line, meta={"tests": t.tests, "decontam_text": t.decontam_text})
               for t in load_code_problems(_rows(spec), spec)]
        if not out:
            raise RecordError(spec.path, None, f"benchmark {spec.name} has no problems")
        return out
    if spec.layout != "answer":
        out = _load_choices(spec)
        if not out:
            raise RecordError(spec.path, None, f"benchmark {spec.name} has no problems")
        return out
    out: list[Problem] = []
    seen: dict[str, int] = {}
    for n, (src, line, row) in enumerate(_rows(spec)):
        if spec.limit is not None and len(out) >= spec.limit:
            break
        for col in (spec.problem_column, spec.answer_column):
            val = row.get(col)
            if val is None or (isinstance(val, str) and not val.strip()):
                raise RecordError(src, line, f"missing or empty (benchmark {spec.name}; columns here: "
                                             f"{', '.join(sorted(row))})", field=col)
        if spec.id_column:
            if row.get(spec.id_column) is None:
                raise RecordError(src, line, f"missing problem id (benchmark {spec.name})", field=spec.id_column)
            pid = str(row[spec.id_column])
        else:
            pid = str(n)
        if pid in seen:
            raise RecordError(src, line, f"duplicate problem id {pid!r} (first at line {seen[pid]})",
                              field=spec.id_column or "id")
        seen[pid] = line
        out.append(Problem(pid, str(row[spec.problem_column]), clean_answer(row[spec.answer_column]), line))
    if not out:
        raise RecordError(spec.path, None, f"benchmark {spec.name} has no problems")
    return out


@dataclass(frozen=True)
class BenchmarkSource:
    """Where a benchmark's problems came from, for reports: a file and its sha256, or a hub dataset
    and the sha256 of its problem texts (one per line)."""

    name: str
    location: str
    sha256: str
    sha256_of: str  # "file" or "problems"
    problems: int


def problem_texts(entry: str) -> tuple[BenchmarkSource, list[tuple[str, str]]]:
    """The problems of one decontamination benchmark as ``(item, text)`` (item = ``<stem>:<row>``).

    ``entry`` is a short name (``math500``, ``aime24``, ``amc23``, ``gsm8k``: resolved like eval's
    sets) or a JSONL/JSON/Parquet file with a ``problem`` or ``question`` field. A set that cannot be
    loaded raises :class:`BenchmarkNotFound`: decontamination never silently skips one.
    """
    import hashlib

    path = Path(entry).expanduser()
    if not path.exists() and canonical_name(entry) in KNOWN:
        spec = resolve_spec(entry)
        probs = load_problems(spec)
        local = not spec.path.startswith("hf:")
        stem = Path(spec.path).stem if local else spec.name
        items = [(f"{stem}:{p.line}", p.meta.get("decontam_text", p.problem)) for p in probs]
        digest = (_file_sha256(Path(spec.path)) if local else
                  hashlib.sha256("".join(t + "\n" for _, t in items).encode("utf-8")).hexdigest())
        return BenchmarkSource(spec.name, spec.path, digest, "file" if local else "problems", len(items)), items
    if not path.is_file():
        raise BenchmarkNotFound(f"decontam: benchmark {entry!r}: no such file (relative paths start at {Path.cwd()}) "
                                f"and not a known set ({', '.join(KNOWN)})")
    items = []
    for loc in iter_records(path):
        text = loc.record.get("problem") or loc.record.get("question")
        if isinstance(text, str) and text.strip():
            items.append((f"{path.stem}:{loc.line}", text))
    if not items:
        raise BenchmarkNotFound(f"decontam: benchmark {path}: no row has a `problem` or `question` text")
    return BenchmarkSource(path.stem, str(path.resolve()), _file_sha256(path), "file", len(items)), items


def _file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
