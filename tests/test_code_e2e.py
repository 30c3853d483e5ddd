"""generate -> filter -> eval on code prompts with the tiny offline model, through the `distill` CLI.

The random model writes no program, so its samples are rejected by ``failed_tests`` and score 0 on
MBPP; a copy of one generated record with a correct answer spliced in (what a good teacher writes)
shows that the tests travel from the prompt set through generation to the filter and pass there.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from pipeline.cli import main
from pipeline.records import read_jsonl

OFF = ("format", "truncation", "language", "redundancy", "paragraphs", "code_blocks", "length", "answer", "decontam")


def test_code_generate_filter_eval(tmp_path: Path, tiny_model_dir: Path, shared_data: Path, monkeypatch):
    monkeypatch.setenv("DISTILL_DATA_DIR", str(shared_data))
    gen = tmp_path / "gen"
    gen_cfg = {"model": str(tiny_model_dir), "backend": "transformers", "output_dir": str(gen),
               "input": {"path": str(shared_data / "mbpp.jsonl"), "layout": "mbpp", "splits": ["train"],
                         "id_column": "task_id", "limit": 3},
               "template": {"code": "code_function"},
               "sampling": {"n": 2, "max_tokens": 16, "temperature": 1.0, "top_p": 1.0}}
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(gen_cfg))
    assert main(["generate", "--config", str(tmp_path / "gen.yaml")]) == 0
    generated = read_jsonl(gen / "shard-00000-of-00001.jsonl")
    assert len(generated) == 6 and {r["domain"] for r in generated} == {"code"}
    assert all(r["meta"]["tests"]["format"] == "mbpp" for r in generated)

    good = json.loads(json.dumps(generated[0]))
    solution = next(json.loads(line)["code"] for line in (shared_data / "mbpp.jsonl").open()
                    if json.loads(line)["task_id"] == int(good["prompt_id"]))
    good["id"], good["sample_index"] = good["id"] + "-teacher", 99
    good["messages"][-1]["content"] = f"<think>\nI know this one.\n</think>\n\n```python\n{solution}\n```\n"
    with open(gen / "teacher.jsonl", "w") as fh:
        fh.write(json.dumps(good) + "\n")

    filt_cfg = {name: {"enabled": False} for name in OFF}
    filt_cfg["code_tests"] = {"sandbox": {"timeout_s": 5.0}}
    (tmp_path / "filter.yaml").write_text(yaml.safe_dump(filt_cfg))
    filtered = tmp_path / "filtered"
    assert main(["filter", "--config", str(tmp_path / "filter.yaml"), "--inputs", str(gen),
                 "--output", str(filtered), "--workers", "1"]) == 0
    kept = read_jsonl(filtered / "kept.jsonl")
    rejected = read_jsonl(filtered / "rejected.jsonl")
    assert [r["id"] for r in kept] == [good["id"]]
    assert len(rejected) == 6 and all(r["reject_reasons"] == ["failed_tests"] for r in rejected)
    report = json.loads((filtered / "report.json").read_text())
    assert report["rules"]["failed_tests"]["outcomes"].get("passed") == 1

    ev = tmp_path / "eval"
    ev_cfg = {"model": str(tiny_model_dir), "backend": "transformers",
              "benchmarks": [{"name": "mbpp", "limit": 2}, {"name": "humaneval", "limit": 1}],
              "sampling": {"n": 2, "max_tokens": 16}, "pass_k": [1, 2], "output_dir": str(ev),
              "sandbox": {"timeout_s": 5.0}}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(ev_cfg))
    assert main(["eval", "--config", str(tmp_path / "eval.yaml")]) == 0
    results = json.loads((ev / "results.json").read_text())
    for name, problems in (("mbpp", 2), ("humaneval", 1)):
        m = results["benchmarks"][name]
        assert (m["problems"], m["samples"], m["pass@1"]) == (problems, problems * 2, 0.0)
        assert m["cons@k"] == {} and "timeout_rate" in m
    samples = read_jsonl(ev / "mbpp" / "samples.jsonl")
    assert {s["problem_id"] for s in samples} == {"11", "12"}
    assert all(s["grade_status"] in ("no_program", "unclosed_think") and "code" in s for s in samples)
