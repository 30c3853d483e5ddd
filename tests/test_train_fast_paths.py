"""The GPU-speed training paths, checked exactly on CPU: the fused lm_head x cross-entropy equals
the plain loss (values and gradients, packed and padded batches), and varlen attention over a
packed row equals transformers' masked SDPA (no cross-document attention either way)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from pipeline.tiny import build_model, scramble_weights
from pipeline.train import data as D
from pipeline.train.attention import VARLEN, choose, register_varlen
from pipeline.train.losses import cross_entropy_sum, fused_linear_cross_entropy


class _Acc:
    """What the loss needs of an Accelerator: ``unwrap_model`` (a plain model is its own)."""

    @staticmethod
    def unwrap_model(model):
        return model


def test_fused_cross_entropy_equals_plain_values_and_grads():
    torch.manual_seed(0)
    n, hdim, vocab = 37, 16, 101
    hidden = torch.randn(n, hdim, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, hdim, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(vocab, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    ref = cross_entropy_sum(hidden @ weight.T + bias, targets)
    g_ref = torch.autograd.grad(ref.loss_sum * 0.7, (hidden, weight, bias))
    for chunk in (1, 5, 64):
        got = fused_linear_cross_entropy(hidden, weight, targets, chunk, bias=bias)
        assert int(got.num_tokens) == n
        torch.testing.assert_close(got.loss_sum.double(), ref.loss_sum.double(), rtol=1e-6, atol=1e-6)
        g = torch.autograd.grad(got.loss_sum * 0.7, (hidden, weight, bias))
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_cross_entropy_empty_is_zero_with_grad_path():
    h = torch.zeros(0, 4, requires_grad=True)
    w = torch.randn(9, 4, requires_grad=True)
    out = fused_linear_cross_entropy(h, w, torch.zeros(0, dtype=torch.long))
    assert float(out.loss_sum.detach()) == 0.0 and int(out.num_tokens) == 0
    out.loss_sum.backward()
    assert torch.count_nonzero(w.grad) == 0


@pytest.fixture()
def corpus_and_model(tmp_path, tiny_tokenizer_dir):
    from pipeline.train.sft import SFTConfig

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    data = tmp_path / "kept.jsonl"
    with open(data, "w") as fh:
        for i in range(12):
            steps = " ".join(f"step {k}: {i} + {k} = {i + k}." for k in range(1 + i % 6))
            fh.write(json.dumps({"id": f"s{i}", "messages": [
                {"role": "user", "content": f"What is {i} + {i + 2}?"},
                {"role": "assistant", "content": f"<think>\n{steps}\n</think>\n\nThe answer is \\boxed{{{2 * i + 2}}}."}]}) + "\n")
    cfg = SFTConfig(model=str(tiny_tokenizer_dir), data=[str(data)], output_dir=str(tmp_path / "out"),
                    max_seq_len=160, micro_batch_size=2, progress=False)
    template = D.chat_template_for_training(tok)
    corpus = D.build_corpus(cfg, tok, template)
    return tok, corpus, cfg


def _batch(corpus, cfg, tok, packing: bool) -> dict:
    cfg = cfg.model_copy(update={"packing": packing})
    plan = D.plan_epoch(corpus, cfg, epoch=0)
    mb = max(plan, key=lambda m: sum(len(r) for r in m))  # the micro-batch with the most documents
    return D.collate(corpus, mb, pad_id=tok.pad_token_id, packing=packing)


def _grads(model) -> dict:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("packing", [True, False])
def test_fused_sft_loss_equals_plain_on_tiny_model(corpus_and_model, packing):
    from pipeline.train.sft import causal_lm_loss, fused_causal_lm_loss

    tok, corpus, cfg = corpus_and_model
    batch = _batch(corpus, cfg, tok, packing)
    if packing:
        assert max(len(s) for s in batch["sample_spans"]) > 1, "a packed row should hold several samples"
    results = []
    for fused in (False, True):
        model = scramble_weights(build_model(tok, hidden_size=64, num_layers=2, num_heads=2, seed=3), std=0.05)
        model.config.use_cache = False
        out = fused_causal_lm_loss(model, batch, _Acc(), chunk_tokens=7) if fused else causal_lm_loss(model, batch, 7)
        (out.loss_sum / batch["num_tokens"]).backward()
        results.append((float(out.loss_sum), int(out.num_tokens), _grads(model)))
    (plain, n0, g0), (fused_v, n1, g1) = results
    assert n0 == n1 == batch["num_tokens"] > 0
    assert fused_v == pytest.approx(plain, rel=1e-5)
    assert g0.keys() == g1.keys()
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def test_cu_seqlens_mark_every_document_and_padding(corpus_and_model):
    tok, corpus, cfg = corpus_and_model
    batch = _batch(corpus, cfg, tok, True)
    B, T = batch["input_ids"].shape
    cu = batch["cu_seqlens"].tolist()
    assert cu[0] == 0 and cu[-1] == B * T and cu == sorted(set(cu))
    pos = batch["position_ids"].reshape(-1)
    starts = [i for i in range(B * T) if pos[i] == 0]
    assert starts == cu[:-1]  # a document starts exactly where position ids restart
    assert batch["max_seqlen"] == max(b - a for a, b in zip(cu[:-1], cu[1:]))


@pytest.mark.parametrize("packing", [True, False])
def test_varlen_attention_equals_masked_sdpa(corpus_and_model, packing):
    from pipeline.train.sft import causal_lm_loss

    tok, corpus, cfg = corpus_and_model
    batch = _batch(corpus, cfg, tok, packing)
    register_varlen()
    losses, grads = {}, {}
    for attn in ("sdpa", VARLEN):
        model = scramble_weights(build_model(tok, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, seed=5),
                                 std=0.05)
        model.set_attn_implementation(attn)
        model.config.use_cache = False
        out = causal_lm_loss(model, dict(batch, varlen=attn == VARLEN), 64)
        (out.loss_sum / batch["num_tokens"]).backward()
        losses[attn], grads[attn] = float(out.loss_sum), _grads(model)
    assert losses[VARLEN] == pytest.approx(losses["sdpa"], rel=1e-5)
    for k in grads["sdpa"]:
        torch.testing.assert_close(grads[VARLEN][k], grads["sdpa"][k], rtol=1e-4, atol=1e-6,
                                   msg=lambda m, k=k: f"{k}: {m}")


def test_varlen_sees_no_other_document(corpus_and_model):
    """Changing one packed sample's tokens leaves the other samples' logits unchanged."""
    tok, corpus, cfg = corpus_and_model
    batch = _batch(corpus, cfg, tok, True)
    register_varlen()
    model = build_model(tok, hidden_size=64, num_layers=2, num_heads=2, seed=5)
    model.set_attn_implementation(VARLEN)
    row = next(b for b, s in enumerate(batch["sample_spans"]) if len(s) > 1)
    (p0, n0), (p1, n1) = batch["sample_spans"][row][:2]
    changed = dict(batch, input_ids=batch["input_ids"].clone(), varlen=True)
    changed["input_ids"][row, p0:p0 + n0] = (changed["input_ids"][row, p0:p0 + n0] + 1) % 50
    with torch.no_grad():
        a = model(**D.model_inputs(dict(batch, varlen=True))).logits[row, p1:p1 + n1]
        b = model(**D.model_inputs(changed)).logits[row, p1:p1 + n1]
    torch.testing.assert_close(a, b)


def test_auto_attention_on_cpu_is_sdpa_and_explicit_varlen_registers():
    assert choose("auto", packing=True) == "sdpa"  # no CUDA here: masked SDPA is the fastest exact path
    assert choose("varlen", packing=True) == VARLEN
    assert choose("eager", packing=True) == "eager"
