"""transformers backend: batched ``model.generate`` on CPU or GPU (small teachers, tests, the demo).

Rules:

* Prompts are left-padded and run ``transformers.batch_size`` at a time, ``n`` rows per prompt;
  ``top_k`` is disabled (R1 samples with temperature and top-p only), temperature 0 means greedy.
* Decoding, by device unless ``transformers.fast_decode`` says otherwise: on CPU
  :func:`pipeline.generate.backends.decode.sample_batch` (preallocated KV cache, finished rows
  dropped; 4x ``model.generate`` there) where :func:`~pipeline.generate.backends.decode.supports`
  says the model allows it; on GPU ``model.generate`` (measured there at 1.8x the sampler, whose
  per-step Python costs more than the kernels it saves). Not the static KV cache on GPU: it
  compiles on first use, and a 32-prompt run of ``benchmarks/transformers_decode.py --device
  cuda`` did not finish within 45 s on an H200.
* A sample ends at the first EOS id of the model's generation config: ``finish_reason`` is
  ``stop`` then (the EOS counts as a completion token, as in vLLM), else ``length``.
* ``max_tokens`` is clamped to the model's context (``max_position_embeddings``) minus the longest
  prompt of the batch; the clamp is logged once.
* Seeds: one ``torch.Generator`` (``torch.manual_seed`` for ``model.generate``) per batch, seeded
  from the prompts' own seeds, so a rerun of the same batch gives the same text.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from pipeline.generate.backends.base import Completion, PromptInput

__all__ = ["TransformersBackend"]

log = logging.getLogger(__name__)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}[dtype]
    except KeyError:
        raise ValueError(f"transformers.dtype: unknown dtype {dtype!r} (auto, bfloat16, float16, float32)") from None


class TransformersBackend:
    name = "transformers"

    def __init__(self, model: str, revision: str | None = None, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 16, fast_decode: bool | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = _resolve_device(device)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
        self.model = AutoModelForCausalLM.from_pretrained(model, revision=revision,
                                                          dtype=_resolve_dtype(dtype, self.device))
        self.model.to(self.device).eval()
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else next(iter(self.eos_ids))
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        from pipeline.generate.backends.decode import supports

        if fast_decode is None:
            fast_decode = not self.device.startswith("cuda")
        self.fast_decode = fast_decode and supports(self.model)
        self._clamp_logged = False
        self._torch = torch

    def _encode(self, texts: list[str]) -> tuple[Any, Any, list[int]]:
        torch = self._torch
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):  # left padding: generation continues from the last real token
            input_ids[i, width - len(x):] = torch.tensor(x, dtype=torch.long)
            mask[i, width - len(x):] = 1
        return input_ids.to(self.device), mask.to(self.device), [len(x) for x in ids]

    def _max_new(self, width: int, wanted: int) -> int:
        if self.max_positions is None or width + wanted <= self.max_positions:
            return wanted
        allowed = max(1, self.max_positions - width)
        if not self._clamp_logged:
            log.warning("max_tokens %d exceeds the model context (%d) after a %d-token prompt: clamped to %d",
                        wanted, self.max_positions, width, allowed)
            self._clamp_logged = True
        return allowed

    def _run(self, prompts: list[PromptInput], n: int, sampling: Any) -> list[list[Completion]]:
        torch = self._torch
        input_ids, mask, lengths = self._encode([p.text for p in prompts])
        width = input_ids.shape[1]
        seeds = ",".join(str(p.seed if p.seed is not None else sampling.seed) for p in prompts)
        seed = int(hashlib.sha256(seeds.encode()).hexdigest()[:8], 16)
        greedy = sampling.temperature == 0
        max_new = self._max_new(width, sampling.max_tokens)
        # n rows per prompt (model.generate refuses num_return_sequences > 1 when greedy)
        input_ids, mask = input_ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        if self.fast_decode:
            from pipeline.generate.backends.decode import sample_batch

            gen = torch.Generator(device=self.device).manual_seed(seed)
            new = sample_batch(self.model, input_ids, mask, max_new_tokens=max_new, eos_ids=self.eos_ids,
                               temperature=sampling.temperature, top_p=sampling.top_p, generator=gen)
        else:
            torch.manual_seed(seed)
            kwargs: dict[str, Any] = dict(max_new_tokens=max_new, pad_token_id=self.pad_id,
                                          eos_token_id=sorted(self.eos_ids), do_sample=not greedy)
            if not greedy:
                kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
            with torch.inference_mode():
                out = self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
            new = out[:, width:].tolist()
        results: list[list[Completion]] = []
        for i, plen in enumerate(lengths):
            samples = []
            for row in new[i * n:(i + 1) * n]:
                cut = next((j for j, t in enumerate(row) if t in self.eos_ids), None)
                tokens = row if cut is None else row[:cut]
                text = self.tokenizer.decode(tokens, skip_special_tokens=False)
                samples.append(Completion(text=text, prompt_tokens=plen,
                                          completion_tokens=len(tokens) + (cut is not None),
                                          finish_reason="stop" if cut is not None else "length"))
            results.append(samples)
        return results

    def generate(self, prompts: list[PromptInput], sampling: Any) -> list[list[Completion]]:
        out: list[list[Completion] | None] = [None] * len(prompts)
        by_n: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_n.setdefault(len(p.indices(sampling)), []).append(i)
        for n, idx in by_n.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                for i, res in zip(chunk, self._run([prompts[i] for i in chunk], n, sampling)):
                    out[i] = res
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.model = None
