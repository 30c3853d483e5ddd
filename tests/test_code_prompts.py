"""Code prompt sets: MBPP train + validation, any JSONL with tests; decontamination against code evals."""

from __future__ import annotations

import json

import pytest

from pipeline.prompts import PromptSourceConfig, load_prompts
from pipeline.records import RecordError


def test_mbpp_train_and_validation_prompts(shared_data):
    ps = load_prompts(PromptSourceConfig(path=str(shared_data / "mbpp.jsonl"), layout="mbpp",
                                         splits=["train", "validation"], id_column="task_id"))
    assert len(ps) == 374 + 90 and {p.domain for p in ps} == {"code"}
    assert min(int(p.id) for p in ps) == 511  # nothing from the test split (11-510) or the few-shot prompts
    p = ps[0]
    assert p.meta["tests"]["format"] == "mbpp" and len(p.meta["tests"]["asserts"]) == 3
    assert "code" not in p.meta and "test_list" not in p.meta  # the reference solution never reaches a record
    assert "Your code should pass these tests:" in p.problem


def test_any_jsonl_with_tests_and_bad_tests_name_the_field(tmp_path):
    good = {"problem": "Read two ints, print their sum.",
            "tests": {"format": "stdio", "cases": [{"input": "1 2\n", "output": "3\n"}]}}
    bad = {"problem": "Broken.", "tests": {"format": "call", "fn_name": "f", "cases": [{"input": [1]}]}}
    path = tmp_path / "code.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError) as ei:
        load_prompts(PromptSourceConfig(path=str(path), layout="code"))
    assert f"{path}:2" in str(ei.value) and "tests.cases[0]" in str(ei.value)
    path.write_text(json.dumps(good) + "\n")
    (p,) = load_prompts(PromptSourceConfig(path=str(path), layout="code"))
    assert p.domain == "code" and p.meta["tests"] == good["tests"]


def test_decontamination_against_humaneval_and_the_mbpp_test_split(shared_data, monkeypatch):
    from filters.decontam import BenchmarkIndex

    monkeypatch.setenv("DISTILL_DATA_DIR", str(shared_data))
    index = BenchmarkIndex(["humaneval", "mbpp"], 13)
    he = load_prompts(PromptSourceConfig(path=str(shared_data / "humaneval.jsonl"), layout="humaneval"))
    test = load_prompts(PromptSourceConfig(path=str(shared_data / "mbpp.jsonl"), layout="mbpp", splits=["test"]))
    train = load_prompts(PromptSourceConfig(path=str(shared_data / "mbpp.jsonl"), layout="mbpp",
                                            splits=["train", "validation"]))
    assert all(index.hits(p.problem) for p in he)
    assert sum(bool(index.hits(p.problem)) for p in test) >= 495
    # MBPP has templated near-twins across splits ("sum of fifth power of first n odd/even numbers");
    # the prompt's boilerplate alone never makes a match (it did: 97 before decontam_text).
    assert sum(bool(index.hits(p.problem)) for p in train) <= 45
