"""Overhead of the ``distill generate`` stage over a bare backend call, same prompts, model and run.

    python benchmarks/generate_overhead.py                      # tiny random teacher, transformers on CPU
    python benchmarks/generate_overhead.py --backend vllm       # same through vllm(-cpu)
    python benchmarks/generate_overhead.py --model PATH --prompts FILE.jsonl --max-tokens 512

Baseline: ``backend.generate`` over the same rendered prompts, in the same batches, with the same
per-prompt seeds (so both sides generate the same tokens; the script checks the token totals).
Stage: ``pipeline.generate.stage.run`` into a fresh folder: prompt loading, rendering, record
building, fsync'd shard writes, stats.json and the PNG. Both reuse one loaded engine; they run
alternately ``--repeats`` times and the medians are compared. Target: overhead under 3%.

Two figures are printed:
* wall-clock medians, stage / bare (on a busy machine this swings by more than the overhead itself);
* the stage's own accounting in the same runs: time outside ``backend.generate`` over time inside
  it (a timing proxy wraps the engine), which is insensitive to how fast generation happens to be.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def _prompt_file(work: Path, source: str | None, count: int) -> Path:
    src = Path(source) if source else ROOT.parent / "shared" / "data" / "gsm8k_train.jsonl"
    out = work / "prompts.jsonl"
    if src.is_file():
        lines = src.read_text(encoding="utf-8").splitlines()[:count]
    else:  # no shared data: synthetic arithmetic prompts
        lines = [json.dumps({"problem": f"What is {i} + {2 * i}? Show your steps.", "answer": str(3 * i)})
                 for i in range(count)]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="teacher path (default: a tiny random Qwen2 built here)")
    ap.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    ap.add_argument("--prompts", help="prompt JSONL (default: ../shared/data/gsm8k_train.jsonl)")
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32, help="prompts per backend call")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from pipeline.generate.backends.base import PromptInput
    from pipeline.generate.run import _messages, _templates, prompt_seed
    from pipeline.generate.stage import GenerateConfig, make_backend, run
    from pipeline.chat import render_generation_prompt
    from pipeline.prompts import load_prompts

    work = Path(tempfile.mkdtemp(prefix="gen_overhead_"))
    try:
        model = args.model
        if model is None:
            from pipeline.tiny import build_tiny_model

            model = str(build_tiny_model(work / "tiny", hidden_size=128, num_layers=2, num_heads=4))
        prompts = _prompt_file(work, args.prompts, args.num_prompts)

        def cfg_for(out: Path) -> GenerateConfig:
            return GenerateConfig.model_validate({
                "model": model, "backend": args.backend, "input": {"path": str(prompts)}, "output_dir": str(out),
                "sampling": {"n": args.n, "max_tokens": args.max_tokens}, "batch_size": args.batch_size,
                "progress": False, "transformers": {"batch_size": args.batch_size},
                "vllm": {"gpu_memory_utilization": 0.5, "max_model_len": 2048, "enforce_eager": True}})

        cfg = cfg_for(work / "unused")
        backend = make_backend(cfg)
        templates = _templates(cfg)
        inputs = []
        for p in load_prompts(cfg.input):
            text, prefix = render_generation_prompt(backend.tokenizer, _messages(cfg, templates, p), cfg.force_think)
            inputs.append(PromptInput(messages=[], text=text, forced_prefix=prefix, seed=prompt_seed(0, p.id),
                                      sample_indices=tuple(range(args.n))))

        def bare() -> tuple[float, int]:
            t = time.perf_counter()
            tokens = 0
            for s in range(0, len(inputs), args.batch_size):
                for comps in backend.generate(inputs[s:s + args.batch_size], cfg.sampling):
                    tokens += sum(c.completion_tokens for c in comps)
            return time.perf_counter() - t, tokens

        class Timed:  # the same engine, with the time spent inside generate() measured
            def __init__(self, inner):
                self.inner, self.name, self.tokenizer, self.inside = inner, inner.name, inner.tokenizer, 0.0

            def generate(self, prompts, sampling):
                t = time.perf_counter()
                try:
                    return self.inner.generate(prompts, sampling)
                finally:
                    self.inside += time.perf_counter() - t

            def close(self):
                pass

        inside: list[float] = []

        def stage(i: int) -> tuple[float, int]:
            out = work / f"stage{i}"
            timed = Timed(backend)
            t = time.perf_counter()
            stats = run(cfg_for(out), backend=timed)
            elapsed = time.perf_counter() - t
            inside.append(timed.inside)
            shutil.rmtree(out)
            return elapsed, stats["tokens"]["completion"]

        bare()  # warm-up (allocator, kernels)
        b_times, s_times, b_tok, s_tok = [], [], set(), set()
        for i in range(args.repeats):
            bt, btok = bare()
            st, stok = stage(i)
            b_times.append(bt)
            s_times.append(st)
            b_tok.add(btok)
            s_tok.add(stok)
            print(f"repeat {i + 1}: bare {bt:.2f}s  stage {st:.2f}s (in engine {inside[-1]:.2f}s)  "
                  f"ratio {st / bt:.3f}", flush=True)
        backend.close()
        b, s = statistics.median(b_times), statistics.median(s_times)
        samples = len(inputs) * args.n
        print(f"\nbackend={args.backend} prompts={len(inputs)} n={args.n} max_tokens={args.max_tokens} "
              f"samples={samples} completion tokens bare={sorted(b_tok)} stage={sorted(s_tok)} "
              f"(same tokens: {'yes' if b_tok == s_tok and len(b_tok) == 1 else 'NO'})")
        print(f"bare backend : {b:.2f}s  ({samples / b:.1f} samples/s, {min(b_tok) / b:,.0f} tok/s)")
        print(f"distill stage: {s:.2f}s  ({samples / s:.1f} samples/s, {min(s_tok) / s:,.0f} tok/s)")
        print(f"wall medians: stage / bare = {s / b:.3f}  -> {100 * (s / b - 1):+.1f}% (noisy on a shared machine)")
        over = [st - ins for st, ins in zip(s_times, inside)]
        share = statistics.median(o / ins for o, ins in zip(over, inside))
        print(f"stage time outside the engine: median {statistics.median(over):.3f}s per run = "
              f"{100 * share:.2f}% of engine time  (target < 3%)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
