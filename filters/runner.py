"""Streaming, multi-process, resumable filter run: inputs -> kept / rejected / bad lines + report.

Flow: the main process reads input lines (raw bytes, no parsing), sends chunks of
``chunk_size`` to ``workers`` processes, which parse each record once and run every per-record
rule (:func:`process_line`); results come back in input order (at most ``2 * workers + 2``
chunks in flight, so memory stays constant in corpus size). The main process then applies the
corpus-level dedup (the only state that grows with the corpus), writes each record to kept or
rejected, and tallies.

Crash safety: output goes to ``<out>/.partial/*.jsonl``; every ``checkpoint_every`` records the
files are fsynced and a checkpoint (input position, file sizes, counters, dedup index) is saved
atomically. A restarted run truncates the partial files to the checkpoint sizes, restores the
state and skips the input it already consumed, so no record is lost or written twice. The
finished files are renamed into place at the end and ``report.json`` is written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import pickle
import shutil
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError
from pipeline.errors import UserError
from pipeline.locking import output_lock
from pipeline.records import RecordError, expand_inputs, iter_records, messages_of, parse_record_line

from filters.base import BatchRule, CorpusRule, Parsed, Rule, parse
from filters.config import FilterConfig
from filters.decontam import benchmark_sources
from filters.registry import batch_rules, corpus_rules, enabled_reasons, reason_order, record_rules
from filters.report import Tally, write_reports

__all__ = ["build_rules", "build_batch_rules", "build_corpus_rules", "process_line", "run_filter", "OUTPUT_FILES",
           "BadLine", "Verdict"]

log = logging.getLogger(__name__)
OUTPUT_FILES = ("kept.jsonl", "rejected.jsonl", "bad_lines.jsonl")
PARTIAL = ".partial"
CHECKPOINT_VERSION = 2  # bump when the checkpoint's contents change (2: corpus rules, typed results)


def build_rules(cfg: FilterConfig) -> list[Rule]:
    """The enabled per-record rules, in run order (the table in :mod:`filters.registry`)."""
    return [cls(getattr(cfg, cls.key)) for cls in record_rules() if cls.enabled_reasons(getattr(cfg, cls.key))]


def build_batch_rules(cfg: FilterConfig, out: Path) -> list[BatchRule]:
    """The enabled batch rules (the LLM judge), for this run's main process."""
    return [cls(getattr(cfg, cls.key), out) for cls in batch_rules() if cls.enabled_reasons(getattr(cfg, cls.key))]


def build_corpus_rules(cfg: FilterConfig) -> list[CorpusRule]:
    """The enabled corpus rules (dedup), fresh state, in run order."""
    return [cls(getattr(cfg, cls.key)) for cls in corpus_rules() if cls.enabled_reasons(getattr(cfg, cls.key))]


# --------------------------------------------------------------------------- per-record work (workers)

@dataclass(frozen=True)
class BadLine:
    """A line that is not a usable record: the reason and, when known, the field at fault."""

    error: str
    field: str | None = None


@dataclass
class Verdict:
    """What the per-record rules found for one record (sent back from a worker)."""

    domain: str
    checked: tuple[str, ...]  # reason codes of the rules that had the record in scope
    failed: dict[str, str]  # reason code -> detail, for every rule it failed
    notes: dict[str, str]  # reason code -> a note for the report (e.g. the grader's status)
    signatures: dict[str, Any] = field(default_factory=dict)  # corpus rule key -> its signature
    meta: dict[str, Any] = field(default_factory=dict)  # additions to the record's meta (the judge's verdict)


class _Worker:
    """Per-process state: the per-record rules (built once per process) and the corpus rules' sections."""

    def __init__(self, cfg_data: dict[str, Any]):
        cfg = FilterConfig.model_validate(cfg_data)
        self.rules = build_rules(cfg)
        self.corpus = [(cls, getattr(cfg, cls.key)) for cls in corpus_rules()
                       if cls.enabled_reasons(getattr(cfg, cls.key))]


_WORKER: _Worker | None = None  # set in each worker process by _init_worker


def _init_worker(cfg_data: dict[str, Any]) -> None:
    global _WORKER
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    _WORKER = _Worker(cfg_data)


def process_line(worker: _Worker, raw: bytes | str) -> Verdict | BadLine:
    """One raw JSON line -> the per-record rules' :class:`Verdict`, or a :class:`BadLine`.

    The line is parsed by the shared strict reader (:func:`pipeline.records.parse_record_line`):
    invalid UTF-8 and lone surrogates are bad lines, never a traceback or an altered record.
    """
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape")
    try:
        rec = parse_record_line(data, "<line>", 0)
        msgs = messages_of(rec)
    except RecordError as exc:
        return BadLine(exc.reason, exc.field)
    if not any(m["role"] == "assistant" for m in msgs):
        return BadLine("no assistant turn to filter", "messages")
    p: Parsed = parse(rec)
    checked: list[str] = []
    failed: dict[str, str] = {}
    for rule in worker.rules:
        if rule.applies(p):
            checked.append(rule.reason)
            why = rule.check(p)
            if why is not None:
                failed[rule.reason] = why
    sigs = {} if failed else {cls.key: cls.signature(p, section) for cls, section in worker.corpus}
    return Verdict(p.domain, tuple(checked), failed, p.notes, sigs)


def _process_chunk(lines: list[bytes]) -> list[Verdict | BadLine]:
    assert _WORKER is not None
    return [process_line(_WORKER, raw) for raw in lines]


# --------------------------------------------------------------------------- input

def _source(files: list[Path]) -> Iterator[tuple[str, int, bytes]]:
    """``(path, line, raw_json_bytes)`` for every non-empty input line / row, in order (undecoded:
    the workers parse strictly, so invalid UTF-8 becomes a bad line instead of U+FFFD)."""
    for path in files:
        if path.suffix == ".jsonl":
            with open(path, "rb") as fh:
                for n, raw in enumerate(fh, start=1):
                    raw = raw.strip()
                    if raw:
                        yield str(path), n, raw
        else:  # .json / .parquet: parsed by the shared reader, re-serialised for the workers
            for loc in iter_records(path, on_bad_line="error"):
                text = json.dumps(loc.record, ensure_ascii=False, default=str)
                try:
                    yield loc.path, loc.line, text.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate: keep it escaped, the worker reports it
                    yield loc.path, loc.line, json.dumps(loc.record, default=str).encode("ascii")


def _chunks(it: Iterator[tuple[str, int, bytes]], size: int) -> Iterator[list[tuple[str, int, bytes]]]:
    buf = []
    for item in it:
        buf.append(item)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def _ordered_results(cfg: FilterConfig, cfg_data: dict[str, Any], chunks: Iterator[list[tuple[str, int, bytes]]]):
    """Yield ``(chunk, results)`` in input order, processing in a pool with bounded look-ahead.

    A worker that dies (killed, out of memory, a crash in native code) breaks the pool: the run
    stops with a :class:`UserError` instead of waiting forever for the lost chunk.
    """
    workers = cfg.workers or os.cpu_count() or 1
    if workers <= 1:
        w = _Worker(cfg_data)
        for chunk in chunks:
            yield chunk, [process_line(w, raw) for _, _, raw in chunk]
        return
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    if cfg.answer.enabled:  # import the grader's heavy deps once, before forking (children inherit them)
        from pipeline.grading import grade

        grade("<think>.</think> \\boxed{1}", "2")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(cfg_data,))
    pending: deque = deque()
    try:
        limit = 2 * workers + 2
        for chunk in chunks:
            pending.append((chunk, pool.submit(_process_chunk, [raw for _, _, raw in chunk])))
            while len(pending) >= limit:
                yield pending[0][0], pending[0][1].result()
                pending.popleft()
        while pending:
            yield pending[0][0], pending[0][1].result()
            pending.popleft()
    except BrokenProcessPool:  # from result() or from submit() once the pool knows
        where = f" while filtering {pending[0][0][0][0]} from line {pending[0][0][0][1]}" if pending else ""
        raise UserError(f"filter: a worker process died (killed, out of memory or crashed){where}; "
                        "rerun the same command to resume from the last checkpoint") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- output + checkpoint

class _Outputs:
    def __init__(self, folder: Path, sizes: dict[str, int] | None):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.fh = {}
        for name in OUTPUT_FILES:
            path = folder / name
            if sizes is None:
                path.write_bytes(b"")
            else:
                with open(path, "ab") as f:  # create when absent, then cut back to the checkpoint
                    f.truncate(sizes.get(name, 0))
            self.fh[name] = open(path, "ab")

    def write(self, name: str, line: bytes | str) -> None:
        self.fh[name].write((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n")

    def sync(self) -> dict[str, int]:
        sizes = {}
        for name, f in self.fh.items():
            f.flush()
            os.fsync(f.fileno())
            sizes[name] = f.tell()
        return sizes

    def close(self) -> None:
        for f in self.fh.values():
            f.close()


def _atomic_pickle(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fingerprint(cfg: Any, files: list[Path]) -> str:
    data = cfg.model_dump(exclude={"workers", "chunk_size", "checkpoint_every", "overwrite", "output_dir", "inputs"})
    h = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode())
    for f in files:
        h.update(f"{f.resolve()}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def _with_reasons(raw: str, failed: dict[str, str], details: bool) -> str:
    order = reason_order()
    reasons = [r for r in order if r in failed] + [r for r in failed if r not in order]
    extra = '"reject_reasons": ' + json.dumps(reasons)
    if details:
        extra += ', "reject_details": ' + json.dumps({r: failed[r] for r in reasons}, ensure_ascii=False)
    body = raw.rstrip()
    if body.endswith("}") and '"reject_reasons"' not in body:
        inner = body[:-1].rstrip()
        return inner + (", " if not inner.endswith("{") else "") + extra + "}"
    rec = json.loads(raw)
    rec["reject_reasons"] = reasons
    if details:
        rec["reject_details"] = {r: failed[r] for r in reasons}
    return json.dumps(rec, ensure_ascii=False)


def _finalize(out: Path, state: dict[str, Any]) -> dict[str, Any]:
    part = out / PARTIAL
    for name in OUTPUT_FILES:
        src = part / name
        if src.exists():
            if name == "bad_lines.jsonl" and src.stat().st_size == 0:
                src.unlink()
                (out / name).unlink(missing_ok=True)
                continue
            os.replace(src, out / name)
    report = state["report"]
    write_reports(report, out)  # report.json last: marks the run complete
    shutil.rmtree(part, ignore_errors=True)
    return report


def _prepare(cfg: Any, out: Path, fp: str) -> dict[str, Any] | None:
    """A checkpoint to resume from, or None for a fresh start; errors on a conflicting folder."""
    ckpt = out / PARTIAL / "checkpoint.pkl"
    done = out / "report.json"
    if cfg.overwrite:
        done.unlink(missing_ok=True)
        shutil.rmtree(out / PARTIAL, ignore_errors=True)
        return None
    if ckpt.exists():
        try:
            with open(ckpt, "rb") as fh:
                state = pickle.load(fh)
        except Exception as exc:  # unpickling runs arbitrary class lookups: any failure means "not ours"
            raise ConfigError(f"{ckpt}: cannot read this checkpoint ({type(exc).__name__}: {exc}; written by another "
                              "version?); use another --output or --overwrite") from None
        if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
            raise ConfigError(f"{ckpt}: a checkpoint of another filter version; use another --output or --overwrite")
        if state.get("fingerprint") != fp:
            raise ConfigError(f"{out}: holds an unfinished filter run with a different config or inputs; "
                              "use another --output or --overwrite")
        return state
    if done.exists():
        try:
            prev = json.loads(done.read_text(encoding="utf-8"))
        except ValueError:
            prev = {}
        if prev.get("fingerprint") == fp:
            return {"complete": True, "report": prev}
        raise ConfigError(f"{out}: holds a finished filter run with a different config or inputs; "
                          "use another --output or --overwrite")
    return None


def _readable(text: str) -> str:
    """``text`` with anything that is not valid Unicode (lone surrogates) as a ``\\udXXX`` escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _with_meta(raw: bytes, additions: dict[str, Any]) -> bytes:
    """The record with ``additions`` merged into its ``meta`` (created when absent)."""
    rec = json.loads(raw)
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    rec["meta"] = {**meta, **additions}
    return json.dumps(rec, ensure_ascii=False).encode("utf-8")


class _Run:
    """One (possibly resumed) filter run over ``files`` into ``out``: the loop, checkpoints, the report."""

    def __init__(self, cfg: FilterConfig, files: list[Path], out: Path, fp: str, state: dict[str, Any] | None):
        if state is None:
            state = {"version": CHECKPOINT_VERSION, "fingerprint": fp, "position": 0, "sizes": None,
                     "tally": Tally(enabled_reasons(cfg)), "corpus": build_corpus_rules(cfg), "kept": 0, "seconds": 0.0}
            log.info("filter: %d input file(s) -> %s", len(files), out)
        else:
            log.info("filter: resuming %s after %d records", out, state["position"])
        self.cfg, self.files, self.out, self.state = cfg, files, out, state
        self.benchmarks = benchmark_sources(cfg.decontam)  # in the parent: a set it cannot load fails here
        self.tally: Tally = state["tally"]
        self.corpus: list[CorpusRule] = state["corpus"]
        self.position: int = state["position"]
        self.t0, self.seconds_before = time.perf_counter(), state["seconds"]
        out.mkdir(parents=True, exist_ok=True)
        self.outputs = _Outputs(out / PARTIAL, state["sizes"])
        self.batch: list[BatchRule] = build_batch_rules(cfg, out)

    def checkpoint(self, phase: str = "running") -> None:
        self.state.update(position=self.position, sizes=self.outputs.sync(), phase=phase,
                          seconds=self.seconds_before + time.perf_counter() - self.t0)
        _atomic_pickle(self.out / PARTIAL / "checkpoint.pkl", self.state)

    def bad_line(self, path: str, line: int, raw: bytes, bad: BadLine) -> None:
        if self.cfg.on_bad_line != "quarantine":
            raise RecordError(path, line, bad.error, field=bad.field)
        self.outputs.write("bad_lines.jsonl", json.dumps(  # invalid bytes as \\xNN: the file stays valid UTF-8
            {"file": path, "line": line, "field": bad.field and _readable(bad.field), "error": bad.error,
             "raw": raw.decode("utf-8", "backslashreplace")}, ensure_ascii=False))
        self.tally.bad_lines += 1

    def batch_check(self, chunk: list[tuple[str, int, bytes]], results: list[Verdict | BadLine]) -> None:
        """Run the batch rules (the judge) over the chunk's records in their scope, updating verdicts."""
        for rule in self.batch:
            todo = []
            for (_, _, raw), v in zip(chunk, results):
                if isinstance(v, BadLine) or set(v.failed) - set(rule.after):
                    continue
                p = parse(json.loads(raw))
                if rule.applies(p, v.notes):
                    todo.append((p, v))
            if not todo:
                continue
            for (p, v), (detail, meta) in zip(todo, rule.check_many([(p, v.notes) for p, v in todo])):
                v.checked += (rule.reason,)
                v.meta.update(meta)
                if detail is not None:
                    v.failed[rule.reason] = detail

    def record(self, raw: bytes, v: Verdict) -> None:
        """Apply the corpus rules to a record that passed the per-record rules; write and count it."""
        checked, failed = v.checked, v.failed
        if not failed and self.corpus:
            for rule in self.corpus:
                checked += rule.active
                failed = {**failed, **rule.check(v.signatures[rule.key])}
            if not failed:
                for rule in self.corpus:
                    rule.admit(v.signatures[rule.key], self.state["kept"])
        self.tally.add(v.domain, checked, failed, v.notes)
        if v.meta:
            raw = _with_meta(raw, v.meta)
        if failed:
            self.outputs.write("rejected.jsonl", _with_reasons(raw.decode("utf-8"), failed, self.cfg.write_details))
        else:
            self.state["kept"] += 1
            self.outputs.write("kept.jsonl", raw)

    def loop(self) -> None:
        from tqdm import tqdm

        source = _source(self.files)
        for _ in range(self.position):  # skip what the checkpoint already covers
            next(source, None)
        since = 0
        with tqdm(desc="filter", unit="rec", initial=self.position, smoothing=0.05, mininterval=1.0) as bar:
            for chunk, results in _ordered_results(self.cfg, self.cfg.model_dump(), _chunks(source, self.cfg.chunk_size)):
                self.batch_check(chunk, results)
                for (path, line, raw), res in zip(chunk, results):
                    self.position += 1
                    if isinstance(res, BadLine):
                        self.bad_line(path, line, raw, res)
                    else:
                        self.record(raw, res)
                bar.update(len(chunk))
                since += len(chunk)
                if since >= self.cfg.checkpoint_every:
                    self.checkpoint()
                    since = 0

    def finish(self) -> None:
        seconds = self.seconds_before + time.perf_counter() - self.t0
        report = self.tally.to_dict()
        report.update(fingerprint=self.state["fingerprint"], output_dir=str(self.out),
                      inputs=[str(f) for f in self.files], decontam_benchmarks=self.benchmarks,
                      config=self.cfg.model_dump(mode="json"),  # for the dataset card (`distill mix`)
                      run={"seconds": round(seconds, 2),
                           "records_per_s": round(self.tally.input / seconds, 1) if seconds else 0.0,
                           "workers": self.cfg.workers or os.cpu_count()})
        self.state["report"] = report
        self.checkpoint("finalizing")


def run_filter(cfg: FilterConfig) -> dict[str, Any]:
    """Filter ``cfg.inputs`` into ``cfg.output_dir`` holding its lock; returns the report."""
    if not cfg.inputs:
        raise ConfigError("filter: no inputs (set inputs: in the config or pass --inputs)")
    files = expand_inputs(cfg.inputs)
    out = Path(cfg.output_dir)
    with output_lock(out, "filter run"):
        fp = _fingerprint(cfg, files)
        state = _prepare(cfg, out, fp)
        if state and state.get("complete"):
            log.info("filter: %s already holds this finished run; nothing to do", out)
            return state["report"]
        if state and state.get("phase") == "finalizing":
            return _finalize(out, state)
        run = _Run(cfg, files, out, fp, state)
        try:
            run.loop()
            if run.tally.input + run.tally.bad_lines == 0:
                shutil.rmtree(out / PARTIAL, ignore_errors=True)
                raise UserError(f"filter: the inputs hold no records ({', '.join(map(str, files))}); nothing to filter")
            run.finish()
        finally:
            run.outputs.close()
            for rule in run.batch:
                rule.close()
        return _finalize(out, run.state)
