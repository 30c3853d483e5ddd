"""``distill generate``: teacher traces with vLLM, an OpenAI-compatible endpoint, or transformers.

Programmatic use (the eval stage and the demo)::

    from pipeline.generate.stage import GenerateConfig, make_backend, run
    cfg = GenerateConfig(model="...", backend="transformers", input={"path": "prompts.jsonl"}, output_dir="out")
    backend = make_backend(cfg)               # optional: reuse one loaded engine across several runs
    stats = run(cfg, backend=backend)         # the caller closes a backend it passed in

Output: ``{output_dir}/shard-{i:05d}-of-{N:05d}.jsonl`` (one sample per line, chat format), plus
``stats.json`` and ``lengths.png`` (per shard ``shard-….stats.json`` when ``num_shards > 1``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.cliutil import add_stage_parser, config_from_args
from pipeline.generate.config import (GenerateConfig, OpenAIConfig, SamplingConfig, TransformersConfig,
                                      VLLMConfig)
from pipeline.prompts import PromptSourceConfig

__all__ = ["GenerateConfig", "SamplingConfig", "VLLMConfig", "OpenAIConfig", "TransformersConfig",
           "PromptSourceConfig", "make_backend", "run", "register", "FLAGS"]

FLAGS = {
    "--model": ("model", str, "teacher model path or hub name"),
    "--backend": ("backend", str, "vllm | openai | transformers"),
    "--input": ("input.path", str, "prompt file or folder (.jsonl, .json, .parquet, .csv)"),
    "--dataset": ("input.dataset", str, "Hugging Face dataset name (instead of --input)"),
    "--limit": ("input.limit", int, "use only the first N prompts"),
    "--output": ("output_dir", str, "output folder"),
    "--n": ("sampling.n", int, "samples per prompt"),
    "--max-tokens": ("sampling.max_tokens", int, "most tokens per sample"),
    "--shard-index": ("shard_index", int, "this machine's shard (0-based)"),
    "--num-shards": ("num_shards", int, "number of machines sharing the prompts"),
}


def make_backend(cfg: GenerateConfig) -> Any:
    """Load the engine named by ``cfg.backend`` (heavy imports happen here, not at module import)."""
    if cfg.backend == "vllm":
        from pipeline.generate.backends.vllm import VLLMBackend

        v = cfg.vllm
        return VLLMBackend(cfg.model, revision=cfg.revision, tensor_parallel_size=v.tensor_parallel_size,
                           gpu_memory_utilization=v.gpu_memory_utilization, dtype=v.dtype,
                           max_model_len=v.max_model_len, enforce_eager=v.enforce_eager,
                           enable_prefix_caching=v.enable_prefix_caching, max_num_seqs=v.max_num_seqs,
                           trust_remote_code=v.trust_remote_code, seed=cfg.sampling.seed,
                           engine_kwargs=v.engine_kwargs)
    if cfg.backend == "openai":
        from pipeline.generate.backends.openai import OpenAIBackend

        o = cfg.openai
        return OpenAIBackend(cfg.model, base_url=o.base_url, api_key_env=o.api_key_env, concurrency=o.concurrency,
                             max_retries=o.max_retries, retry_backoff_s=o.retry_backoff_s, timeout_s=o.timeout_s,
                             send_seed=o.send_seed, prefill_think=o.prefill_think, extra_body=o.extra_body)
    from pipeline.generate.backends.transformers import TransformersBackend

    t = cfg.transformers
    return TransformersBackend(cfg.model, revision=cfg.revision, device=t.device, dtype=t.dtype,
                               batch_size=t.batch_size, fast_decode=t.fast_decode)


def run(cfg: GenerateConfig, backend: Any = None) -> dict[str, Any]:
    """Generate this shard (or, for vLLM with ``data_parallel_size > 1``, all replicas of this node)."""
    from pipeline.generate.run import generate

    if backend is None and cfg.backend != "openai":  # a served model is named, not a folder
        from pipeline.modelcheck import check_model_source

        check_model_source(cfg.model, "model")
    dp = cfg.vllm.data_parallel_size
    if cfg.backend == "vllm" and dp > 1 and backend is None:
        return _run_replicas(cfg, dp)
    return generate(cfg, backend=backend, make_backend=make_backend)


def _run_replicas(cfg: GenerateConfig, dp: int) -> dict[str, Any]:
    """vLLM data parallelism: ``dp`` engine processes of this node, each its own shard, under one lock."""
    from pipeline.generate.replicas import replica_configs, run_data_parallel
    from pipeline.generate.run import compute_stats, ledger_path, write_stats
    from pipeline.locking import output_lock
    from pipeline.prompts import load_prompt_set, shard_of

    prompt_set = load_prompt_set(cfg.input)  # validate input before spawning anything
    expected = sum(shard_of(p.id, cfg.num_shards) == cfg.shard_index for p in prompt_set.prompts) * cfg.sampling.n
    name = "stats.json" if cfg.num_shards == 1 else f"node-{cfg.shard_index:05d}-of-{cfg.num_shards:05d}.stats.json"
    with output_lock(Path(cfg.output_dir) / name, "distill generate"):
        run_data_parallel(cfg, dp, cfg.vllm.tensor_parallel_size, expected)
        ledgers = [ledger_path(c) for c in replica_configs(cfg, dp)]
        stats, lengths = compute_stats(ledgers)
        stats.update({"replicas": dp, "shards": [str(p) for p in ledgers], "expected_samples": expected,
                      "complete": stats["samples"] == expected})
        png = name.replace("stats.json", "lengths.png")
        write_stats(stats, lengths, Path(cfg.output_dir) / name, Path(cfg.output_dir) / png, cfg.sampling.max_tokens)
    return stats


def register(subparsers: Any) -> None:
    parser = add_stage_parser(
        subparsers, "generate", GenerateConfig,
        "Teacher traces: sample n responses per prompt (vLLM offline engine, OpenAI-compatible endpoint, or "
        "transformers), written as resumable chat-format JSONL shards with stats.json and a length histogram.",
        FLAGS)
    parser.set_defaults(func=lambda args: _cli(config_from_args(GenerateConfig, args, FLAGS)))


def _cli(cfg: GenerateConfig) -> int:
    stats = run(cfg)
    return 0 if stats.get("complete", True) else 1
