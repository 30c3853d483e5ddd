"""The transformers backend's own batched sampler (pipeline/generate/backends/decode.py) on a real tiny Qwen2:
greedy equals ``model.generate`` token for token (left padding, rows ending at different steps, rows dropped
mid-batch), sampled draws follow softmax(logits / T) with top-p applied, and seeds reproduce."""

from __future__ import annotations

import pytest
import torch

from pipeline.generate.backends.decode import sample_batch, supports


@pytest.fixture(scope="module")
def chaotic_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with weights redrawn at std 0.15: a default-init random model repeats one token
    forever, this one writes varied text, so rows end at different steps."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.tiny import scramble_weights

    model = scramble_weights(AutoModelForCausalLM.from_pretrained(tiny_model_dir), std=0.15, seed=0)
    out = tmp_path_factory.mktemp("chaotic")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def model_and_batch(chaotic_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chaotic_model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(chaotic_model_dir).eval()
    texts = ["What is 2 + 2?", "Solve for x: 2x + 3 = 11. Please reason step by step.", "Hi", "12 + 30 = 42, and",
             "我们来一步一步地思考这个问题。", "Let me double check: 42 - 30 = 12."]
    enc = tok(texts, return_tensors="pt", padding=True)
    assert enc["attention_mask"].min() == 0  # the batch really is left-padded
    return model, tok, enc


def _hf_greedy(model, enc, max_new, eos, pad):
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, eos_token_id=sorted(eos), pad_token_id=pad)
    rows = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        cut = next((j for j, t in enumerate(row) if t in eos), None)
        rows.append(row if cut is None else row[:cut + 1])
    return rows


def test_supports_full_attention_decoder_only(model_and_batch):
    from types import SimpleNamespace

    model, _, _ = model_and_batch
    assert supports(model)
    cfg = model.config.to_dict()
    sliding = SimpleNamespace(config=SimpleNamespace(**{**cfg, "layer_types": ["sliding_attention", "full_attention"]}))
    assert not supports(sliding)  # a sliding-window layer: model.generate handles it
    no_types = {k: v for k, v in cfg.items() if k not in ("layer_types", "use_sliding_window")}
    assert not supports(SimpleNamespace(config=SimpleNamespace(**{**no_types, "sliding_window": 4096})))
    assert supports(SimpleNamespace(config=SimpleNamespace(**{**no_types, "sliding_window": 4096,
                                                              "use_sliding_window": False})))
    assert not supports(SimpleNamespace(config=SimpleNamespace(**{**cfg, "is_encoder_decoder": True})))


@pytest.mark.parametrize("compact_ratio", [0.25, 1e-9])
def test_greedy_equals_generate_with_rows_ending_at_different_steps(model_and_batch, compact_ratio):
    model, tok, enc = model_and_batch
    max_new = 24
    free = _hf_greedy(model, enc, max_new, {-1}, tok.pad_token_id)
    # EOS = a pair of tokens the rows emit at different steps, so rows finish at different steps and get
    # dropped mid-batch (a greedy path does not depend on the EOS set: it only ends earlier)
    def stops(eos):
        return [next((j + 1 for j, t in enumerate(r) if t in eos), max_new) for r in free]

    vocab = sorted({t for r in free for t in r})
    eos = max(({a, b} for a in vocab for b in vocab if a < b), key=lambda e: len(set(stops(e))))
    ref = _hf_greedy(model, enc, max_new, eos, tok.pad_token_id)
    lengths = {len(r) for r in ref}
    assert len(lengths) >= 3 and min(lengths) < max_new, lengths  # the case under test really happens
    mine = sample_batch(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=max_new, eos_ids=eos,
                        temperature=0.0, top_p=1.0, compact_ratio=compact_ratio)
    assert mine == ref


def test_tiny_top_p_is_greedy(model_and_batch):
    model, tok, enc = model_and_batch
    greedy = sample_batch(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=12,
                          eos_ids={tok.eos_token_id}, temperature=0.0, top_p=1.0)
    nucleus = sample_batch(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=12,
                           eos_ids={tok.eos_token_id}, temperature=1.3, top_p=1e-6,
                           generator=torch.Generator().manual_seed(3))
    assert nucleus == greedy


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.5, 1.0), (1.0, 0.5)])
def test_first_token_draws_follow_the_tempered_nucleus(model_and_batch, temperature, top_p):
    model, tok, enc = model_and_batch
    ids, mask = enc["input_ids"][:1], enc["attention_mask"][:1]
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits[0, -1].float()
    probs = (logits / temperature).softmax(-1)
    sorted_p, order = probs.sort(descending=True)
    keep = (sorted_p.cumsum(-1) - sorted_p) <= top_p
    nucleus = torch.zeros_like(probs)
    nucleus[order[keep]] = sorted_p[keep]
    nucleus /= nucleus.sum()
    draws = 4000
    out = sample_batch(model, ids.repeat(draws, 1), mask.repeat(draws, 1), max_new_tokens=1, eos_ids={-5},
                       temperature=temperature, top_p=top_p, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(torch.tensor([r[0] for r in out]), minlength=probs.numel()).float() / draws
    assert counts[nucleus == 0].sum() == 0  # nothing outside the nucleus
    top = order[:5]
    assert torch.allclose(counts[top], nucleus[top], atol=4 * (0.25 / draws) ** 0.5), (counts[top], nucleus[top])


def test_seeded_draws_reproduce_and_differ_by_seed(model_and_batch):
    model, tok, enc = model_and_batch

    def draw(seed):
        return sample_batch(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=16,
                            eos_ids={tok.eos_token_id}, temperature=1.0, top_p=0.95,
                            generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(1), draw(1), draw(2)
    assert a == b and a != c
    assert all(0 < len(r) <= 16 for r in a)


def test_backend_fast_decode_matches_generate(chaotic_model_dir):
    from pipeline.generate.backends.base import PromptInput
    from pipeline.generate.backends.transformers import TransformersBackend
    from pipeline.generate.config import SamplingConfig

    prompts = [PromptInput(messages=[], text=t, seed=i) for i, t in enumerate(["What is 2 + 2?", "Hi", "x = 4. \\frac"])]
    sampling = SamplingConfig(n=2, temperature=0.0, max_tokens=10, seed=0)
    fast = TransformersBackend(str(chaotic_model_dir), device="cpu", dtype="float32", batch_size=2, fast_decode=True)
    slow = TransformersBackend(str(chaotic_model_dir), device="cpu", dtype="float32", batch_size=2, fast_decode=False)
    assert fast.fast_decode and not slow.fast_decode
    assert fast.generate(prompts, sampling) == slow.generate(prompts, sampling)
