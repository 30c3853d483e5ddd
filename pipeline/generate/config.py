"""The typed config of ``distill generate`` (validated once, at load)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config import Section, StageConfig
from pipeline.prompts import PromptSourceConfig

__all__ = ["SamplingConfig", "VLLMConfig", "OpenAIConfig", "TransformersConfig", "GenerateConfig",
           "DEFAULT_TEMPLATES"]

DEFAULT_TEMPLATES = {"math": "math", "code": "code", "science": "science", "general": "general"}


class SamplingConfig(Section):
    """Sampling parameters; the defaults are DeepSeek-R1's (T=0.6, top-p 0.95, 32K tokens)."""

    n: int = Field(1, ge=1, description="samples per prompt")
    temperature: float = Field(0.6, ge=0.0, description="sampling temperature (0: greedy)")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling mass")
    max_tokens: int = Field(32768, ge=1, description="most tokens generated per sample")
    seed: int = Field(0, description="base seed; each prompt's seed is derived from it and the prompt id")


class VLLMConfig(Section):
    """vLLM offline engine (``pip install -e .[vllm]``)."""

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica")
    data_parallel_size: int = Field(1, ge=1, description="replicas on this node: one process each, own shard, "
                                    "own GPUs (CUDA_VISIBLE_DEVICES split by tensor_parallel_size)")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="share of GPU memory vLLM may take")
    dtype: str = Field("auto", description="weights/activations dtype (auto, bfloat16, float16, float32)")
    max_model_len: int | None = Field(None, ge=1, description="context length (null: the model's)")
    enforce_eager: bool = Field(False, description="disable CUDA graphs / compilation")
    enable_prefix_caching: bool = Field(True, description="share KV cache across samples of one prompt")
    max_num_seqs: int | None = Field(None, ge=1, description="most sequences scheduled at once (null: vLLM's default)")
    trust_remote_code: bool = Field(False, description="allow model code from the hub")
    engine_kwargs: dict = Field(default_factory=dict, description="extra keyword arguments for vllm.LLM(...)")


class OpenAIConfig(Section):
    """Any OpenAI-compatible chat-completions endpoint (vllm serve, SGLang, hosted APIs)."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="API base URL (…/v1)")
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the env var holding the API key "
                             "(the key itself is never written to logs, records or configs)")
    concurrency: int = Field(32, ge=1, description="requests in flight at once")
    max_retries: int = Field(8, ge=0, description="retries per request on 429/5xx/timeouts/connection errors")
    retry_backoff_s: float = Field(1.0, ge=0.0, description="first backoff; doubles per retry (with jitter), capped at 60 s")
    timeout_s: float = Field(600.0, gt=0.0, description="per-request timeout")
    send_seed: bool = Field(True, description="send a per-sample `seed` (some hosted APIs reject it)")
    prefill_think: bool = Field(False, description="send the forced '<think>\\n' as an assistant prefix with "
                                "continue_final_message (vLLM/SGLang servers); else the server's template decides")
    extra_body: dict = Field(default_factory=dict, description="extra JSON fields for every request")


class TransformersConfig(Section):
    """Hugging Face transformers models (CPU or GPU; small models and tests)."""

    device: str = Field("auto", description="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    dtype: str = Field("auto", description="auto (bf16 on GPU, fp32 on CPU), bfloat16, float16, float32")
    batch_size: int = Field(16, ge=1, description="prompts per generate() call")
    fast_decode: bool | None = Field(
        None, description="true: the project's batched sampler (preallocated KV cache, finished rows dropped) where the "
                          "model allows it; false: model.generate; default: by device (the sampler on CPU, where it "
                          "is 4x model.generate; model.generate on GPU, where it is 1.8x the sampler)")


class GenerateConfig(StageConfig):
    """``distill generate``: teacher traces, one sample per line, resumable and shardable."""

    model: str = Field(..., description="teacher: local path or hub name")
    revision: str | None = Field(None, description="model revision (hub branch, tag or commit)")
    backend: Literal["vllm", "openai", "transformers"] = Field("vllm", description="generation engine: vllm | openai | transformers")
    input: PromptSourceConfig = Field(default_factory=PromptSourceConfig, description="prompt source")
    template: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_TEMPLATES),
                                     description="domain -> template name (prompts/<name>.txt) or file path")
    force_think: bool = Field(True, description="start every response with '<think>\\n' (DeepSeek-R1 model card)")
    kind: Literal["reasoning", "non_reasoning"] = Field("reasoning", description="reasoning: the teacher thinks in "
                                                        "<think>; non_reasoning (writing, QA, translation): the empty "
                                                        "block <think>\\n\\n</think> is prefilled and kept in the record")
    system_prompt: str | None = Field(None, description="optional system turn (R1 advises none)")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="sampling parameters")
    output_dir: str = Field("runs/generate", description="folder for shards, stats.json, lengths.png")
    shard_index: int = Field(0, ge=0, description="this machine's shard (0-based)")
    num_shards: int = Field(1, ge=1, description="machines sharing the prompts (split by hash of prompt id)")
    batch_size: int = Field(256, ge=1, description="prompts per backend call and per durable write")
    output_format: Literal["jsonl", "parquet"] = Field("jsonl", description="jsonl | parquet (parquet: each finished "
                                                       "shard as .parquet; a hidden .jsonl is the resume ledger)")
    progress: bool = Field(True, description="show a progress bar")
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="vllm backend")
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig, description="openai backend")
    transformers: TransformersConfig = Field(default_factory=TransformersConfig, description="transformers backend")

    @field_validator("template")
    @classmethod
    def _templates_exist(cls, value: dict[str, str]) -> dict[str, str]:
        from prompts import TemplateError, load_template

        for domain, name in value.items():
            try:
                load_template(name)
            except TemplateError as exc:
                raise ValueError(f"domain {domain!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _shard_in_range(self) -> "GenerateConfig":
        if self.shard_index >= self.num_shards:
            raise ValueError(f"shard_index {self.shard_index} must be < num_shards {self.num_shards}")
        return self

    def shard_name(self) -> str:
        return f"shard-{self.shard_index:05d}-of-{self.num_shards:05d}"
