"""Trained tokens/s and padding waste of ``distill sft``: packing vs no packing, and vs TRL.

    python benchmarks/sft_throughput.py                     # 400 samples, 1 epoch each, CPU
    python benchmarks/sft_throughput.py --samples 2000 --max-seq-len 2048 --hidden 512 --layers 8

One run, one machine, the same model (a random Qwen2 built here, offline), the same samples
(R1-style traces from ``../shared/data/math_train_sample2000.jsonl`` when present, else
synthetic ones of varied length) and the same optimizer settings, one epoch each:

* ``ours_packed``: ``distill sft`` with packing (best-fit-decreasing rows of ``max_seq_len``);
* ``ours_padded``: ``distill sft`` without packing (length-grouped micro-batches, right padding);
* ``trl_packed``: TRL ``SFTTrainer`` (``packing=True``, bfd, ``assistant_only_loss=True``), when
  ``trl`` is installed (``pip install distill-r1[trl]``); skipped otherwise.

Trained tokens/s = assistant tokens (reasoning + answer + EOS) of the epoch / training wall
time (setup and data rendering excluded for every contender). Padding waste = padded positions
/ computed positions. Targets: packing keeps padding under 5% and ``ours_packed`` is at least
as fast as ``trl_packed`` (ratio >= 1). Writes ``benchmarks/results/sft_throughput.json`` + PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SHARED = ROOT.parent / "shared" / "data" / "math_train_sample2000.jsonl"


def make_traces(n: int) -> list[dict]:
    """Chat records: a math problem and an R1-style answer (reasoning in <think>, boxed answer)."""
    out = []
    if SHARED.exists():
        rows = [json.loads(x) for x in SHARED.read_text(encoding="utf-8").splitlines()[:n]]
        for i, r in enumerate(rows):
            out.append({"id": f"m{i}", "messages": [
                {"role": "user", "content": r["problem"] + "\nPlease reason step by step, and put your final answer "
                                                          "within \\boxed{}."},
                {"role": "assistant", "content": f"<think>\n{r.get('solution', '')}\n</think>\n\n"
                                                 f"The answer is \\boxed{{{r['answer']}}}."}]})
    import random

    rng = random.Random(0)
    while len(out) < n:
        i = len(out)
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        steps = " ".join(f"Step {k}: {a} + {k} = {a + k}." for k in range(rng.randint(1, 120)))
        out.append({"id": f"s{i}", "messages": [
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": f"<think>\n{steps}\n</think>\n\nThe answer is \\boxed{{{a + b}}}."}]})
    return out


def run_ours(args, model_dir: Path, data: Path, work: Path, packing: bool) -> dict:
    from pipeline.train.sft import SFTConfig, run

    cfg = SFTConfig(model=str(model_dir), data=[str(data)], output_dir=str(work / f"ours_{packing}"),
                    max_seq_len=args.max_seq_len, packing=packing,
                    micro_batch_size=args.rows if packing else args.padded_batch, grad_accum=1, epochs=1,
                    lr=1e-3, warmup_ratio=0.03, dtype="fp32", seed=0, log_every=10_000, progress=False)
    s = run(cfg)
    return {"trained_tokens": s["trained_tokens"], "seconds": s["elapsed_s"],
            "trained_tokens_per_s": s["trained_tokens"] / s["elapsed_s"], "padding_fraction": s["padding_fraction"],
            "steps": s["steps"], "final_loss": s["final_loss"]}


def run_trl(args, model_dir: Path, records: list[dict], work: Path, trained_tokens: int) -> dict | None:
    try:
        import trl  # noqa: F401
    except ImportError:
        print("trl not installed: skipping the TRL baseline (pip install 'distill-r1[trl]')")
        return None
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    ds = datasets.Dataset.from_list([{"messages": r["messages"]} for r in records])
    cfg = SFTConfig(output_dir=str(work / "trl"), max_length=args.max_seq_len, packing=True,
                    assistant_only_loss=True, per_device_train_batch_size=args.rows, gradient_accumulation_steps=1,
                    num_train_epochs=1, learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=0.03,
                    logging_steps=10_000, save_strategy="no", report_to=[], bf16=False, use_cpu=True,
                    dataloader_num_workers=0, seed=0, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    counted = sum(int(sum(x)) for x in trainer.train_dataset["assistant_masks"]) \
        if "assistant_masks" in trainer.train_dataset.column_names else trained_tokens
    t0 = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t0
    return {"trained_tokens": counted, "seconds": round(seconds, 3),
            "trained_tokens_per_s": counted / seconds, "train_runtime": out.metrics.get("train_runtime"),
            "steps": out.global_step, "final_loss": out.training_loss}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=2, help="packed rows per micro-batch (ours and TRL)")
    ap.add_argument("--padded-batch", type=int, default=4, help="samples per micro-batch without packing")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--no-trl", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sft_throughput.json"))
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from pipeline.records import write_json_atomic
    from pipeline.tiny import build_model, train_tokenizer
    from pipeline.train import data as D

    records = make_traces(args.samples)
    with tempfile.TemporaryDirectory(prefix="sft_bench_") as tmp:
        work = Path(tmp)
        tok = train_tokenizer([m["content"] for r in records[:300] for m in r["messages"]], vocab_size=2000)
        model_dir = work / "model"
        tok.save_pretrained(model_dir)
        tok = AutoTokenizer.from_pretrained(model_dir)
        build_model(tok, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.hidden // 32,
                    max_position_embeddings=max(2048, args.max_seq_len)).save_pretrained(model_dir)
        # keep only samples every contender trains whole (TRL would truncate, we would drop)
        renderer = D.Renderer(tok, D.chat_template_for_training(tok))
        kept = [r for r in records if len(renderer.render(r["messages"])[0]) <= args.max_seq_len]
        data = work / "kept.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        print(f"{len(kept)} samples (of {len(records)}) within {args.max_seq_len} tokens; model "
              f"hidden {args.hidden} x {args.layers} layers")

        results = {"samples": len(kept), "max_seq_len": args.max_seq_len, "hidden": args.hidden,
                   "layers": args.layers, "threads": __import__("torch").get_num_threads()}
        results["ours_packed"] = run_ours(args, model_dir, data, work, packing=True)
        print("ours_packed", results["ours_packed"])
        results["ours_padded"] = run_ours(args, model_dir, data, work, packing=False)
        print("ours_padded", results["ours_padded"])
        trl_res = None if args.no_trl else run_trl(args, model_dir, kept, work,
                                                    results["ours_packed"]["trained_tokens"])
        if trl_res:
            results["trl_packed"] = trl_res
            print("trl_packed", trl_res)

    ours = results["ours_packed"]["trained_tokens_per_s"]
    ratios = {"packed_vs_padded_tokens_per_s": ours / results["ours_padded"]["trained_tokens_per_s"]}
    if trl_res:
        ratios["ours_packed_vs_trl_packed_tokens_per_s"] = ours / trl_res["trained_tokens_per_s"]
    results["ratios"] = ratios
    results["targets"] = {"packing_padding_under_5pct": results["ours_packed"]["padding_fraction"] < 0.05,
                          "at_least_trl": ratios.get("ours_packed_vs_trl_packed_tokens_per_s", float("nan")) >= 1.0}
    out = Path(args.out)
    write_json_atomic(out, results)
    from pipeline.plots import barh

    names = [k for k in ("ours_packed", "ours_padded", "trl_packed") if k in results]
    barh(names, [results[k]["trained_tokens_per_s"] for k in names], out.with_suffix(".png"),
         title="distill sft: trained tokens/s (higher is better)", xlabel="trained tokens / s")
    print("\npadding waste: packed {:.1%}, padded {:.1%}".format(results["ours_packed"]["padding_fraction"],
                                                                 results["ours_padded"]["padding_fraction"]))
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
