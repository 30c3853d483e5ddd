"""Foundation IO: located read errors, ShardWriter torn-tail repair, exactly-once resume, one writer per shard."""

from __future__ import annotations

import json

import pytest

from pipeline.records import BadLineSink, RecordError, ShardWriter, expand_inputs, iter_records, read_jsonl


def _key(r):
    return (r["p"], r["k"])


def test_writer_skips_keys_already_on_disk(tmp_path):
    path = tmp_path / "s.jsonl"
    with ShardWriter(path, key=_key) as w:
        assert w.write([{"p": "a", "k": 0}, {"p": "a", "k": 1}]) == 2
        assert w.write([{"p": "a", "k": 1}]) == 0  # same key within a run
    with ShardWriter(path, key=_key) as w:
        assert w.done == {("a", 0), ("a", 1)}
        assert w.write([{"p": "a", "k": 0}, {"p": "b", "k": 0}]) == 1
    assert [_key(r) for r in read_jsonl(path)] == [("a", 0), ("a", 1), ("b", 0)]


@pytest.mark.parametrize("tail", [b'{"p": "c", "k"', b'{"p": "c", "k": 0}', b"\xff\xfe garbage\n", b'{"p": '])
def test_torn_tail_is_cut_and_the_record_rewritten_once(tmp_path, tail):
    path = tmp_path / "s.jsonl"
    with ShardWriter(path, key=_key) as w:
        w.write([{"p": "a", "k": 0}, {"p": "b", "k": 0}])
    with open(path, "ab") as fh:  # what a kill in the middle of a write leaves behind
        fh.write(tail)
    with ShardWriter(path, key=_key) as w:
        assert w.done == {("a", 0), ("b", 0)}  # the torn record does not count as written
        w.write([{"p": "c", "k": 0}])
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 3
    assert [_key(r) for r in read_jsonl(path)] == [("a", 0), ("b", 0), ("c", 0)]


def test_second_writer_on_the_same_shard_is_refused(tmp_path):
    path = tmp_path / "s.jsonl"
    with ShardWriter(path, key=_key):
        with pytest.raises(RuntimeError, match="another process is writing"):
            ShardWriter(path, key=_key)
    with ShardWriter(path, key=_key):  # lock released on close
        pass


def test_malformed_line_is_located_or_quarantined(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2,}\n[1, 2]\n{"a": 3}\n', encoding="utf-8")
    with pytest.raises(RecordError, match=r"in\.jsonl:3: malformed JSON") as err:
        list(iter_records(path))
    assert err.value.line == 3
    sink = BadLineSink(tmp_path / "bad.jsonl")
    got = [(loc.line, loc.record["a"]) for loc in iter_records(path, on_bad_line="quarantine", sink=sink)]
    sink.close()
    assert got == [(1, 1), (5, 3)]
    bad = read_jsonl(tmp_path / "bad.jsonl")
    assert [b["line"] for b in bad] == [3, 4] and "expected a JSON object" in bad[1]["error"]


def test_folder_expansion_skips_reports_hidden_and_temp_files(tmp_path):
    (tmp_path / "shard-00000-of-00001.jsonl").write_text('{"a": 1}\n')
    for name in ("stats.json", "shard-00000-of-00002.stats.json", "report.json", ".ledger.jsonl", "_x.jsonl",
                 ".a.json.tmp"):
        (tmp_path / name).write_text("{}\n")
    assert [p.name for p in expand_inputs([tmp_path])] == ["shard-00000-of-00001.jsonl"]
    with pytest.raises(RecordError, match="input not found"):
        expand_inputs([tmp_path / "absent.jsonl"])


def test_json_list_file_rows_are_numbered(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"data": [{"a": 1}, {"a": 2}]}), encoding="utf-8")
    assert [(loc.line, loc.record["a"]) for loc in iter_records(path)] == [(1, 1), (2, 2)]
