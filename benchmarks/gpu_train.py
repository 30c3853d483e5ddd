"""``distill sft`` at GPU speed: trained tokens/s, MFU and peak memory on Qwen2.5 shapes.

    python benchmarks/gpu_train.py                      # one H100/H200: 0.5B and 1.5B shapes, ~5 min
    python benchmarks/gpu_train.py --only 0.5b --steps 8
    python benchmarks/gpu_train.py --tiny               # CPU smoke run of the same code (tiny shapes)

Every contender is the product's own training loop (``pipeline.train.sft.run``) on the same
random-init model and the same packed rows (``max_seq_len`` 4,096, synthetic traces of 300-3,800
tokens, best-fit packing), bf16 autocast, AdamW (fused), one process:

* ``ours``: the defaults: fused lm_head x cross-entropy (no full-vocabulary logits), varlen
  attention (``attn_implementation: auto``: flash-attn when installed, else torch's FlashAttention
  varlen), Liger's RMSNorm/RoPE/SwiGLU when ``liger-kernel`` is installed (``-liger``: without);
* ``unfused+sdpa``: the path before: logits of trained positions upcast in chunks, SDPA with the
  block-diagonal mask transformers builds from position ids (the baseline of the ratios);
* ``fused+sdpa`` / ``unfused+varlen``: one change at a time, to attribute the gain;
* ``trl``: TRL ``SFTTrainer`` (packing, assistant-only loss, bf16, SDPA) on the same model and data,
  when ``trl`` and ``datasets`` are installed (skipped otherwise); its throughput is packed rows x
  ``max_seq_len`` over the median step time (a callback times the steps).

Throughput is the median over steps after ``--warmup`` of (tokens in the step's packed rows) /
(step time); MFU = 6 N tokens/s / peak (N = all parameters, ``--peak-tflops`` default 989 = H100/H200
dense bf16), and with attention: + 6 L d sum(n^2) over the step's documents (causal, fwd + bwd).
Peak memory is ``torch.cuda.max_memory_allocated``. A contender that runs out of memory is
reported as OOM. Writes ``gpu_train.json`` + ``gpu_train.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHAPES = {  # Qwen2.5 config.json values (hidden, intermediate, layers, heads, kv heads)
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12, num_kv_heads=2),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1),
}
VOCAB = 151936

# (name, shape, micro_batch, gradient checkpointing, fused loss, attention, extra config); most
# important first, so a run cut short still has them
PLAN = [
    ("0.5b ours", "0.5b", 8, False, True, "auto", {}),
    ("0.5b unfused+sdpa", "0.5b", 8, False, False, "sdpa", {"liger": False}),
    ("1.5b ours ckpt", "1.5b", 8, True, True, "auto", {}),
    ("1.5b ours", "1.5b", 8, False, True, "auto", {}),
    ("1.5b unfused+sdpa ckpt", "1.5b", 8, True, False, "sdpa", {"liger": False}),
    ("0.5b ours-liger", "0.5b", 8, False, True, "auto", {"liger": False}),
    ("1.5b ours-liger", "1.5b", 8, False, True, "auto", {"liger": False}),
    ("0.5b fused+sdpa", "0.5b", 8, False, True, "sdpa", {"liger": False}),
    ("0.5b unfused+varlen", "0.5b", 8, False, False, "auto", {"liger": False}),
    ("0.5b ours+compile", "0.5b", 8, False, True, "auto", {"liger": False, "compile": True}),
    ("0.5b trl", "0.5b", 8, False, False, "sdpa", {"trl": True}),
    ("1.5b trl ckpt", "1.5b", 8, True, False, "sdpa", {"trl": True}),
]


def build_model(shape: str, out: Path, tok, device: str) -> Path:
    """A random-init Qwen2 of ``shape`` saved (bf16) with the tokenizer; the vocabulary is Qwen2.5's."""
    import torch

    from pipeline.tiny import build_model as tiny_build

    vocab = 512 if shape == "tiny" else VOCAB
    with torch.device(device):
        model = tiny_build(tok, vocab_size=vocab, max_position_embeddings=32768, **SHAPES[shape])
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    return out, n_params


WORDS = [f"w{i}" for i in range(400)] + ["step", "so", "=", "+", "then", "check", "wait"]


def tokens_per_word(tok) -> float:
    rng = random.Random(1)
    text = " ".join(rng.choice(WORDS) for _ in range(2000))
    return len(tok(text, add_special_tokens=False)["input_ids"]) / 2000


def write_traces(path: Path, n: int, seed: int, max_words: int) -> None:
    """R1-style chat records of varied length (1/12 to 1 x ``max_words`` words of a fixed list)."""
    rng = random.Random(seed)
    words = WORDS
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            k = rng.randint(max_words // 12, max_words)
            body = " ".join(rng.choice(words) for _ in range(k))
            fh.write(json.dumps({"id": f"g{i}", "messages": [
                {"role": "user", "content": f"Problem {i}: what is {i} + {i}?"},
                {"role": "assistant", "content": f"<think>\n{body}\n</think>\n\nThe answer is \\boxed{{{2 * i}}}."}]}) + "\n")


def step_stats(metrics: Path, warmup: int) -> dict:
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    steady = [r["tokens_per_s"] for r in rows if r["step"] > warmup] or [rows[-1]["tokens_per_s"]]
    return {"trained_tokens_per_s": statistics.median(steady), "steps_measured": len(steady),
            "final_loss": rows[-1]["loss"]}


def run_trl(args, name: str, mb: int, ckpt: bool, model_dir: Path, data: Path, work: Path) -> list[float]:
    """TRL ``SFTTrainer`` (packing, assistant-only loss, bf16) on the same model and data: the
    step times after warm-up, measured with a callback (``trained tokens/s`` from the packed rows)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    class Clock(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_end(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    tok = AutoTokenizer.from_pretrained(model_dir)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    rows = [json.loads(x) for x in data.read_text().splitlines() if x.strip()]
    ds = datasets.Dataset.from_list([{"messages": r["messages"]} for r in rows])
    cfg = TRLConfig(output_dir=str(work / name.replace(" ", "_")), max_length=args.seq_len, packing=True,
                    assistant_only_loss=True, per_device_train_batch_size=mb, gradient_accumulation_steps=1,
                    max_steps=args.warmup + args.steps, learning_rate=1e-5, logging_steps=10_000,
                    save_strategy="no", report_to=[], bf16=dtype == torch.bfloat16, use_cpu=not torch.cuda.is_available(),
                    gradient_checkpointing=ckpt, dataloader_num_workers=0, seed=0, disable_tqdm=True)
    clock = Clock()
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[clock])
    clock.times.append(time.perf_counter())
    trainer.train()
    return [b - a for a, b in zip(clock.times[:-1], clock.times[1:])][args.warmup:]


def run_ours(args, name: str, mb: int, ckpt: bool, fused: bool, attn: str, extra: dict, model_dir: Path,
             data: Path, work: Path) -> dict:
    """The product's own ``distill sft`` run; its per-step log gives trained tokens/s."""
    from pipeline.train.sft import SFTConfig, run

    cfg = SFTConfig(model=str(model_dir), data=[str(data)], output_dir=str(work / name.replace(" ", "_")),
                    max_seq_len=args.seq_len, packing=True, micro_batch_size=mb, grad_accum=1,
                    max_steps=args.warmup + args.steps, lr=1e-5, warmup_ratio=0.0, dtype=args.dtype,
                    attn_implementation=attn, fused_loss=fused, gradient_checkpointing=ckpt, log_every=1,
                    progress=False, data_workers=args.data_workers, seed=0, **extra)
    summary = run(cfg)
    return {"fused_loss": fused, "attn_requested": attn, "attn_implementation": summary["attn_implementation"],
            "tokens_per_s": step_stats(work / name.replace(" ", "_") / "metrics.jsonl", args.warmup)
            ["trained_tokens_per_s"] * args.computed_per_trained}


def run_one(args, name: str, shape: str, mb: int, ckpt: bool, fused: bool, attn: str, extra: dict,
            model_dir: Path, data: Path, n_params: int, work: Path) -> dict:
    """One contender: tokens/s, MFU (6N and with attention), peak memory; OOM and errors recorded."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        if extra.get("trl"):
            times = run_trl(args, name, mb, ckpt, model_dir, data, work)
            got = {"attn_implementation": "sdpa (TRL)", "tokens_per_s": mb * args.seq_len / statistics.median(times)}
        else:
            got = run_ours(args, name, mb, ckpt, fused, attn, extra, model_dir, data, work)
    except ImportError as exc:
        return {"name": name, "status": "skipped", "error": f"not installed: {exc.name}"}
    except torch.OutOfMemoryError as exc:
        return {"name": name, "status": "OOM", "error": str(exc).splitlines()[0][:200]}
    except Exception as exc:  # noqa: BLE001 - one contender failing must not lose the others' figures
        return {"name": name, "status": "error", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    finally:
        gc.collect()
    tok_s = got["tokens_per_s"]  # computed positions per second (prompt and padding cost compute too)
    L, d = SHAPES[shape]["num_layers"], SHAPES[shape]["hidden_size"]
    out = {"name": name, "status": "ok", "shape": shape, "micro_batch": mb, "grad_checkpointing": ckpt, **extra,
           **got, "params": n_params, "wall_s": round(time.perf_counter() - t0, 1),
           "mfu_6n": 6 * n_params * tok_s / (args.peak_tflops * 1e12),
           "mfu_with_attention": (6 * n_params + 6 * L * d * args.mean_doc_context) * tok_s / (args.peak_tflops * 1e12)}
    if torch.cuda.is_available():
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.empty_cache()
    return out


def corpus_shape(data: Path, tok_dir: Path, seq_len: int) -> tuple[float, float]:
    """``(computed positions per trained token, token-weighted mean document length)`` of the packed data."""
    import numpy as np
    from transformers import AutoTokenizer

    from pipeline.train import data as D
    from pipeline.train.sft import SFTConfig

    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = SFTConfig(model=str(tok_dir), data=[str(data)], output_dir=str(tok_dir / "probe"), max_seq_len=seq_len,
                    progress=False)
    corpus = D.build_corpus(cfg, tok, D.chat_template_for_training(tok))
    plan = D.plan_epoch(corpus, cfg, epoch=0)
    lens = np.array([len(corpus.sample(i)[0]) for i in range(len(corpus))], dtype=np.float64)
    trained = sum(D.micro_batch_tokens(corpus, mb) for mb in plan)
    rows = sum(len(mb) for mb in plan)
    return rows * seq_len / max(trained, 1), float((lens**2).sum() / lens.sum())


def plot(results: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r["status"] == "ok"]
    if not ok:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.55 * len(ok) + 2))
    names = [r["name"] for r in ok]
    axes[0].barh(names, [100 * r["mfu_6n"] for r in ok], color="tab:blue")
    axes[0].set_xlabel("MFU (6N), %")
    axes[1].barh(names, [r.get("peak_gib", 0) for r in ok], color="tab:orange")
    axes[1].set_xlabel("peak GPU memory, GiB")
    axes[1].set_yticks([])
    for ax in axes:
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("distill sft on random-init Qwen2.5 shapes, packed 4K rows, bf16")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def report(results: list[dict]) -> None:
    base = {r["shape"]: r for r in results if r["status"] == "ok" and "unfused+sdpa" in r["name"]}
    print(f"\n{'contender':28s} {'attn':16s} {'tok/s':>9s} {'MFU 6N':>7s} {'+attn':>7s} {'peak GiB':>9s} {'vs base':>8s}")
    for r in results:
        if r["status"] != "ok":
            print(f"{r['name']:28s} {r['status']}: {r.get('error', '')}")
            continue
        b = base.get(r["shape"])
        ratio = f"{r['tokens_per_s'] / b['tokens_per_s']:.2f}x" if b else "-"
        print(f"{r['name']:28s} {r['attn_implementation']:16s} {r['tokens_per_s']:9.0f} {100 * r['mfu_6n']:6.1f}% "
              f"{100 * r['mfu_with_attention']:6.1f}% {r.get('peak_gib', float('nan')):9.1f} {ratio:>8s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="shapes to run (0.5b, 1.5b)")
    ap.add_argument("--contenders", nargs="*", help="names from the plan to run (default all)")
    ap.add_argument("--steps", type=int, default=8, help="measured steps per contender")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--data-workers", type=int, default=8)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny shapes, 256-token rows, fp32")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    import torch

    from pipeline.tiny import train_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = PLAN
    if args.tiny:
        plan = [(n.replace("0.5b", "tiny"), "tiny", 2, c, f, a, x if x.get("trl") else {**x, "liger": False})
                for n, s, _, c, f, a, x in PLAN if s == "0.5b"]
        args.seq_len, args.dtype, args.steps, args.warmup, args.data_workers = 256, "fp32", 2, 1, 1
    plan = [p for p in plan if (not args.only or p[1] in args.only) and (not args.contenders or p[0] in args.contenders)]
    work = Path(tempfile.mkdtemp(prefix="gpu_train_"))
    tok = train_tokenizer(vocab_size=500)
    tok_dir = work / "tok"
    tok.save_pretrained(tok_dir)
    rows_needed = (args.warmup + args.steps) * max(p[2] for p in plan) * args.seq_len
    data = work / "traces.jsonl"
    max_words = int(args.seq_len * 0.92 / tokens_per_word(tok))
    write_traces(data, n=int(rows_needed / (args.seq_len * 0.45)) + 16, seed=0, max_words=max_words)
    args.computed_per_trained, args.mean_doc_context = corpus_shape(data, tok_dir, args.seq_len)
    print(f"device {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}); torch {torch.__version__}; "
          f"computed/trained tokens {args.computed_per_trained:.3f}; token-weighted mean document "
          f"{args.mean_doc_context:.0f} tokens", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_train_tiny" if args.tiny else "gpu_train"
    results, models = [], {}
    for name, shape, mb, ckpt, fused, attn, extra in plan:
        if shape not in models:
            models[shape] = build_model(shape, work / f"model-{shape}", tok, device)
        model_dir, n_params = models[shape]
        r = run_one(args, name, shape, mb, ckpt, fused, attn, extra, model_dir, data, n_params, work)
        results.append(r)
        print(json.dumps(r), flush=True)
        (out / f"{stem}.json").write_text(json.dumps({
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "args": vars(args), "results": results}, indent=2, default=str))  # after each: a cut run keeps its figures
    report(results)
    plot(results, out / f"{stem}.png")
    print(f"wrote {out / (stem + '.json')} and .png")


if __name__ == "__main__":
    main()
