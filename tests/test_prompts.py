"""Prompt sources and templates: formats, column mapping, stable ids, duplicates, located errors."""

from __future__ import annotations

import json

import pytest

from pipeline.prompts import PromptSourceConfig, content_id, load_prompt_set, load_prompts, shard_of
from pipeline.records import RecordError
from prompts import TemplateError, apply_template, builtin_templates, load_template

ROWS = [{"question": "What is 2+2?", "final": 4, "uid": "q1", "subject": "math", "level": 1},
        {"question": "Write a function that reverses a list.", "final": None, "uid": "q2", "subject": "code",
         "level": 2}]
MAPPING = dict(problem_column="question", answer_column="final", id_column="uid", domain_column="subject")


def _write_all_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    (tmp_path / "p.json").write_text(json.dumps(ROWS), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "p.parquet")
    (tmp_path / "p.csv").write_text("question,final,uid,subject,level\nWhat is 2+2?,4,q1,math,1\n"
                                    '"Write a function that reverses a list.",,q2,code,2\n', encoding="utf-8")
    return ["p.jsonl", "p.json", "p.parquet", "p.csv"]


def test_every_format_maps_columns_the_same_way(tmp_path):
    for name in _write_all_formats(tmp_path):
        got = load_prompts(PromptSourceConfig(path=str(tmp_path / name), **MAPPING))
        assert [(p.id, p.problem, p.answer, p.domain) for p in got] == [
            ("q1", "What is 2+2?", "4", "math"), ("q2", "Write a function that reverses a list.", None, "code")], name
        assert set(got[0].meta) == {"level"}  # unmapped fields are carried in meta
        assert got[0].source.endswith(f"{name}:{2 if name.endswith('.csv') else 1}")


def test_content_hash_ids_are_stable_and_domain_scoped(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"problem": "  What is 1+1?"}\n', encoding="utf-8")
    p = load_prompts(PromptSourceConfig(path=str(tmp_path / "a.jsonl")))[0]
    assert p.id == content_id("What is 1+1?", "math") and len(p.id) == 16
    assert p.id != content_id("What is 1+1?", "science")
    assert p.answer is None and p.meta == {}


def test_duplicates_are_reported_and_dropped(tmp_path):
    rows = [{"problem": "A"}, {"problem": "B"}, {"problem": "A "}, {"problem": "A"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ps = load_prompt_set(PromptSourceConfig(path=str(tmp_path / "d.jsonl")))
    assert [p.problem for p in ps.prompts] == ["A", "B"]
    assert ps.duplicates == 2 and ps.duplicate_examples[0]["first"].endswith("d.jsonl:1")
    kept = load_prompt_set(PromptSourceConfig(path=str(tmp_path / "d.jsonl"), drop_duplicates=False))
    assert kept.duplicates == 2 and len(kept.prompts) == 2  # same content id twice cannot be kept twice


def test_one_id_for_two_problems_is_an_error(tmp_path):
    (tmp_path / "i.jsonl").write_text('{"problem": "A", "id": 7}\n{"problem": "B", "id": 7}\n', encoding="utf-8")
    with pytest.raises(RecordError, match=r"i\.jsonl:2: field 'id': id '7' is already used .*i\.jsonl:1"):
        load_prompts(PromptSourceConfig(path=str(tmp_path / "i.jsonl"), id_column="id"))


@pytest.mark.parametrize("line,message", [
    ('{"question": "x"}', r"bad\.jsonl:2: field 'problem': missing \(columns present: question\)"),
    ('{"problem": "   "}', r"bad\.jsonl:2: field 'problem': empty prompt"),
    ('{"problem": 12}', r"bad\.jsonl:2: field 'problem': must be a string, got int"),
    ('{"problem": "ok", ', r"bad\.jsonl:2: malformed JSON"),
])
def test_bad_rows_are_located(tmp_path, line, message):
    (tmp_path / "bad.jsonl").write_text('{"problem": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(RecordError, match=message):
        load_prompts(PromptSourceConfig(path=str(tmp_path / "bad.jsonl")))


def test_require_answer_and_limit(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"problem": "A", "answer": "1"}\n{"problem": "B", "answer": ""}\n')
    with pytest.raises(RecordError, match=r"a\.jsonl:2: field 'answer': missing or empty reference answer"):
        load_prompts(PromptSourceConfig(path=str(tmp_path / "a.jsonl"), require_answer=True))
    assert [p.problem for p in load_prompts(PromptSourceConfig(path=str(tmp_path / "a.jsonl"), limit=1))] == ["A"]


def test_csv_with_extra_cells_is_located(tmp_path):
    (tmp_path / "c.csv").write_text("problem,answer\nA,1\nB,2,oops\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"c\.csv:3: more cells than header columns"):
        load_prompts(PromptSourceConfig(path=str(tmp_path / "c.csv")))


def test_no_source_and_unreachable_hub_are_clear_errors(monkeypatch):
    with pytest.raises(RecordError, match="no prompt source"):
        load_prompts(PromptSourceConfig())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RecordError, match=r"hf://nobody/no-such-set.*could not load split 'train'.*input\.path"):
        load_prompts(PromptSourceConfig(dataset="nobody/no-such-set"))


def test_shared_sets_load_as_they_are(shared_data):
    gsm = load_prompt_set(PromptSourceConfig(path=str(shared_data / "gsm8k_train.jsonl")))
    assert len(gsm.prompts) + gsm.duplicates == 7473
    assert all(p.problem.strip() and isinstance(p.answer, str) for p in gsm.prompts)
    math = load_prompt_set(PromptSourceConfig(path=str(shared_data / "math_train_sample2000.jsonl")))
    assert len(math.prompts) + math.duplicates == 2000
    assert {"level", "type", "solution"} <= set(math.prompts[0].meta)
    assert len({p.id for p in math.prompts}) == len(math.prompts)


def test_shard_split_is_a_partition():
    ids = [content_id(f"problem {i}", "math") for i in range(300)]
    shards = [shard_of(i, 4) for i in ids]
    assert set(shards) == {0, 1, 2, 3} and all(shard_of(i, 1) == 0 for i in ids)
    assert shards == [shard_of(i, 4) for i in ids]  # deterministic


def test_templates():
    assert {"math", "code", "science", "plain"} <= set(builtin_templates())
    math = load_template("math")
    assert math == "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert apply_template(math, "Find $x^{2}$.") == ("Find $x^{2}$.\nPlease reason step by step, and put your "
                                                     "final answer within \\boxed{}.")
    with pytest.raises(TemplateError, match="not found"):
        load_template("nope")


def test_template_file_needs_one_placeholder(tmp_path):
    (tmp_path / "t.txt").write_text("Q: {problem}\nA: think first.\n", encoding="utf-8")
    assert load_template(str(tmp_path / "t.txt")) == "Q: {problem}\nA: think first."
    (tmp_path / "bad.txt").write_text("no placeholder\n", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"bad\.txt: .*exactly once \(found 0\)"):
        load_template(str(tmp_path / "bad.txt"))
