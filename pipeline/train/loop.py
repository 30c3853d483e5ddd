"""The one training loop (``distill sft`` and ``distill kd`` both run it), on Accelerate.

Contract for stages (stable; ``kd`` codes against it)
-----------------------------------------------------
A stage calls :func:`run_training` with its :class:`~pipeline.train.config.TrainConfig` and a
``make_loss(ctx: TrainContext) -> LossFn`` factory. The loop owns everything else: accelerator,
tokenizer, the rendered/packed data (:mod:`pipeline.train.data`), the student (+ LoRA), AdamW,
the schedule, checkpoints, resume, logs and the final ``save_pretrained``.

``make_loss`` is called once, after the student is prepared and before the first step, with a
:class:`TrainContext` (``accelerator``, ``model`` (prepared/wrapped), ``tokenizer``, ``corpus``,
``cfg``): load a teacher onto ``ctx.accelerator.device`` there, or read an offline cache keyed by
``ctx.corpus.keys``. It returns ``loss_fn(model, batch) -> LossOutput``:

* ``batch`` (built by :func:`pipeline.train.data.collate`, already on the device) holds
  ``input_ids`` [B, T], ``labels`` [B, T] (Hugging Face convention: ``logits[:, t]`` predicts
  ``labels[:, t + 1]``; -100 = not trained), ``position_ids`` [B, T] (restart at 0 for every
  packed sample), ``attention_mask`` (only in padded, non-packed batches), ``num_tokens`` (int:
  ``(labels[:, 1:] != -100).sum()``), ``sample_keys`` / ``sample_spans`` (per row: the samples'
  keys and ``(start, length)`` spans, for caches keyed by sample), ``step`` (int: the 0-based
  optimizer step this micro-batch belongs to, for losses on a schedule). Forward the model with
  ``**data.model_inputs(batch)``; ``data.next_token_targets(batch)`` gives the positions and
  targets of trained tokens (use ``logits_to_keep=positions`` to skip prompt logits).
* ``LossOutput.loss_sum`` is the SUM (not the mean) of the per-token loss over exactly the
  trained tokens of this micro-batch, a differentiable 0-dim tensor. ``num_tokens`` is how many
  tokens it summed (must equal ``batch["num_tokens"]``; checked on the first step). ``parts`` are
  optional extra token-sums for the log (e.g. ``{"kl": ..., "ce": ...}``), floats or detached
  0-dim tensors; they are logged divided by the step's trained tokens, like the loss.

Normalisation rule: the gradient of one optimizer step is
``sum(loss_sum over all micro-batches of the step, all ranks) / (trained tokens of the step,
all ranks)``. The loop knows that token count before the step starts (the data plan is
deterministic and identical on every rank), so no collective is needed: each micro-batch
backpropagates ``loss_sum * world_size * grad_accum / step_tokens`` (Accelerate divides by
``grad_accum``, DDP/FSDP/ZeRO average over ranks). A long sample therefore weighs by its tokens,
not by its micro-batch, and 2 ranks x grad_accum 1 equal 1 rank x grad_accum 2 (tested).

Data position: global micro-batch ``m`` of an epoch's plan goes to rank ``(m // grad_accum) %
world_size``; optimizer step ``s`` consumes micro-batches ``[s*W*A, (s+1)*W*A)`` of epoch
``s // steps_per_epoch``. A checkpoint (``output_dir/checkpoints/step-N``, written to a temp
folder and renamed, so a kill mid-write leaves the previous one intact) stores model, optimizer,
scheduler and RNG (``accelerator.save_state``) plus ``trainer_state.json``; ``resume`` restores
them and continues at step N+1 on the same micro-batches an uninterrupted run would use.

Per-step cost: no host sync except on log steps (every ``log_every``) and checkpoint steps.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError
from pipeline.records import write_json_atomic
from pipeline.train.config import TrainConfig

__all__ = ["LossOutput", "LossFn", "TrainContext", "run_training", "CosineSchedule", "latest_checkpoint"]

log = logging.getLogger(__name__)
CKPT_RE = re.compile(r"^step-(\d{8})$")
VARLEN_NAME = "distill_varlen"  # pipeline.train.attention.VARLEN (not imported here: it pulls in torch)


@dataclass
class LossOutput:
    """One micro-batch's loss: token SUM (not mean), the tokens it covers, extra token-sums to log."""

    loss_sum: Any  # torch.Tensor, 0-dim, differentiable
    num_tokens: Any  # int | torch.Tensor
    parts: dict[str, Any] = field(default_factory=dict)


LossFn = Callable[[Any, dict], LossOutput]


@dataclass
class TrainContext:
    """What ``make_loss`` gets: the prepared student, accelerator, tokenizer, data and config."""

    cfg: TrainConfig
    accelerator: Any
    model: Any
    tokenizer: Any
    corpus: Any


class CosineSchedule:
    """LR factor: linear warmup 0 -> 1 over ``warmup`` steps, then cosine 1 -> ``min_ratio``.

    A class (not a lambda) so ``LambdaLR.state_dict`` can be saved and restored.
    """

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, max(total, 1), min_ratio

    def __call__(self, step: int) -> float:
        if self.warmup > 0 and step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        span = max(self.total - self.warmup, 1)
        progress = min(max(step - self.warmup, 0) / span, 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- setup helpers

def _mixed_precision(cfg: TrainConfig) -> str | None:
    import torch

    if cfg.dtype == "fp32":
        return "no"
    if cfg.dtype in ("bf16", "fp16"):
        return cfg.dtype
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None  # an accelerate config chose it
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import ProjectConfiguration

    # Stages run one after another in one process (the demo: teacher sft, then student sft/kd) may
    # differ in precision and accumulation; Accelerate keeps those in process-wide singletons, so
    # reset them. The process group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    from pipeline.train.cpu_fsdp import enable_fsdp_on_cpu

    enable_fsdp_on_cpu()  # an FSDP launch config on CPU processes: FSDP, not a silent DDP
    kwargs: dict[str, Any] = {"gradient_accumulation_steps": cfg.grad_accum,
                              "project_config": ProjectConfiguration(project_dir=cfg.output_dir)}
    mp = _mixed_precision(cfg)
    if mp is not None:
        kwargs["mixed_precision"] = mp
    if cfg.report_to:
        kwargs["log_with"] = list(cfg.report_to)
    return Accelerator(**kwargs)


def attn_implementation(cfg: TrainConfig) -> str:
    from pipeline.train.attention import choose

    return choose(cfg.attn_implementation, cfg.packing)


def load_tokenizer(cfg: TrainConfig):
    from transformers import AutoTokenizer

    src = cfg.tokenizer or cfg.model
    try:
        tok = AutoTokenizer.from_pretrained(src)
    except OSError as exc:
        raise ConfigError(f"tokenizer {src!r}: cannot load ({exc})") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_student(cfg: TrainConfig, attn: str):
    """The student in fp32 master weights (autocast does bf16), optionally wrapped with LoRA."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32, attn_implementation=attn)
    except OSError as exc:
        raise ConfigError(f"model {cfg.model!r}: cannot load ({exc})") from None
    model.config.use_cache = False
    from pipeline.train.speedups import apply_liger, liger_wanted

    if liger_wanted(cfg.liger):
        apply_liger(model)
    if cfg.compile:
        from pipeline.train.speedups import compile_layers

        compile_layers(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora is not None:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        model = get_peft_model(model, PeftLoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM", bias="none"))
    return model


def make_optimizer(cfg: TrainConfig, model, extra: Any = None):
    """AdamW; decay only on matrices (not biases, norms); only trainable params (LoRA: adapters);
    ``extra``: a module trained alongside (its params join the same groups)."""
    import torch

    decay, no_decay = [], []
    for p in list(model.parameters()) + (list(extra.parameters()) if extra is not None else []):
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = torch.cuda.is_available()
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                             **({"fused": True} if fused else {}))


# --------------------------------------------------------------------------- checkpoints

def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (a renamed ``step-N`` folder holding trainer_state.json)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := CKPT_RE.match(p.name))
                   and (p / "trainer_state.json").is_file())
    return found[-1][1] if found else None


def _fault(kind: str, step: int) -> None:
    """Test hook: ``DISTILL_TEST_KILL=<kind>:<step>`` SIGKILLs this process at that point."""
    spec = os.environ.get("DISTILL_TEST_KILL")
    if spec and spec == f"{kind}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(accelerator, output_dir: Path, step: int, state: dict, keep: int) -> Path:
    """``accelerator.save_state`` into ``.tmp-step-N``, add trainer_state.json, rename to ``step-N``."""
    root = output_dir / "checkpoints"
    tmp = root / f".tmp-step-{step:08d}"
    final = root / f"step-{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _fault("checkpoint", step)
        write_json_atomic(tmp / "trainer_state.json", state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        ckpts = sorted(p for p in root.iterdir() if CKPT_RE.match(p.name))
        for old in ckpts[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


# --------------------------------------------------------------------------- final model

def save_dtype(cfg: TrainConfig, accelerator) -> Any:
    """The dtype of the saved weights: ``save_dtype``, or (``auto``) the training precision: bf16
    or fp16 when mixed precision trained in it (fp32 master weights are an optimizer detail and
    would double the checkpoint), else fp32."""
    import torch

    name = cfg.save_dtype
    if name == "auto":
        name = {"bf16": "bf16", "fp16": "fp16"}.get(str(accelerator.mixed_precision), "fp32")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def save_final(accelerator, model, tokenizer, cfg: TrainConfig, out: Path, chat_template: str,
               stop_ids: list[int]) -> Path:
    """``save_pretrained`` (safetensors) + tokenizer into ``out`` via a temp folder and rename.

    LoRA: the adapter goes to ``adapter/`` and, with ``lora.merge``, the merged plain model to
    ``out``. The tokenizer keeps the template the model was trained with, and the generation
    config stops on every token the training taught it to end a turn with.
    """
    tmp = out.with_name(f".{out.name}.tmp")
    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        to_save = unwrapped
        if cfg.lora is not None:
            unwrapped.save_pretrained(out.parent / "adapter", safe_serialization=True)
            if cfg.lora.merge:
                to_save = unwrapped.merge_and_unload()
                state_dict = None
        to_save.config.use_cache = True
        gen = getattr(to_save, "generation_config", None)
        if gen is not None:
            have = gen.eos_token_id if isinstance(gen.eos_token_id, list) else (
                [gen.eos_token_id] if gen.eos_token_id is not None else [])
            gen.eos_token_id = list(dict.fromkeys(have + list(stop_ids)))
            if gen.pad_token_id is None:
                gen.pad_token_id = tokenizer.pad_token_id
        dtype = save_dtype(cfg, accelerator)
        if state_dict is None:
            state_dict = to_save.state_dict()
        state_dict = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state_dict.items()}
        state_dict = _alias_tied(state_dict, to_save)  # after .to(dtype), which unshares them
        to_save.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        _set_config_dtype(tmp / "config.json", dtype)
        tokenizer.chat_template = chat_template
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    accelerator.wait_for_everyone()
    return out


def _alias_tied(state_dict: dict, model) -> dict:
    """Tied parameters (``lm_head.weight`` = ``embed_tokens.weight``) as one tensor under both names.

    A gathered FSDP state dict, or any converted to another dtype, holds separate copies, which
    ``save_pretrained`` (it finds ties by storage) would write twice; aliasing them lets it keep
    only the main one.
    """
    first: dict[int, str] = {}
    out = dict(state_dict)
    for name, p in model.named_parameters(remove_duplicate=False):
        kept = first.setdefault(id(p), name)
        if kept != name and kept in out and name in out:
            out[name] = out[kept]
    return out


def _set_config_dtype(config_json: Path, dtype: Any) -> None:
    """``save_pretrained`` records the in-memory (fp32 master) dtype; record the saved one."""
    if not config_json.is_file():  # a LoRA adapter folder has no config.json
        return
    conf = json.loads(config_json.read_text(encoding="utf-8"))
    conf["dtype"] = str(dtype).removeprefix("torch.")
    conf.pop("torch_dtype", None)
    write_json_atomic(config_json, conf)


# --------------------------------------------------------------------------- the loop

def _trim_metrics(path: Path, keep_upto: int) -> None:
    """On resume: drop log lines past the checkpoint so no step is logged twice."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= keep_upto:
                kept.append(line)
        except ValueError:
            continue
    path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")


@dataclass
class _Run:
    """What one training run holds between steps (built by :func:`_setup`)."""

    cfg: TrainConfig
    stage: str
    accelerator: Any
    tokenizer: Any
    template: str
    corpus: Any
    model: Any
    optimizer: Any
    scheduler: Any
    attn: str
    plan0: list
    steps_per_epoch: int
    total_steps: int
    waste: dict
    dropped_tail: int
    n_trainable: int
    n_total: int
    ckpt: Path | None = None
    start_step: int = 0
    tokens_seen: int = 0
    elapsed_before: float = 0.0
    loss_fn: Any = None
    plans: dict = field(default_factory=dict)
    extra: Any = None  # run_training's extra_trainable

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.output_dir)

    @property
    def per_step(self) -> int:
        return self.accelerator.num_processes * self.cfg.grad_accum


def _check_output(cfg: TrainConfig, out_dir: Path) -> dict | None:
    """``None`` to train; the saved summary when a ``resume`` finds the run already complete."""
    summary_path, final_dir = out_dir / "summary.json", out_dir / "final"
    ckpt = latest_checkpoint(out_dir)
    if cfg.resume and ckpt is None and summary_path.exists() and final_dir.is_dir():
        log.info("%s: run already complete; nothing to resume", out_dir)
        return json.loads(summary_path.read_text(encoding="utf-8"))
    if not cfg.resume and (ckpt is not None or final_dir.exists()):
        raise ConfigError(f"{out_dir}: holds a previous run (checkpoints/ or final/); pass --resume to continue "
                          "it, or choose another output_dir")
    return None


def _setup(cfg: TrainConfig, stage: str, accelerator, tokenizer, template: str, extra: Any = None) -> _Run:
    """Data plan, student (+ ``extra``), optimizer and schedule, prepared by Accelerate."""
    import torch
    from accelerate.utils import set_seed

    from pipeline.train import data as D

    corpus = D.build_corpus(cfg, tokenizer, template, accelerator)
    per_step = accelerator.num_processes * cfg.grad_accum
    plan0 = D.plan_epoch(corpus, cfg, epoch=0)
    steps_per_epoch = len(plan0) // per_step
    if steps_per_epoch == 0:
        raise ConfigError(f"{cfg.data}: {len(corpus)} samples make {len(plan0)} micro-batches, fewer than "
                          f"world_size x grad_accum = {per_step}; use more data or a smaller batch")
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    set_seed(cfg.seed)
    attn = attn_implementation(cfg)
    log.info("attention: %s", attn)
    D.check_packing_support(cfg, attn)
    model = load_student(cfg, attn)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    if extra is not None:
        extra.to(accelerator.device)
    optimizer = make_optimizer(cfg, model, extra)
    schedule = CosineSchedule(warmup=math.ceil(cfg.warmup_ratio * total_steps), total=total_steps,
                              min_ratio=cfg.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if extra is not None:
        accelerator.register_for_checkpointing(extra)
    return _Run(cfg=cfg, stage=stage, accelerator=accelerator, tokenizer=tokenizer, template=template, corpus=corpus,
                model=model, optimizer=optimizer, scheduler=scheduler, attn=attn, plan0=plan0,
                steps_per_epoch=steps_per_epoch, total_steps=total_steps, waste=D.padding_stats(corpus, plan0, cfg),
                dropped_tail=len(plan0) - steps_per_epoch * per_step, n_trainable=n_trainable, n_total=n_total,
                plans={0: plan0}, extra=extra)


def _resume(run: _Run) -> None:
    """Load the newest checkpoint (model, optimizer, scheduler, RNG) and the position it recorded."""
    ckpt = latest_checkpoint(run.out_dir) if run.cfg.resume else None
    if ckpt is None:
        return
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    if state.get("data_fingerprint") != run.corpus.fingerprint:
        raise ConfigError(f"{ckpt}: was written for different data or packing settings "
                          f"({state.get('data_fingerprint')} != {run.corpus.fingerprint}); resume needs the same data")
    if state.get("micro_batches_per_step") != run.per_step:
        log.warning("resuming with world_size x grad_accum = %d (checkpoint used %s): the data position is kept "
                    "but steps differ from the original run", run.per_step, state.get("micro_batches_per_step"))
    run.accelerator.load_state(str(ckpt))
    run.ckpt, run.start_step = ckpt, int(state["step"])
    run.tokens_seen = int(state.get("trained_tokens", 0))
    run.elapsed_before = float(state.get("elapsed_s", 0.0))
    if run.accelerator.is_main_process:
        log.info("resuming from %s (step %d of %d)", ckpt, run.start_step, run.total_steps)


@dataclass
class _Step:
    """One optimizer step's outcome: trained tokens (all ranks), loss and extra parts (token sums)."""

    tokens: int
    loss_sum: Any
    parts: dict
    grad_norm: Any
    lr: float


def _micro_batches(run: _Run, step: int) -> tuple[list, int]:
    """This rank's micro-batches of optimizer step ``step`` and the step's trained tokens (all ranks)."""
    from pipeline.train import data as D

    epoch, in_epoch = divmod(step, run.steps_per_epoch)
    if epoch not in run.plans:
        run.plans = {epoch: D.plan_epoch(run.corpus, run.cfg, epoch=epoch)}
    step_mbs = run.plans[epoch][in_epoch * run.per_step:(in_epoch + 1) * run.per_step]
    step_tokens = sum(D.micro_batch_tokens(run.corpus, mb) for mb in step_mbs)
    rank, accum = run.accelerator.process_index, run.cfg.grad_accum
    return step_mbs[rank * accum:(rank + 1) * accum], step_tokens


def _train_step(run: _Run, step: int, check_tokens: bool) -> _Step:
    """Forward/backward every micro-batch of this rank, then clip and step (see the normalisation
    rule in the module docstring: each ``loss_sum`` is scaled by ``world * accum / step_tokens``)."""
    import torch

    from pipeline.train import data as D

    acc, model, cfg = run.accelerator, run.model, run.cfg
    mine, step_tokens = _micro_batches(run, step)
    scale = run.per_step / max(step_tokens, 1)
    loss_sum, parts, norm = torch.zeros((), device=acc.device), {}, None
    varlen = run.attn == VARLEN_NAME
    for mb in mine:
        batch = D.to_device(D.collate(run.corpus, mb, pad_id=run.tokenizer.pad_token_id, packing=cfg.packing),
                            acc.device)
        batch["varlen"], batch["step"] = varlen, step
        with acc.accumulate(model):
            with acc.autocast():
                out = run.loss_fn(model, batch)
            if check_tokens and int(out.num_tokens) != batch["num_tokens"]:
                raise RuntimeError(f"loss_fn summed over {int(out.num_tokens)} tokens but the batch trains "
                                   f"{batch['num_tokens']}; see the LossOutput contract in loop.py")
            acc.backward(out.loss_sum * scale)
            loss_sum += out.loss_sum.detach().float()
            for k, v in out.parts.items():
                parts[k] = parts.get(k, 0.0) + (v.detach().float() if hasattr(v, "detach") else v)
            if acc.sync_gradients:
                if cfg.clip_grad > 0:
                    norm = acc.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                if run.extra is not None:
                    _sync_extra_grads(acc, run.extra, cfg.clip_grad)
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    return _Step(tokens=step_tokens, loss_sum=loss_sum, parts=parts, grad_norm=norm, lr=lr)


def _sync_extra_grads(accelerator, extra: Any, clip: float) -> None:
    """The extra module is not wrapped by DDP: average its grads over ranks, clip them on their own."""
    import torch

    params = [p for p in extra.parameters() if p.grad is not None]
    if accelerator.num_processes > 1:
        for p in params:
            p.grad.copy_(accelerator.reduce(p.grad, reduction="mean"))
    if clip > 0 and params:
        torch.nn.utils.clip_grad_norm_(params, clip)


class _MetricsWindow:
    """Per-token losses of the steps since the last log line; no host sync until :meth:`record`."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.last_norm: Any = None
        self._reset()

    def _reset(self) -> None:
        self.losses: list[Any] = []
        self.parts: dict[str, list[Any]] = {}
        self.tokens, self.t0 = 0, time.perf_counter()

    def add(self, s: _Step) -> None:
        self.losses.append(s.loss_sum / max(s.tokens, 1))
        for k, v in s.parts.items():
            self.parts.setdefault(k, []).append(v / max(s.tokens, 1))
        self.tokens += s.tokens
        if s.grad_norm is not None:
            self.last_norm = s.grad_norm

    def record(self, done: int, epoch: float, lr: float, tokens_seen: int) -> dict:
        """The log line for the window ending at step ``done`` (summed over ranks), then a new window."""
        import torch

        acc, world = self.accelerator, self.accelerator.num_processes
        losses = torch.stack(self.losses)
        if world > 1:
            losses = acc.reduce(losses, reduction="sum")
        parts = {}
        for k, vs in self.parts.items():
            t = torch.stack([torch.as_tensor(v, device=acc.device, dtype=torch.float32) for v in vs])
            parts[k] = float((acc.reduce(t, reduction="sum") if world > 1 else t).mean())
        now = time.perf_counter()
        rec = {"step": done, "epoch": epoch, "loss": float(losses.mean()), "lr": lr,
               "grad_norm": float(self.last_norm) if self.last_norm is not None else None,
               "trained_tokens": tokens_seen, "tokens_per_s": self.tokens / max(now - self.t0, 1e-9), **parts}
        self._reset()
        return rec


def _checkpoint_state(run: _Run, done: int, elapsed: float) -> dict:
    epoch, in_epoch = divmod(done - 1, run.steps_per_epoch)
    return {"step": done, "epoch": epoch, "micro_batch_in_epoch": (in_epoch + 1) * run.per_step,
            "micro_batches_per_step": run.per_step, "trained_tokens": run.tokens_seen, "elapsed_s": elapsed,
            "data_fingerprint": run.corpus.fingerprint, "total_steps": run.total_steps,
            "world_size": run.accelerator.num_processes}


def _train(run: _Run) -> list[dict]:
    """The steps from ``start_step`` to ``total_steps``: log lines, progress, checkpoints."""
    cfg, acc, main = run.cfg, run.accelerator, run.accelerator.is_main_process
    metrics_path = run.out_dir / "metrics.jsonl"
    progress = None
    if main and cfg.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=run.total_steps, initial=run.start_step, desc=f"distill {run.stage}", unit="step")
    window, history = _MetricsWindow(acc), []
    metrics_fh = open(metrics_path, "a", encoding="utf-8") if main else None
    t_start = time.perf_counter()
    run.model.train()
    try:
        for step in range(run.start_step, run.total_steps):
            s = _train_step(run, step, check_tokens=step == run.start_step)
            run.tokens_seen += s.tokens
            window.add(s)
            done = step + 1
            _fault("step", done)
            if done % cfg.log_every == 0 or done == run.total_steps:
                rec = window.record(done, round(done / run.steps_per_epoch, 4), s.lr, run.tokens_seen)
                history.append(rec)
                if main:
                    metrics_fh.write(json.dumps(rec) + "\n")
                    metrics_fh.flush()
                    if progress is not None:
                        progress.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
                if cfg.report_to:
                    acc.log({k: v for k, v in rec.items() if isinstance(v, (int, float))}, step=done)
            if progress is not None:
                progress.update(1)
            if cfg.save_every and done % cfg.save_every == 0 and done < run.total_steps:
                elapsed = run.elapsed_before + time.perf_counter() - t_start
                save_checkpoint(acc, run.out_dir, done, _checkpoint_state(run, done, elapsed), cfg.keep_checkpoints)
    finally:
        if progress is not None:
            progress.close()
        if metrics_fh is not None:
            metrics_fh.close()
    run.elapsed_before += time.perf_counter() - t_start
    return history


def _summary(run: _Run, final_dir: Path, history: list[dict]) -> dict:
    elapsed = run.elapsed_before
    return {"stage": run.stage, "model_dir": str(final_dir), "output_dir": str(run.out_dir), "steps": run.total_steps,
            "resumed_from_step": run.start_step if run.ckpt is not None else None,
            "epochs": round(run.total_steps / run.steps_per_epoch, 4), "samples": len(run.corpus),
            "dropped_too_long": run.corpus.dropped_too_long,
            "dropped_tail_micro_batches_per_epoch": run.dropped_tail, "trained_tokens": run.tokens_seen,
            "final_loss": history[-1]["loss"] if history else None,
            "padding_fraction": run.waste["padding_fraction"], "world_size": run.accelerator.num_processes,
            "grad_accum": run.cfg.grad_accum, "micro_batch_size": run.cfg.micro_batch_size,
            "packing": run.cfg.packing, "attn_implementation": run.attn,
            "mixed_precision": run.accelerator.mixed_precision, "trainable_params": run.n_trainable,
            "total_params": run.n_total, "elapsed_s": round(elapsed, 3),
            "trained_tokens_per_s": run.tokens_seen / max(elapsed, 1e-9) if run.ckpt is None else None,
            "param_checksum_by_rank": _param_checksums(run.accelerator, run.model)}


def run_training(cfg: TrainConfig, make_loss: Callable[[TrainContext], LossFn], *, stage: str = "sft",
                 check: bool = False, summary_extra: Callable[[dict], dict] | None = None,
                 extra_trainable: Any = None) -> dict:
    """Train ``cfg.model`` on ``cfg.data`` with ``make_loss``'s loss; return the run summary.

    ``check``: render a few samples, show trained tokens, fail on an empty mask / lost think
    block / untrained EOS, and return the preflight report without training.
    ``summary_extra(summary) -> dict``: fields a stage adds to ``summary.json`` (kd: its settings).
    ``extra_trainable``: a ``torch.nn.Module`` the loss uses that trains with the student (kd's
    feature projections): moved to the device, in the optimizer, its grads averaged over ranks and
    clipped on their own, checkpointed and resumed, never saved in ``final/``.
    """
    from pipeline.train import data as D

    accelerator = make_accelerator(cfg)
    tokenizer = load_tokenizer(cfg)
    template = D.chat_template_for_training(tokenizer)
    if check:
        return D.preflight(cfg, tokenizer, template)
    out_dir = Path(cfg.output_dir)
    done = _check_output(cfg, out_dir)
    if done is not None:
        return done
    run = _setup(cfg, stage, accelerator, tokenizer, template, extra_trainable)
    _resume(run)
    run.loss_fn = make_loss(TrainContext(cfg=cfg, accelerator=accelerator, model=run.model, tokenizer=tokenizer,
                                         corpus=run.corpus))
    _start_log(run)
    if cfg.report_to:
        accelerator.init_trackers(f"distill-{stage}", config=cfg.model_dump(mode="json"))
    history = _train(run)
    final_dir = save_final(accelerator, run.model, tokenizer, cfg, out_dir / "final", template, run.corpus.stop_ids)
    summary = _summary(run, final_dir, history)
    if summary_extra is not None:
        summary.update(summary_extra(summary))
    if accelerator.is_main_process:
        write_json_atomic(out_dir / "summary.json", summary)
        _plot_loss(out_dir / "metrics.jsonl", out_dir / "loss.png", stage)
    if cfg.report_to:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return summary


def _start_log(run: _Run) -> None:
    """Create the run folder, drop log lines past a resumed checkpoint, log the plan."""
    if not run.accelerator.is_main_process:
        return
    metrics_path = run.out_dir / "metrics.jsonl"
    run.out_dir.mkdir(parents=True, exist_ok=True)
    if run.ckpt is not None:
        _trim_metrics(metrics_path, run.start_step)
    elif metrics_path.exists():
        metrics_path.unlink()
    cfg = run.cfg
    log.info("%s: %d samples (%d dropped as longer than %d), %d micro-batches/epoch, %d steps/epoch, %d steps; "
             "padding waste %.1f%%; trainable params %d / %d", run.stage, len(run.corpus),
             run.corpus.dropped_too_long, cfg.max_seq_len, len(run.plan0), run.steps_per_epoch, run.total_steps,
             100 * run.waste["padding_fraction"], run.n_trainable, run.n_total)


def _param_checksums(accelerator, model) -> list[float]:
    """Sum of |trainable params| each rank holds: under DDP the whole model (equal across ranks when
    DDP kept them in sync); under FSDP2 the rank's shard of each DTensor (the ranks' values sum to
    the model's)."""
    import torch

    def local(p):
        return p.to_local() if hasattr(p, "to_local") else p

    with torch.no_grad():
        s = sum(local(p).detach().float().abs().sum() for p in model.parameters() if p.requires_grad)
        s = torch.as_tensor(s, dtype=torch.float64, device=accelerator.device).reshape(1)
    return [float(x) for x in accelerator.gather(s).tolist()]


def _plot_loss(metrics_path: Path, png: Path, stage: str) -> None:
    from pipeline.plots import lines

    if not metrics_path.exists():
        return
    rows = [json.loads(x) for x in metrics_path.read_text(encoding="utf-8").splitlines() if x.strip()]
    if rows:
        lines({"train loss": ([r["step"] for r in rows], [r["loss"] for r in rows])}, png,
              title=f"distill {stage}: loss per trained token", xlabel="optimizer step", ylabel="loss")
