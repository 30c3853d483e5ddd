"""On-policy distillation (GKD, Agarwal et al. 2024) for ``distill kd``: the ``on_policy:`` block.

From optimizer step ``start_step`` on, a micro-batch is on-policy with probability ``lmbda``
(GKD's lambda); earlier steps all train off-policy, so a student that cannot yet write the
format (a random or base model) is not trained on its own noise: GKD itself starts from an SFT'd
student, and ``start_step`` is that warm-up inside one run. When on-policy, the student itself
completes the batch's prompts (each sample's tokens before its first trained token) with the
generate stage's sampler (:func:`pipeline.generate.backends.decode.sample_batch`), the teacher
scores those sequences, and the loss is the generalized JSD(``beta``) over the student's own
tokens (no cross-entropy: the targets are the student's samples). Otherwise the micro-batch
trains on the data with the usual KD loss (off-policy).

Weighting: the loop normalises by the trained tokens of the data plan (known before the step),
so an on-policy micro-batch contributes its per-generated-token mean times the data batch's
trained-token count: it weighs what the off-policy batch would have weighed.

Determinism: the on/off choice and the sampling generator are seeded from ``seed`` and the
micro-batch's sample keys (not from a step counter or global RNG), so a resumed run samples
exactly the sequences the uninterrupted run sampled.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import Field

from pipeline.config import Section

__all__ = ["OnPolicyConfig", "batch_prompts", "is_on_policy", "student_samples", "sequence_batch", "OnPolicyLoss"]


class OnPolicyConfig(Section):
    """``on_policy:`` of ``distill kd``: the student samples its own sequences (GKD); off when absent."""

    lmbda: float = Field(0.5, ge=0.0, le=1.0, description="fraction of micro-batches trained on the student's own "
                                                          "samples (GKD lambda); the rest train on the data")
    beta: float = Field(0.5, ge=0.0, le=1.0, description="generalized JSD weight on the student's samples "
                                                         "(0 = forward KL, 1 = reverse KL)")
    max_new_tokens: int = Field(256, gt=0, description="longest completion the student samples")
    temperature: float = Field(1.0, ge=0.0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    start_step: int = Field(0, ge=0, description="optimizer steps trained off-policy before the student first "
                                                 "samples (a warm-up for a student that cannot write the format yet)")


def _unit(seed: int, keys: list[str], salt: str) -> int:
    digest = hashlib.sha256(f"{seed}|{salt}|{'|'.join(keys)}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def is_on_policy(seed: int, keys: list[str], lmbda: float, step: int = 0, start_step: int = 0) -> bool:
    """Whether the micro-batch of ``keys`` at optimizer step ``step`` is on-policy: never before
    ``start_step``, then a seeded uniform draw below ``lmbda``."""
    return step >= start_step and _unit(seed, keys, "on-policy") / 2 ** 64 < lmbda


def batch_prompts(batch: dict) -> list[list[int]]:
    """Each sample's tokens before its first trained token (its prompt, up to the assistant header)."""
    out = []
    labels, ids = batch["labels"].tolist(), batch["input_ids"].tolist()
    for row, spans in enumerate(batch["sample_spans"]):
        for start, length in spans:
            lab = labels[row][start:start + length]
            first = next((i for i, v in enumerate(lab) if v != -100), length)
            out.append(ids[row][start:start + first])
    return out


def student_samples(model: Any, prompts: list[list[int]], cfg: OnPolicyConfig, stop_ids: list[int], pad_id: int,
                    generator: Any) -> list[list[int]]:
    """The student's completions of ``prompts`` (left-padded, one batch), in eval mode, no grad."""
    import torch

    from pipeline.generate.backends.decode import sample_batch
    from pipeline.train.attention import VARLEN

    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    was_training = model.training
    # the training varlen attention takes document boundaries, not a padding mask: left-padded
    # prompts would attend to their pads, so sample with SDPA (same weights, same math)
    impl = getattr(model.config, "_attn_implementation", None)
    if impl == VARLEN:
        model.set_attn_implementation("sdpa")
    model.eval()
    try:
        return sample_batch(model, ids, mask, max_new_tokens=cfg.max_new_tokens, eos_ids=set(stop_ids),
                            temperature=cfg.temperature, top_p=cfg.top_p, generator=generator)
    finally:
        model.train(was_training)
        if impl == VARLEN:
            model.set_attn_implementation(VARLEN)


def sequence_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int, device: Any) -> dict:
    """A right-padded batch (loop batch contract) training exactly the completion tokens."""
    import torch

    rows = [p + c for p, c in zip(prompts, completions)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        labels[i, len(p):len(p) + len(c)] = torch.tensor(c, dtype=torch.long)
        mask[i, :len(p) + len(c)] = 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask,
             "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["num_tokens"] = int((labels[:, 1:] != -100).sum())
    return batch


class OnPolicyLoss:
    """``loss_fn`` mixing off-policy KD (``off``) with GKD on the student's samples (``on``: a KD
    loss whose spec is JSD(beta) with no cross-entropy); see the module docstring."""

    def __init__(self, cfg: Any, accelerator: Any, off: Any, on: Any, stop_ids: list[int], pad_id: int):
        self.cfg, self.accelerator, self.off, self.on = cfg, accelerator, off, on
        self.stop_ids, self.pad_id = stop_ids, pad_id

    def __call__(self, model: Any, batch: dict):
        import torch

        from pipeline.train.loop import LossOutput

        keys = [k for row in batch["sample_keys"] for k in row]
        opc = self.cfg.on_policy
        if not is_on_policy(self.cfg.seed, keys, opc.lmbda, batch["step"], opc.start_step):
            return self.off(model, batch)
        gen = torch.Generator(device=batch["input_ids"].device).manual_seed(_unit(self.cfg.seed, keys, "sample") >> 1)
        prompts = batch_prompts(batch)
        completions = student_samples(self.accelerator.unwrap_model(model), prompts, opc, self.stop_ids, self.pad_id,
                                      gen)
        sb = sequence_batch(prompts, completions, self.pad_id, batch["input_ids"].device)
        out = self.on(model, sb)
        scale = batch["num_tokens"] / max(int(out.num_tokens), 1)
        return LossOutput(loss_sum=out.loss_sum * scale, num_tokens=batch["num_tokens"],
                          parts={"gkd": out.parts["kd"] * scale, "on_policy": float(batch["num_tokens"])})
