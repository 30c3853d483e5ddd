"""generate -> filter -> sft -> eval through the `distill` CLI on the tiny offline model.

A random model writes garbage, so the content rules would reject everything; this test checks the
plumbing between stages (each stage reads the previous one's files as they are), with the rules
that judge content switched off by config, the way a user would tune the preset.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from pipeline.cli import main
from pipeline.records import read_jsonl

CONTENT_RULES = ("format", "truncation", "language", "redundancy", "paragraphs", "code_blocks", "length", "answer")


def test_generate_filter_sft_eval(tmp_path: Path, tiny_model_dir: Path):
    problems = [{"problem": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in problems))
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(json.dumps({"problem": "What is 10 + 11?", "answer": "21"}) + "\n")

    gen = tmp_path / "gen"
    assert main(["generate", "--model", str(tiny_model_dir), "--backend", "transformers", "--input", str(prompts),
                 "--output", str(gen), "--n", "2", "--max-tokens", "24", "--set", "sampling.temperature=1.0",
                 "--set", "sampling.top_p=1.0"]) == 0
    generated = read_jsonl(gen / "shard-00000-of-00001.jsonl")
    assert len(generated) == 8
    assert {(r["prompt_id"], r["sample_index"]) for r in generated} == {(r["prompt_id"], i) for r in generated for i in (0, 1)}

    filt_cfg = {name: {"enabled": False} for name in CONTENT_RULES}
    filt_cfg["decontam"] = {"benchmarks": [str(held_out)]}
    (tmp_path / "filter.yaml").write_text(yaml.safe_dump(filt_cfg))
    filtered = tmp_path / "filtered"
    assert main(["filter", "--config", str(tmp_path / "filter.yaml"), "--inputs", str(gen),
                 "--output", str(filtered), "--workers", "1"]) == 0
    kept = read_jsonl(filtered / "kept.jsonl")
    rejected = read_jsonl(filtered / "rejected.jsonl") if (filtered / "rejected.jsonl").exists() else []
    assert len(kept) + len(rejected) == 8 and kept
    report = json.loads((filtered / "report.json").read_text())
    assert report["totals"]["kept"] == len(kept)

    sft_out = tmp_path / "sft"
    sft_cfg = {"model": str(tiny_model_dir), "data": [str(filtered / "kept.jsonl")], "output_dir": str(sft_out),
               "max_seq_len": 256, "packing": False, "micro_batch_size": 2, "grad_accum": 1, "max_steps": 3,
               "lr": 1e-3, "dtype": "fp32", "seed": 0, "save_every": 0, "log_every": 1}
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(sft_cfg))
    assert main(["sft", "--config", str(tmp_path / "sft.yaml")]) == 0
    final = sft_out / "final"
    assert (final / "model.safetensors").exists() and (final / "tokenizer_config.json").exists()
    assert len(read_jsonl(sft_out / "metrics.jsonl")) >= 3

    ev = tmp_path / "eval"
    ev_cfg = {"model": str(final), "backend": "transformers",
              "benchmarks": [{"name": "held_out", "path": str(held_out)}],
              "sampling": {"n": 2, "max_tokens": 16}, "pass_k": [1, 2], "output_dir": str(ev)}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(ev_cfg))
    assert main(["eval", "--config", str(tmp_path / "eval.yaml")]) == 0
    results = json.loads((ev / "results.json").read_text())
    assert "held_out" in json.dumps(results)
    assert 0.0 <= results["benchmarks"]["held_out"]["pass@1"] <= 100.0
