"""Text that is not Unicode is a bad line, never a traceback and never silently altered.

A lone surrogate (``"\\ud800"``) is valid JSON but not valid text; invalid UTF-8 bytes used to be
replaced by U+FFFD and the altered record flowed on. The shared reader rejects both with file, line
and field; the stages that read records outside the filter (generate prompts, sft data, eval score)
end in one line, exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.records import BadLineSink, RecordError, iter_records

GOOD = {"messages": [{"role": "user", "content": "What is 1+1?"}, {"role": "assistant", "content": "2 😀"}],
        "answer": "2", "response": "<think>\nok\n</think> \\boxed{2}"}
SURROGATE = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a \\ud800 b"}]}'
BAD_BYTES = b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "x"}]}'


def _jsonl(path: Path, *lines: bytes) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def _good() -> bytes:
    return json.dumps(GOOD).encode()


@pytest.mark.parametrize("bad, reason, field", [
    (SURROGATE, "lone surrogate", "messages[1].content"),
    (BAD_BYTES, "invalid UTF-8 (byte 0xe9", None),
])
def test_reader_rejects_text_that_is_not_unicode(tmp_path, bad, reason, field):
    path = _jsonl(tmp_path / "in.jsonl", _good(), bad, _good())
    with pytest.raises(RecordError) as exc:
        list(iter_records(path))
    assert exc.value.line == 2 and reason in exc.value.reason and exc.value.field == field
    assert str(exc.value).startswith(f"{path}:2:")


def test_quarantine_keeps_the_bad_lines_and_reads_on(tmp_path):
    path = _jsonl(tmp_path / "in.jsonl", SURROGATE, _good(), BAD_BYTES, _good())
    sink = BadLineSink(tmp_path / "bad.jsonl")
    recs = [loc.record for loc in iter_records(path, on_bad_line="quarantine", sink=sink)]
    sink.close()
    assert recs == [GOOD, GOOD]  # the pair-escaped emoji of a good line is fine
    bad = [json.loads(x) for x in (tmp_path / "bad.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [b["line"] for b in bad] == [1, 3]
    assert "\\xe9" in bad[1]["raw"] and "\ufffd" not in bad[1]["raw"]  # the byte is shown, not replaced


def test_json_array_file_with_a_lone_surrogate(tmp_path):
    path = tmp_path / "in.json"
    path.write_text('[{"a": "fine"}, {"a": ["x", "\\udc00"]}]', encoding="utf-8")
    with pytest.raises(RecordError, match=r"in.json:2: field 'a\[1\]': item 2: lone surrogate"):
        list(iter_records(path))


def _one_line_error(capsys, expected: str) -> None:
    err = capsys.readouterr().err
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("distill ")]  # not tqdm's bars
    assert "Traceback" not in err and len(lines) == 1 and expected in lines[0], err


def test_eval_score_names_the_line(tmp_path, capsys):
    path = _jsonl(tmp_path / "responses.jsonl", _good(), SURROGATE)
    assert main(["eval", "score", "--input", str(path), "--output", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, f"{path}:2: field 'messages[1].content': lone surrogate")
    assert not (tmp_path / "o" / "scored.jsonl").exists()  # no 0-byte output left behind


@pytest.mark.parametrize("suffix, content", [
    (".jsonl", b'{"id": "a", "problem": "1+1?", "answer": "2"}\n{"id": "b", "problem": "caf\xe9", "answer": "1"}\n'),
    (".jsonl", b'{"id": "a", "problem": "1+1?", "answer": "2"}\n{"id": "b", "problem": "\\ud800", "answer": "1"}\n'),
    (".csv", b'id,problem,answer\na,1+1?,2\nb,caf\xe9,1\n'),
])
def test_generate_prompts_name_the_line(tmp_path, capsys, suffix, content):
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(content)
    assert main(["generate", "--model", "served", "--backend", "openai", "--input", str(path),
                 "--output", str(tmp_path / "gen")]) == 2
    _one_line_error(capsys, f"{path}:{3 if suffix == '.csv' else 2}:")
    assert not (tmp_path / "gen").exists()


def test_sft_data_names_the_line(tmp_path, capsys, tiny_model_dir):
    data = _jsonl(tmp_path / "data.jsonl", _good(), BAD_BYTES)
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\ndata: [{data}]\noutput_dir: {tmp_path / 'run'}\nmax_steps: 1\n"
                   "progress: false\n")
    assert main(["sft", "--config", str(cfg)]) == 2
    _one_line_error(capsys, f"{data}:2: invalid UTF-8 (byte 0xe9")
