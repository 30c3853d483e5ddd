"""Grading generations into per-sample records (resumable), and metrics from those records.

Used by the eval stage (after the generate stage wrote a benchmark's samples) and by the
score-only mode (``distill eval score``), which grades responses written by anything else.

Rules:

* Each sample is graded once: the per-sample JSONL is written through
  :class:`~pipeline.records.ShardWriter` keyed by the sample's identity, in durable batches, so a
  killed run resumes where it stopped and never writes a sample twice.
* Grading goes through :func:`pipeline.grading.grade_many` (process pool, math-verify timeout per
  item: a pathological answer counts as wrong with status ``timeout`` and is counted in the results).
* A response is what the model wrote, including the forced ``<think>\\n`` opener; with
  ``require_think`` a response without ``</think>`` is wrong (the R1 protocol).
* A sample is *truncated* when its ``finish_reason`` is ``length``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.choices import choices_of
from pipeline.evaluate.metrics import Sample, benchmark_metrics
from pipeline.records import RecordError, ShardWriter, expand_inputs, iter_records, messages_of, user_text

__all__ = ["PendingSample", "grade_into", "samples_from_generations", "load_graded", "metrics_from_graded",
           "score_inputs", "resolve_workers"]

log = logging.getLogger(__name__)


def resolve_workers(workers: int) -> int:
    """``0`` -> every core this process may use."""
    if workers > 0:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class PendingSample:
    """A response to grade plus the record to write once graded (grade fields are added)."""

    key: Any
    response: str
    reference: str
    record: dict[str, Any]
    choices: list[str] | None = None  # multiple choice: the options as shown (reference is a letter)
    tests: Any = None  # code: the tests field (pipeline.code.tests); graded by running the program
    problem: str = ""  # the question as asked (for the LLM judge)


def judge_grades(batch: list[PendingSample], judge: Any, require_think: bool = True) -> list[Any]:
    """Grades from the LLM judge (:class:`pipeline.judge.Judge`); the verdict also lands in each record."""
    from pipeline.grading import Grade
    from pipeline.judge import JudgeItem, final_answer

    asked = [p for p in batch if not (require_think and "</think>" not in p.response)]
    verdicts = dict(zip(map(id, asked), judge.judge_many(
        [JudgeItem(p.problem, final_answer(p.response), p.reference) for p in asked])))
    out = []
    for p in batch:
        v = verdicts.get(id(p))
        if v is None:
            out.append(Grade(False, None, "unclosed_think"))
            continue
        p.record["judge"] = v.meta(judge.settings.model)
        out.append(Grade(v.correct, final_answer(p.response)[-200:] or None, v.status))
    return out


def grade_into(pending: Iterable[PendingSample], writer: ShardWriter, workers: int = 1, timeout_s: float = 5.0,
               require_think: bool = True, batch_size: int = 2048, desc: str = "grading",
               total: int | None = None, progress: bool = True, sandbox: Any = None,
               judge: Any = None) -> dict[str, Any]:
    """Grade the samples whose key is not yet in ``writer.done``; write each batch durably.

    Samples with ``tests`` are graded by running their program (``sandbox``: a
    :class:`~pipeline.code.sandbox.SandboxConfig`, default limits when None), the others by the grader.
    With ``judge`` (a :class:`pipeline.judge.Judge`) the LLM judge grades the others instead of the rules.

    Returns ``{"graded": n, "skipped": already_done, "seconds": s}``.
    """
    from pipeline.grading import grade_many

    workers = resolve_workers(workers)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="resp", dynamic_ncols=True, leave=False)
    graded = skipped = 0
    start = time.perf_counter()
    batch: list[PendingSample] = []
    boxes: list[Any] = []  # the sandbox, made on the first code sample

    def _code_fields(items: list[PendingSample]) -> list[dict[str, Any]]:
        if not items:
            return []
        from pipeline.code.sandbox import Sandbox
        from pipeline.evaluate.code_grading import code_grade_fields

        if not boxes:
            boxes.append(Sandbox(sandbox))
        return code_grade_fields([(p.response, p.tests) for p in items], boxes[0], require_think, workers)

    def flush() -> None:
        nonlocal graded
        if not batch:
            return
        answers = [p for p in batch if p.tests is None]
        if judge is not None:
            grades = iter(judge_grades(answers, judge, require_think))
        else:
            grades = iter(grade_many([(p.response, p.reference, p.choices) for p in answers], workers=workers,
                                     timeout_s=timeout_s, require_think=require_think,
                                     chunksize=max(1, min(64, len(answers) // (4 * workers) or 1))))
        code = iter(_code_fields([p for p in batch if p.tests is not None]))
        out = []
        for p in batch:
            rec = dict(p.record)
            if p.tests is None:
                g = next(grades)
                rec.update({"extracted": g.extracted, "correct": g.correct, "grade_status": g.status})
            else:
                rec.update(next(code))
            out.append(rec)
        writer.write(out)
        graded += len(batch)
        if bar is not None:
            bar.update(len(batch))
        batch.clear()

    try:
        for p in pending:
            if p.key in writer.done:
                skipped += 1
                if bar is not None:
                    bar.update(1)
                continue
            batch.append(p)
            if len(batch) >= batch_size:
                flush()
        flush()
    finally:
        if bar is not None:
            bar.close()
        for box in boxes:
            box.close()
    stats = {"graded": graded, "skipped": skipped, "seconds": time.perf_counter() - start}
    if boxes:
        stats["sandbox"] = boxes[0].describe()
    return stats


def _completion_tokens(rec: dict[str, Any]) -> int | None:
    nt = rec.get("num_tokens")
    if isinstance(nt, dict) and isinstance(nt.get("completion"), int):
        return nt["completion"]
    return None


def sample_key(rec: dict[str, Any]) -> tuple[str, int]:
    return str(rec["problem_id"]), int(rec["sample_index"])


def samples_from_generations(paths: Iterable[str | Path], benchmark: str, answers: dict[str, str],
                             choices: dict[str, list[str]] | None = None,
                             tests: dict[str, Any] | None = None) -> Iterator[PendingSample]:
    """Pending samples from the generate stage's shard records (``prompt_id``, ``sample_index``,
    ``messages``, ``finish_reason``, ``num_tokens``); the reference answer (and for multiple
    choice the options) comes from the benchmark (``answers``: problem id -> answer), never from
    the generation record."""
    choices = choices or {}
    for loc in iter_records(list(paths)):
        rec = loc.record
        for fld in ("prompt_id", "sample_index"):
            if fld not in rec:
                raise RecordError(loc.path, loc.line, "missing (not a generate-stage record?)", field=fld)
        pid = str(rec["prompt_id"])
        if pid not in answers:
            continue  # a problem outside this eval's selection (e.g. a smaller limit than before)
        msgs = messages_of(rec, (loc.path, loc.line))
        response = next((m["content"] for m in reversed(msgs) if m["role"] == "assistant"), None)
        if response is None:
            raise RecordError(loc.path, loc.line, "no assistant turn", field="messages")
        finish = rec.get("finish_reason")
        out = {
            "benchmark": benchmark,
            "problem_id": pid,
            "sample_index": int(rec["sample_index"]),
            "id": rec.get("id"),
            "answer": answers[pid],
            "response": response,
            "finish_reason": finish,
            "truncated": finish == "length",
            "completion_tokens": _completion_tokens(rec),
        }
        opts = choices.get(pid)
        if opts is not None:
            out["choices"] = opts
        yield PendingSample(sample_key(out), response, answers[pid], out, opts, (tests or {}).get(pid), user_text(rec) or "")


def load_graded(path: str | Path) -> Iterator[dict[str, Any]]:
    for loc in iter_records(path):
        yield loc.record


def _as_sample(rec: dict[str, Any]) -> Sample:
    return Sample(correct=bool(rec["correct"]), extracted=rec.get("extracted"),
                  status=rec.get("grade_status", "correct" if rec["correct"] else "wrong"),
                  truncated=bool(rec.get("truncated")), completion_tokens=rec.get("completion_tokens"),
                  sample_index=int(rec.get("sample_index", 0)))


def metrics_from_graded(records: Iterable[dict[str, Any]], pass_k: list[int], cons_k: list[int] | None = None,
                        problem_ids: Iterable[str] | None = None, bootstrap_resamples: int = 1000,
                        seed: int = 0, timeout_s: float = 5.0, workers: int = 1) -> dict[str, Any]:
    """Benchmark metrics from graded per-sample records (only ``problem_ids`` when given).

    Majority voting (cons@k) runs over ``workers`` processes when there are many problems.
    """
    from functools import partial

    from pipeline.grading import equivalent

    keep = set(problem_ids) if problem_ids is not None else None
    by_problem: dict[str, list[Sample]] = {}
    code = 0
    for rec in records:
        pid = str(rec["problem_id"])
        if keep is not None and pid not in keep:
            continue
        by_problem.setdefault(pid, []).append(_as_sample(rec))
        code += "code" in rec
    same = partial(equivalent, timeout_s=timeout_s)
    workers = resolve_workers(workers)
    if workers <= 1 or len(by_problem) < 64:
        m = benchmark_metrics(by_problem, pass_k=pass_k, cons_k=cons_k, bootstrap_resamples=bootstrap_resamples,
                              seed=seed, same=same)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            m = benchmark_metrics(by_problem, pass_k=pass_k, cons_k=cons_k, bootstrap_resamples=bootstrap_resamples,
                                  seed=seed, same=same, map_fn=partial(pool.map, chunksize=8))
    if code:  # programs: no extracted answer to vote on, so cons@k is not defined
        m["cons@k"] = {}
    return m


# --------------------------------------------------------------------------- score-only mode

def _score_pending(paths: list[Path]) -> Iterator[PendingSample]:
    """Pending samples from arbitrary response files: ``answer`` plus ``response`` or ``messages``."""
    seen_per_problem: dict[tuple[str, str], int] = {}
    known_tests: dict[str, dict[str, Any]] = {}  # code set -> problem id -> tests (loaded on first use)
    for loc in iter_records(paths):
        rec = loc.record
        ans = rec.get("answer")
        tests = _tests_of(rec, loc)
        if tests is None and rec.get("answer") is None:
            tests = _known_code_tests(rec, loc, known_tests)
        if tests is None and (ans is None or (isinstance(ans, str) and not ans.strip())):
            raise RecordError(loc.path, loc.line, "missing or empty reference answer (or `tests` for code)",
                              field="answer")
        if isinstance(rec.get("response"), str):
            response = rec["response"]
        elif "messages" in rec:
            msgs = messages_of(rec, (loc.path, loc.line))
            response = next((m["content"] for m in reversed(msgs) if m["role"] == "assistant"), None)
            if response is None:
                raise RecordError(loc.path, loc.line, "no assistant turn to grade", field="messages")
        else:
            raise RecordError(loc.path, loc.line, "needs a 'response' string or a 'messages' list", field="response")
        bench = str(rec.get("benchmark") or Path(loc.path).stem)
        pid = rec.get("prompt_id", rec.get("problem_id"))
        if pid is None:
            pid = rec.get("problem") or rec.get("prompt") or user_text(rec) or f"line{loc.line}"
        pid = str(pid)
        if "sample_index" in rec:
            sidx = int(rec["sample_index"])
        else:
            sidx = seen_per_problem.get((bench, pid), 0)
            seen_per_problem[(bench, pid)] = sidx + 1
        out = dict(rec)
        out.update({"scored_from": f"{loc.path}:{loc.line}", "benchmark": bench, "problem_id": pid,
                    "sample_index": sidx, "truncated": rec.get("finish_reason") == "length",
                    "completion_tokens": rec.get("completion_tokens", _completion_tokens(rec))})
        problem = rec.get("problem") if isinstance(rec.get("problem"), str) else user_text(rec) or ""
        yield PendingSample(out["scored_from"], response, "" if ans is None else str(ans), out, choices_of(rec), tests,
                            problem)


def _known_code_tests(rec: dict[str, Any], loc: Any, cache: dict[str, dict[str, Any]]) -> Any:
    """Tests of a response to a built-in code set (``benchmark: humaneval`` or ``mbpp`` plus
    ``problem_id`` = its ``task_id``), looked up in that set (every MBPP split); None otherwise."""
    from pipeline.evaluate.benchmarks import canonical_name, load_problems

    name = canonical_name(str(rec.get("benchmark") or ""))
    if name not in ("humaneval", "mbpp") or rec.get("problem_id", rec.get("prompt_id")) is None:
        return None
    if name not in cache:
        probs = load_problems({"name": name, "split_column": None})
        cache[name] = {p.id: p.meta["tests"] for p in probs}
    pid = str(rec.get("problem_id", rec.get("prompt_id")))
    if pid not in cache[name]:
        raise RecordError(loc.path, loc.line, f"{pid!r} is not a task of {name}", field="problem_id")
    return cache[name][pid]


def _tests_of(rec: dict[str, Any], loc: Any) -> Any:
    """A record's validated ``tests`` (code), or None; a malformed one is an error naming the field."""
    if rec.get("tests") is None:
        return None
    from pipeline.code.tests import TestsError, parse_tests

    try:
        return parse_tests(rec["tests"])
    except TestsError as exc:
        raise RecordError(loc.path, loc.line, str(exc), field=exc.field) from None


def score_inputs(inputs: list[str], output_path: str | Path, pass_k: list[int], cons_k: list[int] | None = None,
                 workers: int = 0, timeout_s: float = 5.0, require_think: bool = True, batch_size: int = 2048,
                 bootstrap_resamples: int = 1000, seed: int = 0, progress: bool = True,
                 sandbox: Any = None, judge: Any = None) -> dict[str, Any]:
    """Grade existing responses into ``output_path`` (resumable) and compute metrics per benchmark
    (with ``judge``, a :class:`pipeline.judge.Judge`, the LLM judge grades what no test checks).

    Returns ``{"benchmarks": {name: metrics}, "grading": {...}}``.
    """
    paths = expand_inputs(inputs)
    output_path = Path(output_path)
    if any(p.resolve() == output_path.resolve() for p in paths if output_path.exists()):
        raise RecordError(output_path, None, "the output file is also an input; choose another --output")
    with ShardWriter(output_path, key=lambda r: r["scored_from"]) as writer:
        stats = grade_into(_score_pending(paths), writer, workers=workers, timeout_s=timeout_s,
                           require_think=require_think, batch_size=batch_size, desc="scoring",
                           progress=progress, sandbox=sandbox, judge=judge)
        if not writer.done:  # an empty input is an error in every stage (a broken upstream step, not a result)
            raise RecordError(paths[0] if len(paths) == 1 else ", ".join(map(str, paths)), None,
                              "no responses to score (the input holds no records)")
    by_bench: dict[str, list[dict[str, Any]]] = {}
    for rec in load_graded(output_path):
        by_bench.setdefault(rec["benchmark"], []).append(rec)
    t0 = time.perf_counter()
    benchmarks = {name: metrics_from_graded(recs, pass_k, cons_k, bootstrap_resamples=bootstrap_resamples,
                                            seed=seed, timeout_s=timeout_s, workers=workers)
                  for name, recs in sorted(by_bench.items())}
    return {"benchmarks": benchmarks,
            "grading": {**stats, "metrics_seconds": time.perf_counter() - t0, "workers": resolve_workers(workers),
                        "timeout_s": timeout_s, "require_think": require_think}}
