"""Records on disk: reading JSONL/JSON/Parquet with located errors, and the crash-safe shard writer.

Every stage reads and writes through this module, so every corpus the project writes is plain
JSONL in the Hugging Face chat format (``messages``) that ``datasets.load_dataset("json", ...)``,
TRL, LLaMA-Factory and axolotl load unchanged.

Exactly-once writing
--------------------
:class:`ShardWriter` appends whole lines, then ``flush`` + ``fsync`` per batch. On open it
repairs a torn tail (a line cut by a kill has no trailing newline, or does not parse) by
truncating it, and reports the keys already written, so a restarted run skips exactly those.
Since a record is only "done" once its full line is on disk, a SIGKILL at any byte loses no
finished record and duplicates none. An exclusive ``flock`` stops two processes writing one shard.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import OutputBusy, UserError

__all__ = [
    "RecordError", "Located", "iter_records", "expand_inputs", "ShardWriter", "write_json_atomic",
    "write_text_atomic", "messages_of", "assistant_text", "user_text", "BadLineSink", "OnBadLine",
    "read_jsonl", "export_parquet", "parse_record_line", "invalid_text_field", "split_files",
]

OnBadLine = Literal["error", "quarantine"]
READABLE_SUFFIXES = (".jsonl", ".json", ".parquet")
# Reports the stages write next to their shards (stats.json, shard-….stats.json, report.json): never records.
REPORT_SUFFIXES = ("stats.json", "report.json")


class RecordError(ValueError):
    """Bad input, located: names the file, the line (1-based) and the field when known."""

    def __init__(self, path: str | Path, line: int | None, message: str, field: str | None = None):
        self.path, self.line, self.field, self.reason = str(path), line, field, message
        where = f"{path}:{line}" if line is not None else str(path)
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")


@dataclass(frozen=True)
class Located:
    """A record with where it came from (for error messages and quarantine)."""

    path: str
    line: int
    record: dict[str, Any]


class BadLineSink:
    """Collects malformed lines (``--on-bad-line quarantine``) into a JSONL file, with reasons."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.count = 0
        self._fh = None

    def add(self, error: RecordError, raw: str) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps({"file": error.path, "line": error.line, "field": error.field,
                                   "error": error.reason, "raw": raw}, ensure_ascii=False) + "\n")
        self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders expand to their ``*.jsonl``/``*.json``/``*.parquet`` (sorted, recursive),
    skipping hidden/underscore files and stage reports (``*stats.json``, ``*report.json``)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in READABLE_SUFFIXES
                           and not f.name.startswith((".", "_")) and ".tmp" not in f.name
                           and not f.name.endswith(REPORT_SUFFIXES))
            if not found:
                raise RecordError(p, None, "folder holds no .jsonl/.json/.parquet files")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise RecordError(p, None, "input not found")
    return out


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def invalid_text_field(obj: Any, where: str = "") -> str | None:
    """The field path (``messages[1].content``) of the first string, key or value, that is not valid
    Unicode text (a lone surrogate such as ``"\\ud800"``: valid JSON, but no UTF-8 encoding exists)."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return where or "<record>"
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            sub = f"{where}.{k}" if where else str(k)
            found = invalid_text_field(k, sub) or invalid_text_field(v, sub)
            if found:
                return found
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found = invalid_text_field(v, f"{where}[{i}]")
            if found:
                return found
    return None


def parse_record_line(raw: bytes, path: str | Path, line: int) -> dict[str, Any]:
    """One JSONL line -> its record, or a :class:`RecordError` naming file, line (and field).

    Strict: invalid UTF-8 bytes are an error (never silently replaced by U+FFFD), and so is a lone
    surrogate escape, which every later step (tokenizer, writer) would choke on.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(path, line, f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of "
                                      "the line)") from None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(path, line, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(rec, dict):
        raise RecordError(path, line, f"expected a JSON object, got {type(rec).__name__}")
    if _SURROGATE_ESCAPE.search(text):  # only an escape can smuggle in a lone surrogate
        field = invalid_text_field(rec)
        if field:
            raise RecordError(path, line, "lone surrogate (an unpaired \\ud800-\\udfff escape: not valid "
                                          "Unicode text)", field=field)
    return rec


_SPLIT_SHARD = re.compile(r"^(?P<split>\w+?)-\d{5}-of-\d{5}\.parquet$")


def split_files(item: str | Path, split: str = "train") -> list[Path]:
    """One split of a dataset folder in the Hub layout (``<dir>/data/<split>-00000-of-00002.parquet``,
    what ``distill mix`` writes); any other file or folder is :func:`expand_inputs` of it."""
    p = Path(item)
    shards = sorted(f for f in (p / "data").glob("*.parquet") if _SPLIT_SHARD.match(f.name)) if p.is_dir() else []
    if not shards:
        return expand_inputs([p])
    mine = [f for f in shards if _SPLIT_SHARD.match(f.name)["split"] == split]
    if not mine:
        found = sorted({_SPLIT_SHARD.match(f.name)["split"] for f in shards})
        raise RecordError(p, None, f"no {split!r} split in data/ (splits there: {', '.join(found)})")
    return mine


def _iter_jsonl(path: Path, on_bad_line: OnBadLine, sink: BadLineSink | None) -> Iterator[Located]:
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            raw = raw.strip()
            if not raw:
                continue
            try:
                rec = parse_record_line(raw, path, n)
            except RecordError as err:
                if on_bad_line == "quarantine" and sink is not None:
                    sink.add(err, raw.decode("utf-8", errors="backslashreplace"))
                    continue
                raise
            yield Located(str(path), n, rec)


def _iter_json(path: Path, on_bad_line: OnBadLine, sink: BadLineSink | None) -> Iterator[Located]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise RecordError(path, line, f"invalid UTF-8 (byte 0x{raw[exc.start]:02x})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        # Many ".json" corpora are really JSON Lines.
        yield from _iter_jsonl(path, on_bad_line, sink)
        return
    if isinstance(data, dict):
        # {"data": [...]} / {"train": [...]} style wrappers: take the single list value.
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else [data]
    if not isinstance(data, list):
        raise RecordError(path, None, "JSON file must hold a list of objects")
    check_text = bool(_SURROGATE_ESCAPE.search(text))
    for i, rec in enumerate(data, start=1):
        err = None
        if not isinstance(rec, dict):
            err = RecordError(path, i, f"item {i} is not an object")
        elif check_text and (field := invalid_text_field(rec)):
            err = RecordError(path, i, f"item {i}: lone surrogate (not valid Unicode text)", field=field)
        if err is not None:
            if on_bad_line == "quarantine" and sink is not None:
                sink.add(err, json.dumps(rec))
                continue
            raise err
        yield Located(str(path), i, rec)


def _iter_parquet(path: Path) -> Iterator[Located]:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for rec in batch.to_pylist():
            n += 1
            yield Located(str(path), n, rec)


def iter_records(inputs: Iterable[str | Path] | str | Path, on_bad_line: OnBadLine = "error",
                 sink: BadLineSink | None = None) -> Iterator[Located]:
    """Stream records from files/folders. ``line`` is the 1-based line (JSONL) or row (Parquet/JSON)."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    for path in expand_inputs(inputs):
        if path.suffix == ".parquet":
            yield from _iter_parquet(path)
        elif path.suffix == ".json":
            yield from _iter_json(path, on_bad_line, sink)
        else:
            yield from _iter_jsonl(path, on_bad_line, sink)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every record of one file, in order (small files: tests, reports)."""
    return [loc.record for loc in iter_records(path)]


# --------------------------------------------------------------------------- chat accessors

def messages_of(record: dict[str, Any], where: tuple[str, int] | None = None) -> list[dict[str, Any]]:
    """The record's ``messages`` list, validated (role/content strings), or a located error."""
    path, line = where if where else ("<record>", None)
    msgs = record.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RecordError(path, line, "missing or empty (expected a list of {role, content})", field="messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RecordError(path, line, "each message needs string 'role' and 'content'", field=f"messages[{i}]")
    return msgs


def assistant_text(record: dict[str, Any]) -> str:
    """The last assistant turn's content ('' when there is none)."""
    for m in reversed(record.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "assistant":
            return m.get("content") or ""
    return ""


def user_text(record: dict[str, Any]) -> str:
    """The first user turn's content ('' when there is none)."""
    for m in record.get("messages") or []:
        if isinstance(m, dict) and m.get("role") == "user":
            return m.get("content") or ""
    return ""


# --------------------------------------------------------------------------- writing

def _repair_tail(path: Path) -> None:
    """Truncate a torn last line (no newline, or not valid JSON) left by a kill mid-write."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "r+b") as fh:
        # Find the start of the last line.
        block = 1 << 16
        pos = size
        tail = b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            tail = fh.read(step) + tail
            cut = tail.rfind(b"\n", 0, len(tail) - 1)
            if cut >= 0:
                start = pos + cut + 1
                break
        else:
            start = 0
        fh.seek(start)
        last = fh.read()
        ok = last.endswith(b"\n")
        if ok:
            try:
                json.loads(last)
            except ValueError:
                ok = False
        if not ok:
            fh.truncate(start)
            fh.flush()
            os.fsync(fh.fileno())


class ShardWriter:
    """Append-only, crash-safe JSONL writer with resume: ``done`` holds the keys already on disk.

    ``key`` maps a record to its identity (e.g. ``(prompt_id, sample_index)``). Use as a context
    manager; ``write`` appends a batch and fsyncs before returning, so a returned call is durable.
    """

    def __init__(self, path: str | Path, key: Callable[[dict[str, Any]], Any] = lambda r: r["id"]):
        self.path = Path(path)
        self.key = key
        if self.path.is_dir():
            raise UserError(f"{self.path}: is a folder; this output must be a file path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Not ``<file>.lock``: that is the stage-level ``pipeline.locking.output_lock`` of a file output,
        # held by the same process around this writer (two flocks on one file would refuse each other).
        self._lock = open(self.path.with_name(f".{self.path.name}.writer-lock"), "w")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise OutputBusy(f"{self.path}: another process is writing this file; wait for it to finish "
                             "or choose another output") from None
        self.done: set[Any] = set()
        self.duplicates_on_disk = 0
        self._created = not self.path.exists()
        if not self._created:
            _repair_tail(self.path)
            for loc in _iter_jsonl(self.path, "error", None):
                k = key(loc.record)
                if k in self.done:
                    self.duplicates_on_disk += 1
                self.done.add(k)
        self._fh = open(self.path, "a", encoding="utf-8")
        self.written = 0

    def write(self, records: Iterable[dict[str, Any]]) -> int:
        lines = []
        for rec in records:
            k = self.key(rec)
            if k in self.done:
                continue
            self.done.add(k)
            lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
        if lines:
            try:
                self._fh.write("".join(lines))
                self._fh.flush()
                os.fsync(self._fh.fileno())
            except OSError as exc:  # disk full, quota, I/O error: the lines on disk stay exact (see _repair_tail)
                raise UserError(f"{self.path}: cannot write ({exc.strerror or exc}); records written before are "
                                "kept: free space and rerun the same command to resume") from exc
            self.written += len(lines)
        return len(lines)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        if not self._lock.closed:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            try:
                os.unlink(self._lock.name)
            except OSError:
                pass

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            self.close()
        except OSError:
            if exc_type is None:
                raise
            # closing after a failed write retries the unwritten buffer; the first error is the one to report
        if exc_type is not None and self._created and self.written == 0:
            # A run that failed before writing anything leaves no empty output behind.
            try:
                if self.path.stat().st_size == 0:
                    self.path.unlink()
            except OSError:
                pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write via a temp file in the same folder + fsync + rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give reports the usual permissions
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def export_parquet(jsonl_path: str | Path, parquet_path: str | Path) -> Path:
    """Convert a finished JSONL shard to Parquet (atomic rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = read_jsonl(jsonl_path)
    parquet_path = Path(parquet_path)
    tmp = parquet_path.with_name(f".{parquet_path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, parquet_path)
    return parquet_path
