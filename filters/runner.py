"""Streaming, multi-process, resumable filter run: inputs -> kept / rejected / bad lines + report.

Flow: the main process reads input lines (raw text, no parsing), sends chunks of
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
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError
from pipeline.records import RecordError, expand_inputs, iter_records, messages_of

from filters.base import Parsed, Rule, parse
from filters.report import Tally, write_reports

__all__ = ["build_rules", "RULE_ORDER", "process_line", "run_filter", "OUTPUT_FILES"]

log = logging.getLogger(__name__)
RULE_ORDER = ["format", "truncated", "length", "mixed_language", "redundancy", "long_paragraph", "code_block",
              "wrong_answer", "contaminated", "duplicate", "near_duplicate", "prompt_cap"]
OUTPUT_FILES = ("kept.jsonl", "rejected.jsonl", "bad_lines.jsonl")
PARTIAL = ".partial"


def build_rules(cfg: Any, include_decontam: bool = True) -> list[Rule]:
    """The enabled per-record rules, in pipeline order (cheap structural checks first)."""
    from filters.answer import AnswerRule
    from filters.code_blocks import CodeBlockRule
    from filters.decontam import DecontamRule
    from filters.format import FormatRule
    from filters.language import LanguageRule
    from filters.length import LengthRule
    from filters.paragraphs import ParagraphRule
    from filters.redundancy import RedundancyRule
    from filters.truncation import TruncationRule

    pairs = [(cfg.format, FormatRule), (cfg.truncation, TruncationRule), (cfg.length, LengthRule),
             (cfg.language, LanguageRule), (cfg.redundancy, RedundancyRule), (cfg.paragraphs, ParagraphRule),
             (cfg.code_blocks, CodeBlockRule), (cfg.answer, AnswerRule)]
    if include_decontam:
        pairs.append((cfg.decontam, DecontamRule))
    return [cls(section) for section, cls in pairs if section.enabled]


# --------------------------------------------------------------------------- per-record work (workers)

class _Worker:
    """Per-process state: the rules (built once per process) and the dedup settings."""

    def __init__(self, cfg_data: dict[str, Any]):
        from filters.stage import FilterConfig

        cfg = FilterConfig.model_validate(cfg_data)
        self.rules = build_rules(cfg)
        self.dedup = cfg.dedup if cfg.dedup.enabled and (cfg.dedup.exact or cfg.dedup.near) else None


_WORKER: _Worker | None = None  # set in each worker process by _init_worker


def _init_worker(cfg_data: dict[str, Any]) -> None:
    global _WORKER
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    _WORKER = _Worker(cfg_data)


def process_line(worker: _Worker, raw: str) -> tuple:
    """One raw JSON line -> ``("bad", message, field)`` or ``("ok", domain, checked, failed, notes, sig)``."""
    try:
        rec = json.loads(raw)
    except json.JSONDecodeError as exc:
        return ("bad", f"malformed JSON ({exc.msg} at column {exc.colno})", None)
    if not isinstance(rec, dict):
        return ("bad", f"expected a JSON object, got {type(rec).__name__}", None)
    try:
        msgs = messages_of(rec)
    except RecordError as exc:
        return ("bad", exc.reason, exc.field)
    if not any(m["role"] == "assistant" for m in msgs):
        return ("bad", "no assistant turn to filter", "messages")
    p: Parsed = parse(rec)
    checked: list[str] = []
    failed: dict[str, str] = {}
    for rule in worker.rules:
        if rule.applies(p):
            checked.append(rule.name)
            why = rule.check(p)
            if why is not None:
                failed[rule.name] = why
    sig = None
    if not failed and worker.dedup is not None:
        from filters.dedup import signature_of

        sig = signature_of(p, worker.dedup)
    return ("ok", p.domain, tuple(checked), failed, p.notes, sig)


def _process_chunk(lines: list[str]) -> list[tuple]:
    assert _WORKER is not None
    return [process_line(_WORKER, raw) for raw in lines]


# --------------------------------------------------------------------------- input

def _source(files: list[Path]) -> Iterator[tuple[str, int, str]]:
    """``(path, line, raw_json_text)`` for every non-empty input line / row, in order."""
    for path in files:
        if path.suffix == ".jsonl":
            with open(path, "rb") as fh:
                for n, raw in enumerate(fh, start=1):
                    text = raw.decode("utf-8", errors="replace").strip()
                    if text:
                        yield str(path), n, text
        else:  # .json / .parquet: parsed by the shared reader, re-serialised for the workers
            for loc in iter_records(path, on_bad_line="error"):
                yield loc.path, loc.line, json.dumps(loc.record, ensure_ascii=False, default=str)


def _chunks(it: Iterator[tuple[str, int, str]], size: int) -> Iterator[list[tuple[str, int, str]]]:
    buf = []
    for item in it:
        buf.append(item)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def _ordered_results(cfg: Any, cfg_data: dict[str, Any], chunks: Iterator[list[tuple[str, int, str]]]):
    """Yield ``(chunk, results)`` in input order, processing in a pool with bounded look-ahead."""
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
    with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg_data,)) as pool:
        pending: deque = deque()
        limit = 2 * workers + 2
        for chunk in chunks:
            pending.append((chunk, pool.apply_async(_process_chunk, ([raw for _, _, raw in chunk],))))
            while len(pending) >= limit:
                c, fut = pending.popleft()
                yield c, fut.get()
        while pending:
            c, fut = pending.popleft()
            yield c, fut.get()


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

    def write(self, name: str, line: str) -> None:
        self.fh[name].write(line.encode("utf-8") + b"\n")

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
    reasons = [r for r in RULE_ORDER if r in failed] + [r for r in failed if r not in RULE_ORDER]
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
        with open(ckpt, "rb") as fh:
            state = pickle.load(fh)
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


def run_filter(cfg: Any) -> dict[str, Any]:
    from tqdm import tqdm

    from filters.dedup import Deduplicator

    if not cfg.inputs:
        raise ConfigError("filter: no inputs (set inputs: in the config or pass --inputs)")
    files = expand_inputs(cfg.inputs)
    out = Path(cfg.output_dir)
    fp = _fingerprint(cfg, files)
    state = _prepare(cfg, out, fp)
    if state and state.get("complete"):
        log.info("filter: %s already holds this finished run; nothing to do", out)
        return state["report"]
    if state and state.get("phase") == "finalizing":
        return _finalize(out, state)

    dedup_on = cfg.dedup.enabled and (cfg.dedup.exact or cfg.dedup.near or cfg.dedup.max_per_prompt is not None)
    order = [r for r in RULE_ORDER if _rule_enabled(cfg, r)]
    if state is None:
        state = {"fingerprint": fp, "position": 0, "sizes": None, "tally": Tally(order),
                 "dedup": Deduplicator(cfg.dedup) if dedup_on else None, "kept": 0, "seconds": 0.0}
        log.info("filter: %d input file(s) -> %s", len(files), out)
    else:
        log.info("filter: resuming %s after %d records", out, state["position"])
    out.mkdir(parents=True, exist_ok=True)
    part = out / PARTIAL
    outputs = _Outputs(part, state["sizes"])
    tally: Tally = state["tally"]
    dedup = state["dedup"]
    cfg_data = cfg.model_dump()
    t0 = time.perf_counter()
    seconds_before = state["seconds"]
    position = state["position"]

    def checkpoint(phase: str = "running") -> None:
        state.update(position=position, sizes=outputs.sync(), phase=phase,
                     seconds=seconds_before + time.perf_counter() - t0)
        _atomic_pickle(part / "checkpoint.pkl", state)

    source = _source(files)
    for _ in range(position):  # skip what the checkpoint already covers
        next(source, None)
    since = 0
    bar = tqdm(desc="filter", unit="rec", initial=position, smoothing=0.05, mininterval=1.0)
    try:
        for chunk, results in _ordered_results(cfg, cfg_data, _chunks(source, cfg.chunk_size)):
            for (path, line, raw), res in zip(chunk, results):
                position += 1
                if res[0] == "bad":
                    err = RecordError(path, line, res[1], field=res[2])
                    if cfg.on_bad_line != "quarantine":
                        raise err
                    outputs.write("bad_lines.jsonl", json.dumps(
                        {"file": path, "line": line, "field": res[2], "error": res[1], "raw": raw}, ensure_ascii=False))
                    tally.bad_lines += 1
                    continue
                _, domain, checked, failed, notes, sig = res
                if dedup is not None and not failed:
                    dfailed, m = dedup.check(sig)
                    checked = checked + tuple(dedup.rules())
                    if dfailed:
                        failed = dfailed
                    else:
                        dedup.admit(sig, m, state["kept"])
                tally.add(domain, checked, failed, notes)
                if failed:
                    outputs.write("rejected.jsonl", _with_reasons(raw, failed, cfg.write_details))
                else:
                    state["kept"] += 1
                    outputs.write("kept.jsonl", raw)
            bar.update(len(chunk))
            since += len(chunk)
            if since >= cfg.checkpoint_every:
                checkpoint()
                since = 0
        bar.close()
        seconds = seconds_before + time.perf_counter() - t0
        report = tally.to_dict()
        report.update(fingerprint=fp, output_dir=str(out), inputs=[str(f) for f in files],
                      run={"seconds": round(seconds, 2), "records_per_s": round(tally.input / seconds, 1) if seconds else 0.0,
                           "workers": cfg.workers or os.cpu_count()})
        state["report"] = report
        checkpoint("finalizing")
    finally:
        bar.close()
        outputs.close()
    return _finalize(out, state)


def _rule_enabled(cfg: Any, rule: str) -> bool:
    sections = {"format": cfg.format, "truncated": cfg.truncation, "length": cfg.length,
                "mixed_language": cfg.language, "redundancy": cfg.redundancy, "long_paragraph": cfg.paragraphs,
                "code_block": cfg.code_blocks, "wrong_answer": cfg.answer, "contaminated": cfg.decontam}
    if rule in sections:
        return sections[rule].enabled
    d = cfg.dedup
    return d.enabled and {"duplicate": d.exact, "near_duplicate": d.near,
                          "prompt_cap": d.max_per_prompt is not None}[rule]
