"""``distill sft``: supervised fine-tuning of the student on teacher traces (the R1 recipe).

Loss: cross-entropy on the assistant tokens (reasoning, answer and the EOS token), summed over
trained tokens and normalised by the trained tokens of the whole optimizer step (see
:mod:`pipeline.train.loop`). Only the logits of positions whose next token is trained are
computed (``logits_to_keep``), and they are upcast to fp32 ``loss_chunk_tokens`` rows at a time.

    distill sft --config configs/sft/tiny_cpu.yaml            # train
    distill sft check --config configs/sft/tiny_cpu.yaml      # show what is trained, fail on bad masks
                                                              # (the old spelling `--check` still works)
    distill sft --config configs/sft/tiny_cpu.yaml --resume   # continue a killed run
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.cliutil import add_stage_action, add_stage_parser, config_from_args
from pipeline.train.config import LoraConfig, SFTConfig

__all__ = ["SFTConfig", "LoraConfig", "run", "check", "causal_lm_loss", "register"]


def causal_lm_loss(model: Any, batch: dict, chunk_tokens: int = 2048):
    """Token-summed next-token cross-entropy over the batch's trained tokens, from logits the model
    computes for trained positions only (``logits_to_keep``), upcast to fp32 ``chunk_tokens`` rows at
    a time. The reference path; :func:`fused_causal_lm_loss` is the default where it applies."""
    import torch.nn.functional as F

    from pipeline.train.data import model_inputs, next_token_targets
    from pipeline.train.loop import LossOutput
    from pipeline.train.losses import IGNORE_INDEX

    positions, targets = next_token_targets(batch)
    logits = model(**model_inputs(batch), logits_to_keep=positions).logits  # [B, P, V]
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_targets = targets.reshape(-1)
    total = flat_logits.new_zeros((), dtype=flat_logits.dtype).float()
    for s in range(0, flat_targets.numel(), chunk_tokens):
        total = total + F.cross_entropy(flat_logits[s:s + chunk_tokens].float(), flat_targets[s:s + chunk_tokens],
                                        ignore_index=IGNORE_INDEX, reduction="sum")
    return LossOutput(loss_sum=total, num_tokens=int(batch["num_tokens"]))


def fused_causal_lm_loss(model: Any, batch: dict, accelerator: Any, chunk_tokens: int = 2048):
    """The same loss without full-vocabulary logits: the model returns final hidden states (one
    logit row per sequence), and :func:`~pipeline.train.losses.fused_linear_cross_entropy` runs
    ``lm_head`` x cross-entropy ``chunk_tokens`` trained tokens at a time, keeping no logits for
    backward. Equal to :func:`causal_lm_loss` in value and gradient (tested)."""
    from pipeline.train.loop import LossOutput
    from pipeline.train.losses import IGNORE_INDEX, fused_linear_cross_entropy
    from pipeline.train.models import hidden_states, output_head

    nxt = batch["labels"][:, 1:]
    mask = nxt != IGNORE_INDEX
    hidden = hidden_states(model, batch)[:, :-1][mask]
    weight, bias = output_head(accelerator, model)
    sums = fused_linear_cross_entropy(hidden, weight, nxt[mask], chunk_tokens, bias=bias)
    return LossOutput(loss_sum=sums.loss_sum, num_tokens=int(batch["num_tokens"]))


def _make_loss(ctx) -> Any:
    from pipeline.train.models import weights_sharded

    chunk = ctx.cfg.loss_chunk_tokens
    if ctx.cfg.fused_loss and not weights_sharded(ctx.accelerator):
        return lambda model, batch: fused_causal_lm_loss(model, batch, ctx.accelerator, chunk)
    return lambda model, batch: causal_lm_loss(model, batch, chunk)


def run(cfg: SFTConfig) -> dict:
    """Train; return the summary (final_loss, steps, trained_tokens, model_dir, ...)."""
    from pipeline.errors import storage_errors
    from pipeline.locking import launcher_output_lock
    from pipeline.modelcheck import check_student
    from pipeline.train.loop import run_training

    check_student(cfg.model, cfg.tokenizer)
    with launcher_output_lock(cfg.output_dir, "distill sft"), storage_errors(cfg.output_dir):
        return run_training(cfg, _make_loss, stage="sft")


def check(cfg: SFTConfig) -> dict:
    """Preflight: render ``check_samples`` samples, show trained tokens; ``ok`` False on a bad mask."""
    from pipeline.modelcheck import check_student
    from pipeline.train.loop import run_training

    check_student(cfg.model, cfg.tokenizer)
    return run_training(cfg, _make_loss, stage="sft", check=True)


FLAGS = {
    "--output": ("output_dir", str, "run folder"),
    "--model": ("model", str, "student model folder or hub name"),
    "--data": ("data", "list", "chat-format JSONL/Parquet files or folders"),
    "--resume": ("resume", "store_true", "continue from the newest checkpoint in the run folder"),
    "--max-steps": ("max_steps", int, "optimizer steps (0 = from epochs)"),
}


def _check_cmd(args) -> int:
    return 0 if check(config_from_args(SFTConfig, args, FLAGS))["ok"] else 1


def _main(args) -> int:
    if args.check:  # the old spelling of `distill sft check`
        return _check_cmd(args)
    cfg = config_from_args(SFTConfig, args, FLAGS)
    summary = run(cfg)
    print(json.dumps({k: summary[k] for k in ("model_dir", "steps", "final_loss", "trained_tokens",
                                              "padding_fraction", "elapsed_s")}, indent=2))
    return 0


def register(sub) -> None:
    p = add_stage_parser(sub, "sft", SFTConfig, "Supervised fine-tuning of the student on reasoning traces.", FLAGS)
    p.add_argument("--check", action="store_true", help="same as `distill sft check` (older spelling)")
    p.set_defaults(func=_main)
    add_stage_action(p, "check", "preflight: render a few samples, show trained tokens, fail on empty mask / "
                     "lost think / untrained EOS; no training", _check_cmd, flags=FLAGS)
