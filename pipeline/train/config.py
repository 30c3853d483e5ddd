"""Typed config pieces shared by the training stages (``distill sft`` and ``distill kd``).

:class:`TrainConfig` holds everything the one training loop (:mod:`pipeline.train.loop`) needs:
the student, the data, the batch shape, the optimiser and schedule, precision, checkpointing and
logging. ``SFTConfig`` is a ``TrainConfig``; ``KDConfig`` extends it with the teacher and the
distillation loss. Field docs show up in ``distill sft --help``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.config import Section, StageConfig

__all__ = ["LoraConfig", "TrainConfig", "SFTConfig"]


class LoraConfig(Section):
    """LoRA adapters via ``peft``; the final model is merged into plain weights when ``merge`` is set."""

    r: int = Field(16, gt=0, description="adapter rank")
    alpha: int = Field(32, gt=0, description="scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target_modules: list[str] | str = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="module names to adapt, or 'all-linear'")
    merge: bool = Field(True, description="write a merged plain model to final/ (the adapter goes to adapter/)")


class TrainConfig(StageConfig):
    """The one training loop's settings (sft and kd)."""

    # what to train on
    model: str = Field(..., description="student: a model folder or hub name (hub needs network)")
    tokenizer: str | None = Field(None, description="tokenizer folder/name (default: the model's)")
    data: list[str] = Field(..., min_length=1,
                            description="chat-format JSONL/JSON/Parquet files or folders (e.g. filter's kept.jsonl), "
                                        "a `distill mix` output folder (its data_split), or 'hf:NAME' for a hub dataset")
    data_split: str = Field("train", description="split for 'hf:' datasets and Hub-layout folders "
                            "(data/<split>-00000-of-0000N.parquet, e.g. a `distill mix` output)")
    max_samples: int = Field(0, ge=0, description="use at most this many samples (0 = all)")
    data_workers: int = Field(1, ge=1, description="processes that render + tokenize the data (once, then cached)")
    output_dir: str = Field(..., description="run folder: checkpoints/, final/, metrics.jsonl, summary.json")

    # batch shape
    max_seq_len: int = Field(4096, gt=8, description="tokens per packed row / longest kept sample; longer ones are dropped")
    packing: bool = Field(True, description="pack samples into rows of max_seq_len (no cross-sample attention)")
    micro_batch_size: int = Field(1, gt=0, description="rows per forward pass per process")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step per process")

    # schedule
    epochs: float = Field(3.0, gt=0, description="passes over the data (ignored when max_steps > 0)")
    max_steps: int = Field(0, ge=0, description="optimizer steps to run (0 = from epochs)")
    lr: float = Field(2e-5, gt=0, description="peak learning rate")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a fraction of lr")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="linear warmup as a fraction of all steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay (not on biases/norms)")
    adam_betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    clip_grad: float = Field(1.0, ge=0, description="max global grad norm (0 = no clipping)")

    # model execution
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="mixed precision: auto = bf16 on GPUs that support it (or the accelerate config's), else fp32")
    attn_implementation: str = Field(
        "auto", description="auto = flash_attention_2 (flash-attn installed, GPU), else varlen (torch's FlashAttention "
                            "varlen kernel, GPU), else sdpa; also: varlen, flex_attention, sdpa, eager")
    liger: bool | None = Field(None, description="Liger Triton kernels for RMSNorm/RoPE/SwiGLU: default on when CUDA "
                                                 "and liger-kernel are present (pip install distill-r1[gpu]); true "
                                                 "requires them; false: off")
    compile: bool = Field(False, description="torch.compile each decoder layer (first steps pay the compile)")
    save_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="dtype of the saved final weights: auto = the training precision (bf16 after bf16 training)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (less memory)")
    loss_chunk_tokens: int = Field(2048, gt=0, description="logit rows upcast to fp32 at a time in the loss")
    fused_loss: bool = Field(True, description="lm_head x cross-entropy fused chunk by chunk, no full logits kept "
                                               "(off, or under FSDP/ZeRO-3: logits of trained positions)")
    lora: LoraConfig | None = Field(None, description="train LoRA adapters instead of all weights")
    seed: int = Field(42, description="seed for init, data order and dropout")

    # checkpoints and logs
    save_every: int = Field(0, ge=0, description="checkpoint every N optimizer steps (0 = none until the end)")
    keep_checkpoints: int = Field(2, gt=0, description="checkpoints kept on disk (oldest deleted)")
    resume: bool = Field(False, description="continue from the newest complete checkpoint in output_dir")
    log_every: int = Field(1, gt=0, description="log metrics every N optimizer steps")
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive"]] = Field(
        default_factory=list, description="Accelerate trackers besides metrics.jsonl")
    check_samples: int = Field(3, gt=0, description="samples rendered by --check")
    progress: bool = Field(True, description="tqdm progress bar on the main process")

    @field_validator("data")
    @classmethod
    def _no_empty_paths(cls, v: list[str]) -> list[str]:
        if any(not str(p).strip() for p in v):
            raise ValueError("empty data path")
        return v


class SFTConfig(TrainConfig):
    """``distill sft`` settings: the shared training settings (see ``TrainConfig``)."""
