"""Samples/s of the transformers backend's own sampler against ``model.generate``, same model, prompts and run.

    python benchmarks/transformers_decode.py                     # tiny Qwen2 built here, 128 prompts x 3 samples
    python benchmarks/transformers_decode.py --model PATH        # e.g. the demo teacher (~/.cache/distill-r1/demo/...)

Baseline: ``model.generate`` (sampling, dynamic cache), the way the backend called it before, and
``model.generate`` with ``cache_implementation="static"``. Candidate: ``decode.sample_batch``
(preallocated KV cache, finished rows dropped). All three sample at T=1 / top-p 1 from the same
left-padded batches; the figure is generated samples per second and the ratio to the baseline.

Without ``--model`` the model is a tiny Qwen2 with its weights redrawn at std 0.15 (a default-init
random model repeats one token forever); its EOS set is ``--eos-tokens`` token ids, so lengths vary
like real samples (about ``vocab / eos_tokens`` tokens on average, capped at ``--max-tokens``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _random_model(vocab: int):
    from pipeline.tiny import build_model, scramble_weights, train_tokenizer

    tok = train_tokenizer(vocab_size=vocab)
    return scramble_weights(build_model(tok, hidden_size=128, num_layers=4, num_heads=4, seed=0)).eval(), tok


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.generate.backends.decode import sample_batch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: a tiny random Qwen2 built here)")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64, help="prompts per call (rows = prompts x n)")
    ap.add_argument("--max-tokens", type=int, default=320)
    ap.add_argument("--eos-tokens", type=int, default=4, help="random model only: how many ids end a sample")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16 on cuda)")
    args = ap.parse_args()

    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model).eval()
        tok = AutoTokenizer.from_pretrained(args.model)
        eos = model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
    else:
        model, tok = _random_model(400)
        eos = set(range(100, 100 + args.eos_tokens))
    if args.device != "cpu":
        model = model.to(args.device, torch.bfloat16)
    tok.padding_side = "left"
    texts = [tok.apply_chat_template([{"role": "user", "content": f"What is {i} + {7 * i + 3}? Please reason "
                                       "step by step, and put your final answer within \\boxed{}."}],
                                     tokenize=False, add_generation_prompt=True) + "<think>\n"
             for i in range(args.prompts)]
    batches = [tok(texts[i:i + args.batch_size], return_tensors="pt", padding=True, add_special_tokens=False).to(args.device)
               for i in range(0, len(texts), args.batch_size)]

    def hf(cache: str | None):
        def go(enc, seed):
            torch.manual_seed(seed)
            kw = {"cache_implementation": cache} if cache else {}
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=args.max_tokens, do_sample=True, temperature=1.0,
                                     top_p=1.0, top_k=0, num_return_sequences=args.n, eos_token_id=sorted(eos),
                                     pad_token_id=tok.pad_token_id, **kw)
            return out.shape[0]
        return go

    def ours(enc, seed):
        ids, mask = enc["input_ids"].repeat_interleave(args.n, 0), enc["attention_mask"].repeat_interleave(args.n, 0)
        return len(sample_batch(model, ids, mask, max_new_tokens=args.max_tokens, eos_ids=eos, temperature=1.0,
                                top_p=1.0, generator=torch.Generator(device=args.device).manual_seed(seed)))

    rates: dict[str, list[float]] = {"generate (dynamic cache)": [], "generate (static cache)": [],
                                     "decode.sample_batch": []}
    fns = dict(zip(rates, (hf(None), hf("static"), ours)))
    for rep in range(args.repeats):
        for name, fn in fns.items():  # alternate, so machine noise hits all three alike
            t = time.perf_counter()
            rows = sum(fn(enc, rep * 1000 + i) for i, enc in enumerate(batches))
            rates[name].append(rows / (time.perf_counter() - t))
    base = statistics.median(rates["generate (dynamic cache)"])
    print(f"{args.prompts} prompts x {args.n} samples, batches of {args.batch_size} prompts, max {args.max_tokens} "
          f"tokens, {'model ' + args.model if args.model else 'tiny random Qwen2 (4 layers, hidden 128)'}")
    for name, vals in rates.items():
        med = statistics.median(vals)
        print(f"  {name:26s} {med:7.1f} samples/s   {med / base:5.2f}x")


if __name__ == "__main__":
    main()
